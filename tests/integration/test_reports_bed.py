"""``--junit`` and ``--html`` on the real bed: a deploy whose highstate fails
(``make_project(fail=True)``) gives a JUnit file the schema accepts, showing
the failed state, and an HTML report that chromium renders with that state
highlighted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import junitparser
import pytest
import xmlschema

pytestmark = pytest.mark.timeout(240)

PROJECT = "e2e-reports"
DEPLOYMENT = "failing"
FAILING_STATE = "spirodeploy-example-failure"
FAILING_COMMENT = "This state fails on purpose (make_project(fail=True))."
SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schemas" / "junit.xsd"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
SCRUBBED_ENV = ("SPIRO_URL", "SPIRO_TOKEN", "SPIRO_TOKEN_FILE", "REQUESTS_CA_BUNDLE",
                "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR")


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    environ.update({"NO_COLOR": "1", "PYTHONUNBUFFERED": "1"})
    return subprocess.run(cmd, cwd=cwd, env=environ, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=180, check=False)


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main",
         *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def failing_deploy(spiro_bed, tmp_path_factory):
    """Deploy the failing project once, over HTTPS, with both report files."""
    work = tmp_path_factory.mktemp("reports")
    project = spiro_bed.make_project(work, "failing", fail=True)
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "failing on purpose")
    token_file = work / "token"
    token_file.write_text(spiro_bed.issue_token([PROJECT]) + "\n")
    token_file.chmod(0o600)
    junit, html = work / "junit.xml", work / "report.html"
    proc = run([sys.executable, "-m", "spirodeploy", PROJECT, DEPLOYMENT,
                "--server", spiro_bed.https_url, "--ssl-cert", str(spiro_bed.ca_cert),
                "--token-file", str(token_file), "--junit", str(junit), "--html", str(html)],
               cwd=project)
    described = f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert proc.returncode == 1, described
    assert junit.exists() and html.exists(), described
    return {"junit": junit, "html": html, "commit": git(project, "rev-parse", "HEAD"),
            "work": work, "output": described}


def test_junit_from_a_failing_deploy(spiro_bed, failing_deploy):
    junit = failing_deploy["junit"]
    xmlschema.XMLSchema(str(SCHEMA_FILE)).validate(str(junit))
    [suite] = list(junitparser.JUnitXml.fromfile(str(junit)))
    assert suite.name == f"{PROJECT}/{DEPLOYMENT}"
    cases = {(case.classname, case.name): case for case in suite}
    failed = cases[(spiro_bed.minion_id, f"{FAILING_STATE} (test.fail_without_changes)")]
    [failure] = failed.result
    assert isinstance(failure, junitparser.Failure)
    assert failure.message == FAILING_COMMENT and FAILING_COMMENT in failure.text
    assert failure.type == "test.fail_without_changes"
    assert failed.time >= 0
    # Only the failed state failed; the deploy itself went through.
    assert (suite.failures, suite.errors) == (1, 0)
    assert not cases[(f"{PROJECT}/{DEPLOYMENT}", "deploy")].result
    props = {prop.name: prop.value for prop in suite.properties()}
    assert len(props["bundle.sha256"]) == 64 and len(props["bundle.digest"]) == 64
    assert props["bundle.gitcommit"].splitlines()[0] == failing_deploy["commit"]


def test_html_from_a_failing_deploy_in_chromium(spiro_bed, failing_deploy):
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), "apt-get install -y chromium"
    html = failing_deploy["html"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(html.as_uri())
            page.wait_for_selector("body[data-ready='1']", timeout=15_000)
            assert page.title() == f"spiro-deploy: {PROJECT}/{DEPLOYMENT} (failed)"
            assert page.text_content("#summary-line") == (
                f"Deployed {PROJECT}/{DEPLOYMENT}: 1 of 1 minions reported; "
                f"failed: {spiro_bed.minion_id}")
            row = page.locator(f"#minion-rows tr[data-minion='{spiro_bed.minion_id}']")
            assert row.get_attribute("class") == "row-failed"
            state = page.locator(f"#failure-list .state.failed[data-state='{FAILING_STATE}']")
            assert state.count() == 1
            assert state.locator(".comment").text_content() == FAILING_COMMENT
            # Highlighted: the failed state's red box.
            assert state.evaluate("e => getComputedStyle(e).backgroundColor") == (
                "rgb(255, 235, 233)")
            assert page.text_content("#fact-commit").startswith(failing_deploy["commit"])
            page.screenshot(path=str(failing_deploy["work"] / "report.png"), full_page=True)
            assert errors == []
        finally:
            browser.close()
