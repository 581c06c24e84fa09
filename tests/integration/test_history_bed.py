"""History, rollback and promotion end to end, against the real bed.

The CLI runs as a subprocess with its own history directory; what the real
SpiroFS server serves is checked through the minion (``cp.list_master``,
``cp.get_file_str`` of the served ``.spirodeploy.json``) and the file the
real highstate writes.  Project ``hist``, one deployment per test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spirodeploy.history import HistoryStore
from tests.support import describe

pytestmark = pytest.mark.timeout(300)

PROJECT = "hist"
SCRUBBED_ENV = ("SPIRO_URL", "SPIRO_TOKEN", "SPIRO_TOKEN_FILE", "SPIRO_HISTORY_DIR",
                "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("history-bed")


@pytest.fixture(scope="module")
def good(spiro_bed, workdir) -> Path:
    return spiro_bed.make_project(workdir / "good", "hello")


@pytest.fixture(scope="module")
def bad(spiro_bed, workdir) -> Path:
    return spiro_bed.make_project(workdir / "bad", "hello", fail=True)


@pytest.fixture(scope="module")
def options(spiro_bed, workdir) -> list[str]:
    token = workdir / "token"
    token.write_text(spiro_bed.issue_token([PROJECT]) + "\n")
    return ["--server", spiro_bed.https_url, "--ssl-cert", str(spiro_bed.ca_cert),
            "--token-file", str(token)]


@pytest.fixture
def hdir(tmp_path) -> Path:
    return tmp_path / "history"


def cli(*args: str, cwd: Path, hdir: Path, options: list[str]) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    environ.update({"NO_COLOR": "1", "SPIRO_HISTORY_DIR": str(hdir)})
    return subprocess.run([sys.executable, "-m", "spirodeploy", *args, *options], cwd=cwd,
                          env=environ, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=200, check=False)


def served(bed, deployment: str) -> tuple[list[str], dict]:
    """The saltenv's files and manifest, as the minion sees them."""
    files = bed.salt_call_cli.run("cp.list_master", saltenv=f"{PROJECT}/{deployment}")
    assert files.returncode == 0, files
    text = bed.salt_call_cli.run("cp.get_file_str", "salt://.spirodeploy.json",
                                 saltenv=f"{PROJECT}/{deployment}")
    assert text.returncode == 0 and isinstance(text.data, str), text
    return sorted(files.data), json.loads(text.data)


def manifest_of(project: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "spirodeploy", PROJECT, "x", "--dry-run",
                           "--output", str(project.parent / "m.tar")], cwd=project,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    from spirodeploy.manifest import read_manifest

    return read_manifest(str(project.parent / "m.tar"))


@pytest.fixture
def deployment(spiro_bed, request):
    name = request.param
    yield name
    spiro_bed.remove_deployment(PROJECT, name)


@pytest.mark.parametrize("deployment", ["h-rollback"], indirect=True)
def test_rollback_after_a_failed_highstate(spiro_bed, good, bad, options, hdir, deployment):
    def run(*a, cwd=good):
        return cli(*a, cwd=cwd, hdir=hdir, options=options)

    first = run(PROJECT, deployment)
    assert first.returncode == 0, describe(first)
    failed = run(PROJECT, deployment, cwd=bad)
    assert failed.returncode == 1, describe(failed)
    assert "fail.sls" in served(spiro_bed, deployment)[0]
    output = spiro_bed.output_file(PROJECT, deployment)
    output.unlink()

    back = run(PROJECT, deployment, "--rollback")
    assert back.returncode == 0, describe(back)
    assert f"Rolling back {PROJECT}/{deployment} to {PROJECT}/{deployment}#1" in back.stdout
    files, manifest = served(spiro_bed, deployment)
    assert "fail.sls" not in files and "hello/init.sls" in files
    assert manifest["digest"] == manifest_of(good)["digest"]
    assert output.exists()  # the minion was highstated again

    listing = json.loads(run(PROJECT, deployment, "--history", "--json").stdout)["history"]
    assert [(e["id"], e["exit_code"], e["rollback_of"]) for e in listing["entries"]] == [
        (3, 0, 2), (2, 1, None), (1, 0, None)]
    assert listing["served"] == 3


