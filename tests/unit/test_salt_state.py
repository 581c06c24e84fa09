"""The ``spirodeploy.deployed`` state (_states/spirodeploy.py), with loader dunders
from ``configure_loader_modules``: the execution module provides
``spirodeploy.status``, and a fake fileserver serves, like SpiroFS does, the
last bundle the fake server received."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from spirodeploy import state as spirostate
from tests.conftest import make_token
from tests.fakeserver import highstate_events, sse
from tests.unit.test_salt_module import Bus, Fileserver, load_salt_file

spiromod = load_salt_file("modules", "salt_ext_spirodeploy_module_for_states")
spirostates = load_salt_file("states", "salt_ext_spirodeploy_state")

TOKEN = make_token()


@pytest.fixture
def bus():
    return Bus()


@pytest.fixture
def fileserver(fake_server):
    """Serve each uploaded bundle as saltenv <project>/<deployment>, as SpiroFS does."""
    served = Fileserver()

    def deployed(received):
        if received.bundle is None:
            return
        with tarfile.open(fileobj=io.BytesIO(received.bundle)) as tar:
            files = {m.name: tar.extractfile(m).read().decode() for m in tar if m.isfile()}
        served.envs[f"{received.fields['project']}/{received.fields['deployment']}"] = files

    fake_server.on_request = deployed
    return served


@pytest.fixture
def opts(tmp_path):
    return {"id": "build-1", "__role": "minion", "file_client": "remote",
            "cachedir": str(tmp_path / "cache"), "test": False}


@pytest.fixture
def configure_loader_modules(fake_server, bus, fileserver, opts):
    config = {"spirodeploy:server": fake_server.url, "spirodeploy:token": TOKEN,
              "spirodeploy:insecure": True}
    salt = {
        "config.get": lambda key, default="": config.get(key, default),
        "event.send": bus.send,
        "cp.list_master": fileserver.list_master,
        "cp.get_file_str": fileserver.get_file_str,
    }
    context = {}
    salt["spirodeploy.status"] = spiromod.status
    return {
        spiromod: {"__opts__": opts, "__salt__": salt, "__context__": context},
        spirostates: {"__opts__": opts, "__salt__": salt, "__context__": context},
    }


def uploads(fake_server):
    return [r for r in fake_server.received if r.method == "POST"]


def test_virtual():
    assert spirostates.__virtual__() == "spirodeploy"


def test_virtual_without_the_execution_module(monkeypatch):
    monkeypatch.delitem(spirostates.__salt__, "spirodeploy.status")
    assert spirostates.__virtual__()[0] is False


def test_virtual_without_the_library(monkeypatch):
    monkeypatch.setattr(spirostates, "LIBRARY_ERROR", "nope")
    assert spirostates.__virtual__() == (False, "install spiro-deploy: pip install spiro-deploy")


def test_deploys_then_is_idempotent(project, fake_server, bus):
    first = spirostates.deployed("proj/prod", root=str(project))
    assert first["result"] is True, first
    changes = first["changes"]
    assert changes["files"] == {"added": ["hello.sls", "top.sls"]}
    assert changes["old"] == {"sha256": None, "digest": None}
    assert len(changes["new"]["sha256"]) == 64 and changes["new"]["digest"]
    assert changes["minions"] == {"succeeded": ["minion-1"], "failed": [], "unreported": []}
    assert first["comment"].startswith("Deployed proj/prod (2 files in the bundle, 2 added)")
    assert len(uploads(fake_server)) == 1
    assert bus.tags[0] == "spirodeploy/proj/prod/deploy-bundle" and len(bus.tags) == 5

    second = spirostates.deployed("proj/prod", root=str(project))
    assert second["result"] is True and second["changes"] == {}
    assert "already serves this content" in second["comment"]
    assert "the server serves .spirodeploy.json" in second["comment"]
    assert len(uploads(fake_server)) == 1

    (project / "_salt" / "hello.sls").write_text("hello:\n  test.succeed_with_changes\n")
    (project / "_salt" / "new.sls").write_text("new:\n  test.nop\n")
    third = spirostates.deployed("proj/prod", root=str(project))
    assert third["result"] is True
    assert third["changes"]["files"] == {"added": ["new.sls"], "modified": ["hello.sls"]}
    assert third["changes"]["old"]["digest"] == changes["new"]["digest"]
    assert third["changes"]["old"]["sha256"] == changes["new"]["sha256"]
    assert len(uploads(fake_server)) == 2
    for ret in (first, second, third):
        assert TOKEN not in json.dumps(ret)


def test_test_mode_lists_the_changes_and_uploads_nothing(project, fake_server, opts, bus):
    opts["test"] = True
    ret = spirostates.deployed("anything", project="proj", deployment="prod",
                               root=str(project))
    assert ret["result"] is None
    assert ret["changes"] == {"added": ["hello.sls", "top.sls"]}
    assert ret["comment"].startswith("Would deploy proj/prod: 2 files in the bundle, 2 added")
    assert "no local record" in ret["comment"]
    assert fake_server.received == [] and bus.events == []


def test_test_mode_after_a_deploy(project, fake_server, opts):
    spirostates.deployed("proj/prod", root=str(project))
    opts["test"] = True
    assert spirostates.deployed("proj/prod", root=str(project))["result"] is True
    (project / "_salt" / "top.sls").unlink()
    ret = spirostates.deployed("proj/prod", root=str(project), allow_empty=True)
    assert ret["result"] is None and ret["changes"] == {"removed": ["top.sls"]}
    assert len(uploads(fake_server)) == 1


def test_uses_the_local_record_when_the_saltenv_is_not_visible(project, fake_server, fileserver):
    fake_server.on_request = None  # the fileserver never sees the deploys
    first = spirostates.deployed("proj/prod", root=str(project))
    assert first["result"] is True and first["changes"]
    assert "no local record" in first["comment"]
    second = spirostates.deployed("proj/prod", root=str(project))
    assert second["result"] is True and second["changes"] == {}
    assert "using the local record" in second["comment"]
    assert len(uploads(fake_server)) == 1


def test_a_failed_highstate_fails_the_state_naming_minions_and_states(project, fake_server):
    failed = {"test_|-broken_|-broken_|-fail_without_changes": {
        "result": False, "changes": {}, "comment": "This state fails on purpose.",
        "__run_num__": 0, "__id__": "broken", "name": "broken"}}
    fake_server.then(chunks=highstate_events(minion="web-1", ret=failed, retcode=2))
    ret = spirostates.deployed("proj/prod", root=str(project))
    assert ret["result"] is False
    assert ret["comment"] == ("Deployed proj/prod, but the highstate failed: web-1 failed 1 state: "
                              "broken (test.fail_without_changes): This state fails on purpose.")
    assert ret["changes"]["minions"]["failed"] == ["web-1"]

    # The content is served now, but its last deploy failed: the next run deploys again.
    again = spirostates.deployed("proj/prod", root=str(project))
    assert again["result"] is True and len(uploads(fake_server)) == 2
    assert "the last deploy of this content from here failed" in again["comment"]
    assert spirostates.deployed("proj/prod", root=str(project))["changes"] == {}


def test_a_server_exception_fails_the_state(project, fake_server):
    fake_server.then(chunks=[sse("deploy-bundle", {"msg": "x"}),
                             sse("exception", {"msg": "Traceback\nOSError: disk full"})])
    ret = spirostates.deployed("proj/prod", root=str(project))
    assert ret["result"] is False
    assert ret["comment"] == "Deploy of proj/prod failed on the server: OSError: disk full"


def test_errors_before_the_upload_fail_with_the_message(project, fake_server, monkeypatch):
    monkeypatch.setattr("spirodeploy.client.time.sleep", lambda seconds: None)  # no retry waits
    ret = spirostates.deployed("proj/prod", root=str(project / "nope"))
    assert ret["result"] is False and ret["changes"] == {}
    assert "does not exist" in ret["comment"]
    ret = spirostates.deployed("not-a-target", root=str(project))
    assert ret["result"] is False and "<project>/<deployment>" in ret["comment"]
    ret = spirostates.deployed("x", project="proj", root=str(project))
    assert ret["result"] is False and "give both project and deployment" in ret["comment"]
    ret = spirostates.deployed("proj/..", root=str(project))
    assert ret["result"] is False and "deployment name '..'" in ret["comment"]
    ret = spirostates.deployed("proj/prod", root=str(project), server="http://127.0.0.1:1/",
                               connect_timeout=1)
    assert ret["result"] is False and "127.0.0.1:1" in ret["comment"]
    assert uploads(fake_server) == []


def test_stops_waiting_for_its_own_queued_highstate(project, fake_server):
    """The server highstates this very minion: that highstate is queued behind
    the running state run, so the state must not wait for it."""
    ok = {"test_|-a_|-a_|-nop": {"result": True, "changes": {}, "comment": "",
                                 "__run_num__": 0, "__id__": "a", "name": "a"}}
    fake_server.then(delay=0.05, chunks=[
        sse("deploy-bundle", {"msg": "Deploying bundle"}),
        sse("highstate-calc", {"msg": "Calculating"}),
        sse("highstate-start", {"msg": "Highstating 2", "minions": ["build-1", "web-1"]}),
        sse("highstate-update", {"msg": "web-1 done", "minion": "web-1",
                                 "result": {"ret": ok, "retcode": 0}}),
        sse("highstate-update", {"msg": "never read", "minion": "build-1",
                                 "result": {"failed": True}}),
        sse("highstate-finish", {"msg": "done"}),
    ])
    ret = spirostates.deployed("proj/prod", root=str(project))
    assert ret["result"] is True, ret
    assert ret["changes"]["minions"] == {"succeeded": ["web-1"], "failed": [], "unreported":
                                         ["build-1"], "queued": ["build-1"]}
    assert "This minion (build-1) is highstated by this deploy too" in ret["comment"]


def test_no_stop_on_the_master(project, fake_server, opts, monkeypatch):
    """In an orchestration (on the master) there is no minion of ours to wait for."""
    opts["__role"] = "master"
    fired = []
    monkeypatch.setattr(spirostates.saltsupport, "fire_event",
                        lambda opts, send, tag, data: fired.append(tag))
    fake_server.then(chunks=[
        sse("deploy-bundle", {"msg": "x"}),
        sse("highstate-start", {"msg": "x", "minions": ["build-1"]}),
        sse("highstate-update", {"msg": "x", "minion": "build-1",
                                 "result": {"ret": {}, "retcode": 0}}),
        sse("highstate-finish", {"msg": "x"}),
    ])
    ret = spirostates.deployed("proj/prod", root=str(project))
    assert ret["result"] is True and "queued" not in ret["changes"]["minions"]
    assert fired[-1] == "spirodeploy/proj/prod/highstate-finish"


def test_record_is_written_after_a_deploy(project, fake_server, opts):
    ret = spirostates.deployed("proj/prod", root=str(project))
    record = spirostate.read_record(spirostate.record_path(opts["cachedir"], "proj", "prod"))
    assert record["sha256"] == ret["changes"]["new"]["sha256"] and record["succeeded"] is True
