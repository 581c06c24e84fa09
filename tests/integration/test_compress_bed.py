"""``--compress`` against the real bed: SpiroFS 0.3 deploys a gzip bundle as it is."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.support import MANIFEST, SALT_FILES, describe, events_and_report, names, run_cli

pytestmark = pytest.mark.timeout(240)

PROJECT = "e2e-compress"


def list_master(bed, deployment: str) -> list[str]:
    """The saltenv's files as the minion sees them."""
    ret = bed.salt_call_cli.run("cp.list_master", saltenv=f"{PROJECT}/{deployment}")
    assert ret.returncode == 0, ret
    return sorted(ret.data)


def served_files(bed, deployment: str) -> dict[str, str]:
    """Every file the server extracted for the saltenv, by path, with its sha256."""
    root = bed.deploy_dir(PROJECT, deployment)
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            out[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def project(spiro_bed, tmp_path_factory) -> Path:
    root = spiro_bed.make_project(tmp_path_factory.mktemp("compress"), "hello")
    (root / "dist").mkdir()
    (root / "dist" / "noise.bin").write_bytes(os.urandom(3 << 20))
    (root / "dist" / "log.json").write_text(
        "".join(json.dumps({"n": i, "msg": "request served"}) + "\n" for i in range(60000)))
    return root


@pytest.fixture(scope="module")
def token_file(spiro_bed, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("compress-token") / "token"
    path.write_text(spiro_bed.issue_token([PROJECT]) + "\n")
    return path


def test_a_compressed_deploy_serves_the_same_files(spiro_bed, project, token_file, tmp_path):
    https = ["--server", spiro_bed.https_url, "--ssl-cert", str(spiro_bed.ca_cert),
             "--token-file", str(token_file), "--no-history", "--json",
             "--artifact", "dist/noise.bin", "--artifact", "dist/log.json"]
    plain = run_cli(PROJECT, "plain", *https, "--no-highstate", cwd=project)
    assert plain.returncode == 0, describe(plain)
    out = tmp_path / "bundle.tar.gz"
    packed = run_cli(PROJECT, "packed", *https, "--compress", "--output", str(out), cwd=project)
    assert packed.returncode == 0, describe(packed)

    events, report = events_and_report(packed)
    assert names(events)[0] == "deploy-bundle" and names(events)[-1] == "highstate-finish"
    assert report["result"] is True, describe(packed)
    sent = out.read_bytes()
    assert sent[:2] == b"\x1f\x8b"  # what went out was gzip ...
    assert report["bundle"]["sha256"] == hashlib.sha256(sent).hexdigest()
    _, plain_report = events_and_report(plain)
    assert report["bundle"]["tar_sha256"] == plain_report["bundle"]["sha256"]
    assert report["bundle"]["size"] < plain_report["bundle"]["size"] - (1 << 20)

    # ... and the server extracted exactly what the plain deploy gave it.
    assert served_files(spiro_bed, "packed") == served_files(spiro_bed, "plain")
    assert list_master(spiro_bed, "packed") == sorted(
        [MANIFEST, "_artifacts/dist/log.json", "_artifacts/dist/noise.bin", *SALT_FILES])
    # The minion highstated from the compressed deploy.
    assert spiro_bed.output_file(PROJECT, "packed").exists()


def test_compression_gets_a_big_bundle_under_the_plain_http_limit(spiro_bed, token_file,
                                                                  tmp_path):
    root = spiro_bed.make_project(tmp_path, "big")
    (root / "dist").mkdir()
    with open(root / "dist" / "zeros.bin", "wb") as fh:
        fh.truncate(120 << 20)  # over the plain-HTTP server's 100 MB body limit
    http = ["--server", spiro_bed.http_url, "--insecure", "--token-file", str(token_file),
            "--no-history", "--no-highstate", "--artifact", "dist/zeros.bin"]
    refused = run_cli(PROJECT, "big", *http, cwd=root)
    assert refused.returncode != 0, describe(refused)
    packed = run_cli(PROJECT, "big", *http, "--compress", cwd=root)
    assert packed.returncode == 0, describe(packed)
    assert (spiro_bed.deploy_dir(PROJECT, "big") / "_artifacts/dist/zeros.bin").stat().st_size \
        == 120 << 20
