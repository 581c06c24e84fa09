"""JUnit XML (``--junit``): the mapping, validity against the schema Jenkins'
xUnit plugin uses, read back by a real consumer (junitparser), escaping, scale."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from pathlib import Path

import junitparser
import pytest
import xmlschema

from spirodeploy import junit
from spirodeploy.report import DeployReport
from tests.report_events import (
    BUNDLE,
    HOSTILE_SHOWN,
    big_fleet,
    deploy,
    mixed_fleet,
    state,
    update,
)

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schemas" / "junit.xsd"


@pytest.fixture(scope="module")
def schema() -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(str(SCHEMA_FILE))


def read_back(tmp_path: Path, data: bytes) -> junitparser.TestSuite:
    """Write ``data`` and read it as a CI system would: one suite."""
    path = tmp_path / "junit.xml"
    path.write_bytes(data)
    xml = junitparser.JUnitXml.fromfile(str(path))
    suites = list(xml) if isinstance(xml, junitparser.JUnitXml) else [xml]
    assert len(suites) == 1
    return suites[0]


def cases(suite: junitparser.TestSuite) -> dict[tuple[str, str], junitparser.TestCase]:
    return {(case.classname, case.name): case for case in suite}


def outcome(case: junitparser.TestCase) -> tuple[str, str, str]:
    """("failure" | "error" | "passed", message, text) of a test case."""
    for result in case.result:
        kind = "failure" if isinstance(result, junitparser.Failure) else (
            "error" if isinstance(result, junitparser.Error) else "other")
        return kind, result.message, result.text
    return "passed", "", ""


def test_the_mapping_of_a_mixed_deploy(schema, tmp_path):
    data = junit.render(mixed_fleet())
    schema.validate(data.decode("utf-8"))
    suite = read_back(tmp_path, data)
    assert suite.name == "shop/prod"
    found = cases(suite)
    assert sorted(found) == sorted([
        ("shop/prod", "deploy"),
        ("web1", "migrate (cmd.run)"), ("web1", "config (file.managed)"),
        ("web1", "unchanged states (2)"),
        ("web2", "unchanged states (2)"),
        ("db1", "highstate"), ("cache1", "highstate"), ("gone1", "highstate"),
    ])
    # A failed state is a failure carrying its comment; its type is the function.
    kind, message, text = outcome(found[("web1", "migrate (cmd.run)")])
    assert kind == "failure" and message.startswith("Command failed: ")
    assert f"Command failed: {HOSTILE_SHOWN}" in text and "sls: app.db" in text
    assert found[("web1", "migrate (cmd.run)")].result[0].type == "cmd.run"
    # Changed and folded unchanged states pass.
    assert outcome(found[("web1", "config (file.managed)")])[0] == "passed"
    assert outcome(found[("web2", "unchanged states (2)")])[0] == "passed"
    # Render errors, no answer and never reported are errors.
    assert outcome(found[("db1", "highstate")])[:2] == (
        "error", "Rendering SLS 'prod:db' failed: mapping values are not allowed here")
    assert outcome(found[("cache1", "highstate")])[:2] == ("error", "the minion did not answer")
    assert outcome(found[("gone1", "highstate")])[:2] == ("error", "the minion never reported")
    assert outcome(found[("shop/prod", "deploy")])[0] == "passed"
    assert (suite.tests, suite.failures, suite.errors) == (8, 1, 3)


def test_state_durations_become_test_times(tmp_path):
    suite = read_back(tmp_path, junit.render(mixed_fleet()))
    found = cases(suite)
    assert found[("web1", "migrate (cmd.run)")].time == pytest.approx(2.5, abs=1e-3)
    assert found[("web1", "config (file.managed)")].time == pytest.approx(0.03025, abs=1e-3)
    # The folded case takes the time of the states it folds.
    assert found[("web1", "unchanged states (2)")].time == pytest.approx(0.1305, abs=1e-3)
    assert found[("web2", "unchanged states (2)")].time == pytest.approx(0.1055, abs=1e-3)
    assert suite.time == pytest.approx(2.5 + 0.03025 + 0.1305 + 0.1055, abs=2e-3)


def test_properties_carry_sha256_digest_and_gitcommit(tmp_path):
    suite = read_back(tmp_path, junit.render(mixed_fleet()))
    props = {prop.name: prop.value for prop in suite.properties()}
    assert props["bundle.sha256"] == BUNDLE["sha256"]
    assert props["bundle.digest"] == BUNDLE["digest"]
    assert props["bundle.gitcommit"] == BUNDLE["gitcommit"]
    assert props["project"] == "shop" and props["deployment"] == "prod"
    assert props["exit_code"] == "1"


def test_server_exception_and_client_errors_are_errors_of_the_deploy(schema, tmp_path):
    report = DeployReport(project="shop", deployment="prod")
    report.add("deploy-bundle", {"msg": "Deploying bundle"})
    report.add("exception", {"msg": "Traceback (most recent call last):\n  ...\n"
                                    "OSError: [Errno 28] No space left on device"})
    data = junit.render(report)
    schema.validate(data.decode())
    kind, message, text = outcome(cases(read_back(tmp_path, data))[("shop/prod", "deploy")])
    assert kind == "error" and message == "the server raised an exception"
    assert text.endswith("No space left on device")

    cut = deploy([update("web1", [state("a")])], finish=False)
    from spirodeploy.errors import StreamCut
    cut.fail(StreamCut("the connection closed mid-stream"), 6, True)
    data = junit.render(cut)
    schema.validate(data.decode())
    kind, message, _ = outcome(cases(read_back(tmp_path, data))[("shop/prod", "deploy")])
    assert (kind, message) == ("error", "the connection closed mid-stream")


def test_hostile_text_is_escaped_and_invalid_characters_made_visible(schema, tmp_path):
    data = junit.render(mixed_fleet())
    # Well-formed XML 1.0 (no NUL, ESC or lone surrogate got through) ...
    root = ET.fromstring(data)
    failure = root.find(".//testcase[@name='migrate (cmd.run)']/failure")
    # ... that says what the minion sent, as text.
    assert failure.text.endswith(f"Command failed: {HOSTILE_SHOWN}")
    assert failure.get("message") == f"Command failed: {HOSTILE_SHOWN}"
    assert b"<script>" not in data and b"<img" not in data
    schema.validate(data.decode())


def test_hostile_minion_ids_and_newlines_in_attributes_survive(schema, tmp_path):
    minion = 'evil"><x a=\'1\'>\x07&amp;'
    report = deploy([update(minion, [state("s\nt", result=False, comment="line 1\r\nline 2")],
                            retcode=2)])
    data = junit.render(report)
    schema.validate(data.decode())
    found = cases(read_back(tmp_path, data))
    case = found[('evil"><x a=\'1\'>\\x07&amp;', "s\nt (test.succeed_without_changes)")]
    kind, message, text = outcome(case)
    assert (kind, message) == ("failure", "line 1")
    assert text.endswith("line 1\nline 2")


def test_the_token_is_masked(tmp_path):
    token = "tok-" + "s3cr3t" * 10
    report = deploy([update("web1", [state("a", result=False, comment=f"Bearer {token} refused")],
                            retcode=2)])
    data = junit.render(report, secrets=[token])
    assert token.encode() not in data and token[4:20].encode() not in data
    assert b"Bearer *** refused" in data


def test_a_minion_failed_only_by_retcode_is_a_failure(tmp_path):
    report = deploy([update("web1", [state("a")], retcode=1)])
    found = cases(read_back(tmp_path, junit.render(report)))
    assert outcome(found[("web1", "highstate")])[:2] == (
        "failure", "the highstate returned retcode 1")


def test_no_highstate_deploy_is_one_passing_case(schema, tmp_path):
    report = DeployReport(project="shop", deployment="prod", highstate=False)
    report.add("deploy-bundle", {"msg": "Deploying bundle"})
    report.end_of_stream()
    data = junit.render(report)
    schema.validate(data.decode())
    suite = read_back(tmp_path, data)
    assert [(c.name, outcome(c)[0]) for c in suite] == [("deploy", "passed")]


def test_failed_states_past_what_the_report_keeps_are_folded(schema, tmp_path):
    report = deploy([update("web1", [state(f"bad{i:02d}", "cmd.run", result=False,
                                           comment=f"failure {i}", run_num=i)
                                     for i in range(40)], retcode=2)])
    data = junit.render(report)
    schema.validate(data.decode())
    suite = read_back(tmp_path, data)
    failures = [c for c in suite if outcome(c)[0] == "failure"]
    kept = [c for c in failures if c.name.startswith("bad")]
    folded = [c for c in failures if c.name.startswith("more failed states")]
    assert kept and len(folded) == 1
    assert len(kept) + int(folded[0].name.split("(")[1].rstrip(")")) == 40
    assert suite.failures == len(kept) + 1


def test_ten_thousand_minions_stay_proportionate(schema, tmp_path):
    report = big_fleet(10_000, states=50)
    started = time.perf_counter()
    data = junit.render(report)
    took = time.perf_counter() - started
    # One folded case per minion (plus the failed states), not 500,000 cases.
    suite = read_back(tmp_path, data)
    assert suite.tests == 1 + 10_000 + 100
    assert suite.failures == 100
    assert len(data) < 250 * 10_000, len(data)
    assert took < 10, took
    schema.validate(data.decode())
