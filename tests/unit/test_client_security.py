"""Credentials, odd settings and odd environments never replace the token or give tracebacks.

requests would let ``~/.netrc`` or user info in the URL replace the bearer
token; odd token files, timeouts and proxies must end in one error line; and
keep-alive comments alone must not keep a client waiting for ever.
"""

from __future__ import annotations

import io
import math
import tarfile
import threading
import time

import pytest

from spirodeploy import client
from spirodeploy.client import check_timeout, check_token, upload
from spirodeploy.errors import ConfigError, ConnectError, ExitCode, StreamTimeout
from spirodeploy.settings import Settings, read_token_file
from tests.fakeserver import highstate_events, sse


def small_tar() -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("top.sls")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"{}\n"))
    buffer.seek(0)
    return buffer


def deploy(server, token, **kwargs):
    kwargs.setdefault("sslverify", False)
    kwargs.setdefault("connect_retries", 0)
    return list(upload(server.url, token, small_tar(), "proj", "prod", **kwargs))


# --- the bearer token is never replaced -----------------------------------------------

@pytest.fixture
def netrc_home(tmp_path, monkeypatch):
    """A HOME whose .netrc has a git password for 127.0.0.1, as on a CI runner."""
    home = tmp_path / "home"
    home.mkdir()
    netrc = home / ".netrc"
    netrc.write_text("machine 127.0.0.1 login ci-bot password git-secret-123\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("NETRC", raising=False)
    return netrc


def test_netrc_does_not_replace_the_token_on_upload(fake_server, token, netrc_home):
    deploy(fake_server, token)
    assert fake_server.received[0].headers["Authorization"] == f"Bearer {token}"


def test_netrc_does_not_replace_the_token_on_check_token(fake_server, token, netrc_home):
    fake_server.then(content_type="text/plain", chunks=[b"Auth OK"])
    check_token(fake_server.url, token, sslverify=False)
    assert fake_server.received[0].headers["Authorization"] == f"Bearer {token}"


@pytest.mark.parametrize("userinfo", ["ci-bot:git-secret-123@", "ci-bot@", ":git-secret-123@", "@"])
def test_user_info_in_the_server_url_is_refused(fake_server, token, userinfo):
    url = fake_server.url.replace("http://", f"http://{userinfo}")
    for call in (lambda: upload(url, token, small_tar(), "proj", "prod", sslverify=False),
                 lambda: check_token(url, token, sslverify=False),
                 lambda: Settings.resolve(server=url, token=token, insecure=True, environ={})):
        with pytest.raises(ConfigError, match="user name or password") as info:
            call()
        assert "git-secret-123" not in str(info.value)
        assert info.value.exit_code == ExitCode.USAGE
    assert fake_server.received == []


# --- token files and token text -------------------------------------------------------

def test_token_file_with_a_utf8_bom_is_read_without_it(tmp_path, token):
    path = tmp_path / "token"
    path.write_bytes(b"\xef\xbb\xbf" + token.encode() + b"\n")
    assert read_token_file(str(path)).strip() == token
    settings = Settings.resolve(server="https://salt:4510/", token_file=str(path), environ={})
    assert settings.token == token


@pytest.mark.parametrize("raw,why", [
    (b"t\xc3\xa9k-secret-value", "not printable ASCII"),   # UTF-8 e-acute
    (b"t\xe2\x82\xacsecret-value", "not printable ASCII"),  # euro sign: not even Latin-1
    (b"tok\x01secret-value", "not printable ASCII"),        # a control character
    (b"t\xe9ksecret-value", "not UTF-8 text"),              # Latin-1 bytes
    (b"\xff\xfet\x00o\x00k\x00", "not UTF-8 text"),         # UTF-16
])
def test_odd_token_files_are_clear_errors_that_never_show_the_token(tmp_path, raw, why):
    path = tmp_path / "token"
    path.write_bytes(raw)
    with pytest.raises(ConfigError, match=why) as info:
        Settings.resolve(server="https://salt:4510/", token_file=str(path), environ={})
    assert "secret" not in str(info.value) and "tok" not in str(info.value).replace("token", "")


@pytest.mark.parametrize("bad", ["t\u00e9k-secret-value", "\ufefftok-secret-value",
                                 "tok\x7fsecret-value"])
def test_library_calls_refuse_a_token_that_is_not_printable_ascii(fake_server, bad):
    for call in (lambda: upload(fake_server.url, bad, small_tar(), "proj", "prod", sslverify=False),
                 lambda: check_token(fake_server.url, bad, sslverify=False)):
        with pytest.raises(ConfigError, match="not printable ASCII") as info:
            call()
        assert "secret" not in str(info.value)
    assert fake_server.received == []


# --- timeouts -------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["nan", "-1", "-inf", "abc", True, 1e12])
def test_bad_timeouts_are_clear_errors_everywhere(value):
    for unlimited in (True, False):
        with pytest.raises(ConfigError):
            check_timeout("timeout", value, unlimited=unlimited)
    for key in ("read_timeout", "connect_timeout", "deadline"):
        with pytest.raises(ConfigError):
            Settings.resolve(server="https://salt:4510/", token="tok", environ={},
                             **{key: value})


def test_no_limit_is_0_or_inf_for_timeout_and_deadline_but_not_connect_timeout():
    for value in (0, "0", math.inf, "inf"):
        settings = Settings.resolve(server="https://salt:4510/", token="tok", environ={},
                                    read_timeout=value, deadline=value)
        assert settings.read_timeout is None and settings.deadline is None
        with pytest.raises(ConfigError, match="connect"):
            Settings.resolve(server="https://salt:4510/", token="tok", environ={},
                             connect_timeout=value)
    settings = Settings.resolve(server="https://salt:4510/", token="tok", environ={},
                                read_timeout="30", connect_timeout=2.5, deadline=600)
    assert (settings.read_timeout, settings.connect_timeout, settings.deadline) == (30, 2.5, 600)


def test_library_calls_refuse_bad_timeouts_before_sending(fake_server, token):
    for kwargs in ({"connect_timeout": math.nan}, {"connect_timeout": math.inf},
                   {"read_timeout": math.nan}, {"deadline": -1}):
        with pytest.raises(ConfigError):
            upload(fake_server.url, token, small_tar(), "proj", "prod", sslverify=False, **kwargs)
    for value in (math.nan, math.inf, 0, -1):
        with pytest.raises(ConfigError):
            check_token(fake_server.url, token, sslverify=False, connect_timeout=value)
    assert fake_server.received == []


@pytest.mark.parametrize("option", ["--timeout", "--connect-timeout", "--deadline"])
@pytest.mark.parametrize("value", ["nan", "-5", "1e400x", "1e12"])
def test_cli_refuses_bad_seconds_with_a_usage_error(option, value, capsys):
    from spirodeploy.cli import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["proj", "prod", option, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and "Traceback" not in err


def test_cli_accepts_inf_as_no_limit_for_timeout_and_deadline(capsys):
    from spirodeploy.cli import build_parser

    args = build_parser().parse_args(["proj", "prod", "--timeout", "inf", "--deadline", "90"])
    assert math.isinf(args.timeout) and args.deadline == 90
    with pytest.raises(SystemExit):
        build_parser().parse_args(["proj", "prod", "--connect-timeout", "inf"])
    assert "argument --connect-timeout" in capsys.readouterr().err


@pytest.mark.parametrize("key,value", [("timeout", "nan"), ("timeout", "-3"),
                                       ("connect_timeout", "inf"), ("connect_timeout", "nan"),
                                       ("connect_timeout", 0), ("deadline", "nan"),
                                       ("deadline", True), ("timeout", "1e999x")])
def test_salt_settings_refuse_bad_seconds_naming_the_setting(key, value, token):
    from spirodeploy.saltsupport import resolve_settings

    config = {f"spirodeploy:{key}": value, "spirodeploy:token": token}
    with pytest.raises(ConfigError, match=key):
        resolve_settings(config.get, server="https://salt:4510/", environ={})
    with pytest.raises(ConfigError, match=key):
        resolve_settings(None, server="https://salt:4510/", token=token, environ={},
                         **{key: value})


def test_salt_settings_deadline_and_no_limit(token):
    from spirodeploy.saltsupport import resolve_settings

    config = {"spirodeploy:deadline": "600", "spirodeploy:timeout": "inf",
              "spirodeploy:token": token}
    settings = resolve_settings(config.get, server="https://salt:4510/", environ={})
    assert settings.deadline == 600 and settings.read_timeout is None
    settings = resolve_settings(config.get, server="https://salt:4510/", environ={}, deadline=5)
    assert settings.deadline == 5


# --- proxies and other odd environments -----------------------------------------------

@pytest.fixture
def socks_proxy(monkeypatch):
    """A SOCKS proxy in the environment, and no PySocks to speak it."""
    import requests.adapters
    from requests.exceptions import InvalidSchema

    def missing(*args, **kwargs):
        raise InvalidSchema("Missing dependencies for SOCKS support.")

    monkeypatch.setattr(requests.adapters, "SOCKSProxyManager", missing)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ALL_PROXY", "socks5://proxy-user:proxy-pass@127.0.0.1:1080")
    monkeypatch.setenv("HTTPS_PROXY", "socks5h://proxy-user:proxy-pass@127.0.0.1:1080")


def test_socks_proxy_without_pysocks_is_a_clear_error(fake_server, token, socks_proxy):
    for call in (lambda: check_token(fake_server.url, token, sslverify=False),
                 lambda: deploy(fake_server, token)):
        with pytest.raises(ConfigError, match="SOCKS") as info:
            call()
        assert "proxy-pass" not in str(info.value)
    assert fake_server.received == []


def test_socks_proxy_on_a_streamed_upload(fake_server, token, socks_proxy):
    with pytest.raises(ConfigError, match="SOCKS"):
        list(upload(fake_server.url, token, iter([small_tar().getvalue()]), "proj", "prod",
                    sslverify=False, connect_retries=0))


@pytest.mark.parametrize("proxy", ["foo://proxy-user:proxy-pass@127.0.0.1:1",
                                   "http://proxy-user:proxy-pass@exa mple:1",
                                   "http://proxy-user:proxy-pass@127.0.0.1:99999"])
def test_unusable_proxy_settings_are_clear_errors(fake_server, token, monkeypatch, proxy):
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ALL_PROXY", proxy)
    with pytest.raises(ConfigError, match="proxy") as info:
        check_token(fake_server.url, token, sslverify=False)
    assert "proxy-pass" not in str(info.value)


def test_dead_proxy_is_a_connect_error_that_names_the_proxy(fake_server, token, monkeypatch):
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ALL_PROXY", "http://proxy-user:proxy-pass@127.0.0.1:1")
    with pytest.raises(ConnectError, match="proxy") as info:
        check_token(fake_server.url, token, sslverify=False)
    assert "proxy-pass" not in str(info.value)


@pytest.mark.parametrize("url", ["https://exa mple/", "https://a..b/", "https://\u2603.com/",
                                 "https://" + "a" * 70 + ".com/", "https://a\x00b/",
                                 "https://-bad-/"])
def test_odd_hosts_are_refused_as_config_errors(url, token):
    with pytest.raises(ConfigError, match="server URL"):
        check_token(url, token)
    with pytest.raises(ConfigError, match="server URL"):
        Settings.resolve(server=url, token=token, environ={})


# --- keep-alive comments and the overall deadline -------------------------------------

def test_keepalive_comments_do_not_reset_the_silence_timer(fake_server, token):
    fake_server.then(chunks=[sse("deploy-bundle", {"msg": "Deploying bundle"})],
                     comment_every=0.1, comment_for=10)
    started = time.monotonic()
    with pytest.raises(StreamTimeout, match="no event for longer than") as info:
        deploy(fake_server, token, read_timeout=0.8)
    assert time.monotonic() - started < 3
    assert info.value.exit_code == ExitCode.STREAM and info.value.server_has_bundle is True


def test_events_reset_the_silence_timer(fake_server, token):
    events = highstate_events()
    fake_server.then(chunks=events, delay=0.3)  # 1.5 s in all, never 1 s without an event
    got = deploy(fake_server, token, read_timeout=1.0)
    assert [e for e, _ in got] == ["deploy-bundle", "highstate-calc", "highstate-start",
                                   "highstate-update", "highstate-finish"]


def test_an_event_arriving_slowly_is_not_silence(fake_server, token):
    # One big event in pieces 0.3 s apart takes 1.8 s: longer than the
    # timeout, but the server is sending it all along.
    event = sse("deploy-bundle", {"msg": "x" * 60})
    pieces = [event[i:i + 15] for i in range(0, len(event), 15)]
    assert len(pieces) >= 5
    fake_server.then(chunks=pieces, delay=0.3)
    got = deploy(fake_server, token, read_timeout=1.0)
    assert got == [("deploy-bundle", {"msg": "x" * 60})]


def test_deadline_stops_a_stream_kept_alive_by_comments(fake_server, token):
    fake_server.then(chunks=[sse("deploy-bundle", {"msg": "Deploying bundle"})],
                     comment_every=0.1, comment_for=10)
    started = time.monotonic()
    with pytest.raises(StreamTimeout, match="deadline") as info:
        deploy(fake_server, token, read_timeout=None, deadline=1.0)
    took = time.monotonic() - started
    assert 0.9 <= took < 3
    assert "may still be running on the server" in str(info.value)
    assert info.value.exit_code == ExitCode.STREAM


def test_deadline_stops_a_stream_of_events_too(fake_server, token):
    # Events every 0.3 s, each resetting the silence timer; only the deadline ends it.
    fake_server.then(chunks=[sse("highstate-update", {"msg": f"m{i}", "minion": f"m{i}",
                                                      "result": {}}) for i in range(30)],
                     delay=0.3)
    started = time.monotonic()
    with pytest.raises(StreamTimeout, match="deadline"):
        deploy(fake_server, token, read_timeout=1, deadline=1.2)
    assert time.monotonic() - started < 3


def test_deadline_while_waiting_for_the_answer(fake_server, token):
    fake_server.then(stall=3, chunks=highstate_events())
    started = time.monotonic()
    with pytest.raises(StreamTimeout, match="deadline"):
        deploy(fake_server, token, deadline=0.8)
    assert time.monotonic() - started < 2.5


def test_deadline_ends_a_byte_by_byte_event(fake_server, token):
    # One HTTP chunk dribbled: no read returns until it is whole, so only a
    # timer outside the read can stop it.
    event = sse("deploy-bundle", {"msg": "x" * 200})
    fake_server.then(chunks=[event], dribble=0.05)
    started = time.monotonic()
    with pytest.raises(StreamTimeout, match="deadline"):
        deploy(fake_server, token, deadline=1.0)
    assert time.monotonic() - started < 3


def test_settings_deadline_reaches_the_cli_flow(fake_server, token, monkeypatch, capsys, project):
    from spirodeploy.cli import main

    fake_server.then(chunks=[sse("deploy-bundle", {"msg": "Deploying bundle"})],
                     comment_every=0.1, comment_for=10)
    monkeypatch.setenv("SPIRO_TOKEN", token)
    for name in ("SPIRO_TOKEN_FILE", "SPIRO_URL"):
        monkeypatch.delenv(name, raising=False)
    started = time.monotonic()
    code = main(["proj", "prod", "-C", str(project), "--server", fake_server.url, "--insecure",
                 "--no-progress", "--deadline", "1"])
    assert code == ExitCode.STREAM
    assert time.monotonic() - started < 5
    assert "may still be running on the server" in capsys.readouterr().err


def test_no_connect_retry_past_the_deadline(monkeypatch, token):
    sleeps, attempts = [], []

    def refused(*args, **kwargs):
        attempts.append(1)
        raise client._Retryable(ConnectError("cannot connect: connection refused"))

    # time.sleep is patched for every thread: count only this one's pauses.
    real_sleep, this_thread = time.sleep, threading.current_thread()
    monkeypatch.setattr(client.time, "sleep", lambda seconds: sleeps.append(seconds)
                        if threading.current_thread() is this_thread else real_sleep(seconds))
    monkeypatch.setattr(client, "_send", refused)
    with pytest.raises(ConnectError, match="connection refused"):
        list(upload("http://127.0.0.1:9/", token, small_tar(), "proj", "prod", sslverify=False,
                    connect_retries=5, deadline=3))
    assert sleeps == [2] and len(attempts) == 2  # a 4 s pause would end past the deadline
