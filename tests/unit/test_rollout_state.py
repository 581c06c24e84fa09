"""``spirodeploy.deployed`` with ``batch``/``canary`` (a staged rollout in an
orchestration): it uploads with the highstate off and has the
``spirodeploy.rollout`` runner (through ``saltutil.runner``) check first and
highstate after."""

from __future__ import annotations

import json

import pytest

from tests.fakeserver import uploads
from tests.rollout_support import state_loader_modules, upload_only
from tests.saltloader_support import load_salt_file
from tests.support import make_token

spiromod = load_salt_file("modules", "salt_ext_spirodeploy_module_rollout_state")
spirostates = load_salt_file("states", "salt_ext_spirodeploy_state_rollout")

TOKEN = make_token()

# On the master the state fires straight onto the bus; ``fired`` keeps it off the real one.
pytestmark = pytest.mark.usefixtures("fired")


@pytest.fixture
def configure_loader_modules(fake_server, bus, fileserver, orchestration_opts, runners):
    return state_loader_modules(spiromod, spirostates, fake_server.url, TOKEN,
                                orchestration_opts, bus, fileserver, runners)


def test_staged_state_uploads_without_highstate_then_rolls_out(project, fake_server, runners):
    upload_only(fake_server)
    ret = spirostates.deployed("proj/prod", root=str(project), batch="50%", canary=1)
    assert ret["result"] is True, ret
    (upload,) = uploads(fake_server)
    assert "highstate" not in upload.fields
    assert runners.calls == [
        ("spirodeploy.rollout", ["proj", "prod"], {"batch": "50%", "canary": 1, "test": True}),
        ("spirodeploy.rollout", ["proj", "prod"], {"batch": "50%", "canary": 1}),
    ]
    assert ret["changes"]["rollout"]["done"] == ["m1", "m2"]
    assert ret["comment"].endswith("Rolled out proj/prod: 2 of 2 minions done")
    assert TOKEN not in json.dumps(ret)


def test_a_failed_rollout_fails_the_state_and_the_next_run_tries_again(project, fake_server,
                                                                       runners):
    runners.outcome = {"result": False, "summary": "Rollout of proj/prod stopped after "
                       "canary batch (1 of 2) failed", "stopped_at_batch": 1, "jids": ["1"],
                       "minions": {"done": [], "failed": ["m1"], "no_response": [],
                                   "never_started": ["m2"]}, "on_failure": None}
    upload_only(fake_server)
    ret = spirostates.deployed("proj/prod", root=str(project), batch=1, canary=1)
    assert ret["result"] is False
    assert ret["changes"]["rollout"]["never_started"] == ["m2"]
    assert ret["changes"]["rollout"]["stopped_at_batch"] == 1
    upload_only(fake_server)
    again = spirostates.deployed("proj/prod", root=str(project), batch=1, canary=1)
    assert "deployed again" in again["comment"]
    assert len(uploads(fake_server)) == 2


def test_rollback_on_failure_means_the_rollback_hook(project, fake_server, runners):
    upload_only(fake_server)
    spirostates.deployed("proj/prod", root=str(project), batch=1, rollback_on_failure=True)
    assert runners.calls[-1][2] == {"batch": 1, "on_batch_failure": "rollback"}


def test_bad_options_fail_before_the_upload(project, fake_server, runners):
    runners.check = {"result": False, "error": "batch must be at least 1 minion, not 0",
                     "retcode": 2}
    ret = spirostates.deployed("proj/prod", root=str(project), batch=0)
    assert ret["result"] is False and ret["comment"] == "batch must be at least 1 minion, not 0"
    assert uploads(fake_server) == [] and len(runners.calls) == 1


def test_staged_needs_the_master(project, fake_server, runners, orchestration_opts):
    orchestration_opts["__role"] = "minion"
    ret = spirostates.deployed("proj/prod", root=str(project), batch=1)
    assert ret["result"] is False and "in an orchestration" in ret["comment"]
    assert uploads(fake_server) == [] and runners.calls == []


def test_staged_with_highstate_off_is_refused(project, fake_server, runners):
    ret = spirostates.deployed("proj/prod", root=str(project), batch=1, highstate=False)
    assert ret["result"] is False and "cannot be used with highstate: False" in ret["comment"]
    assert uploads(fake_server) == []


def test_unchanged_content_rolls_out_nothing(project, fake_server, runners):
    upload_only(fake_server)
    spirostates.deployed("proj/prod", root=str(project), batch=1)
    calls = len(runners.calls)
    ret = spirostates.deployed("proj/prod", root=str(project), batch=1)
    assert ret["result"] is True and ret["changes"] == {}
    # Only the check ran again; nobody was highstated.
    assert len(runners.calls) == calls + 1 and runners.calls[-1][2].get("test") is True


def test_the_token_is_not_handed_to_the_runner(project, fake_server, runners):
    """The runner's arguments are stored in the master's job cache."""
    upload_only(fake_server)
    ret = spirostates.deployed("proj/prod", root=str(project), batch=1, token=TOKEN,
                               server=fake_server.url)
    assert ret["result"] is True, ret
    assert [call[2] for call in runners.calls] == [
        {"batch": 1, "server": fake_server.url, "test": True},
        {"batch": 1, "server": fake_server.url}]
