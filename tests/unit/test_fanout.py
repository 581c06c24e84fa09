"""Several servers (multi-master Salt): spirodeploy.fanout, its settings and its CLI."""

from __future__ import annotations

import json
import time

import pytest

from spirodeploy import client
from spirodeploy.deploy import deploy
from spirodeploy.errors import ConfigError, ExitCode
from spirodeploy.history import HistoryStore
from spirodeploy.settings import resolve_servers
from tests.fakeserver import FakeSpiroServer, sse
from tests.saltbed.bed import free_port
from tests.saltloader_support import load_salt_file
from tests.support import make_token

spiromod = load_salt_file("modules", "salt_ext_spirodeploy_module_fanout")

ACCEPTED = [sse("deploy-bundle", {"msg": "Deploying bundle"})]


@pytest.fixture
def servers():
    """Three fake servers on plain HTTP: the first named highstates."""
    with FakeSpiroServer() as one, FakeSpiroServer() as two, FakeSpiroServer() as three:
        for server in (two, three):
            server.default.chunks = ACCEPTED  # what SpiroFS sends without highstate
        yield one, two, three


@pytest.fixture
def cli(run_main, token, monkeypatch):
    """main() with a token and no server: each test names its servers."""
    monkeypatch.setenv("SPIRO_TOKEN", token)
    return run_main


def stamp(server: FakeSpiroServer) -> list[float]:
    times: list[float] = []
    server.on_request = lambda received: times.append(time.monotonic())
    return times


def test_highstate_only_from_the_first_and_only_after_the_others_accepted(project, token,
                                                                          servers):
    first, second, third = servers
    # The others take a while to say deploy-bundle: the first must wait for both.
    second.then(chunks=ACCEPTED, delay=1.5)
    third.then(chunks=ACCEPTED, delay=0.3)
    first_at, second_at, third_at = stamp(first), stamp(second), stamp(third)
    settings = resolve_servers([first.url, second.url, third.url], tokens=[token],
                               insecure=True)
    seen = []
    report = deploy("proj", "prod", settings, root=str(project),
                    on_event=lambda event, data, _: seen.append((event, data.get("server"))))
    assert report.exit_code == ExitCode.OK, report.summary()
    assert [len(s.received) for s in servers] == [1, 1, 1]
    assert first.received[0].fields.get("highstate") == "1"
    assert "highstate" not in second.received[0].fields
    assert "highstate" not in third.received[0].fields
    # The others were sent at once (the third before the second answered); the first
    # only after both answered.
    assert third_at[0] < second_at[0] + 1.5
    assert first_at[0] >= max(second_at[0] + 1.5, third_at[0] + 0.3)
    assert [event for event, _ in seen][:2] == ["server-accepted", "server-accepted"]
    assert seen[2][0] == "deploy-bundle"
    # One build, the same bytes everywhere.
    assert first.received[0].bundle == second.received[0].bundle == third.received[0].bundle
    assert report.minions_expected == ["minion-1"]
    assert [(s.role, s.status) for s in report.servers] == [
        ("highstate", "deployed"), ("upload", "accepted"), ("upload", "accepted")]


def test_one_server_down_nothing_highstated_and_the_holders_are_named(project, token, servers,
                                                                      monkeypatch):
    monkeypatch.setattr(client.time, "sleep", lambda _: None)  # no connect back-off
    first, second, _ = servers
    down = f"http://127.0.0.1:{free_port()}/"
    settings = resolve_servers([first.url, second.url, down], tokens=[token], insecure=True)
    report = deploy("proj", "prod", settings, root=str(project))
    assert first.received == []  # nothing highstated
    assert len(second.received) == 1
    assert report.exit_code == ExitCode.CONNECTION
    assert report.failed_servers == [down]
    assert report.holders == [second.url]
    assert "Nothing was highstated" in report.error
    assert f"is on {second.url} only" in report.error and down in report.error
    data = report.to_dict()
    assert data["result"] is False and data["holders"] == [second.url]
    assert [s["status"] for s in data["servers"]] == ["skipped", "accepted", "failed"]


def test_a_refusing_server_stops_the_highstate(project, token, servers):
    first, second, _ = servers
    second.then(status=500, content_type="text/html", chunks=[b"boom"])
    settings = resolve_servers([first.url, second.url], tokens=[token], insecure=True)
    report = deploy("proj", "prod", settings, root=str(project))
    assert first.received == []
    assert report.exit_code == ExitCode.SERVER
    assert "No server holds the new bundle" in report.error


