"""The ``compress`` argument of the Salt faces (module, runner, state), against the fake server."""

from __future__ import annotations

import gzip
import hashlib

import pytest

from spirodeploy.compress import GZIP_HEADER
from tests.saltloader_support import Bus, JidEvent, load_salt_file, minion_salt
from tests.support import make_token

spiromod = load_salt_file("modules", "salt_ext_spirodeploy_module_compress")
spirorunner = load_salt_file("runners", "salt_ext_spirodeploy_runner_compress")
spirostates = load_salt_file("states", "salt_ext_spirodeploy_state_compress")
TOKEN = make_token()


@pytest.fixture
def configure_loader_modules(fake_server, fileserver, tmp_path):
    opts = {"id": "build-1", "__role": "minion", "file_client": "remote",
            "cachedir": str(tmp_path / "cache"), "test": False}
    salt = minion_salt(spiromod, fake_server.url, TOKEN, Bus(), fileserver)
    master_opts = {"__role": "master", "sock_dir": str(tmp_path / "sock"),
                   "cachedir": str(tmp_path / "master"),
                   "spirodeploy": {"server": fake_server.url, "token": TOKEN, "insecure": True}}
    return {
        spiromod: {"__opts__": opts, "__salt__": salt, "__context__": {}},
        spirostates: {"__opts__": opts, "__salt__": salt, "__context__": {}},
        spirorunner: {"__opts__": master_opts, "__context__": {}, "__jid_event__": JidEvent()},
    }


@pytest.fixture(autouse=True)
def _no_bus(monkeypatch):
    monkeypatch.setattr(spirorunner.saltsupport, "fire_event", lambda *a, **k: True)


def uploads(fake_server):
    return [r.bundle for r in fake_server.received if r.method == "POST"]


@pytest.mark.parametrize("value", ["gzip", True, "yes"])
def test_module_deploy_compress(project, fake_server, value):
    ret = spiromod.deploy("proj", "prod", root=str(project), compress=value)
    assert ret["result"] is True, ret
    sent, = uploads(fake_server)
    assert sent.startswith(GZIP_HEADER)
    assert ret["bundle"]["sha256"] == hashlib.sha256(sent).hexdigest()
    assert ret["bundle"]["tar_sha256"] == hashlib.sha256(gzip.decompress(sent)).hexdigest()


def test_module_deploy_plain_by_default(project, fake_server):
    assert spiromod.deploy("proj", "prod", root=str(project))["result"] is True
    sent, = uploads(fake_server)
    assert not sent.startswith(b"\x1f\x8b")


def test_module_deploy_bad_compress_is_an_error(project, fake_server):
    ret = spiromod.deploy("proj", "prod", root=str(project), compress="zstd")
    assert ret["result"] is False and ret["exit_code"] == 2
    assert "compress" in ret["error"]
    assert uploads(fake_server) == []


def test_runner_deploy_compress(project, fake_server):
    ret = spirorunner.deploy("proj", "prod", root=str(project), compress="gzip")
    assert ret["result"] is True, ret
    sent, = uploads(fake_server)
    assert sent.startswith(GZIP_HEADER)


def test_state_deployed_compress_then_idempotent(project, fake_server):
    first = spirostates.deployed("proj/prod", root=str(project), compress=True)
    assert first["result"] is True, first
    sent, = uploads(fake_server)
    assert sent.startswith(GZIP_HEADER)
    assert first["changes"]["new"]["sha256"] == hashlib.sha256(sent).hexdigest()
    second = spirostates.deployed("proj/prod", root=str(project), compress=True)
    assert second["result"] is True and second["changes"] == {}, second
    assert len(uploads(fake_server)) == 1
