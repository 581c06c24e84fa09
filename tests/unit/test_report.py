"""Folding real SpiroFS events and Salt highstate returns into a DeployReport."""

from __future__ import annotations

import json

import pytest

from spirodeploy.errors import ExitCode, StreamCut
from spirodeploy.report import DeployReport

OK_STATE = {"file_|-hello_|-/srv/hello_|-managed": {
    "result": True, "changes": {}, "comment": "File is in the correct state",
    "__run_num__": 1, "__id__": "hello", "name": "/srv/hello"}}
CHANGED_STATE = {"pkg_|-nginx_|-nginx_|-installed": {
    "result": True, "changes": {"nginx": {"new": "1.2", "old": ""}},
    "comment": "1 package installed", "__run_num__": 0, "__id__": "nginx", "name": "nginx"}}
FAILED_STATE = {"cmd_|-broken_|-false_|-run": {
    "result": False, "changes": {"retcode": 1}, "comment": 'Command "false" run',
    "__run_num__": 2, "__id__": "broken", "name": "false"}}


def fold(events, highstate=True) -> DeployReport:
    report = DeployReport("proj", "prod", highstate=highstate)
    for event, data in events:
        report.add(event, data)
    report.end_of_stream()
    return report


def start(*minions):
    return [("deploy-bundle", {"msg": "Deploying bundle"}),
            ("highstate-calc", {"msg": "Calculating minions to highstate"}),
            ("highstate-start", {"msg": "Highstating", "minions": list(minions)})]


def update(minion, result):
    return ("highstate-update", {"msg": f"Minion {minion} finished", "minion": minion,
                                 "result": result})


FINISH = ("highstate-finish", {"msg": "Highstate complete"})


def test_successful_highstate_counts_states():
    report = fold(start("web1") + [
        update("web1", {"ret": {**OK_STATE, **CHANGED_STATE}, "retcode": 0, "jid": "1"}), FINISH])
    assert report.succeeded and report.exit_code == ExitCode.OK
    web1 = report.minions["web1"]
    assert web1.counts == {"ok": 1, "changed": 1, "failed": 0}
    assert [s.id for s in web1.changed_states] == ["nginx"] and not web1.failed_states
    assert report.summary() == "Deployed proj/prod: 1 of 1 minions reported"


def test_failed_state_fails_the_deploy_and_names_it():
    report = fold(start("web1", "web2") + [
        update("web1", {"ret": {**OK_STATE, **FAILED_STATE}, "retcode": 2}),
        update("web2", {"ret": OK_STATE, "retcode": 0}), FINISH])
    assert report.exit_code == ExitCode.DEPLOY_FAILED
    assert report.failed == ["web1"]
    failed = report.to_dict()["results"]["web1"]["failed"]
    assert failed == [{"id": "broken", "name": "false", "function": "cmd.run", "result": False,
                       "comment": 'Command "false" run', "changed": True,
                       "duration_ms": None, "sls": None}]
    assert "failed: web1" in report.summary()


def test_render_errors_as_a_list_of_strings():
    errors = ["Rendering SLS 'proj/prod:hello' failed: mapping values are not allowed here"]
    report = fold(start("web1") + [update("web1", {"ret": errors, "retcode": 1}), FINISH])
    assert report.failed == ["web1"]
    assert report.minions["web1"].errors == errors


def test_plain_string_return_and_nonzero_retcode_alone():
    report = fold(start("a", "b") + [
        update("a", {"ret": "No Top file or master_tops data matches found.", "retcode": 2}),
        update("b", {"ret": OK_STATE, "retcode": 1}), FINISH])
    assert report.failed == ["a", "b"]


def test_failed_true_is_a_minion_that_did_not_answer():
    report = fold(start("web1") + [update("web1", {"failed": True}), FINISH])
    assert report.minions["web1"].no_response
    assert report.failed == ["web1"] and report.exit_code == ExitCode.DEPLOY_FAILED


def test_minion_that_never_reports():
    report = fold(start("web1", "web2") + [update("web1", {"ret": OK_STATE, "retcode": 0}),
                                           FINISH])
    assert report.unreported == ["web2"]
    assert report.exit_code == ExitCode.UNREPORTED
    assert "1 of 2 minions reported" in report.summary()
    assert "never reported: web2" in report.summary()


def test_server_exception_event():
    report = fold([("deploy-bundle", {"msg": "Deploying bundle"}),
                   ("exception", {"msg": "TypeError: 'NoneType' object is not subscriptable\n"})])
    assert report.exit_code == ExitCode.DEPLOY_FAILED
    assert report.exception.startswith("TypeError")
    assert "TypeError" in report.summary()


def test_no_highstate_finishes_at_clean_end_of_stream():
    report = fold([("deploy-bundle", {"msg": "Deploying bundle"})], highstate=False)
    assert report.succeeded and report.deployed and report.finished


def test_highstate_without_finish_is_not_success():
    report = fold(start("web1"))
    assert not report.finished and report.exit_code == ExitCode.STREAM


def test_no_affected_minions():
    report = fold([("deploy-bundle", {"msg": "Deploying bundle"}),
                   ("highstate-calc", {"msg": "Calculating"}),
                   ("highstate-start", {"msg": "No minions to highstate", "minions": []}),
                   FINISH])
    assert report.succeeded and report.summary().endswith("0 of 0 minions reported")


def test_client_side_failure_keeps_events_and_says_what_is_known():
    report = fold(start("web1"))
    cut = StreamCut("the connection closed")
    report.fail(cut, cut.exit_code, cut.server_has_bundle)
    data = report.to_dict()
    assert data["exit_code"] == ExitCode.STREAM and data["server_has_bundle"] is True
    assert [e["event"] for e in data["events"]] == ["deploy-bundle", "highstate-calc",
                                                    "highstate-start"]


