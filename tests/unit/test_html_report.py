"""The HTML report (``--html``): one self-contained page, checked in a real
browser (Debian's chromium, headless, driven by Playwright).

The browser tests open the report from a file, as a CI artifact is opened,
and check what a person sees: the summary, the failed minion and its state,
sorting, filtering, paging at 10,000 minions, and that hostile text from the
server stays text (no script runs, the title is unchanged, no request leaves
the page).  Set ``SPIRO_REPORT_SCREENSHOT=path.png`` to keep the README's
picture (``docs/html-report.png``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from spirodeploy import html_report
from tests.report_events import (
    BUNDLE,
    HOSTILE_SHOWN,
    big_fleet,
    deploy,
    mixed_fleet,
    state,
    update,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
TITLE = "spiro-deploy: shop/prod (failed)"


# --- the file itself -------------------------------------------------------------

def scripts(page: str) -> list[str]:
    return re.findall(r"<script>(.*?)</script>", page, re.DOTALL)


def test_the_csp_allows_only_the_pages_own_script_and_style_by_hash():
    page = html_report.render(mixed_fleet())
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', page)
    assert csp, page[:500]
    policy = dict(part.strip().split(" ", 1) for part in csp.group(1).split(";"))
    assert policy["default-src"] == "'none'"
    [script] = scripts(page)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert policy["script-src"] == f"'sha256-{digest}'"
    [style] = re.findall(r"<style>(.*?)</style>", page, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    assert policy["style-src"] == f"'sha256-{digest}'"
    assert "unsafe-inline" not in csp.group(1)


def test_self_contained_no_external_asset():
    # The data blob is text for the script (no "<" in it, see below); the rest
    # is markup, and it refers to nothing outside the file.
    page = re.sub(r'<script type="application/json" id="report-data">.*?</script>', "",
                  html_report.render(mixed_fleet()), flags=re.DOTALL)
    assert not re.search(r"(?i)\b(src|href)\s*=", page)
    assert not re.search(r"(?i)<(link|img|iframe|object|embed)\b", page)
    assert "http://" not in page and "https://" not in page and "url(" not in page


def test_the_data_is_one_json_blob_with_no_markup_in_it():
    page = html_report.render(mixed_fleet())
    blobs = re.findall(r'<script type="application/json" id="report-data">(.*?)</script>',
                       page, re.DOTALL)
    assert len(blobs) == 1
    assert "<" not in blobs[0] and ">" not in blobs[0] and "&" not in blobs[0]
    data = json.loads(blobs[0])
    [web1] = [row for row in data["minions"] if row[0] == "web1"]
    assert web1[1] == "failed"
    assert data["details"]["web1"]["failed"][0][4] == f"Command failed: {HOSTILE_SHOWN}"


def test_hostile_text_in_the_static_summary_is_escaped():
    minion = '<img src=x onerror="window.__pwned=1">'
    page = html_report.render(deploy([update(minion, [state("a", result=False)], retcode=2)]))
    head, _, _ = page.partition('<script type="application/json"')
    assert "<img" not in head
    assert "&lt;img src=x onerror=&quot;window.__pwned=1&quot;&gt;" in head


def test_ten_thousand_minions_stay_proportionate():
    report = big_fleet(10_000, states=20)
    started = time.perf_counter()
    page = html_report.render(report)
    took = time.perf_counter() - started
    # About 60 bytes a minion, plus the hundred failed minions' states.
    assert len(page.encode()) < 1_500_000, len(page)
    assert took < 10, took


# --- in the browser -----------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Opened:
    """A report open in a page, with what the page asked for and complained about."""

    def __init__(self, browser, path: Path, width: int = 1280):
        self.url = path.as_uri()
        self.page = browser.new_page(viewport={"width": width, "height": 900})
        self.requests: list[str] = []
        self.console: list[str] = []
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("console", lambda message: self.console.append(message.text))
        self.page.on("pageerror", lambda error: self.console.append(f"pageerror: {error}"))
        self.page.goto(self.url)
        self.page.wait_for_selector("body[data-ready='1']", timeout=15_000)

    def column(self, index: int) -> list[str]:
        return self.page.eval_on_selector_all(
            "#minion-rows tr:not(.detail)", f"rows => rows.map(r => r.cells[{index}].textContent)")

    def close(self) -> None:
        self.page.close()


@pytest.fixture
def opened(browser, tmp_path):
    pages = []

    def open_report(report, name: str = "report.html", **kwargs) -> Opened:
        path = tmp_path / name
        path.write_text(html_report.render(report), encoding="utf-8")
        page = Opened(browser, path, **kwargs)
        pages.append(page)
        return page

    yield open_report
    for page in pages:
        page.close()


def test_browser_shows_the_summary_and_the_failed_minion(opened):
    report = opened(mixed_fleet())
    page = report.page
    assert page.title() == TITLE
    assert page.text_content("#summary-line") == (
        "Deployed shop/prod: 4 of 5 minions reported; failed: cache1, db1, web1; "
        "never reported: gone1")
    cards = dict(page.eval_on_selector_all(
        ".card", "cards => cards.map(c => [c.dataset.count, c.querySelector('.n').textContent])"))
    assert cards == {"expected": "5", "reported": "4", "succeeded": "1", "failed": "3",
                     "never reported": "1", "states ok": "4", "states changed": "1",
                     "states failed": "1"}
    assert page.text_content("#fact-bundle-sha256") == BUNDLE["sha256"]
    assert page.text_content("#fact-commit") == BUNDLE["gitcommit"]

    # The failed minion's row is marked, and its failed state is highlighted
    # with the comment shown as text.
    row = page.locator("#minion-rows tr[data-minion='web1']")
    assert row.get_attribute("class") == "row-failed"
    assert row.locator("td").nth(1).text_content() == "failed"
    failed = page.locator("#failure-list .minion-failures[data-minion='web1'] .state.failed")
    assert failed.count() == 1
    assert failed.locator(".head").text_content() == "cmd.run  migrate"
    assert failed.locator(".comment").text_content() == f"Command failed: {HOSTILE_SHOWN}"
    assert failed.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(255, 235, 233)"
    # A click on the row shows the same state under it.
    row.click()
    assert page.locator("#minion-rows tr.detail .state.failed .comment").text_content() == (
        f"Command failed: {HOSTILE_SHOWN}")
    # The timeline has a dot for each minion that reported, red for the failed ones.
    assert page.locator(".tl-dot").count() == 4
    assert page.locator(".tl-dot.bad").count() == 3
    assert report.console == []


def test_browser_injected_script_does_not_run(opened):
    report = opened(mixed_fleet())
    page = report.page
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.title() == TITLE
    assert page.locator("img").count() == 0
    assert page.locator("script").count() == 2  # the data and the page's own
    assert report.requests == [report.url]  # nothing fetched, not even x


def test_browser_csp_blocks_a_script_that_got_into_the_markup(browser, tmp_path):
    # Even if an escaping bug let markup through, the CSP would stop it.
    page_text = html_report.render(mixed_fleet()).replace(
        "<header>", "<header><script>window.__pwned=1</script>"
                    "<img src=x onerror=\"window.__pwned=2\">", 1)
    path = tmp_path / "tampered.html"
    path.write_text(page_text, encoding="utf-8")
    report = Opened(browser, path)
    try:
        assert report.page.evaluate("typeof window.__pwned") == "undefined"
        assert any("Content Security Policy" in line for line in report.console), report.console
        assert report.page.title() == TITLE  # the page's own script still ran
    finally:
        report.close()


def test_browser_sorting_and_filtering(opened):
    report = opened(mixed_fleet())
    page = report.page
    # Worst first by default.
    assert report.column(1) == ["failed", "error", "no-response", "unreported", "ok"]
    page.click("#minion-table th:nth-child(1)")
    assert report.column(0) == ["cache1", "db1", "gone1", "web1", "web2"]
    assert page.get_attribute("#minion-table th:nth-child(1)", "aria-sort") == "ascending"
    page.click("#minion-table th:nth-child(1)")
    assert report.column(0) == ["web2", "web1", "gone1", "db1", "cache1"]
    page.click("#minion-table th:nth-child(6)")  # duration, unknown first
    assert report.column(0)[-2:] == ["web2", "web1"]
    page.click("#minion-table th:nth-child(6)")
    assert report.column(0)[:2] == ["web1", "web2"]

    page.fill("#filter", "web")
    assert sorted(report.column(0)) == ["web1", "web2"]
    assert page.text_content("#shown") == "2 of 5 minions"
    page.fill("#filter", "")
    page.select_option("#status", "unreported")
    assert report.column(0) == ["gone1"]


def test_browser_ten_thousand_minions_page_sort_and_filter(opened):
    started = time.perf_counter()
    report = opened(big_fleet(10_000, states=5))
    opened_in = time.perf_counter() - started
    page = report.page
    assert opened_in < 20, opened_in
    assert page.locator("#minion-rows tr").count() == 100
    assert page.text_content("#page") == "page 1 of 100"
    assert page.text_content("#shown") == "10000 of 10000 minions"
    # The hundred failed ones first, then paging on.
    assert set(report.column(1)) == {"failed"}
    page.click("#next")
    assert page.text_content("#page") == "page 2 of 100"
    assert set(report.column(1)) == {"ok"}
    page.click("#minion-table th:nth-child(1)")
    page.click("#minion-table th:nth-child(1)")
    assert report.column(0)[0] == "node09999.example.com"
    assert page.text_content("#page") == "page 1 of 100"
    page.fill("#filter", "node0420")
    assert report.column(0) == [f"node0420{i}.example.com" for i in range(10)][::-1]
    # The timeline folds 10,000 minions into a histogram.
    assert page.locator(".histogram .bin").count() == 60


def test_browser_screenshot(opened, tmp_path):
    """The README's picture: a small fleet with a failure, as a person sees it."""
    updates = []
    names = []
    for i, name in enumerate(["web1", "web2", "web3", "web4", "db1", "db2", "cache1",
                              "worker1", "worker2"]):
        entries = [state("packages", "pkg.installed", duration=80.0 + i * 7),
                   state("config", "file.managed", duration=12.5, run_num=1),
                   state("service", "service.running", duration=40.0, run_num=2)]
        if name == "web3":
            entries.append(state("migrate", "cmd.run", result=False, run_num=3, sls="app.db",
                                 duration=2300.0,
                                 comment='Command "manage.py migrate" run\nretcode: 1\n'
                                         "django.db.utils.OperationalError: could not "
                                         'connect to server "db.internal"'))
        updates.append(update(name, entries, retcode=2 if name == "web3" else 0))
        names.append(name)
    # Minions report over time: feed the updates a little apart.
    report = deploy([], expected=[*names, "worker3"], finish=False)
    for data in updates:
        time.sleep(0.04)
        report.add("highstate-update", data)
    report.add("highstate-update", update("db2", result={
        "ret": [("Rendering SLS 'prod:postgres' failed: Jinja variable 'pg_version' "
                 "is undefined")], "retcode": 5}))
    report.add("highstate-finish", {"msg": "Highstate complete"})
    shown = opened(report, width=1100)
    shot = tmp_path / "html-report.png"
    shown.page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    target = os.environ.get("SPIRO_REPORT_SCREENSHOT")
    if target:
        shutil.copyfile(shot, target)
