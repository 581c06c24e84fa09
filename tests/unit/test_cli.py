"""The spiro-deploy command against the fake server: options, output, exit codes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from spirodeploy.errors import ExitCode
from spirodeploy.output import HumanPrinter, use_colour
from tests.fakeserver import highstate_events, sse
from tests.support import REPO, make_token

FAILED_RET = {"cmd_|-broken_|-false_|-run": {
    "result": False, "changes": {}, "comment": 'Command "false" run', "__run_num__": 0,
    "__id__": "broken", "name": "false"}}


def test_deploy_shows_each_stage_minion_and_summary(cli, fake_server):
    code, out, err = cli("proj", "prod", "--insecure")
    assert code == ExitCode.OK, err
    assert "Deploying bundle" in out and "Highstate complete" in out
    assert "== minion-1: 0 ok, 1 changed, 0 failed ==" in out
    assert "changed  file.managed hello" in out
    assert out.rstrip().endswith("Deployed proj/prod: 1 of 1 minions reported")
    assert "\033[" not in out  # not a terminal: no colour
    assert "--insecure" in err  # the warning
    assert fake_server.received[0].fields["highstate"] == "1"


def test_failed_state_is_shown_and_exit_1(cli, fake_server):
    fake_server.then(chunks=highstate_events(ret=FAILED_RET, retcode=2))
    code, out, _ = cli("proj", "prod", "--insecure")
    assert code == ExitCode.DEPLOY_FAILED
    assert "FAILED   cmd.run broken" in out and 'Command "false" run' in out
    assert "failed: minion-1" in out


def test_minion_that_never_reports_exit_3(cli, fake_server):
    events = highstate_events()
    start = sse("highstate-start", {"msg": "Highstating 2", "minions": ["minion-1", "ghost"]})
    fake_server.then(chunks=[events[0], events[1], start, events[3], events[4]])
    code, out, _ = cli("proj", "prod", "--insecure")
    assert code == ExitCode.UNREPORTED
    assert "1 of 2 minions reported" in out and "never reported: ghost" in out


def test_no_highstate(cli, fake_server):
    fake_server.then(chunks=[sse("deploy-bundle", {"msg": "Deploying bundle"})])
    code, out, _ = cli("proj", "prod", "--insecure", "--no-highstate")
    assert code == ExitCode.OK
    assert "highstate" not in fake_server.received[0].fields
    assert "Deployed proj/prod (no highstate)" in out


def test_json_output_is_one_object_per_line(cli):
    code, out, _ = cli("proj", "prod", "--insecure", "--json")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert [line["event"] for line in lines[:-1]] == [
        "deploy-bundle", "highstate-calc", "highstate-start", "highstate-update",
        "highstate-finish"]
    report = lines[-1]["report"]
    assert report["result"] is True and report["minions"]["reported"] == ["minion-1"]
    assert report["bundle"]["file_count"] >= 2


def test_json_error_is_json_too(cli, fake_server):
    fake_server.then(status=401, content_type="text/html", chunks=[b"no"])
    code, out, err = cli("proj", "prod", "--insecure", "--json")
    assert code == ExitCode.AUTH
    assert json.loads(out)["error"]["exit_code"] == ExitCode.AUTH
    assert err.splitlines()[-1].startswith("spiro-deploy: error:") and "Traceback" not in err


def test_dry_run_uploads_nothing_and_output_writes_the_bundle(cli, fake_server, tmp_path):
    bundle = tmp_path / "out.tar"
    code, out, _ = cli("proj", "prod", "--dry-run", "--output", str(bundle), "--manifest")
    assert code == 0 and fake_server.received == []
    digest = hashlib.sha256(bundle.read_bytes()).hexdigest()
    assert f"sha256 {digest}" in out
    assert "hello.sls" in out and "top.sls" in out


def test_dry_run_needs_no_token(cli, monkeypatch):
    monkeypatch.delenv("SPIRO_TOKEN")
    assert cli("proj", "prod", "--dry-run")[0] == 0


@pytest.mark.parametrize("args,message", [
    (["proj", "../other/prod", "--insecure"], "contains a '/'"),
    (["", "prod", "--insecure"], "project name is empty"),
    (["proj", "prod"], "refusing plain HTTP"),
    (["proj", "prod", "--insecure", "--artifact", "missing.bin"], "missing.bin"),
    (["proj", "prod", "--server", "https://salt/", "--ssl-cert", "/nonexistent.pem"],
     "cannot read --ssl-cert"),
    (["proj", "prod", "--insecure", "--server", "http://[bad"], "malformed server URL"),
])
def test_bad_input_is_one_line_and_exit_2(cli, fake_server, args, message):
    code, out, err = cli(*args)
    assert code == ExitCode.USAGE, err
    errors = [line for line in err.splitlines() if not line.startswith("Warning:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err
    assert fake_server.received == []


def test_contradicting_options_are_a_usage_error(cli):
    with pytest.raises(SystemExit) as info:
        cli("proj", "prod", "--insecure", "--ssl-cert", "ca.pem")
    assert info.value.code == ExitCode.USAGE


def test_token_problems(cli, monkeypatch, tmp_path, fake_server):
    monkeypatch.setenv("SPIRO_TOKEN", "   ")
    code, _, err = cli("proj", "prod", "--insecure")
    assert code == ExitCode.USAGE and "no token" in err
    token_file = tmp_path / "tok"
    token_file.write_text(make_token() + "\n")
    monkeypatch.delenv("SPIRO_TOKEN")
    monkeypatch.setenv("SPIRO_TOKEN_FILE", str(token_file))
    assert cli("proj", "prod", "--insecure")[0] == 0
    expired = make_token({"not_before": 1, "not_after": 2})
    code, _, err = cli("proj", "prod", "--insecure", "--token", expired)
    assert code == ExitCode.AUTH and "expired" in err and expired not in err


def test_empty_salt_is_refused_unless_allowed(cli, project, fake_server):
    for path in (project / "_salt").iterdir():
        path.unlink()
    code, _, err = cli("proj", "prod", "--insecure")
    assert code == ExitCode.USAGE and "--allow-empty" in err
    assert fake_server.received == []
    code, _, _ = cli("proj", "prod", "--insecure", "--allow-empty", "--no-highstate")
    assert code == 0


def test_artifacts_and_bare_include_source(cli, project, fake_server):
    (project / "build").mkdir()
    (project / "build" / "app.bin").write_bytes(b"\0" * 1000)
    (project / "README").write_text("source file\n")
    code, _, err = cli("proj", "prod", "--insecure", "--artifact", "build/app.bin",
                       "--include-source")
    assert code == 0, err
    import io
    import tarfile

    names = tarfile.open(fileobj=io.BytesIO(fake_server.received[0].bundle)).getnames()
    assert "_artifacts/build/app.bin" in names and "_source/README" in names
    assert "hello.sls" in names and not any(n.startswith("_source/_salt") for n in names)


def test_server_error_and_cut_stream_exit_codes(cli, fake_server):
    fake_server.then(status=500, content_type="text/plain", chunks=[b"boom"])
    code, _, err = cli("proj", "prod", "--insecure")
    assert code == ExitCode.SERVER and "HTTP 500" in err
    fake_server.then(chunks=highstate_events()[:3], cut=True)
    code, out, err = cli("proj", "prod", "--insecure")
    assert code == ExitCode.STREAM and "may have deployed it" in err
    assert "Highstating" in out  # what arrived before the cut was shown


def test_exception_event(cli, fake_server):
    fake_server.then(chunks=[sse("deploy-bundle", {"msg": "Deploying bundle"}),
                             sse("exception", {"msg": "OSError: disk full\n"})])
    code, out, _ = cli("proj", "prod", "--insecure")
    assert code == ExitCode.DEPLOY_FAILED and "Server error: OSError: disk full" in out


def test_unknown_event_is_shown_not_fatal(cli, fake_server):
    events = highstate_events()
    fake_server.then(chunks=events[:3] + [sse("shiny-new", {"msg": "news"})] + events[3:])
    code, out, _ = cli("proj", "prod", "--insecure")
    assert code == 0 and "[shiny-new] news" in out


def test_colour_only_on_a_terminal_and_never_with_no_color():
    class Tty:
        def isatty(self):
            return True

    assert use_colour(Tty(), environ={}) is True
    assert use_colour(Tty(), environ={"NO_COLOR": "1"}) is False
    assert use_colour(sys.stdout, environ={}) is (sys.stdout.isatty())
    assert "\033[31m" in HumanPrinter(colour=True).paint("x", "red")


def _spawn(args, env, cwd):
    return subprocess.Popen([sys.executable, "-m", "spirodeploy", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=str(REPO), **extra)
    env.pop("NO_COLOR", None)
    return env


def test_help_is_fast_and_imports_nothing_heavy():
    code = ("import sys; from spirodeploy.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit: pass\n"
            "heavy = [m for m in ('salt', 'requests', 'urllib3', 'tqdm', 'pathspec',"
            " 'spirodeploy.builder') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True,
                         text=True, check=True).stdout
    assert "exit codes:" in out and "HEAVY []" in out


def test_a_dry_run_imports_nothing_of_the_network_side(project):
    # A build-only run (the benchmark's, CI's bundle step) pays for no HTTP stack.
    code = ("import sys; from spirodeploy.cli import main\n"
            "code = main(['-C', sys.argv[1], '--dry-run', 'proj', 'prod'])\n"
            "net = [m for m in ('requests', 'urllib3', 'spirodeploy.client',"
            " 'spirodeploy.deploy', 'spirodeploy.report') if m in sys.modules]\n"
            "print('EXIT', code, 'NET', net)")
    out = subprocess.run([sys.executable, "-c", code, str(project)], env=_env(),
                         capture_output=True, text=True, check=True).stdout
    assert "Bundle: 2 files" in out and "EXIT 0 NET []" in out


@pytest.mark.parametrize("when,expect", [
    ("streaming", "the server has the new bundle and may be deploying it"),
])
def test_sigterm_says_what_the_server_may_have(project, fake_server, token, when, expect):
    fake_server.then(chunks=highstate_events(), delay=3)
    got_request = threading.Event()
    fake_server.on_request = lambda received: got_request.set()
    proc = _spawn(["proj", "prod", "--insecure"], _env(SPIRO_URL=fake_server.url,
                                                       SPIRO_TOKEN=token), project)
    assert got_request.wait(30)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert expect in err and "Traceback" not in err


def test_sigint_before_upload_says_nothing_was_sent(tmp_path, token):
    # A server that accepts but never answers keeps the client connecting.
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    project = tmp_path / "p"
    (project / "_salt").mkdir(parents=True)
    (project / "_salt" / "top.sls").write_text("x: {}\n")
    proc = _spawn(["proj", "prod", "--insecure", "--no-progress"],
                  _env(SPIRO_URL=f"http://127.0.0.1:{listener.getsockname()[1]}/",
                       SPIRO_TOKEN=token), project)
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    listener.close()
    assert proc.returncode == ExitCode.INTERRUPTED
    assert "Traceback" not in err and "interrupted" in err


def test_python_m_and_version():
    out = subprocess.run([sys.executable, "-m", "spirodeploy", "--version"], env=_env(),
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("spiro-deploy ")


def test_missing_top_file_warns_when_highstating(cli, project):
    (project / "_salt" / "top.sls").unlink()
    code, _, err = cli("proj", "prod", "--insecure")
    assert code == 0 and "no top.sls or spirotop.sls" in err
    code, _, err = cli("proj", "prod", "--insecure", "--no-highstate")
    assert "no top.sls" not in err


def test_token_file_inside_the_project_is_never_bundled(cli, project, fake_server, monkeypatch):
    import io
    import tarfile

    (project / "deploy.token").write_text(make_token() + "\n")
    monkeypatch.delenv("SPIRO_TOKEN")
    code, _, err = cli("proj", "prod", "--insecure", "--include-source", "fs",
                       "--token-file", "deploy.token")
    assert code == 0, err
    names = tarfile.open(fileobj=io.BytesIO(fake_server.received[0].bundle)).getnames()
    assert not any("token" in n for n in names)
    monkeypatch.setenv("SPIRO_TOKEN_FILE", str(project / "deploy.token"))
    code, out, _ = cli("proj", "prod", "--dry-run", "--include-source", "fs", "--manifest")
    assert code == 0 and "deploy.token" not in out


def test_bundle_from_elsewhere_is_checked_before_upload(cli, tmp_path, fake_server):
    import io
    import tarfile

    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        info = tarfile.TarInfo("../../etc/cron.d/x")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    code, _, err = cli("proj", "prod", "--insecure", "--bundle", str(evil))
    assert code == ExitCode.USAGE and "../../etc/cron.d/x" in err
    assert fake_server.received == []
    good = tmp_path / "good.tar"
    with tarfile.open(good, "w") as tar:
        info = tarfile.TarInfo("top.sls")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"x: "))
    code, _, err = cli("proj", "prod", "--insecure", "--bundle", str(good))
    assert code == 0, err
    assert fake_server.received[0].bundle == good.read_bytes()


def test_token_for_another_project_is_refused_before_bundling(cli, fake_server, tmp_path):
    other = make_token({"not_before": 1, "project_allow": ["other"]})
    output = tmp_path / "never.tar"
    code, out, err = cli("proj", "prod", "--insecure", "--token", other, "--output", str(output))
    assert code == ExitCode.AUTH and "may not deploy project 'proj'" in err
    assert "Deploying" not in out and not output.exists() and fake_server.received == []


def test_the_bundle_summary_counts_files_by_top_level_directory(cli, project):
    for rel in ("a/x.sls", "a/y/z.sls", "a-b.sls", "a.b/c.sls", "a0/d.sls", "b/e.sls"):
        path = project / "_salt" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x: {}\n")
    code, out, _ = cli("proj", "prod", "--dry-run")
    assert code == 0
    counts = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()
              if line.startswith("  ") and line.rstrip().endswith(" files")}
    # top.sls, hello.sls and a-b.sls are at the root; the rest by directory
    assert counts == {"(root)": 3, "a": 2, "a.b": 1, "a0": 1, "b": 1}


def test_a_dry_run_does_not_make_the_manifest_dict_unless_asked(cli, project, monkeypatch):
    # One dict per file costs more than writing a 50,000-file manifest did;
    # the summary needs none of them (Contents keeps them for whoever asks).
    from spirodeploy import manifest

    made = []
    real = manifest.manifest_dict
    monkeypatch.setattr(manifest, "manifest_dict", lambda *a, **k: made.append(1) or real(*a, **k))
    code, out, _ = cli("proj", "prod", "--dry-run")
    assert code == 0 and "top.sls" not in out and made == []
    code, out, _ = cli("proj", "prod", "--dry-run", "--manifest")
    assert code == 0 and "top.sls" in out and made == [1]
