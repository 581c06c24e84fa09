"""What the command prints is safe, and tells the truth.

Against the fake server: a server (or a proxy) that echoes the request's
``Authorization`` header back, in an error page or in event text; events
crafted to drive the terminal; and two SIGTERMs in a row.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from spirodeploy.cli import main
from spirodeploy.errors import ExitCode
from tests.fakeserver import highstate_events, sse
from tests.support import REPO, make_token

TOKEN = make_token({"not_before": time.time() - 10, "project_allow": ["proj"]})
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]")
FAKE_LINE = "\x1b[2A\x1b[2K\r\x1b[32;1mDeployed proj/prod: 3 of 3 minions reported\x1b[0m"
OSC52 = "\x1b]52;c;ZXZpbA==\x07"


def leaks(text: str, token: str = TOKEN) -> list[str]:
    """Every 12-character piece of the token found in ``text``."""
    return [token[i:i + 12] for i in range(len(token) - 11) if token[i:i + 12] in text]


@pytest.fixture
def cli(project, fake_server, monkeypatch, capsys, tmp_path):
    """Run main() in the project against the fake server; return (code, out, err)."""
    monkeypatch.chdir(project)
    monkeypatch.setenv("SPIRO_URL", fake_server.url)
    for name in ("SPIRO_TOKEN", "SPIRO_TOKEN_FILE", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")

    def run(*args: str, token_from: str = "env") -> tuple[int, str, str]:
        if token_from == "env":
            monkeypatch.setenv("SPIRO_TOKEN", TOKEN)
        elif token_from == "file":
            args = (*args, "--token-file", str(token_file))
        else:
            args = (*args, "--token", TOKEN)
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def echo_headers(fake_server, make_chunks, **script) -> None:
    """Answer the next request with chunks made from the headers it carried."""
    fake_server.then(**script)
    answer = fake_server.scripts[-1]

    def on_request(received):
        answer.chunks = make_chunks(received.headers.get("Authorization", ""))

    fake_server.on_request = on_request


# --- the token never reaches the output -----------------------------------------------

@pytest.mark.parametrize("status", [400, 407, 500])
@pytest.mark.parametrize("token_from", ["env", "file", "option"])
@pytest.mark.parametrize("as_json", [False, True], ids=["human", "json"])
def test_an_error_page_echoing_the_token_is_not_printed(cli, fake_server, status, token_from,
                                                         as_json):
    echo_headers(fake_server, lambda auth: [f"Request refused. Headers: Authorization: {auth}; "
                                            "Host: salt".encode()],
                 status=status, content_type="text/plain")
    code, out, err = cli("proj", "prod", "--insecure", *(["--json"] if as_json else []),
                         token_from=token_from)
    assert code == ExitCode.SERVER, err
    assert re.search(r"Headers: Authorization: (Bearer )?\*\*\*", err)  # kept, masked
    assert not leaks(out + err), out + err
    if as_json:
        assert "***" in json.loads(out)["error"]["message"]


def test_a_token_cut_by_the_error_excerpt_leaves_no_piece(cli, fake_server):
    # The excerpt of an error body stops at 500 characters: here 40 characters
    # into the token, which an exact match would not find.
    pad = "p" * (500 - len(" Authorization: Bearer ") - 40)
    echo_headers(fake_server, lambda auth: [f"{pad} Authorization: {auth}".encode()],
                 status=502, content_type="text/plain")
    code, out, err = cli("proj", "prod", "--insecure")
    assert code == ExitCode.SERVER
    assert not leaks(out + err), err


def test_the_error_is_masked_at_the_source_too(fake_server, tmp_path):
    # Library callers and the Salt faces get the error object, not our printers.
    from spirodeploy.client import upload
    from spirodeploy.errors import ServerError

    echo_headers(fake_server, lambda auth: [f"echo: Authorization: {auth}".encode()],
                 status=407, content_type="text/plain")
    bundle = tmp_path / "b.tar"
    bundle.write_bytes(b"\0" * 1024)
    with open(bundle, "rb") as handle, pytest.raises(ServerError) as raised:
        list(upload(fake_server.url, TOKEN, handle, "proj", "prod", sslverify=False))
    assert not leaks(raised.value.message + raised.value.body)
    assert "Authorization: ***" in raised.value.body


@pytest.mark.parametrize("as_json", [False, True], ids=["human", "json"])
def test_event_text_echoing_the_token_is_not_printed(cli, fake_server, as_json):
    def events(auth: str) -> list[bytes]:
        ret = {"cmd_|-echo_|-env_|-run": {
            "result": False, "changes": {}, "__id__": "echo", "name": "env",
            "comment": f"HTTP_AUTHORIZATION={auth}\nexit 1"}}
        return [sse("deploy-bundle", {"msg": f"Deploying bundle (request: {auth})"}),
                sse("highstate-calc", {"msg": "Calculating"}),
                sse("highstate-start", {"msg": "Highstating", "minions": ["m1"]}),
                sse("highstate-update", {"msg": f"m1 done {auth}", "minion": "m1",
                                         "result": {"ret": ret, "retcode": 2}}),
                sse("exception", {"msg": f"Traceback\nKeyError: '{auth}'\n"})]

    echo_headers(fake_server, events)
    code, out, err = cli("proj", "prod", "--insecure", *(["--json"] if as_json else []))
    assert code == ExitCode.DEPLOY_FAILED, err
    assert "***" in out
    assert not leaks(out + err), out + err


# --- server text cannot drive the terminal --------------------------------------------

def crafted_events(evil: str) -> list[bytes]:
    minion = f"web{evil}"
    ret = {f"cmd_|-x{evil}_|-y_|-run": {"result": False, "changes": {}, "__id__": f"x{evil}",
                                         "comment": f"comment{evil}"}}
    return [sse("deploy-bundle", {"msg": f"Deploying bundle{evil}"}),
            sse("highstate-calc", {"msg": evil}),
            sse("highstate-start", {"msg": f"Highstating{evil}", "minions": [minion]}),
            sse("highstate-update", {"msg": evil, "minion": minion,
                                     "result": {"ret": ret, "retcode": 2}}),
            sse(f"news{evil}", {"msg": evil}),
            sse("highstate-finish", {"msg": f"Highstate complete{evil}"})]


@pytest.mark.parametrize("evil", [FAKE_LINE, OSC52, "\x9b2A\x9d52;c;ZXZpbA==\x9c",
                                  "\u202eexe.txt\u2028"],
                         ids=["cursor-fake-line", "osc52", "c1", "bidi"])
@pytest.mark.parametrize("as_json", [False, True], ids=["human", "json"])
def test_crafted_events_reach_the_terminal_escaped(cli, fake_server, evil, as_json):
    fake_server.then(chunks=crafted_events(evil))
    code, out, err = cli("proj", "prod", "--insecure", *(["--json"] if as_json else []))
    assert code == ExitCode.DEPLOY_FAILED, err
    assert not RAW_CONTROL.findall(out + err), out
    if not as_json:
        assert "\\x1b" in out or "\\x9b" in out or "\\u202e" in out
        # The only summary line is ours, and it says the truth.
        assert out.rstrip().splitlines()[-1].startswith("Deploy") and "failed: web" in out
    else:
        lines = [json.loads(line) for line in out.splitlines()]
        assert lines[0]["data"]["msg"] == f"Deploying bundle{evil}"  # the data, intact


def test_an_error_body_cannot_drive_the_terminal(cli, fake_server):
    fake_server.then(status=500, content_type="text/plain",
                     chunks=[f"boom{FAKE_LINE}{OSC52}".encode()])
    code, out, err = cli("proj", "prod", "--insecure")
    assert code == ExitCode.SERVER
    assert not RAW_CONTROL.findall(out + err) and "boom\\x1b[2A" in err


# --- a second signal does not make the message lie ------------------------------------

def _spawn(code: str, args: list[str], env: dict, cwd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _env(url: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), SPIRO_URL=url, SPIRO_TOKEN=TOKEN)
    env.pop("NO_COLOR", None)
    return env


# Printing the report can take a while (a slow terminal, a CI log pipe that
# is not read): the second signal lands while the first is being handled.
SLOW_FINISH = """
import sys, time
from spirodeploy import output
slow = output.HumanPrinter.finish
def finish(self, report):
    print("FINISHING", file=sys.stderr, flush=True)
    time.sleep(3)
    slow(self, report)
