"""Staged rollouts: ``spirodeploy.rollout`` (options, plan, folding, stopping) and the
runner's ``rollout`` and ``deploy batch=/canary=`` with a fake ``LocalClient``."""

from __future__ import annotations

import json

import pytest

from spirodeploy import rollout
from spirodeploy.rollout import BatchSize, Canary, RolloutError, RolloutOptions
from tests.rollout_support import (
    BAD_STATE,
    OK_STATE,
    envelope,
    runner_loader_modules,
    upload_only,
)
from tests.saltloader_support import load_salt_file
from tests.support import make_token

TOKEN = make_token()


# --- options ---------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    (1, BatchSize(1)), ("10", BatchSize(10)), (" 3 ", BatchSize(3)), (2.0, BatchSize(2)),
    ("10%", BatchSize(10, percent=True)), ("100%", BatchSize(100, percent=True)),
    ("12.5%", BatchSize(12.5, percent=True)), (None, None), ("", None),
])
def test_parse_batch(value, expected):
    assert rollout.parse_batch(value) == expected


@pytest.mark.parametrize("value", [0, "0", -1, "-1", "200%", "0%", "abc", "10%%", "%", True,
                                   1.5, "1e3", [1]])
def test_parse_batch_refuses(value):
    with pytest.raises(RolloutError, match="batch"):
        rollout.parse_batch(value)


@pytest.mark.parametrize("spec, total, size", [
    (BatchSize(10, percent=True), 100, 10), (BatchSize(10, percent=True), 5, 1),
    (BatchSize(10, percent=True), 15, 1), (BatchSize(50, percent=True), 3, 1),
    (BatchSize(100, percent=True), 7, 7), (BatchSize(4), 2, 4),
])
def test_batch_size_rounds_like_salt(spec, total, size):
    assert spec.size(total) == size


@pytest.mark.parametrize("value, expected", [
    (2, Canary(count=2)), ("2", Canary(count=2)), ("web1", Canary(patterns=("web1",))),
    ("web1, web2", Canary(patterns=("web1", "web2"))), (["a", "b*"], Canary(patterns=("a", "b*"))),
    (None, None), ("", None), ([], None),
])
def test_parse_canary(value, expected):
    assert rollout.parse_canary(value) == expected


@pytest.mark.parametrize("value", [0, "0", -1, "-2", " , ", True, {"a": 1}])
def test_parse_canary_refuses(value):
    with pytest.raises(RolloutError, match="canary"):
        rollout.parse_canary(value)


def test_options_are_staged_only_when_given():
    assert not rollout.parse_options().staged
    assert rollout.parse_options(batch="1").staged and rollout.parse_options(canary=1).staged


# --- who, and the plan -------------------------------------------------------------

def test_affected_minions_are_those_whose_top_names_the_saltenv():
    tops = {"web2": {"base": ["a"], "p/prod": ["hello"]}, "web1": {"p/prod": ["hello"]},
            "db1": {"base": ["a"]}, "dead": False, "broken": ["Rendering SLS failed: p/prod"]}
    assert rollout.affected_minions(tops, "p/prod") == ["web1", "web2"]


def test_plan_canary_count_then_batches():
    options = RolloutOptions(BatchSize(2), Canary(count=1))
    assert rollout.plan(["m4", "m2", "m1", "m3", "m5"], options) == [
        ["m1"], ["m2", "m3"], ["m4", "m5"]]


def test_plan_canary_by_name_and_percent_batches():
    options = RolloutOptions(BatchSize(50, percent=True), Canary(patterns=("web3", "db*")))
    minions = ["web1", "web2", "web3", "db1"]
    # 50% of the 4 affected minions: 2 a batch.
    assert rollout.plan(minions, options) == [["db1", "web3"], ["web1", "web2"]]


def test_plan_without_batch_puts_the_rest_in_one_batch():
    assert rollout.plan(["c", "a", "b"], RolloutOptions(None, Canary(count=1))) == [
        ["a"], ["b", "c"]]
    assert rollout.plan(["a", "b"], RolloutOptions(BatchSize(1), None)) == [["a"], ["b"]]


def test_plan_refuses_a_canary_that_matches_no_affected_minion():
    with pytest.raises(RolloutError, match=r"canary nope\* matches none of the affected "
                                           r"minions \(m1, m2\)"):
        rollout.plan(["m1", "m2"], RolloutOptions(BatchSize(1), Canary(patterns=("nope*",))))


def test_plan_refuses_nobody():
    with pytest.raises(RolloutError, match="nobody to highstate"):
        rollout.plan([], RolloutOptions(BatchSize(1), None))


