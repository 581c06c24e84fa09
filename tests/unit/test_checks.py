"""Checks made before anything is sent: names, tokens, URLs, settings."""

from __future__ import annotations

import time

import pytest

from spirodeploy.checks import check_name, check_token_scope, clean_token, token_caveats
from spirodeploy.client import check_url, safe_url
from spirodeploy.errors import ConfigError, ExitCode, InvalidNameError, TokenExpired, TokenNotAllowed
from spirodeploy.settings import Settings
from tests.support import make_token


@pytest.mark.parametrize("name", ["", "  ", "a/b", "../other/prod", "..", "a\\b", "x\ny",
                                  " lead", "nul\0"])
def test_bad_names_are_refused(name):
    with pytest.raises(InvalidNameError) as info:
        check_name("deployment", name)
    assert info.value.exit_code == ExitCode.USAGE


@pytest.mark.parametrize("name", ["prod", "my-proj_1", "v1.2", "Ünicode"])
def test_good_names_pass(name):
    assert check_name("project", name) == name


@pytest.mark.parametrize("name, why", [
    (".", "only dots"), ("...", "'..'"), (".hidden", "starts with a dot"),
    (".prod", "starts with a dot"), ("prod.", "ends with a dot"),
    ("a\x7fb", "control character"), ("a\x9bb", "control character"),
    ("a\udcffb", "not valid UTF-8"), (None, "empty"), (2024, "must be text"),
])
def test_names_the_server_would_map_onto_another_directory_are_refused(name, why):
    """SpiroFS joins the names into a path: '.' is the project's directory itself,
    dot-prefixed names are its staging directories."""
    with pytest.raises(InvalidNameError, match=why) as info:
        check_name("project", name)
    assert info.value.exit_code == ExitCode.USAGE


def test_token_cleaning():
    assert clean_token("abc\n") == "abc"
    for bad in (None, "", "  \n", "ab\ncd", "ab cd"):
        with pytest.raises(ConfigError) as info:
            clean_token(bad)
        if bad and bad.strip():
            assert bad.strip() not in str(info.value)  # never echo the token


def test_real_pymacaroons_token_caveats_are_read():
    import pymacaroons  # a test dependency: the library SpiroFS makes its tokens with

    macaroon = pymacaroons.Macaroon(identifier="id", key="secret", location="")
    macaroon.add_first_party_caveat('{"not_before": 1, "project_allow": ["web"]}')
    assert token_caveats(macaroon.serialize()) == {"not_before": 1, "project_allow": ["web"]}


def test_token_scope_and_expiry():
    now = time.time()
    check_token_scope(make_token({"not_before": now - 5, "project_allow": ["web"]}), "web")
    with pytest.raises(TokenNotAllowed, match="may not deploy project 'db'"):
        check_token_scope(make_token({"not_before": now - 5, "project_allow": ["web"]}), "db")
    with pytest.raises(TokenExpired, match="expired"):
        check_token_scope(make_token({"not_before": now - 50, "not_after": now - 1}), "web")
    # Unreadable: the server decides, and the caller is told the client cannot judge it.
    assert "cannot judge" in check_token_scope("not-a-macaroon!", "web").warnings[0]


@pytest.mark.parametrize("url,verify,message", [
    ("http://salt:4510/", True, "refusing plain HTTP"),
    ("ftp://salt/", False, "malformed"),
    ("https://", True, "malformed"),
    ("https://salt:99999/", True, "malformed"),
    ("", True, "no server URL"),
])
def test_bad_urls(url, verify, message):
    with pytest.raises(ConfigError, match=message):
        check_url(url, verify)


def test_http_allowed_when_insecure_and_path_added():
    assert check_url("http://127.0.0.1:4510", False) == "http://127.0.0.1:4510/"


def test_credentials_are_stripped_from_urls_in_messages():
    assert safe_url("https://user:pw@salt:4510/") == "https://salt:4510/"
    with pytest.raises(ConfigError) as info:
        check_url("http://user:secretpw@salt:4510/", True)
    assert "secretpw" not in str(info.value)


def test_ssl_cert_must_be_a_readable_pem(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        check_url("https://salt/", str(tmp_path / "missing.pem"))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a cert")
    with pytest.raises(ConfigError, match="not a PEM"):
        check_url("https://salt/", str(junk))


def test_settings_precedence_and_token_file(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    env = {"SPIRO_URL": "https://env:1/", "SPIRO_TOKEN": "from-env",
           "SPIRO_TOKEN_FILE": str(token_file)}
    settings = Settings.resolve(environ=env)
    assert settings.server == "https://env:1/" and settings.token == "from-file"
    settings = Settings.resolve(environ=env, token="explicit", server="https://arg:2/")
    assert settings.token == "explicit" and settings.server == "https://arg:2/"
    assert Settings.resolve(environ={"SPIRO_TOKEN": "t"}).server == "https://salt:4510/"
    assert "explicit" not in repr(Settings.resolve(environ={}, token="explicit"))


def test_settings_errors(tmp_path):
    with pytest.raises(ConfigError, match="no token"):
        Settings.resolve(environ={})
    with pytest.raises(ConfigError, match="cannot read token file"):
        Settings.resolve(environ={}, token_file=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="not both"):
        Settings.resolve(environ={}, token="a", token_file="b")
    with pytest.raises(ConfigError, match="contradict"):
        Settings.resolve(environ={}, token="a", ssl_cert="x", insecure=True)
