"""The ``spirodeploy`` runner (_runners/spirodeploy.py), with ``__opts__`` (the
master configuration), ``__context__`` and ``__jid_event__`` supplied by
``configure_loader_modules``, against the fake SpiroFS server."""

from __future__ import annotations

import json

import pytest

from tests.conftest import make_token
from tests.fakeserver import highstate_events
from tests.unit.test_salt_module import load_salt_file

spirorunner = load_salt_file("runners", "salt_ext_spirodeploy_runner")

TOKEN = make_token()


class JidEvent:
    """Stands in for the runner's ``__jid_event__``."""

    def __init__(self):
        self.fired = []

    def fire_event(self, data, suffix):
        self.fired.append((suffix, data))

    @property
    def messages(self):
        return [data["message"] for suffix, data in self.fired if suffix == "progress"]


@pytest.fixture
def jid_event():
    return JidEvent()


@pytest.fixture
def master_opts(fake_server, tmp_path):
    return {"__role": "master", "sock_dir": str(tmp_path / "sock"), "cachedir": str(tmp_path),
            "spirodeploy": {"server": fake_server.url, "token": TOKEN, "insecure": True}}


@pytest.fixture
def fired(monkeypatch):
    """Events the runner puts on the master's bus."""
    events = []
    monkeypatch.setattr(spirorunner.saltsupport, "fire_event",
                        lambda opts, send, tag, data: events.append((tag, data)) or True)
    return events


@pytest.fixture
def configure_loader_modules(master_opts, jid_event):
    return {spirorunner: {"__opts__": master_opts, "__context__": {},
                          "__jid_event__": jid_event}}


def test_deploy_prints_progress_and_returns_retcode(project, fake_server, jid_event, fired):
    ret = spirorunner.deploy("proj", "prod", root=str(project))
    assert ret["result"] is True and ret["retcode"] == 0
    assert "retcode" not in spirorunner.__context__
    messages = jid_event.messages
    assert messages[0].startswith("Warning: insecure: the server is not authenticated")
    assert messages[1] == "Deploying 2 files (10.0 KiB) to proj/prod"
    assert "Deploying bundle" in messages
    assert "== minion-1: 0 ok, 1 changed, 0 failed ==" in messages
    assert messages[-1] == "Deployed proj/prod: 1 of 1 minions reported"
    assert [tag for tag, _ in fired] == [f"spirodeploy/proj/prod/{e['event']}"
                                         for e in ret["events"]]
    assert fake_server.received[0].headers["Authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in json.dumps(ret) + json.dumps(jid_event.fired) + json.dumps(fired)


def test_a_failed_highstate_gives_a_nonzero_retcode(project, fake_server, jid_event, fired):
    failed = {"test_|-broken_|-broken_|-fail_without_changes": {
        "result": False, "changes": {}, "comment": "Failure!", "__run_num__": 0,
        "__id__": "broken", "name": "broken"}}
    fake_server.then(chunks=highstate_events(ret=failed, retcode=2))
    ret = spirorunner.deploy("proj", "prod", root=str(project))
    assert ret["result"] is False and ret["retcode"] == 1
    assert spirorunner.__context__["retcode"] == 1
    assert "  FAILED   test.fail_without_changes broken" in jid_event.messages


def test_errors_before_the_upload(project, fake_server, jid_event, master_opts, monkeypatch):
    monkeypatch.setattr("spirodeploy.client.time.sleep", lambda seconds: None)  # no retry waits
    master_opts["spirodeploy"]["server"] = "https://127.0.0.1:1/"
    master_opts["spirodeploy"]["insecure"] = False
    ret = spirorunner.deploy("proj", "prod", root=str(project), insecure=True, connect_timeout=1)
    assert ret["result"] is False and ret["retcode"] == 4 and ret["events"] == []
    assert jid_event.messages[-1].startswith("Deploy of proj/prod did not complete: ")
    assert fake_server.received == []


def test_explicit_arguments_beat_the_master_config(project, fake_server, fired):
    other = make_token({"other": 1})
    ret = spirorunner.deploy("proj", "prod", root=str(project), token=other, highstate=False)
    assert fake_server.received[0].headers["Authorization"] == f"Bearer {other}"
    assert "highstate" not in fake_server.received[0].fields
    assert other not in json.dumps(ret)


def test_environment_is_the_last_resort(project, fake_server, master_opts, monkeypatch, fired):
    del master_opts["spirodeploy"]["token"]
    env_token = make_token({"env": 1})
    monkeypatch.setenv("SPIRO_TOKEN", env_token)
    monkeypatch.delenv("SPIRO_TOKEN_FILE", raising=False)
    ret = spirorunner.deploy("proj", "prod", root=str(project))
    assert ret["retcode"] == 0
    assert fake_server.received[0].headers["Authorization"] == f"Bearer {env_token}"


def test_check_token(fake_server):
    ret = spirorunner.check_token()
    assert ret["result"] is True and ret["retcode"] == 0


def test_check_token_rejected(fake_server):
    fake_server.then(status=401, content_type="text/html", chunks=[b"no"])
    ret = spirorunner.check_token()
    assert ret["result"] is False and ret["retcode"] == 5
    assert spirorunner.__context__["retcode"] == 5


def test_progress_outside_a_job_is_logged(monkeypatch):
    monkeypatch.delattr(spirorunner, "__jid_event__", raising=False)
    spirorunner._progress("hello")  # no __jid_event__: must not raise


def test_virtual(monkeypatch):
    assert spirorunner.__virtual__() == "spirodeploy"
    monkeypatch.setattr(spirorunner, "LIBRARY_ERROR", "nope")
    assert spirorunner.__virtual__() == (False, "install spiro-deploy: pip install spiro-deploy")