@pytest.mark.parametrize("deployment", ["h-auto"], indirect=True)
def test_rollback_on_failure(spiro_bed, good, bad, options, hdir, deployment):
    assert cli(PROJECT, deployment, cwd=good, hdir=hdir, options=options).returncode == 0
    output = spiro_bed.output_file(PROJECT, deployment)
    output.unlink()
    proc = cli(PROJECT, deployment, "--rollback-on-failure", cwd=bad, hdir=hdir, options=options)
    assert proc.returncode == 1, describe(proc)
    assert "rolled back to" in proc.stderr and "the rollback succeeded" in proc.stderr
    files, manifest = served(spiro_bed, deployment)
    assert "fail.sls" not in files
    assert manifest["digest"] == manifest_of(good)["digest"]
    assert output.exists()


@pytest.mark.parametrize("deployment", ["h-prod"], indirect=True)
def test_promotion_serves_byte_identical_content(spiro_bed, good, options, hdir, deployment):
    staging = "h-staging"
    try:
        assert cli(PROJECT, staging, cwd=good, hdir=hdir, options=options).returncode == 0
        proc = cli(PROJECT, deployment, "--promote-from", staging, cwd=good, hdir=hdir,
                   options=options)
        assert proc.returncode == 0, describe(proc)
        src, dst = spiro_bed.deploy_dir(PROJECT, staging), spiro_bed.deploy_dir(PROJECT,
                                                                                 deployment)
        files = sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file())
        assert files and files == sorted(p.relative_to(dst) for p in dst.rglob("*")
                                         if p.is_file())
        for rel in files:
            assert (src / rel).read_bytes() == (dst / rel).read_bytes(), rel
        assert served(spiro_bed, staging) == served(spiro_bed, deployment)
    finally:
        spiro_bed.remove_deployment(PROJECT, staging)


@pytest.mark.parametrize("deployment", ["h-keep"], indirect=True)
def test_retention_and_a_corrupted_bundle(spiro_bed, good, bad, options, hdir, deployment,
                                          workdir):
    def run(*a, cwd=good):
        return cli(*a, cwd=cwd, hdir=hdir, options=options)

    assert run(PROJECT, deployment, "--no-highstate").returncode == 0
    other = spiro_bed.make_project(workdir / "other", "hello")
    (other / "_salt" / "extra.sls").write_text("{}\n")
    assert run(PROJECT, deployment, "--no-highstate", cwd=other).returncode == 0
    proc = run(PROJECT, deployment, "--no-highstate", "--keep", "1", cwd=bad)
    assert proc.returncode == 0, describe(proc)
    store = HistoryStore(str(hdir))
    kept = [e for e in store.entries(PROJECT, deployment) if store.has_bundle(e["sha256"])]
    assert [e["id"] for e in kept] == [3]
    proc = run(PROJECT, deployment, "--rollback", "--to", "1")
    assert proc.returncode == 2 and "no longer kept" in proc.stderr, describe(proc)

    # Keep them all again, then corrupt one: it is refused and named.
    assert run(PROJECT, deployment, "--no-highstate", cwd=other).returncode == 0
    [entry] = [e for e in store.entries(PROJECT, deployment) if e["id"] == 4]
    bundle = Path(store.bundle_path(entry["sha256"]))
    data = bytearray(bundle.read_bytes())
    data[700] ^= 0x20
    bundle.write_bytes(bytes(data))
    before = served(spiro_bed, deployment)
    proc = run(PROJECT, deployment, "--rollback", "--to", "4", "--force")
    assert proc.returncode == 2, describe(proc)
    assert f"stored bundle {bundle}" in proc.stderr and "corrupt" in proc.stderr
    time.sleep(1)
    assert served(spiro_bed, deployment) == before  # nothing deployed


