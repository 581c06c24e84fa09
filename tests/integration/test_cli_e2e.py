"""The ``spiro-deploy`` command end to end, against the real bed.

Every test runs the CLI as a subprocess (``python -m spirodeploy``) in a
project made by ``spiro_bed.make_project`` and checks what the real SpiroFS
server and the real salt-minion did: the events, the exit code, the file the
highstate wrote, and the saltenv as the minion sees it (``cp.list_master``).

All deploys go to project ``PROJECT``, each test to its own deployment.
Deploys with highstate take a few seconds each, so most tests deploy without.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import (
    MANIFEST,
    SALT_FILES,
    assert_single_line_error,
    describe,
    events_and_report,
    json_lines,
    names,
    run_cli,
)

pytestmark = pytest.mark.timeout(180)

PROJECT = "e2e-cli"
HIGHSTATE_EVENTS = [
    "deploy-bundle", "highstate-calc", "highstate-start", "highstate-update", "highstate-finish",
]
GREETING = "Hello from spiro-deploy!"
FAILING_STATE = "spirodeploy-example-failure"
FAILING_COMMENT = "This state fails on purpose (make_project(fail=True))."


# --- helpers ------------------------------------------------------------------

def list_master(bed, deployment: str) -> list[str]:
    """The saltenv's files as the minion sees them (``salt-call cp.list_master``)."""
    ret = bed.salt_call_cli.run("cp.list_master", saltenv=f"{PROJECT}/{deployment}")
    assert ret.returncode == 0, ret
    return sorted(ret.data)


def get_file_str(bed, deployment: str, path: str) -> str:
    ret = bed.salt_call_cli.run("cp.get_file_str", f"salt://{path}",
                                saltenv=f"{PROJECT}/{deployment}")
    assert ret.returncode == 0 and isinstance(ret.data, str), ret
    return ret.data


def assert_not_deployed(bed, deployment: str, wait: float = 2.0) -> None:
    """The server has no such deployment (and does not get one for ``wait`` s:
    SpiroFS 0.3 deploys in a background thread, even after a 403)."""
    deadline = time.monotonic() + wait
    while True:
        assert not bed.deploy_dir(PROJECT, deployment).exists(), f"{deployment} was deployed"
        if time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    assert not bed.output_file(PROJECT, deployment).exists()


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main",
         *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    ).stdout.strip()


def tampered(token: str) -> str:
    """``token`` with one bit of its signature flipped: well-formed, readable
    caveats that allow the project, but a signature the server rejects."""
    padded = token + "=" * (-len(token) % 4)
    raw = bytearray(base64.urlsafe_b64decode(padded))
    assert raw.endswith(b"\n") and b"signature " in raw
    raw[-2] ^= 0x01  # last byte of the signature, before the packet's newline
    out = base64.urlsafe_b64encode(bytes(raw)).decode()
    return out if token.endswith("=") else out.rstrip("=")


# --- fixtures -----------------------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli-e2e")


@pytest.fixture(scope="module")
def project(spiro_bed, workdir) -> Path:
    """A copy of examples/hello, not in a git checkout (so no .gitcommit)."""
    return spiro_bed.make_project(workdir, "hello")


@pytest.fixture(scope="module")
def token(spiro_bed) -> str:
    """Issued for real for PROJECT only: ``salt-run spiro.issue_token``."""
    return spiro_bed.issue_token([PROJECT])


@pytest.fixture(scope="module")
def token_file(workdir, token) -> Path:
    path = workdir / "token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def https(spiro_bed, token_file) -> list[str]:
    """Options for the HTTPS engine, verified with the bed's CA."""
    return ["--server", spiro_bed.https_url, "--ssl-cert", str(spiro_bed.ca_cert),
            "--token-file", str(token_file)]


# --- deploy and highstate -------------------------------------------------------