def test_unknown_event_is_kept_not_fatal():
    report = fold(start("w") + [("minion-progress", {"msg": "50%"}),
                                update("w", {"ret": OK_STATE, "retcode": 0}), FINISH])
    assert report.succeeded and ("minion-progress", {"msg": "50%"}) in report.events


def test_to_dict_is_json_serialisable():
    report = fold(start("w") + [update("w", {"ret": {**FAILED_STATE}, "retcode": 2}), FINISH])
    assert json.loads(json.dumps(report.to_dict()))["minions"]["failed"] == ["w"]


# --- the report counts as success only what it saw succeed (issue 11, item 8) ---

def test_a_later_success_cannot_overwrite_a_failure():
    report = fold(start("web1") + [update("web1", {"ret": FAILED_STATE, "retcode": 2}),
                                   update("web1", {"ret": OK_STATE, "retcode": 0}), FINISH])
    assert report.failed == ["web1"] and report.exit_code == ExitCode.DEPLOY_FAILED
    assert report.minions["web1"].failed_states[0].id == "broken"


def test_a_later_failure_still_fails_a_success():
    report = fold(start("web1") + [update("web1", {"ret": OK_STATE, "retcode": 0}),
                                   update("web1", {"ret": FAILED_STATE, "retcode": 2}), FINISH])
    assert report.failed == ["web1"] and report.exit_code == ExitCode.DEPLOY_FAILED


def test_a_second_highstate_start_only_adds_expected_minions():
    report = fold(start("web1", "web2") + [
        ("highstate-start", {"msg": "Highstating 1 minions: web1", "minions": ["web1"]}),
        update("web1", {"ret": OK_STATE, "retcode": 0}), FINISH])
    assert report.minions_expected == ["web1", "web2"]
    assert report.unreported == ["web2"] and report.exit_code == ExitCode.UNREPORTED


def test_minions_given_as_a_string_are_one_minion_not_its_letters():
    report = fold([("deploy-bundle", {"msg": "Deploying"}),
                   ("highstate-start", {"msg": "Highstating", "minions": "web1"}), FINISH])
    assert report.minions_expected == ["web1"] and report.exit_code == ExitCode.UNREPORTED


def test_a_stream_without_deploy_bundle_is_not_a_success():
    report = fold([FINISH])
    assert not report.succeeded and report.exit_code == ExitCode.STREAM
    assert "never said it was deploying" in report.summary()
    # Nor with minions that all reported, nor when the announcement comes last.
    report = fold(start("web1")[1:] + [update("web1", {"ret": OK_STATE, "retcode": 0}), FINISH,
                                       ("deploy-bundle", {"msg": "Deploying bundle"})])
    assert not report.finished and report.exit_code == ExitCode.STREAM


def test_without_highstate_a_clean_end_needs_deploy_bundle():
    report = fold([], highstate=False)
    assert not report.succeeded and report.exit_code == ExitCode.STREAM


@pytest.mark.parametrize("result", [
    {},                                  # result: {} (no ret at all)
    {"ret": None, "retcode": 0},         # ret: null
    {"ret": {}, "retcode": 0},           # ret: {} (no state ran)
    {"ret": [], "retcode": 0},
    {"ret": "", "retcode": 0},
    None,
], ids=["result-empty", "ret-null", "ret-empty-dict", "ret-empty-list", "ret-empty-str",
        "result-null"])
def test_an_empty_return_is_not_a_success(result):
    report = fold(start("web1") + [update("web1", result), FINISH])
    assert report.failed == ["web1"] and report.exit_code == ExitCode.DEPLOY_FAILED
    assert not report.minions["web1"].succeeded


@pytest.mark.parametrize("retcode", ["2", "x", 2.0, [0], True])
def test_a_retcode_that_is_not_the_integer_0_fails(retcode):
    report = fold(start("web1") + [update("web1", {"ret": OK_STATE, "retcode": retcode}),
                                   FINISH])
    assert report.failed == ["web1"] and report.exit_code == ExitCode.DEPLOY_FAILED


def test_a_string_retcode_is_read_as_its_number():
    report = fold(start("web1") + [update("web1", {"ret": OK_STATE, "retcode": "2"}), FINISH])
    assert report.minions["web1"].retcode == 2


@pytest.mark.parametrize("value", ["False", "True", 1, 0, "", [], {"x": 1}, "missing"])
def test_a_state_result_that_is_not_true_or_none_fails(value):
    state = dict(OK_STATE["file_|-hello_|-/srv/hello_|-managed"])
    if value == "missing":
        del state["result"]
    else:
        state["result"] = value
    report = fold(start("web1") + [update("web1", {"ret": {"file_|-hello_|-/srv/hello_|-managed":
                                                           state}, "retcode": 0}), FINISH])
    assert report.failed == ["web1"] and report.exit_code == ExitCode.DEPLOY_FAILED
    assert report.minions["web1"].failed_states[0].id == "hello"


def test_a_none_state_result_is_not_a_failure():
    # Salt's "would change" (test runs): its own retcode does not fail it.
    state = dict(OK_STATE["file_|-hello_|-/srv/hello_|-managed"], result=None)
    report = fold(start("web1") + [update("web1", {"ret": {"k_|-hello_|-x_|-f": state},
                                                   "retcode": 0}), FINISH])
    assert report.succeeded


def test_a_stream_that_ends_before_highstate_finish_says_so():
    report = fold(start("web1") + [update("web1", {"ret": OK_STATE, "retcode": 0})])
    assert report.exit_code == ExitCode.STREAM
    assert "never said the highstate finished" in report.summary()
