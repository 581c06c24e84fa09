"""Output, memory and returns that scale with the failures, not the fleet (issue 14, sections 2-3)."""

from __future__ import annotations

import gc
import importlib.util
import io
import json
import tracemalloc

import pytest

from spirodeploy import saltloader, saltsupport
from spirodeploy.cli import build_parser
from spirodeploy.output import HumanPrinter, JsonPrinter, shorten_message
from spirodeploy.report import DeployReport
from tests.fakeserver import fleet_events, fleet_state
from tests.support import REPO


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def fold(minions: int, printer=None, **kwargs) -> DeployReport:
    """Feed a scripted fleet deploy (tests/fakeserver.fleet_events) through a report."""
    report = DeployReport("proj", "prod")
    for raw in fleet_events(minions, **kwargs):
        head, _, body = raw.decode().partition("\ndata: ")
        event, data = head[len("event: "):], json.loads(body)
        report.add(event, data)
        if printer is not None:
            printer.event(event, data, report)
    report.end_of_stream()
    if printer is not None:
        printer.finish(report)
    return report


def printed(minions: int, out=None, **kwargs) -> str:
    out = out if out is not None else io.StringIO()
    printer = HumanPrinter(out=out, err=io.StringIO(), colour=False, progress=False,
                           verbose=kwargs.pop("verbose", 0))
    fold(minions, printer, **kwargs)
    return out.getvalue()


# --- on a terminal: one live line ------------------------------------------------

def test_a_terminal_gets_one_live_line_and_only_failed_minions():
    text = printed(200, out=Tty(), fail_every=50)
    assert "\r\033[K" in text
    assert "Highstate: 200/200 minions done, 4 failed, 0:00 elapsed" in text
    blocks = [line for line in text.split("\r\033[K") if line.startswith("== ")]
    assert len(blocks) == 4 and all(" 1 failed" in line for line in blocks), blocks
    assert "FAILED   file.managed state00" in text
    assert "changed  " not in text  # a big fleet: no changed states without -v


def test_no_live_line_when_not_on_a_terminal():
    text = printed(200)
    assert "\r" not in text and "\033[" not in text and "Highstate: " not in text


# --- not on a terminal (CI logs): one compact line per minion -----------------------

def test_ci_logs_get_one_compact_line_per_minion_and_failed_ones_in_full():
    text = printed(200, fail_every=100)
    lines = text.splitlines()
    ok = [line for line in lines if line.startswith("== web") and " 0 failed" in line]
    assert len(ok) == 198
    assert "== web00000: 45 ok, 5 changed, 0 failed, 210 ms ==" in lines
    assert "changed  " not in text  # per state, only for small fleets or -v
    failed = lines.index("== web00099: 45 ok, 4 changed, 1 failed ==")  # as it always was
    assert lines[failed + 1] == "  FAILED   file.managed state00"
    assert lines[failed + 2].strip() == "Command failed on /etc/app/conf00"
    assert lines[failed + 3] == "  took 210 ms"
    # 200 minions: a few hundred lines, not one per state.
    assert len(lines) < 230


def test_verbose_lists_changed_states_of_a_big_fleet():
    text = printed(20, verbose=1)
    assert text.count("  changed  file.managed state0") == 20 * 5


def test_a_small_fleet_keeps_its_changed_states():
    text = printed(3)
    assert text.count("  changed  file.managed state0") == 3 * 5
    assert "           File /etc/app/conf00 updated" in text


def test_a_small_deploy_that_went_well_prints_what_it_always_did():
    lines = printed(1, changed=1).splitlines()
    assert lines == ["Deploying bundle", "Calculating minions to highstate",
                     "Highstating 1 minions: web00000",
                     "== web00000: 49 ok, 1 changed, 0 failed ==",
                     "  changed  file.managed state00",
                     "           File /etc/app/conf00 updated",
                     "Highstate complete",
                     "Deployed proj/prod: 1 of 1 minions reported"]