def test_highstate_over_https_json(spiro_bed, project, https):
    deployment = "https-json"
    proc = run_cli(PROJECT, deployment, *https, "--json", cwd=project)
    assert proc.returncode == 0, describe(proc)
    events, report = events_and_report(proc)
    token = Path(https[https.index("--token-file") + 1]).read_text().strip()
    assert token not in proc.stdout + proc.stderr  # not in events, report or messages

    # The documented order, one update for our one minion.
    assert names(events) == HIGHSTATE_EVENTS, events
    data = dict(events)
    assert all(isinstance(d.get("msg"), str) for _, d in events), events
    assert data["highstate-start"]["minions"] == [spiro_bed.minion_id]
    assert data["highstate-update"]["minion"] == spiro_bed.minion_id
    assert data["highstate-update"]["result"]["retcode"] == 0

    # The minion really applied the state.
    assert spiro_bed.output_file(PROJECT, deployment).read_text().splitlines() == [
        GREETING, f"project: {PROJECT}", f"deployment: {deployment}",
        f"minion: {spiro_bed.minion_id}",
    ]

    # The report says so.
    assert report["result"] is True and report["exit_code"] == 0, report
    assert report["summary"] == f"Deployed {PROJECT}/{deployment}: 1 of 1 minions reported"
    assert report["minions"] == {"expected": [spiro_bed.minion_id],
                                 "reported": [spiro_bed.minion_id], "failed": [],
                                 "unreported": []}
    minion = report["results"][spiro_bed.minion_id]
    assert minion["succeeded"] is True and minion["failed"] == []
    assert [s["id"] for s in minion["changed"]] == ["hello-file"]
    assert report["deployed"] is True and report["finished"] is True
    assert [e["event"] for e in report["events"]] == HIGHSTATE_EVENTS
    assert report["bundle"]["file_count"] == len(SALT_FILES)  # the manifest is not counted


def test_no_highstate_deploys_only(spiro_bed, project, https):
    deployment = "no-highstate"
    proc = run_cli(PROJECT, deployment, *https, "--no-highstate", "--json", cwd=project)
    assert proc.returncode == 0, describe(proc)
    events, report = events_and_report(proc)
    assert names(events) == ["deploy-bundle"]
    assert report["summary"] == f"Deployed {PROJECT}/{deployment} (no highstate)"
    assert report["highstate"] is False and report["minions"]["expected"] == []

    deployed = spiro_bed.deploy_dir(PROJECT, deployment)
    for path in (*SALT_FILES, MANIFEST):
        assert (deployed / path).is_file(), path
    # Give a (wrongly) started highstate time to write before checking it did not.
    time.sleep(2)
    assert not spiro_bed.output_file(PROJECT, deployment).exists()
    assert not spiro_bed.output_file(PROJECT, deployment).parent.exists()


def test_failing_state_is_reported(spiro_bed, https, tmp_path):
    deployment = "failing"
    failing = spiro_bed.make_project(tmp_path, "failing", fail=True)
    try:
        # Human output: the failed state, its comment, and the summary.
        proc = run_cli(PROJECT, deployment, *https, cwd=failing)
        assert proc.returncode == 1, describe(proc)
        out = proc.stdout
        assert re.search(rf"^== {re.escape(spiro_bed.minion_id)}: .*1 failed ==$", out, re.M), out
        assert re.search(rf"^  FAILED   test\.fail_without_changes {FAILING_STATE}$", out, re.M), out
        assert re.search(rf"^ +{re.escape(FAILING_COMMENT)}$", out, re.M), out
        assert out.rstrip().splitlines()[-1] == (
            f"Deployed {PROJECT}/{deployment}: 1 of 1 minions reported; "
            f"failed: {spiro_bed.minion_id}")
        assert "Traceback" not in proc.stderr

        # --json: the report marks the minion failed, with the state and comment.
        proc = run_cli(PROJECT, deployment, *https, "--json", cwd=failing)
        assert proc.returncode == 1, describe(proc)
        events, report = events_and_report(proc)
        assert names(events) == HIGHSTATE_EVENTS
        assert report["result"] is False and report["exit_code"] == 1
        assert report["minions"]["failed"] == [spiro_bed.minion_id]
        minion = report["results"][spiro_bed.minion_id]
        assert minion["succeeded"] is False
        assert [(s["id"], s["comment"], s["result"]) for s in minion["failed"]] == [
            (FAILING_STATE, FAILING_COMMENT, False)]
        assert minion["retcode"] != 0
        # The other state still ran.
        assert spiro_bed.output_file(PROJECT, deployment).is_file()
    finally:
        spiro_bed.remove_deployment(PROJECT, deployment)


