"""The ``spirodeploy`` runner (_runners/spirodeploy_mod.py), with ``__opts__`` (the
master configuration), ``__context__`` and ``__jid_event__`` supplied by
``configure_loader_modules``, against the fake SpiroFS server."""

from __future__ import annotations

import json
import logging

import pytest
import salt.runners.config as config_runner

from tests.fakeserver import highstate_events
from tests.saltloader_support import Bus, load_salt_file
from tests.support import make_token

spirorunner = load_salt_file("runners", "salt_ext_spirodeploy_runner")

TOKEN = make_token()


VIRTUAL_REFUSAL = (False, "install spiro-deploy 1.0 or newer: pip install \"spiro-deploy>=1.0\" "
                           "(onedir Salt packages: salt-pip install \"spiro-deploy>=1.0\")")


@pytest.fixture
def master_opts(fake_server, tmp_path):
    return {"__role": "master", "sock_dir": str(tmp_path / "sock"), "cachedir": str(tmp_path),
            "spirodeploy": {"server": fake_server.url, "token": TOKEN, "insecure": True}}


@pytest.fixture
def configure_loader_modules(master_opts, jid_event):
    # The runner's __salt__ is the runner loader: Salt's own config runner
    # (the master's options, sdb:// looked up) and event.send (a Bus here).
    return {
        spirorunner: {"__opts__": master_opts, "__context__": {}, "__jid_event__": jid_event,
                      "__salt__": {"config.get": config_runner.get, "event.send": Bus().send}},
        config_runner: {"__opts__": master_opts},
    }


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


def test_progress_outside_a_job_is_logged(monkeypatch, caplog):
    monkeypatch.delattr(spirorunner, "__jid_event__", raising=False)
    with caplog.at_level(logging.INFO, logger=spirorunner.log.name):
        spirorunner._progress("hello")
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        (spirorunner.log.name, logging.INFO, "hello")]


def test_virtual(monkeypatch):
    assert spirorunner.__virtual__() == "spirodeploy"
    monkeypatch.setattr(spirorunner, "LIBRARY_ERROR", "nope")
    assert spirorunner.__virtual__() == VIRTUAL_REFUSAL


# --- names, yes/no arguments, the token file in bundles --------------

@pytest.mark.parametrize("project_name, deployment", [(".", "otherproj"), ("proj", "."),
                                                      ("proj", ".x"), ("proj", "x.")])
def test_names_mapped_onto_another_directory_are_refused(project, fake_server, fired,
                                                         project_name, deployment):
    ret = spirorunner.deploy(project_name, deployment, root=str(project))
    assert ret["result"] is False and ret["retcode"] == 2 and "name" in ret["error"]
    assert fake_server.received == [] and fired == []


def test_allow_empty_false_as_text_does_not_empty_the_saltenv(tmp_path, fake_server, fired):
    (tmp_path / "empty" / "_salt").mkdir(parents=True)
    ret = spirorunner.deploy("proj", "prod", root=str(tmp_path / "empty"), allow_empty="false")
    assert ret["result"] is False and ret["retcode"] == 2 and "allow_empty=True" in ret["error"]
    assert "--allow-empty" not in ret["error"]
    assert fake_server.received == []


def test_highstate_and_fire_events_no_as_text(project, fake_server, fired):
    ret = spirorunner.deploy("proj", "prod", root=str(project), highstate="no",
                             fire_events="off")
    assert ret["highstate"] is False and "highstate" not in fake_server.received[0].fields
    assert fired == []


@pytest.mark.parametrize("argument", ["highstate", "allow_empty", "fire_events", "insecure"])
def test_a_yes_no_argument_that_cannot_be_read_is_a_clear_error(project, fake_server, fired,
                                                                argument):
    ret = spirorunner.deploy("proj", "prod", root=str(project), **{argument: "maybe"})
    assert ret["result"] is False and ret["retcode"] == 2
    assert ret["error"].startswith(f"{argument} must be true or false")
    assert spirorunner.__context__["retcode"] == 2 and fake_server.received == []


def test_a_configured_insecure_as_text(project, fake_server, master_opts, fired):
    master_opts["spirodeploy"]["insecure"] = "yes"
    assert spirorunner.deploy("proj", "prod", root=str(project))["result"] is True
    master_opts["spirodeploy"]["insecure"] = "no"
    ret = spirorunner.deploy("proj", "prod", root=str(project))
    assert ret["result"] is False and "plain HTTP" in ret["error"]


def test_a_token_argument_still_leaves_out_the_configured_token_file(project, fake_server,
                                                                     master_opts, fired,
                                                                     monkeypatch):
    monkeypatch.delenv("SPIRO_TOKEN_FILE", raising=False)
    configured = make_token({"n": "configured"})
    (project / "master.token").write_text(configured)
    del master_opts["spirodeploy"]["token"]
    master_opts["spirodeploy"]["token_file"] = str(project / "master.token")
    ret = spirorunner.deploy("proj", "prod", root=str(project), token=TOKEN,
                             include_source="fs")
    assert ret["result"] is True
    assert configured.encode() not in fake_server.received[0].bundle


# --- in Salt's terms (issue 13) ----------------------------------------------------

def test_settings_are_read_with_config_get_and_an_sdb_value_is_looked_up(
        project, fake_server, master_opts, monkeypatch, fired):
    """spirodeploy:token: sdb://... works as in the execution module (Salt's env sdb driver)."""
    import salt.config

    sdb_token = make_token({"from": "sdb"})
    monkeypatch.setenv("SPIRO_TEST_SDB_TOKEN", sdb_token)
    for key, value in salt.config.DEFAULT_MASTER_OPTS.items():
        master_opts.setdefault(key, value)  # what the sdb loader needs
    master_opts["envsdb"] = {"driver": "env"}
    master_opts["spirodeploy"]["token"] = "sdb://envsdb/SPIRO_TEST_SDB_TOKEN"
    ret = spirorunner.deploy("proj", "prod", root=str(project))
    assert ret["retcode"] == 0, ret
    assert fake_server.received[0].headers["Authorization"] == f"Bearer {sdb_token}"
    assert sdb_token not in json.dumps(ret)


def test_root_is_required_and_may_be_configured(project, fake_server, master_opts, fired):
    ret = spirorunner.deploy("proj", "prod")
    assert ret["result"] is False and ret["retcode"] == 2 and fake_server.received == []
    assert "root=" in ret["error"] and "spirodeploy:root" in ret["error"]
    assert "--directory" not in ret["error"]
    relative = spirorunner.deploy("proj", "prod", root="proj")
    assert relative["result"] is False and "not an absolute path" in relative["error"]
    master_opts["spirodeploy"]["root"] = str(project)
    assert spirorunner.deploy("proj", "prod")["result"] is True


def test_events_go_through_the_runners_event_send(project, fake_server):
    """Not through salt.utils.event inside the library: spirodeploy/ never imports Salt."""
    master_bus = spirorunner.__salt__["event.send"].__self__
    ret = spirorunner.deploy("proj", "prod", root=str(project))
    assert ret["result"] is True
    assert master_bus.tags == [f"spirodeploy/proj/prod/{e['event']}" for e in ret["events"]]