output.HumanPrinter.finish = finish
sys.argv[0] = "spiro-deploy"
from spirodeploy.cli import run
run()
"""

# The interpreter's exit can take a while (atexit handlers, flushing).
SLOW_EXIT = """
import atexit, sys, time
atexit.register(time.sleep, 3)
sys.argv[0] = "spiro-deploy"
from spirodeploy.cli import run
run()
"""


def _start_slow_highstate(fake_server, project, code: str) -> subprocess.Popen:
    events = highstate_events()
    # Deploy announced and highstate started at once; the minion takes its time.
    fake_server.then(chunks=events[:3] + [b""] * 30 + events[3:], delay=1)
    proc = _spawn(code, ["proj", "prod", "--insecure", "--no-progress"],
                  _env(fake_server.url), project)
    for line in proc.stdout:
        if "Highstating" in line:
            # Let it get back into its read: a signal that lands just before
            # a blocking read starts is only handled when the read returns.
            time.sleep(0.5)
            return proc
    raise AssertionError(proc.communicate(timeout=30))


def _wait_for(stream, text: str) -> None:
    got = threading.Event()

    def read():
        for line in stream:
            if text in line:
                got.set()
                return

    threading.Thread(target=read, daemon=True).start()
    assert got.wait(30), f"never saw {text!r}"


def test_two_sigterms_during_a_highstate_say_the_server_has_the_bundle(fake_server, project):
    proc = _start_slow_highstate(fake_server, project, SLOW_FINISH)
    proc.send_signal(signal.SIGTERM)
    _wait_for(proc.stderr, "FINISHING")  # the first signal is being handled
    proc.send_signal(signal.SIGTERM)
    proc.stdout.close()
    proc.wait(timeout=30)
    err = proc.stderr.read()
    assert proc.returncode == ExitCode.INTERRUPTED
    assert "the server has the new bundle" in err, err
    assert "nothing was sent" not in err and "Traceback" not in err


def test_a_sigterm_after_the_message_keeps_the_exit_status(fake_server, project):
    proc = _start_slow_highstate(fake_server, project, SLOW_EXIT)
    proc.send_signal(signal.SIGTERM)
    _wait_for(proc.stderr, "spiro-deploy: error: interrupted")
    proc.send_signal(signal.SIGTERM)  # while the interpreter exits
    proc.stdout.close()
    assert proc.wait(timeout=30) == ExitCode.INTERRUPTED
    assert "Traceback" not in proc.stderr.read()


def test_the_interrupted_message_follows_what_was_seen():
    from spirodeploy.cli import _Watch
    from spirodeploy.report import DeployReport

    watch = _Watch()
    assert watch.interrupted() == "interrupted before the upload: nothing was sent"
    watch.on_progress(lambda sent, total: None)(1024, None)
    assert "during the upload" in watch.interrupted()
    watch.on_progress(lambda sent, total: None)(2048, 2048)
    assert "the server has the new bundle" in watch.interrupted()
    report = DeployReport("proj", "prod")
    for event, data in [("deploy-bundle", {"msg": "x"}), ("highstate-start", {"minions": []}),
                        ("highstate-finish", {"msg": "done"})]:
        report.add(event, data)
        watch.on_event(lambda *args: None)(event, data, report)
    assert "after the deploy ended" in watch.interrupted()