# --- bundle contents as the minion sees them ---------------------------------------

def assert_manifest_served(bed, deployment: str, listed: list[str], bundle_file: Path) -> dict:
    """``.spirodeploy.json`` as served equals the uploaded bundle's, lists every
    other served file, and each file the server holds has the listed sha256."""
    served = json.loads(get_file_str(bed, deployment, MANIFEST))
    import tarfile

    with tarfile.open(bundle_file) as tar:
        names_in_tar = tar.getnames()
        uploaded = json.loads(tar.extractfile(MANIFEST).read())
    assert names_in_tar[-1] == MANIFEST
    assert served == uploaded
    assert sorted(f["path"] for f in served["files"]) == [p for p in listed if p != MANIFEST]
    deployed = bed.deploy_dir(PROJECT, deployment)
    for entry in served["files"]:
        data = (deployed / entry["path"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["size"], entry["sha256"])
    return served


def test_artifact_bundle_contents(spiro_bed, project, https, workdir):
    deployment = "artifact"
    (project / "build").mkdir(exist_ok=True)
    (project / "build" / "app.txt").write_text("the artifact\n")
    (project / "build" / "ignored.txt").write_text("not an artifact\n")
    bundle_file = workdir / "artifact-bundle.tar"
    proc = run_cli(PROJECT, deployment, *https, "--no-highstate", "--artifact", "build/app.txt",
                   "--output", str(bundle_file), cwd=project)
    assert proc.returncode == 0, describe(proc)

    expected = sorted([MANIFEST, "_artifacts/build/app.txt", *SALT_FILES])
    listed = list_master(spiro_bed, deployment)
    assert listed == expected
    assert get_file_str(spiro_bed, deployment, "_artifacts/build/app.txt") == "the artifact\n"
    served = assert_manifest_served(spiro_bed, deployment, listed, bundle_file)
    assert served["gitcommit"] is None


def test_git_source_bundle_contents(spiro_bed, https, token_file, tmp_path):
    deployment = "source-git"
    root = spiro_bed.make_project(tmp_path, "gitproj")
    (root / "src").mkdir()
    (root / "src" / "app.py").write_text("print('hello')\n")
    (root / ".gitignore").write_text("*.log\n")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    commit = git(root, "rev-parse", "HEAD")
    described = git(root, "describe", "--always", "--all")
    # Neither of these is in HEAD, so `git archive HEAD` leaves them out.
    (root / "untracked.txt").write_text("not committed\n")
    (root / "debug.log").write_text("ignored by git\n")

    bundle_file = tmp_path / "git-bundle.tar"
    proc = run_cli(PROJECT, deployment, *https, "--no-highstate", "--include-source", "git",
                   "--output", str(bundle_file), cwd=root)
    assert proc.returncode == 0, describe(proc)

    expected = sorted([".gitcommit", MANIFEST, "_source/.gitignore", "_source/src/app.py",
                       *SALT_FILES])
    listed = list_master(spiro_bed, deployment)
    assert listed == expected
    assert get_file_str(spiro_bed, deployment, ".gitcommit").splitlines() == [commit, described]
    served = assert_manifest_served(spiro_bed, deployment, listed, bundle_file)
    assert served["gitcommit"].splitlines() == [commit, described]


def test_fs_source_bundle_contents(spiro_bed, token, tmp_path):
    deployment = "source-fs"
    root = spiro_bed.make_project(tmp_path, "fsproj")
    (root / "src").mkdir()
    (root / "src" / "app.py").write_text("print('hello')\n")
    (root / "notes.txt").write_text("notes\n")
    (root / "debug.log").write_text("ignored\n")
    (root / "cache").mkdir()
    (root / "cache" / "big.bin").write_bytes(b"\0" * 1024)
    (root / ".spiroignore").write_text("*.log\ncache/\n")
    (root / ".git").mkdir()  # VCS metadata is never bundled (no commit: no .gitcommit either)
    (root / ".git" / "config").write_text("[core]\n")
    # The token file sits in the project, passed through the environment:
    # it must not be swept into the bundle.
    (root / ".token").write_text(token + "\n")

    # So must the bundle written with --output inside the project.
    proc = run_cli(PROJECT, deployment, "--no-highstate", "--include-source", "fs",
                   "--ssl-cert", str(spiro_bed.ca_cert), "--output", "bundle.tar", cwd=root,
                   env={"SPIRO_URL": spiro_bed.https_url, "SPIRO_TOKEN_FILE": ".token"})
    assert proc.returncode == 0, describe(proc)
    assert (root / "bundle.tar").is_file()

    expected = sorted([MANIFEST, "_source/.spiroignore", "_source/notes.txt",
                       "_source/src/app.py", *SALT_FILES])
    assert list_master(spiro_bed, deployment) == expected


# --- auth ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["garbage", "bad-signature"])
def test_bad_token_is_rejected_with_401(spiro_bed, project, token, tmp_path, kind):
    deployment = f"bad-token-{kind}"
    bad = tampered(token) if kind == "bad-signature" else "not-a-valid-token"
    bad_file = tmp_path / "bad-token"
    bad_file.write_text(bad + "\n")
    proc = run_cli(PROJECT, deployment, "--server", spiro_bed.https_url,
                   "--ssl-cert", str(spiro_bed.ca_cert), "--token-file", str(bad_file),
                   cwd=project)
    assert proc.returncode == 5, describe(proc)
    assert_single_line_error(proc, "rejected the token (HTTP 401)", "nothing was deployed")
    assert bad not in proc.stdout + proc.stderr  # the token is never shown
    assert_not_deployed(spiro_bed, deployment)


def test_token_for_another_project_is_refused_before_upload(spiro_bed, project, tmp_path):
    """SpiroFS 0.3 answers 403 *and deploys anyway*, so the client must not
    send the bundle: it reads the token's own caveats and refuses first."""
    deployment = "other-project-token"
    other = spiro_bed.issue_token(["some-other-project"])
    other_file = tmp_path / "other-token"
    other_file.write_text(other + "\n")
    args = [PROJECT, deployment, "--server", spiro_bed.https_url,
            "--ssl-cert", str(spiro_bed.ca_cert), "--token-file", str(other_file)]

    proc = run_cli(*args, cwd=project)
    assert proc.returncode == 5, describe(proc)
    assert_single_line_error(proc, f"may not deploy project {PROJECT!r}", "some-other-project",
                             "nothing was sent")
    assert "Deployed" not in proc.stdout

    proc = run_cli(*args, "--json", cwd=project)
    assert proc.returncode == 5, describe(proc)
    objs = json_lines(proc)
    assert [list(obj) for obj in objs] == [["error"]], objs
    assert objs[0]["error"]["exit_code"] == 5

    # Wait a little: a bundle that reached the server would be deployed in the
    # background after the 403.
    assert_not_deployed(spiro_bed, deployment, wait=5)


def test_token_for_another_project_is_refused_before_bundling(spiro_bed, project, tmp_path):
    other_file = tmp_path / "other-token"
    other_file.write_text(spiro_bed.issue_token(["some-other-project"]) + "\n")
    proc = run_cli(PROJECT, "other-project-token-early", "--server", spiro_bed.https_url,
                   "--ssl-cert", str(spiro_bed.ca_cert), "--token-file", str(other_file),
                   "--output", str(tmp_path / "bundle.tar"), cwd=project)
    assert proc.returncode == 5, describe(proc)
    assert proc.stdout == "", describe(proc)
    assert not (tmp_path / "bundle.tar").exists()


# --- TLS and plain HTTP ------------------------------------------------------------------

def test_default_verification_rejects_the_private_ca(spiro_bed, project, token_file):
    deployment = "tls-default"
    proc = run_cli(PROJECT, deployment, "--server", spiro_bed.https_url,
                   "--token-file", str(token_file), cwd=project)
    assert proc.returncode == 4, describe(proc)
    line = assert_single_line_error(proc, f"TLS verification of {spiro_bed.https_url} failed",
                                    "--ssl-cert")
    assert "certificate verify failed" in line, line
    assert proc.stdout.count("\n") <= 1  # at most the "Deploying N files" line
    assert_not_deployed(spiro_bed, deployment)


def test_insecure_over_https_works_and_warns(spiro_bed, project, token_file):
    deployment = "https-insecure"
    proc = run_cli(PROJECT, deployment, "--server", spiro_bed.https_url, "--insecure",
                   "--token-file", str(token_file), cwd=project)
    assert proc.returncode == 0, describe(proc)
    assert re.search(r"^Warning: --insecure: the server is not authenticated", proc.stderr, re.M), \
        describe(proc)
    # Human output: the server's messages in order, the minion's block, the summary.
    minion = re.escape(spiro_bed.minion_id)
    expected = [
        rf"Deploying {len(SALT_FILES)} files \([^)]+\) to {PROJECT}/{deployment}",
        r"Deploying bundle",
        r"Calculating minions to highstate",
        rf"Highstating 1 minions: {minion}",
        rf"== {minion}: 0 ok, 1 changed, 0 failed ==",
        r"  changed  file\.managed hello-file",
        r" +File .*/hello\.txt updated",
        r"Highstate complete",
        rf"Deployed {PROJECT}/{deployment}: 1 of 1 minions reported",
    ]
    lines = proc.stdout.splitlines()
    assert len(lines) == len(expected), describe(proc)
    for pattern, line in zip(expected, lines, strict=True):
        assert re.fullmatch(pattern, line), (pattern, describe(proc))
    assert spiro_bed.output_file(PROJECT, deployment).read_text().startswith(GREETING)


def test_insecure_warns_once_in_its_own_words(spiro_bed, project, token_file):
    deployment = "https-insecure-warning"
    proc = run_cli(PROJECT, deployment, "--server", spiro_bed.https_url, "--insecure",
                   "--no-highstate", "--token-file", str(token_file), cwd=project)
    assert proc.returncode == 0, describe(proc)
    assert proc.stderr.splitlines() == [
        "Warning: --insecure: the server is not authenticated; do not use this in production",
    ], describe(proc)


def test_plain_http_is_refused_without_insecure(spiro_bed, project, token_file):
    deployment = "http-refused"
    # A listener that records whether anyone connects to it.
    with socket.socket() as trap:
        trap.bind(("127.0.0.1", 0))
        trap.listen(4)
        trap.setblocking(False)
        trap_url = f"http://127.0.0.1:{trap.getsockname()[1]}/"
        for url in (trap_url, spiro_bed.http_url):
            proc = run_cli(PROJECT, deployment, "--server", url, "--token-file", str(token_file),
                           cwd=project)
            assert proc.returncode == 2, describe(proc)
            assert_single_line_error(proc, "refusing plain HTTP", "--insecure")
        with pytest.raises(BlockingIOError):
            trap.accept()  # nobody connected
    assert_not_deployed(spiro_bed, deployment)


def test_insecure_with_plain_http_works(spiro_bed, project, token_file):
    deployment = "http-insecure"
    # Server and token from the environment this time.
    proc = run_cli(PROJECT, deployment, "--insecure", "--no-highstate", "--json", cwd=project,
                   env={"SPIRO_URL": spiro_bed.http_url, "SPIRO_TOKEN_FILE": str(token_file)})
    assert proc.returncode == 0, describe(proc)
    assert "Warning: --insecure" in proc.stderr
    events, report = events_and_report(proc)
    assert names(events) == ["deploy-bundle"] and report["result"] is True
    assert (spiro_bed.deploy_dir(PROJECT, deployment) / "top.sls").is_file()
