"""The ``spirodeploy.deployed`` state (_states/spirodeploy_mod.py), with loader dunders
from ``configure_loader_modules``: the execution module provides
``spirodeploy.status``, and a fake fileserver serves, like SpiroFS does, the
last bundle the fake server received."""

from __future__ import annotations

import json

import pytest

from spirodeploy import state as spirostate
from tests.fakeserver import highstate_events, sse, uploads
from tests.saltloader_support import load_salt_file, minion_salt
from tests.support import make_token

spiromod = load_salt_file("modules", "salt_ext_spirodeploy_module_for_states")
spirostates = load_salt_file("states", "salt_ext_spirodeploy_state")

TOKEN = make_token()


VIRTUAL_REFUSAL = (False, "install spiro-deploy 1.0 or newer: pip install \"spiro-deploy>=1.0\" "
                           "(onedir Salt packages: salt-pip install \"spiro-deploy>=1.0\")")


@pytest.fixture
def opts(tmp_path):
    return {"id": "build-1", "__role": "minion", "file_client": "remote",
            "cachedir": str(tmp_path / "cache"), "test": False}


@pytest.fixture
def configure_loader_modules(fake_server, bus, fileserver, opts):
    salt = minion_salt(spiromod, fake_server.url, TOKEN, bus, fileserver)
    context = {}
    return {
        spiromod: {"__opts__": opts, "__salt__": salt, "__context__": context},
        spirostates: {"__opts__": opts, "__salt__": salt, "__context__": context},
    }


def test_virtual():
    assert spirostates.__virtual__() == "spirodeploy"


def test_virtual_without_the_execution_module(monkeypatch):
    monkeypatch.delitem(spirostates.__salt__, "spirodeploy.status")
    assert spirostates.__virtual__()[0] is False


def test_virtual_without_the_library(monkeypatch):
    monkeypatch.setattr(spirostates, "LIBRARY_ERROR", "nope")
    assert spirostates.__virtual__() == VIRTUAL_REFUSAL


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
    # A real (non-empty) highstate return: an empty one is not a success (issue 11, item 8).
    ok = {"test_|-a_|-a_|-nop": {"result": True, "changes": {}, "comment": "",
                                 "__run_num__": 0, "__id__": "a", "name": "a"}}
    fake_server.then(chunks=[
        sse("deploy-bundle", {"msg": "x"}),
        sse("highstate-start", {"msg": "x", "minions": ["build-1"]}),
        sse("highstate-update", {"msg": "x", "minion": "build-1",
                                 "result": {"ret": ok, "retcode": 0}}),
        sse("highstate-finish", {"msg": "x"}),
    ])
    ret = spirostates.deployed("proj/prod", root=str(project))
    assert ret["result"] is True and "queued" not in ret["changes"]["minions"]
    assert fired[-1] == "spirodeploy/proj/prod/highstate-finish"


def test_record_is_written_after_a_deploy(project, fake_server, opts):
    ret = spirostates.deployed("proj/prod", root=str(project))
    record = spirostate.read_record(spirostate.record_path(opts["cachedir"], "proj", "prod"))
    assert record["sha256"] == ret["changes"]["new"]["sha256"] and record["succeeded"] is True


# --- issue 11: names, yes/no arguments, the token file in bundles --------------

@pytest.mark.parametrize("name, kwargs", [
    ("./otherproj", {}), ("proj/.", {}), ("proj/.staging", {}), ("proj/prod.", {}),
    ("x", {"project": ".", "deployment": "otherproj"}),
    ("x", {"project": "proj", "deployment": ".."}),
])
def test_names_mapped_onto_another_directory_are_refused(project, fake_server, bus, opts,
                                                         name, kwargs):
    ret = spirostates.deployed(name, root=str(project), **kwargs)
    assert ret["result"] is False and "name" in ret["comment"] and ret["changes"] == {}
    assert fake_server.received == [] and bus.events == []


def test_allow_empty_false_as_text_does_not_empty_the_saltenv(tmp_path, fake_server):
    (tmp_path / "empty" / "_salt").mkdir(parents=True)
    ret = spirostates.deployed("proj/prod", root=str(tmp_path / "empty"), allow_empty="false")
    assert ret["result"] is False and "allow_empty=True" in ret["comment"]
    assert "--allow-empty" not in ret["comment"]
    assert uploads(fake_server) == []


def test_highstate_no_as_text_does_not_highstate(project, fake_server):
    fake_server.then(chunks=[sse("deploy-bundle", {"msg": "Deploying bundle"})])
    ret = spirostates.deployed("proj/prod", root=str(project), highstate="no")
    assert ret["result"] is True, ret
    assert "highstate" not in uploads(fake_server)[0].fields