def test_the_first_down_after_the_others_accepted_names_them(project, token, servers,
                                                            monkeypatch):
    monkeypatch.setattr(client.time, "sleep", lambda _: None)
    _, second, third = servers
    down = f"http://127.0.0.1:{free_port()}/"
    settings = resolve_servers([down, second.url, third.url], tokens=[token], insecure=True)
    report = deploy("proj", "prod", settings, root=str(project))
    assert report.exit_code == ExitCode.CONNECTION
    assert report.holders == [second.url, third.url]
    assert f"is on {second.url}, {third.url} only" in report.error


def test_each_server_gets_its_own_token(project, servers, tmp_path):
    first, second, _ = servers
    tokens = [make_token({"project_allow": ["proj"]}), make_token()]
    files = []
    for i, text in enumerate(tokens):
        path = tmp_path / f"token{i}"
        path.write_text(text + "\n")
        files.append(str(path))
    settings = resolve_servers([first.url, second.url], token_files=files, insecure=True)
    assert deploy("proj", "prod", settings, root=str(project)).exit_code == ExitCode.OK
    assert first.received[0].headers["Authorization"] == f"Bearer {tokens[0]}"
    assert second.received[0].headers["Authorization"] == f"Bearer {tokens[1]}"
    # One file for all servers is shared; a count that pairs with nothing is refused.
    shared = resolve_servers([first.url, second.url], token_files=files[:1], insecure=True)
    assert [s.token for s in shared.all_servers] == [tokens[0], tokens[0]]
    with pytest.raises(ConfigError, match="given 3 times for 2 servers"):
        resolve_servers([first.url, second.url], token_files=files + files[:1], insecure=True)


def test_a_token_that_cannot_deploy_on_one_server_stops_everything_before_upload(project,
                                                                               servers):
    first, second, _ = servers
    settings = resolve_servers([first.url, second.url],
                               tokens=[make_token(), make_token({"project_allow": ["other"]})],
                               insecure=True)
    with pytest.raises(Exception, match="other"):
        deploy("proj", "prod", settings, root=str(project))
    assert first.received == [] and second.received == []


def test_mixing_tls_and_plain_http_is_refused_without_insecure(token):
    with pytest.raises(ConfigError, match="mix https:// and plain http://.*http://b:4510/"):
        resolve_servers(["https://a:4510/", "http://b:4510/"], tokens=[token])
    mixed = resolve_servers(["https://a:4510/", "http://b:4510/"], tokens=[token],
                            insecure=True)
    assert [s.server for s in mixed.all_servers] == ["https://a:4510/", "http://b:4510/"]


def test_servers_from_spiro_url_and_single_server_unchanged(token, tmp_path):
    env = {"SPIRO_URL": "https://a:4510/, https://b:4510/", "SPIRO_TOKEN": token}
    settings = resolve_servers(None, environ=env)
    assert [s.server for s in settings.all_servers] == ["https://a:4510/", "https://b:4510/"]
    assert settings.other_servers[0].token == token
    one = resolve_servers(None, environ={"SPIRO_URL": "https://a:4510/", "SPIRO_TOKEN": token})
    assert one.server == "https://a:4510/" and one.other_servers == []
    with pytest.raises(ConfigError, match="named twice"):
        resolve_servers(["https://a:4510/", "https://A:4510"], tokens=[token])


def test_cli_exit_code_and_message_name_the_failed_servers(cli, servers, monkeypatch):
    monkeypatch.setattr(client.time, "sleep", lambda _: None)
    first, second, _ = servers
    down = f"http://127.0.0.1:{free_port()}/"
    code, out, err = cli("proj", "prod", "--insecure", "--server", first.url,
                         "--server", second.url, "--server", down)
    assert code == ExitCode.CONNECTION
    assert first.received == []
    assert f"{down} [upload]: failed" in out and f"{second.url} [upload]: accepted" in out
    assert "Nothing was highstated" in err and down in err and second.url in err


def test_cli_json_reports_every_server(cli, servers):
    first, second, _ = servers
    code, out, _ = cli("proj", "prod", "--insecure", "--json", "--server", first.url,
                       "--server", second.url)
    assert code == ExitCode.OK
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["event"] == "server-accepted" and lines[0]["data"]["server"] == second.url
    report = lines[-1]["report"]
    assert [s["server"] for s in report["servers"]] == [first.url, second.url]
    assert report["highstate_server"] == first.url and report["failed_servers"] == []


