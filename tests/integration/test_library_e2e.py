"""The library end to end: the seed's sample (``TarballBuilder`` + ``upload``)
deploys through the real SpiroFS server, and the minion applies it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spirodeploy.builder import TarballBuilder, fs_scanner
from spirodeploy.client import upload
from spirodeploy.errors import TokenNotAllowed

pytestmark = pytest.mark.timeout(180)

PROJECT = "e2e-lib"
HIGHSTATE_EVENTS = [
    "deploy-bundle", "highstate-calc", "highstate-start", "highstate-update", "highstate-finish",
]
SALT_FILES = ["hello/files/hello.txt.j2", "hello/init.sls", "top.sls"]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main",
         *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    ).stdout.strip()


@pytest.fixture
def project(spiro_bed, tmp_path) -> Path:
    """examples/hello in a git checkout with one commit, plus a build artifact."""
    root = spiro_bed.make_project(tmp_path, "libproj")
    (root / "src").mkdir()
    (root / "src" / "app.py").write_text("print('hello')\n")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    (root / "build").mkdir()
    (root / "build" / "app.tar.gz").write_bytes(b"pretend this is a tarball\n")
    return root


def seed_sample(url: str, token: str, project: str, deployment: str, ca: str):
    """The README's library example, as written there (paths relative to the cwd)."""
    with TarballBuilder() as builder:
        try:
            builder.add_gitcommit()
        except FileNotFoundError:
            print("Warning: No git binary", file=sys.stderr)
        builder.add_saltdir("_salt")
        builder.add_artifact("build/app.tar.gz", "build/app.tar.gz")
        builder.add_source(fs_scanner)

    events = []
    for event, data in upload(url, token, builder.buffer, project, deployment,
                              highstate=True, sslverify=ca):
        print(event, data["msg"])
        events.append((event, data))
    return builder, events


def test_seed_sample_deploys_through_the_real_server(spiro_bed, project, monkeypatch):
    deployment = "seed-sample"
    monkeypatch.chdir(project)
    token = spiro_bed.issue_token([PROJECT])
    commit = git(project, "rev-parse", "HEAD")

    builder, events = seed_sample(spiro_bed.https_url, token, PROJECT, deployment,
                                  str(spiro_bed.ca_cert))

    assert [name for name, _ in events] == HIGHSTATE_EVENTS, events
    data = dict(events)
    assert all(isinstance(d["msg"], str) for _, d in events)
    assert data["highstate-start"]["minions"] == [spiro_bed.minion_id]
    update = data["highstate-update"]
    assert update["minion"] == spiro_bed.minion_id and update["result"]["retcode"] == 0, update

    # The minion applied it.
    assert spiro_bed.output_file(PROJECT, deployment).read_text().splitlines() == [
        "Hello from spiro-deploy!", f"project: {PROJECT}", f"deployment: {deployment}",
        f"minion: {spiro_bed.minion_id}",
    ]

    # And serves exactly what the builder put in the bundle.
    saltenv = f"{PROJECT}/{deployment}"
    ret = spiro_bed.salt_call_cli.run("cp.list_master", saltenv=saltenv)
    assert ret.returncode == 0, ret
    bundled = sorted(entry["path"] for entry in builder.manifest["files"])
    assert sorted(ret.data) == sorted([*bundled, ".spirodeploy.json"])
    # The build dir is both an artifact and, being on disk, part of the source.
    assert bundled == sorted([
        ".gitcommit", "_artifacts/build/app.tar.gz", "_source/build/app.tar.gz",
        "_source/src/app.py", *SALT_FILES,
    ])
    ret = spiro_bed.salt_call_cli.run("cp.get_file_str", "salt://.gitcommit", saltenv=saltenv)
    assert ret.returncode == 0 and ret.data.splitlines()[0] == commit, ret
    ret = spiro_bed.salt_call_cli.run("cp.get_file_str", "salt://.spirodeploy.json",
                                      saltenv=saltenv)
    assert ret.returncode == 0 and json.loads(ret.data) == builder.manifest, ret


def test_upload_refuses_a_token_for_another_project(spiro_bed, project, monkeypatch):
    """``upload()`` checks the token's caveats when called, before any byte is
    sent (SpiroFS 0.3 would answer 403 and deploy anyway)."""
    deployment = "seed-other-token"
    monkeypatch.chdir(project)
    other = spiro_bed.issue_token(["some-other-project"])
    with TarballBuilder() as builder:
        builder.add_saltdir("_salt")
    with pytest.raises(TokenNotAllowed, match="nothing was sent") as excinfo:
        upload(spiro_bed.https_url, other, builder.buffer, PROJECT, deployment,
               highstate=True, sslverify=str(spiro_bed.ca_cert))
    assert excinfo.value.exit_code == 5
    assert excinfo.value.server_has_bundle is False
    time.sleep(3)  # a bundle that reached the server would be deployed in the background
    assert not spiro_bed.deploy_dir(PROJECT, deployment).exists()
    assert not spiro_bed.output_file(PROJECT, deployment).exists()
