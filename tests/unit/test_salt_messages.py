"""Errors in each face's own terms (issue 13): the library says what is wrong and
which setting fixes it; the CLI names its flags, the Salt faces name their
arguments and ``spirodeploy:`` settings, never a CLI flag."""

from __future__ import annotations

import re
import ssl
import subprocess
import sys

import pytest

from spirodeploy import client, saltsupport
from spirodeploy.cli import main
from spirodeploy.errors import CLI_NAMES, ConfigError, StreamTimeout, naming
from tests.fakeserver import FakeSpiroServer
from tests.saltbed.bed import make_tls_files
from tests.saltloader_support import Bus, Fileserver, load_salt_file
from tests.support import REPO, make_token

spiromod = load_salt_file("modules", "salt_ext_spirodeploy_module_for_messages")
spirostates = load_salt_file("states", "salt_ext_spirodeploy_state_for_messages")

TOKEN = make_token()
#: A command-line flag: two dashes and a word (not "--" inside a path or a URL).
CLI_FLAG = re.compile(r"(?<![\w/-])--[a-z][a-z-]+")


@pytest.fixture
def config():
    return {}


@pytest.fixture
def configure_loader_modules(config, tmp_path):
    salt = {"config.get": lambda key, default="": config.get(key, default),
            "event.send": Bus().send, "cp.list_master": Fileserver().list_master,
            "cp.get_file_str": Fileserver().get_file_str}
    opts = {"id": "build-1", "__role": "minion", "file_client": "remote",
            "cachedir": str(tmp_path / "cache"), "test": False}
    salt["spirodeploy.status"] = spiromod.status
    return {spiromod: {"__opts__": opts, "__salt__": salt, "__context__": {}},
            spirostates: {"__opts__": opts, "__salt__": salt, "__context__": {}}}


