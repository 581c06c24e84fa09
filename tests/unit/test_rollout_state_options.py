"""``spirodeploy.deployed`` with ``batch``/``canary`` honours ``compress`` and
``rollback_on_failure``: the upload is compressed when asked, and the two failure
switches given against each other fail the state before anything is built or uploaded
(see tests/unit/test_rollout_state.py for the rest)."""

from __future__ import annotations

import pytest

from spirodeploy.compress import GZIP_HEADER
from tests.fakeserver import uploads
from tests.rollout_support import state_loader_modules, upload_only
from tests.saltloader_support import load_salt_file
from tests.support import make_token

spiromod = load_salt_file("modules", "salt_ext_spirodeploy_module_rollout_state_options")
spirostates = load_salt_file("states", "salt_ext_spirodeploy_state_rollout_options")

TOKEN = make_token()

# On the master the state fires straight onto the bus; ``fired`` keeps it off the real one.
pytestmark = pytest.mark.usefixtures("fired")


@pytest.fixture
def configure_loader_modules(fake_server, bus, fileserver, orchestration_opts, runners):
    return state_loader_modules(spiromod, spirostates, fake_server.url, TOKEN,
                                orchestration_opts, bus, fileserver, runners)


@pytest.mark.parametrize("compress", [True, "gzip"])
def test_staged_state_compresses_its_upload(project, fake_server, runners, compress):
    upload_only(fake_server)
    ret = spirostates.deployed("proj/prod", root=str(project), batch=1, compress=compress)
    assert ret["result"] is True, ret
    (upload,) = uploads(fake_server)
    assert upload.bundle.startswith(GZIP_HEADER) and "highstate" not in upload.fields
    assert ret["changes"]["rollout"]["done"] == ["m1", "m2"]


@pytest.mark.parametrize("switches, message", [
    ({"on_batch_failure": "stop", "rollback_on_failure": True},
     "on_batch_failure=stop and rollback_on_failure=True contradict each other"),
    ({"on_batch_failure": "rollback", "rollback_on_failure": False},
     "on_batch_failure=rollback and rollback_on_failure=False contradict each other"),
    ({"on_batch_failure": "stop", "rollback_on_failure": "maybe"},
     "rollback_on_failure must be true or false"),
])
def test_contradicting_switches_fail_before_the_upload(project, fake_server, runners,
                                                       switches, message):
    ret = spirostates.deployed("proj/prod", root=str(project), batch=1, **switches)
    assert ret["result"] is False and message in ret["comment"], ret
    assert "\n" not in ret["comment"]
    assert uploads(fake_server) == [] and runners.calls == []


@pytest.mark.parametrize("switches", [
    {"rollback_on_failure": True},
    {"on_batch_failure": "rollback", "rollback_on_failure": True},
    {"on_batch_failure": "rollback"},
])
def test_every_way_of_asking_for_a_rollback_reaches_the_runner(project, fake_server,
                                                               runners, switches):
    upload_only(fake_server)
    spirostates.deployed("proj/prod", root=str(project), batch=1, **switches)
    assert runners.calls[-1][2] == {"batch": 1, "on_batch_failure": "rollback"}


def test_stop_is_passed_on_as_given(project, fake_server, runners):
    upload_only(fake_server)
    spirostates.deployed("proj/prod", root=str(project), batch=1, on_batch_failure="stop",
                         rollback_on_failure=False)
    assert runners.calls[-1][2] == {"batch": 1, "on_batch_failure": "stop"}
