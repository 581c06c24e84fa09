"""The runner's progress lines carry server text: no token, no terminal control,
with loader dunders as in test_salt_runner.py."""

from __future__ import annotations

import re

import pytest
import salt.runners.config as config_runner

from tests.fakeserver import sse
from tests.saltloader_support import Bus, load_salt_file
from tests.support import make_token

spirorunner = load_salt_file("runners", "salt_ext_spirodeploy_runner_progress_security")

TOKEN = make_token()


@pytest.fixture
def configure_loader_modules(fake_server, tmp_path, jid_event):
    master_opts = {"__role": "master", "sock_dir": str(tmp_path / "sock"), "cachedir": str(tmp_path),
                   "spirodeploy": {"server": fake_server.url, "token": TOKEN, "insecure": True}}
    return {
        spirorunner: {"__opts__": master_opts, "__context__": {}, "__jid_event__": jid_event,
                      "__salt__": {"config.get": config_runner.get, "event.send": Bus().send}},
        config_runner: {"__opts__": master_opts},
    }


RAW_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2028\u2029]")


@pytest.mark.usefixtures("fired")  # the bus events stay off the real bus
def test_progress_lines_mask_the_token_and_escape_controls(project, fake_server):
    progress = spirorunner.__jid_event__  # the jid_event fixture, as the runner sees it

    def events(auth: str) -> list[bytes]:
        ret = {"cmd_|-x_|-y_|-run": {"result": False, "changes": {}, "__id__": "x",
                                     "comment": f"env: {auth}\x1b]52;c;ZXZpbA==\x07"}}
        return [sse("deploy-bundle", {"msg": f"Deploying for {auth}"}),
                sse("highstate-start", {"msg": "\x1b[2A\x1b[32mDeployed, all fine",
                                        "minions": ["m1"]}),
                sse("highstate-update", {"msg": "m1", "minion": "m1",
                                         "result": {"ret": ret, "retcode": 2}}),
                sse("highstate-finish", {"msg": "done"})]

    fake_server.then()
    answer = fake_server.scripts[-1]
    fake_server.on_request = lambda received: setattr(
        answer, "chunks", events(received.headers.get("Authorization", "")))
    ret = spirorunner.deploy("proj", "prod", root=str(project))
    assert ret["retcode"] == 1
    lines = progress.messages
    assert "Deploying for Bearer ***" in lines
    assert not [line for line in lines if TOKEN[:12] in line or TOKEN[-12:] in line]
    assert not [line for line in lines if RAW_CONTROL.search(line)], lines
    assert "\\x1b[2A\\x1b[32mDeployed, all fine" in lines
