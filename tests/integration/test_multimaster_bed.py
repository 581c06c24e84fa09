"""Deploying to two masters for real: two salt-masters with SpiroFS, one minion on both.

Each master has its own TLS CA and its own token key, so the CLI is given
one ``--server``, ``--ssl-cert`` and ``--token-file`` per master.  The
deployed project's state appends a line to a log on every highstate, so
the log counts the minion's highstates.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.saltbed.multimaster import spiro_multimaster_fixture  # noqa: F401

pytestmark = pytest.mark.timeout(600)


def make_project(tmp_path: Path, marker: str) -> Path:
    """A project whose highstate logs itself, and whose marker.txt says ``marker``."""
    salt_dir = tmp_path / "proj" / "_salt"
    salt_dir.mkdir(parents=True)
    (salt_dir / "top.sls").write_text("{{ saltenv|tojson }}:\n  '*':\n    - counted\n")
    (salt_dir / "marker.txt").write_text(marker + "\n")
    (salt_dir / "counted.sls").write_text("""\
{%- set out = salt['config.get']('spirodeploy_demo_dir') %}
{%- set log = [out, saltenv|replace('/', '-') ~ '.log']|join('/') %}
counted:
  cmd.run:
    - name: {{ ('echo highstated >> ' ~ log)|tojson }}
""")
    return salt_dir.parent


def run_cli(project: Path, tmp_path: Path, servers, tokens, *args: str):
    """spiro-deploy with one --server/--ssl-cert/--token-file per master."""
    options = []
    for i, (master, token) in enumerate(zip(servers, tokens, strict=True)):
        token_file = tmp_path / f"token-{i}"
        token_file.write_text(token)
        options += ["--server", master.url, "--ssl-cert", str(master.ca_cert),
                    "--token-file", str(token_file)]
    env = {**os.environ, "NO_COLOR": "1"}
    for name in ("SPIRO_URL", "SPIRO_TOKEN", "SPIRO_TOKEN_FILE"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "spirodeploy", *options, "--json", *args],
                          check=False, cwd=project, env=env, capture_output=True, text=True,
                          timeout=300)


def highstates(bed, saltenv: str) -> int:
    log = bed.output_dir / (saltenv.replace("/", "-") + ".log")
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_two_masters_one_highstate_same_content(spiro_multimaster, tmp_path):
    bed = spiro_multimaster
    first, second = bed.masters
    marker = uuid.uuid4().hex
    project = make_project(tmp_path, marker)
    result = run_cli(project, tmp_path, [first, second], [first.token, second.token],
                     "mm", "both")
    assert result.returncode == 0, result.stderr + result.stdout
    # Highstated once, by the first master only.
    assert highstates(bed, "mm/both") == 1
    # Both masters hold the same tree, and the minion gets the same file from each.
    for master in (first, second):
        marker_file = master.deploy_dir("mm", "both") / "marker.txt"
        assert marker_file.exists(), f"{master.id} does not have the new bundle"
        assert marker_file.read_text().strip() == marker
        got = bed.salt_call(master, "cp.get_file_str", "salt://marker.txt", "saltenv=mm/both")
        assert got.returncode == 0, got
        assert got.data.strip() == marker
    report = json.loads(result.stdout.splitlines()[-1])["report"]
    assert [(s["server"], s["status"]) for s in report["servers"]] == [
        (first.url, "deployed"), (second.url, "accepted")]
    assert report["minions"]["reported"] == [bed.minion_id]


def test_a_refusing_master_means_no_highstate_anywhere(spiro_multimaster, tmp_path):
    bed = spiro_multimaster
    first, second = bed.masters
    project = make_project(tmp_path, "refused")
    # The second master does not know the first one's key: 401, nothing deployed there.
    result = run_cli(project, tmp_path, [first, second], [first.token, first.token],
                     "mm", "refused")
    assert result.returncode == 5, result.stderr + result.stdout
    report = json.loads(result.stdout.splitlines()[-1])["report"]
    assert report["failed_servers"] == [second.url] and report["holders"] == []
    assert "Nothing was highstated" in report["error"] and second.url in report["error"]
    assert not first.deploy_dir("mm", "refused").exists()  # the first was never sent it
    assert not second.deploy_dir("mm", "refused").exists()
    assert highstates(bed, "mm/refused") == 0