def test_the_cli_has_a_verbosity_option():
    args = build_parser().parse_args(["proj", "prod", "-vv"])
    assert args.verbose == 2
    assert build_parser().parse_args(["proj", "prod"]).verbose == 0


# --- long server messages ---------------------------------------------------------

def test_the_highstate_start_message_is_shortened():
    text = printed(2000)
    line = next(line for line in text.splitlines() if line.startswith("Highstating"))
    assert line.startswith("Highstating 2000 minions: web00000, web00001, ")
    assert line.endswith(")") and "… (+" in line and len(line) < 200
    shown = line.split(": ", 1)[1].split(", ")
    assert int(line.rsplit("(+", 1)[1][:-1]) + len(shown) - 1 == 2000


def test_shorten_message_keeps_short_text_and_cuts_other_long_text():
    assert shorten_message("Deploying bundle") == "Deploying bundle"
    cut = shorten_message("x" * 1000)
    assert cut.startswith("x" * 160) and cut.endswith("… (+840 chars)")


# --- at the end ------------------------------------------------------------------

def test_the_end_gives_counts_failed_minions_with_states_and_silent_minions():
    out = io.StringIO()
    printer = HumanPrinter(out=out, colour=False, progress=False)
    report = DeployReport("proj", "prod")
    events = [raw.decode().partition("\ndata: ") for raw in fleet_events(300)]
    events = [(head[len("event: "):], json.loads(body)) for head, _, body in events]
    for event, data in events[:-11] + events[-1:]:  # ten minions never report
        report.add(event, data)
        printer.event(event, data, report)
    printer.finish(report)
    lines = out.getvalue().splitlines()
    assert ("Minions: 300 expected, 290 reported, 288 succeeded, 2 failed, 10 never reported; "
            "states: 13050 ok, 1448 changed, 2 failed") in lines
    assert "Failed minions:" in lines
    assert "  web00099: failed file.managed state00" in lines
    assert "Never reported: " + ", ".join(f"web{i:05d}" for i in range(290, 300)) in lines
    assert lines[-1] == report.summary()


# --- memory and returns -------------------------------------------------------------

def test_two_thousand_minions_of_fifty_states_stay_small_in_memory():
    # The worst case: every state changed.  The events are made before tracing
    # starts; what is traced is what the report keeps of them.
    events = []
    for raw in fleet_events(2000, changed=50, fail_every=10):
        head, _, body = raw.decode().partition("\ndata: ")
        events.append((head[len("event: "):], body))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        report = DeployReport("proj", "prod")
        for event, body in events:
            report.add(event, json.loads(body))
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(report.minions) == 2000 and len(report.failed) == 200
    # The events alone are 30 MB of JSON; what is kept is a summary per minion.
    assert held < 12 * 2**20, f"{held / 2**20:.1f} MiB held"


def test_questions_about_a_big_fleet_are_answered_quickly():
    import time

    names = [f"web{i:05d}" for i in range(20_000)]
    report = DeployReport("proj", "prod")
    start = time.perf_counter()
    report.add("highstate-start", {"msg": "Highstating", "minions": names})
    key, state = fleet_state(0)
    for name in names[:3000]:
        report.add("highstate-update", {"minion": name, "result": {"ret": {key: state},
                                                                   "retcode": 0}})
    # What the history store asks (issue 15): once per reported minion.
    ok = [name for name in report.reported if name not in report.failed]
    assert len(ok) == 3000 and len(report.unreported) == 17_000
    assert time.perf_counter() - start < 5


def test_watching_for_our_own_queued_highstate_is_quick_on_a_big_fleet():
    import time

    names = [f"web{i:05d}" for i in range(10_000)]
    watch = saltsupport.watch_own_highstate("web09999")
    report = DeployReport("proj", "prod")
    key, state = fleet_state(0)
    stopped = []
    start = time.perf_counter()
    report.add("highstate-start", {"msg": "Highstating", "minions": names})
    watch("highstate-start", {}, report)
    for name in names[:-1]:
        data = {"minion": name, "result": {"ret": {key: state}, "retcode": 0}}
        report.add("highstate-update", data)
        try:
            watch("highstate-update", data, report)
        except saltsupport.StopWaiting as stop:
            stopped.append((name, stop.minion))
    assert time.perf_counter() - start < 4
    assert stopped == [("web09998", "web09999")]  # and it still stops when only we are left


