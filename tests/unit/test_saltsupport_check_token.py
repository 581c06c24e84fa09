"""``check_token`` with several servers (multi-master, ``spirodeploy:servers``): every
server is asked with its own token and CA, per-server results, and a failing
retcode naming the servers that refused; in the library and in both Salt faces."""

from __future__ import annotations

import json

import pytest

from spirodeploy import saltsupport
from spirodeploy.errors import ExitCode, TokenRejected
from spirodeploy.settings import Settings
from tests.fakeserver import FakeSpiroServer
from tests.saltloader_support import JidEvent, load_salt_file
from tests.support import make_token

spiromod = load_salt_file("modules", "salt_ext_spirodeploy_module_check_token")
spirorunner = load_salt_file("runners", "salt_ext_spirodeploy_runner_check_token")

TOKEN_A = make_token({"not_before": 0, "project_allow": ["p"]})
TOKEN_B = make_token({"not_before": 0, "not_after": 4102444800})


@pytest.fixture
def second_server():
    with FakeSpiroServer() as server:
        yield server


def two_servers(first, second):
    return [{"url": first.url, "token": TOKEN_A}, {"url": second.url, "token": TOKEN_B}]


def settings_for(servers):
    return saltsupport.resolve_settings(None, server=servers, insecure=True, environ={})


def bearer(server):
    return [r.headers["Authorization"] for r in server.received]


# --- the library -----------------------------------------------------------------------

def test_every_server_is_asked_with_its_own_token(fake_server, second_server):
    ret = saltsupport.check_token(settings_for(two_servers(fake_server, second_server)),
                                  project="p")
    assert bearer(fake_server) == [f"Bearer {TOKEN_A}"]
    assert bearer(second_server) == [f"Bearer {TOKEN_B}"]
    # The keys one server always had: the first named server's.
    assert ret["result"] is True and ret["server"] == fake_server.url
    assert ret["projects"] == ["p"] and ret["expires"] is None and ret["project"] == "p"
    assert ret["message"] == "all 2 servers accepted their tokens and may deploy project p"
    assert [s["server"] for s in ret["servers"]] == [fake_server.url, second_server.url]
    assert all(s["result"] is True for s in ret["servers"])
    assert ret["servers"][1]["expires"] == "2100-01-01T00:00:00Z"
    assert ret["servers"][1]["projects"] is None
    assert ret["failed_servers"] == []


def test_a_server_that_refuses_fails_the_check_and_is_named(fake_server, second_server):
    second_server.then(status=401)
    settings = settings_for(two_servers(fake_server, second_server))
    with pytest.raises(saltsupport.TokenCheckFailed) as caught:
        saltsupport.check_token(settings)
    error = caught.value
    assert error.exit_code == ExitCode.AUTH
    assert error.message.startswith(
        f"1 of 2 servers refused the token check: {second_server.url}: ")
    assert "rejected the token (HTTP 401)" in error.message and "\n" not in error.message
    details = saltsupport.token_check_details(error)
    assert details["failed_servers"] == [second_server.url]
    first, second = details["servers"]
    assert first["result"] is True and first["server"] == fake_server.url
    assert second["result"] is False and second["exit_code"] == int(ExitCode.AUTH)
    assert "HTTP 401" in second["error"]


def test_the_exit_code_is_the_first_failed_servers(fake_server, second_server):
    fake_server.then(status=401)
    second_server.then(status=500)
    settings = settings_for(two_servers(fake_server, second_server))
    with pytest.raises(saltsupport.TokenCheckFailed) as caught:
        saltsupport.check_token(settings)
    assert caught.value.exit_code == ExitCode.AUTH
    assert saltsupport.token_check_details(caught.value)["failed_servers"] == [
        fake_server.url, second_server.url]
    assert caught.value.message.startswith("2 of 2 servers refused the token check")