def test_two_deploys_record_at_once(spiro_bed, good, options, hdir):
    names = ["h-par-1", "h-par-2"]
    environ = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    environ.update({"NO_COLOR": "1", "SPIRO_HISTORY_DIR": str(hdir)})
    try:
        procs = [subprocess.Popen([sys.executable, "-m", "spirodeploy", PROJECT, name,
                                   "--no-highstate", *options], cwd=good, env=environ,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for name in names]
        for proc in procs:
            _, err = proc.communicate(timeout=200)
            assert proc.returncode == 0, err
            assert "Warning" not in err, err
        warnings = []
        store = HistoryStore(str(hdir), on_warning=warnings.append)
        assert sorted(e["deployment"] for e in store.entries(PROJECT)) == names
        assert warnings == []
        assert len({e["sha256"] for e in store.entries(PROJECT)}) == 1  # same bundle, stored once
        assert store.verified_bundle(store.entries(PROJECT)[0])
    finally:
        for name in names:
            spiro_bed.remove_deployment(PROJECT, name)


@pytest.fixture(scope="module")
def runner(spiro_bed):
    """The runner synced to the master from its file_roots (the README's sync route)."""
    import shutil

    repo = Path(__file__).resolve().parents[2]
    dest = Path(spiro_bed.master.config["file_roots"]["base"][0]) / "_runners"
    dest.mkdir(exist_ok=True)
    target = dest / "spirodeploy_mod.py"
    created = not target.exists()
    shutil.copy2(repo / "_runners" / "spirodeploy_mod.py", target)
    synced = spiro_bed.salt_run_cli.run("saltutil.sync_runners")
    assert synced.returncode == 0, synced
    yield [f"server={spiro_bed.https_url}", f"ssl_cert={spiro_bed.ca_cert}"]
    if created:
        target.unlink()


@pytest.mark.parametrize("deployment", ["h-salt"], indirect=True)
def test_salt_rollback_refuses_when_someone_else_deployed(spiro_bed, good, bad, workdir,
                                                          options, hdir, runner, deployment):
    env = {"SPIRO_TOKEN": spiro_bed.root_token}
    run = spiro_bed.salt_run_cli.run
    first = run("spirodeploy.deploy", PROJECT, deployment, f"root={good}", "highstate=False",
                *runner, env=env)
    assert first.returncode == 0, first
    second = run("spirodeploy.deploy", PROJECT, deployment, f"root={bad}", "highstate=False",
                 *runner, env=env)
    assert second.returncode == 0, second
    listing = run("spirodeploy.history", PROJECT, deployment)
    assert listing.returncode == 0, listing
    entries = listing.data["entries"]
    assert [(e["id"], e["served"]) for e in entries][:2] == [(2, True), (1, False)], listing.data
    assert "served .spirodeploy.json" in listing.data["served_from"], listing.data

    # Someone else deploys in between, from another host (here: the CLI, its own history).
    other = spiro_bed.make_project(workdir / "between", "hello")
    (other / "_salt" / "between.sls").write_text("{}\n")
    proc = cli(PROJECT, deployment, "--no-highstate", cwd=other, hdir=hdir, options=options)
    assert proc.returncode == 0, describe(proc)
    between = served(spiro_bed, deployment)

    refused = run("spirodeploy.rollback", PROJECT, deployment, *runner, env=env)
    assert refused.returncode == 2, refused
    assert "someone else deployed in between" in refused.data["error"], refused.data
    assert served(spiro_bed, deployment) == between  # nothing deployed

    forced = run("spirodeploy.rollback", PROJECT, deployment, "force=True", "highstate=False",
                 *runner, env=env)
    assert forced.returncode == 0, forced
    assert forced.data["rolled_back_to"].startswith(f"{PROJECT}/{deployment}#1 ")
    files, manifest = served(spiro_bed, deployment)
    assert "between.sls" not in files and "fail.sls" not in files
    assert manifest["digest"] == manifest_of(good)["digest"]
