"""A staged rollout honours ``compress`` and ``rollback_on_failure``: the runner's
``deploy batch=/canary=`` compresses its upload when asked, rolls back on a failed batch
when either switch asks for it, and refuses the two switches given against each other
before anything is uploaded (see tests/unit/test_rollout.py for the rest)."""

from __future__ import annotations

import pytest

from spirodeploy import rollout
from spirodeploy.compress import GZIP_HEADER
from spirodeploy.errors import ConfigError
from spirodeploy.rollout import RolloutError
from tests.fakeserver import uploads
from tests.rollout_support import runner_loader_modules, upload_only
from tests.saltloader_support import load_salt_file
from tests.support import make_token

spirorunner = load_salt_file("runners", "salt_ext_spirodeploy_runner_rollout_failure_options")

TOKEN = make_token()


@pytest.fixture
def configure_loader_modules(fake_server, tmp_path, salt_functions, jid_event):
    return runner_loader_modules(spirorunner, fake_server.url, TOKEN, tmp_path, salt_functions,
                                 jid_event)


# --- the library ------------------------------------------------------------------

@pytest.mark.parametrize("on_batch_failure, rollback_on_failure, expected", [
    (None, None, "stop"), (None, False, "stop"), (None, "no", "stop"),
    (None, True, "rollback"), (None, "yes", "rollback"), (" Rollback ", None, "rollback"),
    ("stop", None, "stop"), ("STOP", False, "stop"), ("rollback", True, "rollback"),
    ("rollback", "true", "rollback"), ("", True, "rollback"), (None, "", "stop"),
])
def test_failure_action(on_batch_failure, rollback_on_failure, expected):
    assert rollout.failure_action(on_batch_failure, rollback_on_failure) == expected


@pytest.mark.parametrize("on_batch_failure, rollback_on_failure, message", [
    ("stop", True, "on_batch_failure=stop and rollback_on_failure=True contradict each "
                   "other; give one"),
    ("stop", "yes", "on_batch_failure=stop and rollback_on_failure=True contradict"),
    ("rollback", False, "on_batch_failure=rollback and rollback_on_failure=False contradict"),
    ("explode", None, "on_batch_failure must be stop or rollback, not 'explode'"),
])
def test_failure_action_refuses_contradictions(on_batch_failure, rollback_on_failure,
                                               message):
    with pytest.raises(RolloutError) as caught:
        rollout.failure_action(on_batch_failure, rollback_on_failure)
    assert message in caught.value.message and "\n" not in caught.value.message


def test_failure_action_refuses_a_switch_that_is_not_yes_or_no():
    with pytest.raises(ConfigError, match="rollback_on_failure must be true or false"):
        rollout.failure_action("stop", "maybe")


# --- the runner's staged deploy -----------------------------------------------------

@pytest.mark.parametrize("compress", [True, "gzip"])
def test_staged_deploy_compresses_its_upload(project, fake_server, local, fired, compress):
    upload_only(fake_server)
    ret = spirorunner.deploy("p", "prod", root=str(project), batch=1, canary=1,
                             compress=compress)
    assert ret["result"] is True and ret["retcode"] == 0, ret
    (upload,) = uploads(fake_server)
    assert upload.bundle.startswith(GZIP_HEADER)
    assert "highstate" not in upload.fields
    assert ret["bundle"]["compression"] == "gzip"
    assert local.highstated == ["m1", "m2", "m3"]


def test_staged_deploy_without_compress_uploads_a_plain_tar(project, fake_server, local,
                                                            fired):
    upload_only(fake_server)
    spirorunner.deploy("p", "prod", root=str(project), batch=1)
    (upload,) = uploads(fake_server)
    assert not upload.bundle.startswith(GZIP_HEADER)


@pytest.mark.parametrize("switches", [
    {"rollback_on_failure": True},
    {"rollback_on_failure": "yes", "on_batch_failure": "rollback"},
    {"on_batch_failure": "rollback"},
])
def test_staged_deploy_rolls_back_a_failed_batch(project, fake_server, local, fired,
                                                 salt_functions, switches):
    upload_only(fake_server)
    local.fail = {"m1"}
    called = []
    salt_functions["spirodeploy.rollback"] = (
        lambda project, deployment, **kwargs: called.append((project, deployment))
        or {"result": True, "summary": "rolled back"})
    ret = spirorunner.deploy("p", "prod", root=str(project), batch=1, **switches)
    assert called == [("p", "prod")]
    assert ret["rollout"]["on_failure"] == {"result": True, "summary": "rolled back"}
    assert ret["retcode"] == 1 and local.highstated == ["m1"]


@pytest.mark.parametrize("switches, message", [
    ({"on_batch_failure": "stop", "rollback_on_failure": True},
     "on_batch_failure=stop and rollback_on_failure=True contradict each other"),
    ({"on_batch_failure": "rollback", "rollback_on_failure": False},
     "on_batch_failure=rollback and rollback_on_failure=False contradict each other"),
    ({"on_batch_failure": "stop", "rollback_on_failure": "maybe"},
     "rollback_on_failure must be true or false"),
])
def test_staged_deploy_refuses_contradicting_switches_before_uploading(
        project, fake_server, local, fired, salt_functions, switches, message):
    salt_functions["spirodeploy.rollback"] = lambda *args, **kwargs: {"result": True}
    ret = spirorunner.deploy("p", "prod", root=str(project), batch=1, **switches)
    assert ret["result"] is False and ret["retcode"] == 2, ret
    assert message in ret["error"]
    assert fake_server.received == [] and local.calls == []


def test_unstaged_deploy_keeps_rollback_on_failure_off_by_default(project, fake_server,
                                                                  local, fired):
    ret = spirorunner.deploy("p", "prod", root=str(project))
    assert ret["result"] is True and "rollback" not in ret and local.calls == []
