"""History, rollback and promotion through the execution module, with fake loader
dunders (as tests/unit/test_salt_module.py) and the fake SpiroFS server."""

from __future__ import annotations

import io
import json

import pytest

from spirodeploy.history import HistoryStore
from spirodeploy.manifest import read_manifest
from tests.fakeserver import highstate_events
from tests.saltloader_support import Bus, Fileserver, load_salt_file
from tests.support import make_token

spiromod = load_salt_file("modules", "salt_ext_spirodeploy_module_history")
TOKEN = make_token()
FAILED_RET = {"test_|-broken_|-broken_|-fail_without_changes": {
    "result": False, "changes": {}, "comment": "fails", "__run_num__": 0, "__id__": "broken",
    "name": "broken"}}


@pytest.fixture
def fileserver():
    return Fileserver()


@pytest.fixture
def configure_loader_modules(fake_server, fileserver, tmp_path):
    config = {"spirodeploy:server": fake_server.url, "spirodeploy:token": TOKEN,
              "spirodeploy:insecure": True}
    return {spiromod: {
        "__opts__": {"id": "build-1", "__role": "minion", "file_client": "remote",
                     "cachedir": str(tmp_path / "cache"), "test": False},
        "__salt__": {"config.get": lambda key, default="": config.get(key, default),
                     "event.send": Bus().send, "cp.list_master": fileserver.list_master,
                     "cp.get_file_str": fileserver.get_file_str},
        "__context__": {},
    }}


def serve(fileserver, fake_server, index=-1, saltenv="proj/prod"):
    """Make the fake fileserver serve the manifest of the bundle the server got."""
    manifest = read_manifest(io.BytesIO(fake_server.received[index].bundle))
    fileserver.envs[saltenv] = {".spirodeploy.json": json.dumps(manifest)}
    return manifest


def test_deploys_are_recorded_in_the_cachedir_and_listed(project, fake_server, fileserver,
                                                         tmp_path):
    first = spiromod.deploy("proj", "prod", root=str(project))
    assert first["result"] is True and first["history_entry"] == 1
    (project / "_salt" / "hello.sls").write_text("hello:\n  test.nop\n")
    assert spiromod.deploy("proj", "prod", root=str(project))["history_entry"] == 2
    store = HistoryStore(str(tmp_path / "cache" / "spirodeploy-history"))
    assert [e["id"] for e in store.entries("proj", "prod")] == [1, 2]

    # The fileserver still serves the first bundle: that entry is marked served.
    serve(fileserver, fake_server, index=0)
    listing = spiromod.history("proj", "prod")
    assert listing["result"] is True and listing["served"] == 1
    assert [(e["id"], e["served"]) for e in listing["entries"]] == [(2, False), (1, True)]
    assert "served .spirodeploy.json" in listing["served_from"]

    empty = spiromod.history("proj", "staging")
    assert empty["result"] is False and "no deploys of proj/staging" in empty["error"]
    assert spiromod.__context__["retcode"] == 2


def test_rollback_refuses_when_someone_else_deployed_in_between(project, fake_server,
                                                                fileserver):
    assert spiromod.deploy("proj", "prod", root=str(project))["result"] is True
    good = fake_server.received[0].bundle
    (project / "_salt" / "hello.sls").write_text("hello:\n  test.nop\n")
    assert spiromod.deploy("proj", "prod", root=str(project))["result"] is True
    # Someone else deployed other content since.
    fileserver.envs["proj/prod"] = {".spirodeploy.json": json.dumps(
        {"digest": "f" * 64, "files": []})}
    ret = spiromod.rollback("proj", "prod")
    assert ret["result"] is False and "someone else deployed in between" in ret["error"]
    assert spiromod.__context__["retcode"] == 2
    assert len(fake_server.received) == 2  # nothing deployed

    ret = spiromod.rollback("proj", "prod", force=True)
    assert ret["result"] is True and ret["rolled_back_to"].startswith("proj/prod#1 ")
    assert fake_server.received[-1].bundle == good

    # Served as logged: no force needed.
    spiromod.__context__.clear()
    serve(fileserver, fake_server)
    ret = spiromod.rollback("proj", "prod", to=2)
    assert ret["result"] is True, ret
    assert ret["history_entry"] == 4


def test_deploy_with_rollback_on_failure(project, fake_server):
    assert spiromod.deploy("proj", "prod", root=str(project))["result"] is True
    good = fake_server.received[0].bundle
    (project / "_salt" / "hello.sls").write_text("hello:\n  test.nop\n")
    fake_server.then(chunks=highstate_events(ret=FAILED_RET, retcode=2))
    ret = spiromod.deploy("proj", "prod", root=str(project), rollback_on_failure="yes")
    assert ret["result"] is False and ret["exit_code"] == 1
    assert spiromod.__context__["retcode"] == 1
    assert ret["rollback"]["result"] is True and ret["rollback"]["to"].startswith("proj/prod#1")
    assert "rolled back to proj/prod#1" in ret["comment"]
    assert fake_server.received[-1].bundle == good and len(fake_server.received) == 3


def test_promote_checks_the_source_digest(project, fake_server, fileserver):
    assert spiromod.deploy("proj", "staging", root=str(project))["result"] is True
    serve(fileserver, fake_server, saltenv="proj/staging")
    ret = spiromod.promote("proj", "staging", "prod")
    assert ret["result"] is True, ret
    assert fake_server.received[1].bundle == fake_server.received[0].bundle
    assert fake_server.received[1].fields["deployment"] == "prod"

    fileserver.envs["proj/staging"] = {".spirodeploy.json": json.dumps(
        {"digest": "e" * 64, "files": []})}
    ret = spiromod.promote("proj", "staging", "prod")
    assert ret["result"] is False and "someone else deployed" in ret["error"]
    assert len(fake_server.received) == 2