def test_a_minion_keeps_counts_durations_and_the_first_states_only():
    report = fold(1, changed=50, fail_every=0)
    minion = report.minions["web00000"]
    assert minion.counts == {"ok": 0, "changed": 50, "failed": 0}
    assert [s.id for s in minion.changed_states] == [f"state{i:02d}" for i in range(5)]
    assert minion.changed_omitted == 45 and minion.failed_states == []
    assert minion.duration_ms == pytest.approx(sum(1.25 + i % 7 for i in range(50)))
    assert minion.unchanged_duration_ms == 0
    assert minion.changed_states[0].sls == "app.config"
    assert minion.changed_states[0].duration_ms == 1.25
    assert minion.jid == "20261129120000000000" and report.jids == [minion.jid]
    assert minion.reported_at is not None and report.started_at > 0


def test_old_salt_durations_given_as_text_are_read():
    key, state = fleet_state(0)
    report = DeployReport("p", "d")
    report.add("highstate-update", {"minion": "m", "result": {"retcode": 0, "ret": {
        key: dict(state, duration="12.5 ms"),
        "file_|-b_|-/b_|-managed": dict(state, __id__="b", duration="7 ms", changes={"x": 1}),
        "file_|-c_|-/c_|-managed": dict(state, __id__="c", duration="soon")}}})
    minion = report.minions["m"]
    assert minion.duration_ms == 19.5 and minion.unchanged_duration_ms == 12.5
    assert minion.changed_states[0].duration_ms == 7.0


def test_comments_are_cut_and_a_successful_minion_returns_under_2_kb():
    long_comment = "x" * 50_000
    report = DeployReport("p", "d")
    ret = {}
    for i in range(50):
        key, state = fleet_state(i, changed=True)
        ret[key] = dict(state, comment=long_comment, name="/srv/" + "n" * 500)
    report.add("highstate-update", {"minion": "m", "result": {"ret": ret, "retcode": 0}})
    minion = report.minions["m"]
    assert all(len(s.comment) < 400 and len(s.name) < 400 for s in minion.changed_states)
    returned = report.to_dict()["results"]["m"]
    assert returned["succeeded"] and len(json.dumps(returned)) <= 2048
    assert returned["changed_omitted"] + len(returned["changed"]) == 50


def test_the_module_return_is_bounded_per_minion_and_names_the_jobs():
    report = fold(500)
    ret = saltsupport.scrub(report.to_dict(), ["not-in-it-token"])
    sizes = [len(json.dumps(value)) for value in ret["results"].values() if value["succeeded"]]
    assert len(sizes) == 495 and max(sizes) <= 2048
    assert ret["jids"] == ["20261129120000000000"]
    # The report no longer repeats the events: no minion's return, long lists cut.
    text = json.dumps(ret["events"])
    assert "file_|-" not in text and len(text) < 40_000
    assert ret["event_counts"]["highstate-update"] == 500


def test_the_json_report_does_not_repeat_every_event():
    out = io.StringIO()
    printer = JsonPrinter(out=out, err=io.StringIO())
    report = fold(300, printer=printer)
    lines = out.getvalue().splitlines()
    assert len(lines) == 300 + 5  # the event lines stay as they are ...
    assert "file_|-state00" in lines[3]
    final = json.loads(lines[-1])["report"]
    assert "file_|-" not in lines[-1]  # ... the report does not repeat them
    assert len(lines[-1]) < 300 * 2048 and final["minions"]["failed"] == report.failed


