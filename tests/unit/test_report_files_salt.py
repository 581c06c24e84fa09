"""``junit=``/``html=`` of the Salt faces (execution module and runner ``deploy``):
the files are written after the deploy, a bad path fails before the upload."""

from __future__ import annotations

from pathlib import Path

import junitparser
import pytest
import xmlschema

from tests.fakeserver import highstate_events
from tests.saltloader_support import JidEvent, load_salt_file
from tests.support import make_token

spiromod = load_salt_file("modules", "salt_ext_spirodeploy_module_report_files")
spirorunner = load_salt_file("runners", "salt_ext_spirodeploy_runner_report_files")

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schemas" / "junit.xsd"
TOKEN = make_token()
FAILED_RET = {"cmd_|-broken_|-false_|-run": {
    "result": False, "changes": {}, "comment": 'Command "false" run', "__run_num__": 0,
    "__id__": "broken", "name": "false", "duration": 3.0}}


@pytest.fixture
def configure_loader_modules(fake_server, tmp_path):
    config = {"spirodeploy:server": fake_server.url, "spirodeploy:token": TOKEN,
              "spirodeploy:insecure": True}
    master_opts = {"__role": "master", "sock_dir": str(tmp_path / "sock"),
                   "cachedir": str(tmp_path),
                   "spirodeploy": {"server": fake_server.url, "token": TOKEN, "insecure": True}}
    return {
        spiromod: {
            "__opts__": {"id": "build-1", "__role": "minion", "file_client": "remote",
                         "cachedir": str(tmp_path / "cache"), "test": False},
            "__salt__": {"config.get": lambda key, default="": config.get(key, default),
                         "event.send": lambda *args, **kwargs: True},
            "__context__": {},
        },
        spirorunner: {
            "__opts__": master_opts,
            "__context__": {}, "__jid_event__": JidEvent(),
            # The runner loader's config.get: the master's options, by "a:b" path.
            "__salt__": {"config.get": lambda key, default=None: _lookup(master_opts, key,
                                                                         default),
                         "event.send": lambda *args, **kwargs: True},
        },
    }


def _lookup(opts: dict, key: str, default):
    value = opts
    for part in key.split(":"):
        if not isinstance(value, dict) or part not in value:
            return default
        value = value[part]
    return value


@pytest.fixture(autouse=True)
def quiet_bus(monkeypatch):
    monkeypatch.setattr(spirorunner.saltsupport, "fire_event", lambda *args: True)


def failure_of(path: Path) -> junitparser.Failure:
    xmlschema.XMLSchema(str(SCHEMA_FILE)).validate(str(path))
    [case] = [case for suite in junitparser.JUnitXml.fromfile(str(path)) for case in suite
              if case.name == "broken (cmd.run)"]
    return case.result[0]


def test_module_deploy_writes_both_files(project, fake_server, tmp_path):
    fake_server.then(chunks=highstate_events(ret=FAILED_RET, retcode=2))
    junit, html = tmp_path / "junit.xml", tmp_path / "report.html"
    ret = spiromod.deploy("proj", "prod", root=str(project), fire_events=False,
                          junit=str(junit), html=str(html))
    assert ret["result"] is False and ret["exit_code"] == 1
    assert ret["report_files"] == [str(junit), str(html)]
    assert failure_of(junit).message == 'Command "false" run'
    assert "Command \\\"false\\\" run" in html.read_text()  # in the JSON blob


def test_module_deploy_refuses_a_bad_path_before_the_upload(project, fake_server, tmp_path):
    ret = spiromod.deploy("proj", "prod", root=str(project), fire_events=False,
                          html=str(tmp_path / "missing" / "report.html"))
    assert ret["result"] is False and ret["exit_code"] == 2
    assert ret["error"].startswith("html ") and "does not exist" in ret["error"]
    assert "report_files" not in ret
    assert fake_server.received == []


def test_runner_deploy_writes_the_junit_file(project, fake_server, tmp_path):
    fake_server.then(chunks=highstate_events(ret=FAILED_RET, retcode=2))
    junit = tmp_path / "junit.xml"
    ret = spirorunner.deploy("proj", "prod", root=str(project), junit=str(junit))
    assert ret["retcode"] == 1 and ret["report_files"] == [str(junit)]
    assert failure_of(junit).type == "cmd.run"


def test_runner_refuses_reports_for_a_staged_rollout(project, fake_server, tmp_path):
    ret = spirorunner.deploy("proj", "prod", root=str(project), batch="50%",
                             junit=str(tmp_path / "junit.xml"))
    assert ret["retcode"] == 2 and "cannot be used with batch or canary" in ret["error"]
    assert fake_server.received == []
    assert not (tmp_path / "junit.xml").exists()