@pytest.mark.parametrize("argument", ["highstate", "allow_empty", "insecure"])
def test_a_yes_no_argument_that_cannot_be_read_fails_the_state(project, fake_server, argument):
    ret = spirostates.deployed("proj/prod", root=str(project), **{argument: "maybe"})
    assert ret["result"] is False and ret["changes"] == {}
    assert ret["comment"].startswith(f"{argument} must be true or false")
    assert fake_server.received == []


def test_test_mode_given_as_text(project, fake_server, opts):
    opts["test"] = "True"
    assert spirostates.deployed("proj/prod", root=str(project))["result"] is None
    opts["test"] = "false"
    assert spirostates.deployed("proj/prod", root=str(project))["result"] is True
    assert len(uploads(fake_server)) == 1


def test_a_token_argument_still_leaves_out_the_configured_token_file(project, fake_server,
                                                                     monkeypatch):
    monkeypatch.delenv("SPIRO_TOKEN_FILE", raising=False)
    configured = make_token({"n": "configured"})
    (project / "pillar.token").write_text(configured)
    config = {"spirodeploy:server": fake_server.url, "spirodeploy:insecure": True,
              "spirodeploy:token_file": str(project / "pillar.token")}
    monkeypatch.setitem(spirostates.__salt__, "config.get",
                        lambda key, default="": config.get(key, default))
    ret = spirostates.deployed("proj/prod", root=str(project), token=TOKEN, include_source="fs")
    assert ret["result"] is True, ret
    assert configured.encode() not in uploads(fake_server)[0].bundle


# --- issue 13: watch, one flow, the bus from the master ------------------------------

def test_mod_watch_deploys_again_when_the_content_is_unchanged(project, fake_server, opts):
    assert spirostates.deployed("proj/prod", root=str(project))["result"] is True
    unchanged = spirostates.deployed("proj/prod", root=str(project))
    assert unchanged["changes"] == {} and len(uploads(fake_server)) == 1
    # Salt calls mod_watch with the whole low chunk when a watched state changed.
    low = {"__id__": "deploy", "__sls__": "orch", "__env__": "base", "state": "spirodeploy",
           "fun": "mod_watch", "watch": [{"git": "/srv/x"}], "__reqs__": {}, "order": 10001}
    opts["test"] = True
    planned = spirostates.mod_watch("proj/prod", sfun="deployed", root=str(project), **low)
    assert planned["result"] is None and len(uploads(fake_server)) == 1
    assert "Would deploy proj/prod: a watched state changed" in planned["comment"]
    opts["test"] = False
    again = spirostates.mod_watch("proj/prod", sfun="deployed", root=str(project), **low)
    assert again["result"] is True, again
    assert len(uploads(fake_server)) == 2
    assert again["comment"].startswith("Deployed proj/prod (a watched state changed")
    assert again["changes"]["old"]["digest"] == again["changes"]["new"]["digest"]
    # Outside mod_watch, unchanged content is still left alone.
    assert spirostates.deployed("proj/prod", root=str(project))["changes"] == {}
    assert len(uploads(fake_server)) == 2


def test_mod_watch_only_for_deployed():
    ret = spirostates.mod_watch("proj/prod", sfun="absent")
    assert ret["result"] is False and "does not support watch" in ret["comment"]


def test_the_bundles_warnings_are_in_the_comment(project, fake_server, opts):
    (project / "_salt" / "top.sls").unlink()
    opts["test"] = True
    planned = spirostates.deployed("proj/prod", root=str(project))
    assert "Warnings: no top.sls or spirotop.sls in _salt" in planned["comment"]
    opts["test"] = False
    ret = spirostates.deployed("proj/prod", root=str(project))
    assert ret["result"] is True and len(uploads(fake_server)) == 1
    assert "Warnings: no top.sls or spirotop.sls in _salt" in ret["comment"]


def test_on_the_master_the_state_fires_on_the_masters_bus(project, fake_server, opts,
                                                          monkeypatch):
    """The state builds the sender (salt.utils.event); the library only calls it."""
    import contextlib

    import salt.utils.event

    fired = []

    class MasterBus:
        def fire_event(self, data, tag):
            fired.append(tag)
            return True

    @contextlib.contextmanager
    def get_master_event(opts_, sock_dir, listen=True):
        assert sock_dir == opts_["sock_dir"] and listen is False
        yield MasterBus()

    monkeypatch.setattr(salt.utils.event, "get_master_event", get_master_event)
    opts.update({"__role": "master", "sock_dir": "/run/salt/master"})
    ret = spirostates.deployed("proj/prod", root=str(project))
    assert ret["result"] is True, ret
    assert fired and fired[-1] == "spirodeploy/proj/prod/highstate-finish"