def test_the_json_report_is_written_a_minion_at_a_time_and_reads_the_same():
    out = io.StringIO()
    printer = JsonPrinter(out=out, err=io.StringIO())
    report = fold(40)
    writes = []
    out.write = lambda text, write=out.write: writes.append(text) or write(text)
    printer.finish(report)
    assert out.getvalue() == json.dumps({"report": report.to_dict()}, sort_keys=True) + "\n"
    assert len(writes) == 40 + 2 and max(map(len, writes[1:-1])) <= 2100  # one per minion


def test_scrubs_quick_path_masks_exactly_what_the_full_search_masks():
    import random

    from spirodeploy.sanitize import _scrub_all, scrub, secrets_of
    from tests.support import make_token

    token = make_token({"not_before": 1, "project_allow": ["proj"]})
    rng = random.Random(14)
    alphabet = "ABCxyz019+/_-:. \"{}"
    for _ in range(3000):
        parts = []
        for _ in range(rng.randint(0, 6)):
            if rng.random() < 0.4:  # a piece of the token, 1 to 40 characters
                start = rng.randrange(len(token))
                parts.append(token[start:start + rng.randint(1, 40)])
            else:
                parts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20))))
        text = "".join(parts)
        for secrets in ([token], [token, "short-tok"], ["short-tok"], []):
            full = _scrub_all(text, secrets_of(secrets)) if secrets_of(secrets) else text
            assert scrub(text, secrets) == full, (text, secrets)


def test_the_bus_summary_is_bounded_and_names_the_job():
    _, data = saltsupport.bus_event("p", "d", "highstate-update", {
        "msg": "m", "minion": "m",
        "result": {"ret": dict(fleet_state(i, changed=True) for i in range(50)),
                   "retcode": 0, "jid": "123"}})
    summary = data["result"]
    assert summary["jid"] == "123" and summary["truncated"] is True
    assert len(json.dumps(summary)) <= 2048


# --- salt-run: progress as plain lines -----------------------------------------------

def load(path: str, name: str, **dunders):
    spec = importlib.util.spec_from_file_location(name, REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for key, value in dunders.items():
        setattr(module, key, value)
    return module


def test_the_progress_outputter_prints_the_line_and_nothing_else():
    nested = []
    outputter = load("_output/spirodeploy_progress.py", "spirodeploy_progress_test",
                     __salt__={"nested": lambda data, **kw: nested.append(data) or "NESTED"})
    event = {"message": "== web1: 3 ok, 0 changed, 0 failed ==", "_stamp": "2026-11-29",
             "outputter": "spirodeploy_progress"}
    assert outputter.output({"suffix": "progress", "event": event}) == event["message"]
    assert outputter.output({"result": True}) == "NESTED" and nested == [{"result": True}]


def test_the_runner_names_the_outputter_in_its_progress_events():
    fired = []

    class JidEvent:
        def fire_event(self, data, suffix):
            fired.append((suffix, data))

    runner = load("_runners/spirodeploy_mod.py", "spirodeploy_runner_test", __jid_event__=JidEvent())
    runner._progress("Deploying bundle")
    assert fired == [("progress", {"message": "Deploying bundle",
                                   "outputter": "spirodeploy_progress"})]


def test_the_outputter_is_found_by_salt_through_the_entry_point():
    assert saltloader.outputter_dirs() == [str(REPO / "_output")]
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert 'outputter_dirs = "spirodeploy.saltloader:outputter_dirs"' in pyproject
    assert '"spirodeploy.salt_output": "_output"' in (REPO / "setup.py").read_text()


def test_every_12_character_piece_of_a_secret_holds_a_searched_slice():
    # The quick check finds a piece only through a slice it holds whole.
    import random
    import string

    from spirodeploy.sanitize import _slice_starts

    rng = random.Random(7)
    for length in [*range(12, 64), 174, 400]:
        for alphabet in (string.ascii_letters + string.digits, "abc", "ABC"):
            secret = "".join(rng.choice(alphabet) for _ in range(length))
            starts = _slice_starts(secret)
            assert all(0 <= start <= length - 6 for start in starts)
            for piece_start in range(length - 11):
                assert any(piece_start <= start <= piece_start + 6 for start in starts), \
                    (secret, piece_start, starts)