def test_each_server_gets_its_own_ca_token_and_timeout(monkeypatch):
    asked = []
    monkeypatch.setattr("spirodeploy.client.check_token",
                        lambda url, token, sslverify, timeout: asked.append(
                            (url, token, sslverify, timeout)) or True)
    settings = Settings(server="https://salt1:4510/", token=TOKEN_A, ssl_cert="/etc/ca1.pem",
                        connect_timeout=5,
                        other_servers=[Settings(server="https://salt2:4510/", token=TOKEN_B,
                                                ssl_cert="/etc/ca2.pem", connect_timeout=7)])
    ret = saltsupport.check_token(settings)
    assert sorted(asked) == [("https://salt1:4510/", TOKEN_A, "/etc/ca1.pem", 5),
                             ("https://salt2:4510/", TOKEN_B, "/etc/ca2.pem", 7)]
    assert ret["failed_servers"] == [] and len(ret["servers"]) == 2


def test_one_server_raises_its_own_error_as_before(fake_server):
    fake_server.then(status=401)
    settings = saltsupport.resolve_settings(None, server=fake_server.url, token=TOKEN_A,
                                            insecure=True, environ={})
    with pytest.raises(TokenRejected) as caught:
        saltsupport.check_token(settings)
    assert saltsupport.token_check_details(caught.value) == {
        "servers": [{"server": fake_server.url, "result": False,
                     "error": caught.value.message, "exit_code": int(ExitCode.AUTH)}],
        "failed_servers": [fake_server.url]}


def test_a_token_one_server_may_not_use_for_the_project_fails_there(fake_server,
                                                                    second_server):
    servers = [{"url": fake_server.url, "token": TOKEN_B},
               {"url": second_server.url, "token": TOKEN_A}]
    with pytest.raises(saltsupport.TokenCheckFailed) as caught:
        saltsupport.check_token(settings_for(servers), project="q")
    assert saltsupport.token_check_details(caught.value)["failed_servers"] == [
        second_server.url]


# --- the Salt faces ----------------------------------------------------------------------

@pytest.fixture
def configure_loader_modules(fake_server, second_server, tmp_path):
    servers = two_servers(fake_server, second_server)
    config = {"spirodeploy:servers": servers, "spirodeploy:insecure": True}
    opts = {"id": "build-1", "__role": "minion", "cachedir": str(tmp_path / "cache")}
    master_opts = {"__role": "master", "cachedir": str(tmp_path / "master"),
                   "spirodeploy": {"servers": servers, "insecure": True}}
    return {
        spiromod: {"__opts__": opts, "__context__": {},
                   "__salt__": {"config.get": lambda key, default="": config.get(key, default)}},
        spirorunner: {"__opts__": master_opts, "__context__": {}, "__jid_event__": JidEvent()},
    }


@pytest.mark.parametrize("face", ["module", "runner"])
def test_face_reports_per_server_and_fails_naming_the_refusing_server(
        face, fake_server, second_server):
    second_server.then(status=401)
    module = spiromod if face == "module" else spirorunner
    ret = module.check_token()
    assert ret["result"] is False and ret["exit_code"] == 5
    assert module.__context__["retcode"] == 5
    if face == "runner":
        assert ret["retcode"] == 5
    assert second_server.url in ret["error"] and fake_server.url not in ret["error"]
    assert ret["failed_servers"] == [second_server.url]
    assert [s["result"] for s in ret["servers"]] == [True, False]
    assert len(fake_server.received) == len(second_server.received) == 1
    assert TOKEN_A not in json.dumps(ret) and TOKEN_B not in json.dumps(ret)


@pytest.mark.parametrize("face", ["module", "runner"])
def test_face_succeeds_when_every_server_accepts(face, fake_server, second_server):
    module = spiromod if face == "module" else spirorunner
    ret = module.check_token()
    assert ret["result"] is True and ret["server"] == fake_server.url
    assert ret["failed_servers"] == [] and len(ret["servers"]) == 2
    assert bearer(second_server) == [f"Bearer {TOKEN_B}"]
    assert "retcode" not in module.__context__
