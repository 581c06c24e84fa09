"""``spirodeploy.deployed`` with ``rollback_on_failure`` (loader dunders as in
tests/unit/test_salt_state.py, the fake server, the fake fileserver)."""

from __future__ import annotations

import pytest

from spirodeploy.history import HistoryStore
from tests.fakeserver import highstate_events
from tests.saltloader_support import Bus, load_salt_file, minion_salt
from tests.support import make_token

spiromod = load_salt_file("modules", "salt_ext_spirodeploy_module_history_state")
spirostates = load_salt_file("states", "salt_ext_spirodeploy_state_history")
TOKEN = make_token()
FAILED_RET = {"test_|-broken_|-broken_|-fail_without_changes": {
    "result": False, "changes": {}, "comment": "fails", "__run_num__": 0, "__id__": "broken",
    "name": "broken"}}


@pytest.fixture
def configure_loader_modules(fake_server, fileserver, tmp_path):
    opts = {"id": "build-1", "__role": "minion", "file_client": "remote",
            "cachedir": str(tmp_path / "cache"), "test": False}
    salt = minion_salt(spiromod, fake_server.url, TOKEN, Bus(), fileserver)
    return {spiromod: {"__opts__": opts, "__salt__": salt, "__context__": {}},
            spirostates: {"__opts__": opts, "__salt__": salt, "__context__": {}}}


def test_deployed_rolls_back_a_failed_highstate(project, fake_server, tmp_path):
    ok = spirostates.deployed("proj/prod", root=str(project))
    assert ok["result"] is True, ok
    good = fake_server.received[0].bundle
    (project / "_salt" / "hello.sls").write_text("hello:\n  test.nop\n")
    fake_server.then(chunks=highstate_events(ret=FAILED_RET, retcode=2))
    ret = spirostates.deployed("proj/prod", root=str(project), rollback_on_failure=True)
    assert ret["result"] is False
    assert "rolled back to proj/prod#1" in ret["comment"], ret["comment"]
    assert ret["changes"]["rollback"]["result"] is True
    assert len(fake_server.received) == 3 and fake_server.received[2].bundle == good
    store = HistoryStore(str(tmp_path / "cache" / "spirodeploy-history"))
    assert [(e["id"], e["exit_code"], e["rollback_of"]) for e in store.entries()] == [
        (1, 0, None), (2, 1, None), (3, 0, 2)]