# --- folding returns ----------------------------------------------------------------

def test_minion_return_reads_the_raw_envelope():
    result, jid = rollout.minion_return("m1", envelope("m1", OK_STATE))
    assert result.succeeded and result.counts["changed"] == 1 and jid == "20260101000000000001"
    failed, _ = rollout.minion_return("m1", envelope("m1", BAD_STATE, retcode=2))
    assert not failed.succeeded and [s.id for s in failed.failed_states] == ["broken"]


def test_minion_return_retcode_alone_fails():
    result, _ = rollout.minion_return("m1", envelope("m1", OK_STATE, retcode=1))
    assert not result.succeeded and result.retcode == 1


def test_a_timed_out_minion_is_no_response():
    # salt.cli.batch yields {"data": {"id", "return": {}, "retcode": 0}} for a timeout.
    result, _ = rollout.minion_return("m1", {"data": {"id": "m1", "return": {}, "retcode": 0}})
    assert result.no_response and not result.succeeded
    result, _ = rollout.minion_return("m1", {"failed": True})
    assert result.no_response


def test_render_errors_fail():
    result, _ = rollout.minion_return("m1", envelope("m1", ["Rendering SLS 'x' failed"], 1))
    assert not result.succeeded and result.errors == ["Rendering SLS 'x' failed"]


def test_fold_batch_marks_silent_members_and_ignores_strays():
    seen = []
    results, jids = rollout.fold_batch(
        ["m1", "m2"], [("m1", envelope("m1", OK_STATE)), ("stray", envelope("stray", OK_STATE))],
        on_minion=lambda r: seen.append(r.minion))
    assert set(results) == {"m1", "m2"}
    assert results["m1"].succeeded and results["m2"].no_response
    assert seen == ["m1", "m2"] and jids == ["20260101000000000001"]
    assert not rollout.batch_failed({"m1": results["m1"]})
    assert rollout.batch_failed(results)


# --- running ---------------------------------------------------------------------------

class FakeBatches:
    """A ``run_batch`` that fails the given minions and records what it ran."""

    def __init__(self, fail=(), silent=(), raise_on=None):
        self.fail, self.silent, self.raise_on = set(fail), set(silent), raise_on
        self.ran = []

    def __call__(self, minions):
        self.ran.append(list(minions))
        for minion in minions:
            if minion == self.raise_on:
                raise RuntimeError("Salt request timed out")
            if minion in self.silent:
                continue
            bad = minion in self.fail
            yield minion, envelope(minion, BAD_STATE if bad else OK_STATE, 2 if bad else 0)


def test_everything_passes_every_minion_once():
    runner = FakeBatches()
    report = rollout.run_rollout("p", "prod", [["m1"], ["m2"], ["m3"]], runner, canary=True)
    assert runner.ran == [["m1"], ["m2"], ["m3"]]
    assert report.succeeded and report.done == ["m1", "m2", "m3"] and report.stopped_at is None
    data = report.to_dict()
    assert data["minions"] == {"done": ["m1", "m2", "m3"], "failed": [], "no_response": [],
                               "never_started": []}
    assert data["summary"] == "Rolled out p/prod: 3 of 3 minions done"
    assert data["exit_code"] == 0 and data["batches"][0] == {
        "minions": ["m1"], "canary": True, "started": True}


def test_a_failing_canary_stops_everything():
    runner = FakeBatches(fail=["m1"])
    hooked = []
    report = rollout.run_rollout("p", "prod", [["m1"], ["m2"], ["m3"]], runner, canary=True,
                                 on_failure=lambda r: hooked.append(r.failed) or "rolled back")
    assert runner.ran == [["m1"]]
    assert report.failed == ["m1"] and report.never_started == ["m2", "m3"]
    assert report.stopped_at == 0 and not report.succeeded and report.exit_code == 1
    assert hooked == [["m1"]] and report.on_failure == "rolled back"
    assert report.summary() == ("Rollout of p/prod stopped after canary batch (1 of 3) failed: "
                                "0 of 3 minions done; failed: m1; never started: m2, m3")


def test_a_failing_second_batch_means_the_third_never_starts():
    runner = FakeBatches(fail=["m3"])
    report = rollout.run_rollout("p", "prod", [["m1"], ["m2", "m3"], ["m4"]], runner)
    assert runner.ran == [["m1"], ["m2", "m3"]]
    assert report.done == ["m1", "m2"] and report.failed == ["m3"]
    assert report.never_started == ["m4"] and report.to_dict()["stopped_at_batch"] == 2
    assert report.to_dict()["batches"][2]["started"] is False