def test_one_history_entry_names_every_server(cli, servers, tmp_path):
    first, second, _ = servers
    history = tmp_path / "hist"
    code, _, err = cli("proj", "prod", "--insecure", "--history-dir", str(history),
                       "--server", first.url, "--server", second.url)
    assert code == ExitCode.OK, err
    entries = HistoryStore(str(history)).entries("proj", "prod")
    assert len(entries) == 1
    assert entries[0]["server"] == first.url.rstrip("/") or entries[0]["server"] == first.url
    assert len(entries[0]["servers"]) == 2


def test_salt_servers_config_with_own_and_shared_tokens(tmp_path):
    from spirodeploy.saltsupport import config_getter, resolve_settings, tokens_of

    shared, own = make_token(), make_token({"project_allow": ["proj"]})
    own_file = tmp_path / "own.token"
    own_file.write_text(own)
    conf = config_getter({"spirodeploy": {
        "token": shared,
        "servers": ["https://m1:4510/", {"url": "https://m2:4510/", "token_file": str(own_file),
                                         "ssl_cert": None}]}})
    settings = resolve_settings(conf, environ={})
    assert [s.server for s in settings.all_servers] == ["https://m1:4510/", "https://m2:4510/"]
    assert tokens_of(settings) == [shared, own]
    assert settings.other_servers[0].token_file == str(own_file)
    # The server argument wins over the configuration; one URL is the one-server path.
    two = resolve_settings(conf, server="https://a:4510/, https://b:4510/", environ={})
    assert [s.server for s in two.all_servers] == ["https://a:4510/", "https://b:4510/"]
    one = resolve_settings(conf, server="https://a:4510/", environ={})
    assert one.other_servers == [] and one.token == shared
    bad = config_getter({"spirodeploy": {"token": shared, "servers": [{"url": "https://a/",
                                                                       "tokn": "x"}]}})
    with pytest.raises(ConfigError, match="unknown key.*tokn"):
        resolve_settings(bad, environ={})


@pytest.fixture
def configure_loader_modules(tmp_path):
    """The execution module's loader dunders (salt-factories' loader mocking)."""
    config: dict = {}
    events: list = []
    return {spiromod: {
        "__opts__": {"id": "build-1", "__role": "minion", "file_client": "remote",
                     "cachedir": str(tmp_path / "cache"), "test": False},
        "__salt__": {"config.get": lambda key, default="": config.get(key, default),
                     "event.send": lambda tag, data=None, **_: events.append(tag) or True},
        "__context__": {"config": config, "events": events},
    }}


def test_salt_module_deploys_to_spirodeploy_servers(project, servers):
    first, second, _ = servers
    shared, own = make_token(), make_token({"not_before": 1})
    config, events = spiromod.__context__["config"], spiromod.__context__["events"]
    config.update({"spirodeploy:token": shared, "spirodeploy:insecure": True,
                   "spirodeploy:servers": [first.url, {"url": second.url, "token": own}]})
    ret = spiromod.deploy("proj", "prod", root=str(project))
    assert ret["result"] is True, ret
    assert [(s["server"], s["role"], s["status"]) for s in ret["servers"]] == [
        (first.url, "highstate", "deployed"), (second.url, "upload", "accepted")]
    assert second.received[0].headers["Authorization"] == f"Bearer {own}"
    assert "highstate" not in second.received[0].fields
    assert events[0] == "spirodeploy/proj/prod/server-accepted"
    assert shared not in json.dumps(ret) and own not in json.dumps(ret)


def test_another_servers_failure_is_told_in_the_callers_terms(project, token, tmp_path):
    # The uploads to the other servers run in threads; a Salt face's
    # naming() must reach them, or their messages name CLI flags.
    import ssl

    from spirodeploy.errors import naming
    from spirodeploy.saltsupport import SALT_NAMES
    from tests.saltbed.bed import make_tls_files

    ours, strangers = make_tls_files(tmp_path / "ours"), make_tls_files(tmp_path / "other")
    contexts = []
    for files in (ours, strangers):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(files.server_cert, files.server_key)
        contexts.append(context)
    with FakeSpiroServer(tls_context=contexts[0]) as first, \
            FakeSpiroServer(tls_context=contexts[1]) as second:
        settings = resolve_servers([first.url, second.url], tokens=[token],
                                   ssl_certs=[str(ours.ca_cert)])  # not the second's CA
        with naming(SALT_NAMES):
            report = deploy("proj", "prod", settings, root=str(project))
        assert report.exit_code == ExitCode.CONNECTION and first.received == []
    assert "ssl_cert=<CA file> (or spirodeploy:ssl_cert)" in report.error
    assert "--ssl-cert" not in report.error