@pytest.fixture(autouse=True)
def no_environment(monkeypatch):
    for name in ("SPIRO_URL", "SPIRO_TOKEN", "SPIRO_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)


def cli(*args, capsys) -> str:
    code = main(list(args))
    assert code != 0
    return capsys.readouterr().err


def salt_says(text: str, *settings: str) -> None:
    assert not CLI_FLAG.search(text), text
    for setting in settings:
        assert setting in text, text


# --- through the faces, as users meet them ----------------------------------------------

def test_no_token(project, fake_server, capsys):
    ret = spiromod.deploy("proj", "prod", root=str(project), server=fake_server.url,
                          insecure=True)
    salt_says(ret["error"], "no token given", "spirodeploy:token_file", "spirodeploy:token",
              "token_file argument")
    state = spirostates.deployed("proj/prod", root=str(project), server=fake_server.url,
                                 insecure=True)
    salt_says(state["comment"], "spirodeploy:token")
    assert "--token-file, SPIRO_TOKEN_FILE, --token or SPIRO_TOKEN" in cli(
        "proj", "prod", "-C", str(project), "--server", fake_server.url, "--insecure",
        capsys=capsys)


def test_empty_salt(tmp_path, fake_server, capsys):
    (tmp_path / "_salt").mkdir()
    ret = spiromod.deploy("proj", "prod", root=str(tmp_path), server=fake_server.url,
                          token=TOKEN, insecure=True)
    salt_says(ret["error"], "would wipe it", "allow_empty=True")
    state = spirostates.deployed("proj/prod", root=str(tmp_path), server=fake_server.url,
                                 token=TOKEN, insecure=True)
    salt_says(state["comment"], "allow_empty=True")
    assert "use --allow-empty" in cli("proj", "prod", "-C", str(tmp_path), "--server",
                                      fake_server.url, "--token", TOKEN, "--insecure",
                                      capsys=capsys)
    assert fake_server.received == []


def test_plain_http_without_insecure(project, fake_server, capsys):
    ret = spiromod.deploy("proj", "prod", root=str(project), server=fake_server.url,
                          token=TOKEN)
    salt_says(ret["error"], "refusing plain HTTP", "insecure=True", "spirodeploy:insecure")
    assert "for testing, --insecure" in cli("proj", "prod", "-C", str(project), "--server",
                                            fake_server.url, "--token", TOKEN, capsys=capsys)


def test_an_unreadable_ca_file(project, capsys):
    ret = spiromod.deploy("proj", "prod", root=str(project), server="https://salt.example/",
                          token=TOKEN, ssl_cert="/nonexistent.pem")
    salt_says(ret["error"], "cannot read ssl_cert file '/nonexistent.pem'")
    assert "cannot read --ssl-cert file '/nonexistent.pem'" in cli(
        "proj", "prod", "-C", str(project), "--server", "https://salt.example/", "--token",
        TOKEN, "--ssl-cert", "/nonexistent.pem", capsys=capsys)


def test_ssl_cert_and_insecure_together(project):
    ret = spiromod.deploy("proj", "prod", root=str(project), server="https://salt.example/",
                          token=TOKEN, ssl_cert="/ca.pem", insecure=True)
    salt_says(ret["error"], "ssl_cert and insecure contradict each other")


def test_a_bad_timeout(project, fake_server, config):
    ret = spiromod.deploy("proj", "prod", root=str(project), server=fake_server.url,
                          token=TOKEN, insecure=True, timeout="soon")
    salt_says(ret["error"], "timeout (or spirodeploy:timeout) must be a number of seconds")
    config["spirodeploy:connect_timeout"] = "-1"
    ret = spiromod.check_token(server=fake_server.url, token=TOKEN, insecure=True)
    salt_says(ret["error"], "connect_timeout (or spirodeploy:connect_timeout) must not be")


def test_a_silent_server_after_the_upload(project, fake_server):
    fake_server.then(chunks=[b": the first event never comes\n\n"], delay=3)
    ret = spiromod.deploy("proj", "prod", root=str(project), server=fake_server.url,
                          token=TOKEN, insecure=True, timeout=1)
    assert ret["exit_code"] == 6
    salt_says(ret["error"], "raise it with timeout (or spirodeploy:timeout)")


def test_a_redirect(project, fake_server):
    fake_server.then(status=302, headers={"Location": "https://elsewhere.example/"},
                     content_type="text/plain")
    ret = spiromod.deploy("proj", "prod", root=str(project), server=fake_server.url,
                          token=TOKEN, insecure=True)
    salt_says(ret["error"], "use that URL as the server argument (or spirodeploy:server)")


def test_tls_verification_failing(project, tmp_path):
    paths = make_tls_files(tmp_path / "tls")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(paths.server_cert, paths.server_key)
    with FakeSpiroServer(tls_context=context) as server:
        ret = spiromod.deploy("proj", "prod", root=str(project), server=server.url,
                              token=TOKEN, connect_timeout=5)
    salt_says(ret["error"], "TLS verification", "ssl_cert=<CA file> (or spirodeploy:ssl_cert)")


def test_the_cli_keeps_naming_its_flags_for_the_same_errors():
    # What the CLI prints is exc.message outside any Salt face.
    assert client._silence_error().message.endswith("(raise it with --timeout)")
    assert client._deadline_error().message.endswith("(raise it with --deadline)")
    with pytest.raises(ConfigError) as info:
        client.check_url("http://salt/", True)
    assert info.value.message.endswith("use https:// or, for testing, --insecure")
    assert info.value.setting == "insecure"


# --- the structure behind them ----------------------------------------------------------

def test_every_setting_has_a_salt_name_and_none_is_a_flag():
    assert set(saltsupport.SALT_NAMES) == set(CLI_NAMES)
    for key, name in saltsupport.SALT_NAMES.items():
        assert not CLI_FLAG.search(name), key
        assert CLI_FLAG.search(CLI_NAMES[key]), key


def test_an_error_carries_the_setting_and_renders_in_each_faces_terms():
    error = StreamTimeout("the server sent nothing", setting="timeout",
                          fix=" (raise it with {timeout})")
    assert error.setting == "timeout"
    assert str(error) == "the server sent nothing (raise it with --timeout)"
    assert error.in_terms(saltsupport.SALT_NAMES) == ("the server sent nothing (raise it with timeout "
                                               "(or spirodeploy:timeout))")
    with naming(saltsupport.SALT_NAMES):
        raised_in_salt = StreamTimeout("x", setting="timeout", fix=" ({timeout})")
    # Shown later, outside the face, it keeps the face's terms.
    assert raised_in_salt.message == "x (timeout (or spirodeploy:timeout))"


def test_braces_in_what_is_wrong_are_kept():
    error = ConfigError("'/tmp/{odd}.pem': missing", setting="ssl_cert",
                        fix="cannot read {ssl_cert} file {what}")
    assert error.message == "cannot read --ssl-cert file '/tmp/{odd}.pem': missing"


def test_an_addition_keeps_the_faces_terms():
    error = ConfigError("no token given", setting="token", fix=": use {token}")
    error.add("; the upload was stopped")
    assert error.in_terms(saltsupport.SALT_NAMES).endswith("token_file argument; the upload was stopped")
    assert error.args[0].endswith("SPIRO_TOKEN; the upload was stopped")


# --- root ---------------------------------------------------------------------------------

def test_root_is_required_by_the_module_and_the_state(project, fake_server, config):
    kwargs = {"server": fake_server.url, "token": TOKEN, "insecure": True}
    ret = spiromod.deploy("proj", "prod", **kwargs)
    assert ret["result"] is False and ret["exit_code"] == 2
    salt_says(ret["error"], "no project directory given", "root=", "spirodeploy:root")
    state = spirostates.deployed("proj/prod", **kwargs)
    assert state["result"] is False
    salt_says(state["comment"], "root=", "spirodeploy:root")
    relative = spiromod.deploy("proj", "prod", root="proj", **kwargs)
    salt_says(relative["error"], "not an absolute path")
    assert fake_server.received == []
    config["spirodeploy:root"] = str(project)
    assert spiromod.deploy("proj", "prod", **kwargs)["result"] is True
    assert spirostates.deployed("proj/prod", **kwargs)["result"] is True


# --- the library never imports Salt -----------------------------------------------------------

def test_no_spirodeploy_module_imports_salt():
    """Import every module of the library (not the Salt faces) in a clean Python."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import spirodeploy\n"
        "for info in pkgutil.walk_packages(spirodeploy.__path__, 'spirodeploy.'):\n"
        "    if info.name != 'spirodeploy.__main__':  # that one runs the command\n"
        "        importlib.import_module(info.name)\n"
        "import spirodeploy.saltsupport as s\n"
        "s.fire_event({'__role': 'master', 'sock_dir': '/nonexistent'}, None, 't', {})\n"
        "leaked = sorted(m for m in sys.modules if m == 'salt' or m.startswith('salt.'))\n"
        "print(len(list(pkgutil.walk_packages(spirodeploy.__path__))), leaked)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True)
    count, leaked = out.stdout.strip().split(" ", 1)
    assert int(count) > 20 and leaked == "[]", out.stdout


# --- each check once (issue 13, "The flow") ----------------------------------------------

@pytest.fixture
def name_checks(monkeypatch):
    """How many characters check_name judged (it looks at each one once per check)."""
    import unicodedata

    from spirodeploy import checks

    judged = []

    class Counting:
        @staticmethod
        def category(char):
            judged.append(char)
            return unicodedata.category(char)

    monkeypatch.setattr(checks, "unicodedata", Counting)
    return judged


def test_a_cli_deploy_checks_its_names_once(project, fake_server, name_checks, capsys):
    code = main(["proj", "prod", "-C", str(project), "--server", fake_server.url, "--token",
                 TOKEN, "--insecure", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert "".join(name_checks) == "proj" + "prod"


def test_a_salt_deploy_checks_its_names_once(project, fake_server, name_checks):
    ret = spiromod.deploy("proj", "prod", root=str(project), server=fake_server.url,
                          token=TOKEN, insecure=True, fire_events=False)
    assert ret["result"] is True, ret
    assert "".join(name_checks) == "proj" + "prod"


def test_the_library_upload_still_refuses_bad_names(fake_server):
    from spirodeploy.errors import InvalidNameError

    for project, deployment in (("..", "prod"), ("proj", "a/b")):
        with pytest.raises(InvalidNameError):
            client.upload(fake_server.url, TOKEN, iter([b""]), project, deployment,
                          sslverify=False)
    assert fake_server.received == []


# --- messages from the builder, the history and several servers -------------------------

def _in_both_terms(raise_it) -> tuple[str, str]:
    """The message of the error ``raise_it`` raises, as the CLI and a Salt face show it."""
    with pytest.raises(Exception) as cli_error:
        raise_it()
    with naming(saltsupport.SALT_NAMES), pytest.raises(Exception) as salt_error:
        raise_it()
    return cli_error.value.message, salt_error.value.message


def test_git_source_errors_name_each_faces_option(tmp_path):
    from spirodeploy.builder.gitscan import git_scanner

    cli_text, salt_text = _in_both_terms(lambda: list(git_scanner(lambda _: False, tmp_path)))
    assert cli_text.startswith("--include-source git: ") and "not inside a git checkout" in cli_text
    assert salt_text.startswith("include_source=git: ") and not CLI_FLAG.search(salt_text)


def test_rollback_errors_name_each_faces_option(tmp_path):
    import hashlib

    from spirodeploy.history import HistoryStore
    from spirodeploy.rollback import plan_rollback

    store = HistoryStore(str(tmp_path))
    store.ensure()
    bundle = tmp_path / "bundles" / ".bundle.x.tmp"
    bundle.write_bytes(b"x")
    store.append({"project": "p", "deployment": "d", "exit_code": 0, "deployed": True,
                  "sha256": hashlib.sha256(b"x").hexdigest(), "digest": "d" * 64}, str(bundle))
    # The only deploy is what is served: nothing earlier to go back to...
    cli_text, salt_text = _in_both_terms(lambda: plan_rollback(store, "p", "d"))
    assert cli_text.endswith("name one with --to")
    assert salt_text.endswith("name one with to=<entry>") and not CLI_FLAG.search(salt_text)
    # ...and naming it is "nothing to do" unless forced.
    cli_text, salt_text = _in_both_terms(lambda: plan_rollback(store, "p", "d", to=1))
    assert cli_text.endswith("(--force deploys it again)")
    assert salt_text.endswith("(force=True deploys it again)")


@pytest.mark.parametrize("tokens", [["a" * 20, "b" * 20], ["a" * 20, "b" * 20, "c" * 20]])
def test_per_server_counts_name_each_faces_option(tokens):
    from spirodeploy.settings import resolve_servers

    servers = ["https://a/"] if len(tokens) == 2 else ["https://a/", "https://b/"]
    cli_text, salt_text = _in_both_terms(
        lambda: resolve_servers(servers, tokens=tokens, environ={}))
    assert cli_text.startswith(f"--token is given {len(tokens)} times for ")
    assert salt_text.startswith(f"token is given {len(tokens)} times for ")
    assert not CLI_FLAG.search(salt_text)