def test_a_silent_minion_fails_its_batch():
    runner = FakeBatches(silent=["m2"])
    report = rollout.run_rollout("p", "prod", [["m1", "m2"], ["m3"]], runner)
    assert runner.ran == [["m1", "m2"]]
    assert report.no_response == ["m2"] and report.failed == ["m2"]
    assert report.never_started == ["m3"]


def test_no_hook_call_when_all_pass():
    hooked = []
    rollout.run_rollout("p", "prod", [["m1"]], FakeBatches(), on_failure=hooked.append)
    assert hooked == []


def test_a_salt_error_stops_the_rollout_and_keeps_what_came_before():
    runner = FakeBatches(raise_on="m3")
    report = rollout.run_rollout("p", "prod", [["m1"], ["m2", "m3"], ["m4"]], runner)
    assert report.done == ["m1", "m2"] and report.failed == ["m3"]
    assert report.never_started == ["m4"]
    assert report.error == "batch 2 of 3: Salt request timed out"
    assert report.results["m3"].errors == [report.error]


# --- the runner, with a fake LocalClient ----------------------------------------------
# (``local``, ``salt_functions``, ``jid_event`` and ``fired`` are in tests/unit/conftest.py)

spirorunner = load_salt_file("runners", "salt_ext_spirodeploy_runner_rollout")


@pytest.fixture
def configure_loader_modules(fake_server, tmp_path, salt_functions, jid_event):
    return runner_loader_modules(spirorunner, fake_server.url, TOKEN, tmp_path, salt_functions,
                                 jid_event)


def test_runner_rollout_canary_then_batches(local, fired, jid_event):
    ret = spirorunner.rollout("p", "prod", batch=1, canary="m2")
    assert ret["retcode"] == 0 and ret["result"] is True
    assert local.highstated == ["m2", "m1", "m3"]
    for call in local.calls:
        assert call["fun"] == "state.highstate" and call["tgt_type"] == "list"
        assert call["kwarg"] == {"saltenv": "p/prod", "queue": True}
        assert call["raw"] is True and call["failhard"] is False
        assert call["batch"] == str(len(call["tgt"]))
    assert local.destroyed == 3
    assert ret["minions"]["done"] == ["m1", "m2", "m3"] and ret["jids"]
    messages = jid_event.messages
    assert messages[0] == "Rollout of p/prod: 3 minions in 3 batches, canary m2, batch 1"
    assert messages[1] == "Canary batch (1 of 3): m2"
    assert messages[2].startswith("== m2: 0 ok, 1 changed, 0 failed")
    assert messages[3] == "  changed  test.succeed_with_changes ok"
    assert "Batch 3 of 3: m3" in messages
    assert messages[-1] == "Rolled out p/prod: 3 of 3 minions done"
    tags = [tag for tag, _ in fired]
    assert tags == ["spirodeploy/p/prod/rollout-start",
                    *["spirodeploy/p/prod/rollout-batch", "spirodeploy/p/prod/rollout-minion"] * 3,
                    "spirodeploy/p/prod/rollout-finish"]
    minion_event = fired[2][1]
    assert minion_event["minion"] == "m2" and minion_event["outcome"] == "done"
    assert fired[-1][1]["done"] == ["m1", "m2", "m3"]


def test_runner_rollout_stops_after_a_failing_batch(local, fired, jid_event):
    local.fail = {"m2"}
    ret = spirorunner.rollout("p", "prod", batch=1, canary=1)
    assert local.highstated == ["m1", "m2"]
    assert ret["retcode"] == 1 and spirorunner.__context__["retcode"] == 1
    assert ret["minions"] == {"done": ["m1"], "failed": ["m2"], "no_response": [],
                              "never_started": ["m3"]}
    assert ret["stopped_at_batch"] == 2
    assert "  FAILED   test.fail_without_changes broken" in jid_event.messages
    assert fired[-1][1]["never_started"] == ["m3"]


def test_runner_rollout_uses_the_spirofs_runner_when_loaded(local, fired, salt_functions):
    asked = []
    salt_functions["spiro.query_highstate"] = lambda saltenv: asked.append(saltenv) or ["m3",
                                                                                         "m1"]
    ret = spirorunner.rollout("p", "prod", batch="50%")
    assert asked == ["p/prod"] and salt_functions.show_top_calls == 0
    assert ret["batches"] == [{"minions": ["m1"], "canary": False, "started": True},
                              {"minions": ["m3"], "canary": False, "started": True}]


def test_runner_rollout_test_mode_highstates_nobody(local, fired):
    ret = spirorunner.rollout("p", "prod", batch=2, canary="m3", test=True)
    assert ret["result"] is True and ret["batches"] == [["m3"], ["m1", "m2"]]
    assert local.calls == [] and fired == []


@pytest.mark.parametrize("kwargs, message", [
    ({"batch": 0}, "batch must be at least 1 minion"),
    ({"batch": -1}, "batch must be at least 1 minion"),
    ({"batch": "200%"}, "at most 100%"),
    ({"batch": "abc"}, "batch must be a number of minions (10) or a percentage (10%)"),
    ({"batch": 1, "canary": "web*"}, "canary web* matches none of the affected minions"),
    ({"batch": 1, "on_batch_failure": "explode"}, "on_batch_failure must be stop or rollback"),
    ({"batch": 1, "on_batch_failure": "rollback"}, "needs the spirodeploy.rollback runner"),
])
def test_runner_rollout_bad_input_highstates_nobody(local, fired, kwargs, message):
    ret = spirorunner.rollout("p", "prod", **kwargs)
    assert ret["result"] is False and ret["retcode"] == 2 and message in ret["error"]
    assert local.calls == []


def test_runner_rollout_rollback_hook(local, fired, salt_functions):
    local.fail = {"m1"}
    called = []
    salt_functions["spirodeploy.rollback"] = (
        lambda project, deployment, **kwargs: called.append((project, deployment, kwargs))
        or {"result": True, "summary": "rolled back"})
    ret = spirorunner.rollout("p", "prod", batch=1, on_batch_failure="rollback",
                              server="https://salt:4510/")
    assert called == [("p", "prod", {"server": "https://salt:4510/"})]
    assert ret["on_failure"] == {"result": True, "summary": "rolled back"}
    assert ret["minions"]["never_started"] == ["m2", "m3"]


def test_runner_deploy_with_batch_uploads_without_highstate_then_rolls_out(
        project, fake_server, local, fired, jid_event):
    upload_only(fake_server)
    ret = spirorunner.deploy("p", "prod", root=str(project), batch=1, canary=1)
    assert "highstate" not in fake_server.received[0].fields
    assert local.highstated == ["m1", "m2", "m3"]
    assert ret["retcode"] == 0 and ret["result"] is True
    assert [e["event"] for e in ret["events"]] == ["deploy-bundle"]
    assert ret["rollout"]["minions"]["done"] == ["m1", "m2", "m3"]
    assert ret["summary"].endswith("Rolled out p/prod: 3 of 3 minions done")
    assert TOKEN not in json.dumps(ret)


def test_runner_deploy_stops_at_a_failing_canary(project, fake_server, local, fired):
    upload_only(fake_server)
    local.fail = {"m1"}
    ret = spirorunner.deploy("p", "prod", root=str(project), batch=1, canary=1)
    assert local.highstated == ["m1"]
    assert ret["retcode"] == 1 and ret["result"] is False
    assert ret["rollout"]["minions"]["never_started"] == ["m2", "m3"]


@pytest.mark.parametrize("kwargs", [{"batch": 0}, {"batch": -1}, {"batch": "200%"},
                                    {"batch": "abc"}, {"batch": 1, "canary": "nope"},
                                    {"batch": 1, "highstate": False},
                                    {"on_batch_failure": "rollback"}])
def test_runner_deploy_bad_input_uploads_nothing(project, fake_server, local, fired, kwargs):
    ret = spirorunner.deploy("p", "prod", root=str(project), **kwargs)
    assert ret["retcode"] == 2 and ret["result"] is False and ret["error"]
    assert fake_server.received == [] and local.calls == []


def test_runner_deploy_canary_for_a_new_saltenv_is_checked_against_live_minions(
        project, fake_server, local, fired):
    upload_only(fake_server)
    # Nobody uses p/new yet (a first deploy): m3 answered, so it may be the canary.
    ret = spirorunner.deploy("p", "new", root=str(project), canary="m3")
    assert ret["retcode"] == 2 and "nobody to highstate" in ret["error"]
    assert len(fake_server.received) == 1 and local.calls == []
    bad = spirorunner.deploy("p", "new", root=str(project), canary="web9")
    assert "canary web9 matches none of the minions that answered" in bad["error"]
    assert len(fake_server.received) == 1


def test_runner_deploy_without_options_is_unchanged(project, fake_server, local, fired,
                                                    salt_functions):
    ret = spirorunner.deploy("p", "prod", root=str(project))
    assert fake_server.received[0].fields.get("highstate")
    assert "rollout" not in ret and local.calls == [] and salt_functions.show_top_calls == 0
