"""Narrowed tokens against the real SpiroFS 0.3 server (``spiro_bed``).

Tokens are issued for real (``salt-run spiro.issue_token``), narrowed offline
with ``spiro-token`` (``python -m spirodeploy.token_cli``), and used with
``spiro-deploy`` (``python -m spirodeploy``); the server's own verdict comes
from ``salt-run spiro.check_token`` (it verifies the signature chain and every
caveat) and from ``GET /``.  Deploys are made without highstate.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from spirodeploy import tokens
from tests.support import describe

pytestmark = pytest.mark.timeout(180)

ALLOWED, OTHER = "tok-a", "tok-b"
SCRUBBED_ENV = ("SPIRO_URL", "SPIRO_TOKEN", "SPIRO_TOKEN_FILE", "REQUESTS_CA_BUNDLE",
                "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR")


def run(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    environ["NO_COLOR"] = "1"
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=environ,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=150,
                          check=False)


def write_token(path: Path, token: str) -> Path:
    path.write_text(token + "\n")
    return path


def narrow(source: Path, out: Path, *args: str) -> dict:
    """``spiro-token --token-file SOURCE narrow ARGS --output OUT --json``."""
    proc = run("spirodeploy.token_cli", "--token-file", str(source), "narrow", *args,
               "--output", str(out), "--json", cwd=out.parent)
    assert proc.returncode == 0, describe(proc)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    return json.loads(proc.stdout)


def deploy(spiro_bed, project_dir: Path, token_file: Path, project: str,
           deployment: str) -> subprocess.CompletedProcess:
    return run("spirodeploy", project, deployment, "--no-highstate",
               "--server", spiro_bed.https_url, "--ssl-cert", str(spiro_bed.ca_cert),
               "--token-file", str(token_file), cwd=project_dir)


def server_allows(spiro_bed, token: str, project: str | None = None) -> bool:
    """The server's own check: ``salt-run spiro.check_token TOKEN [PROJECT]``."""
    args = [token] + ([project] if project else [])
    ret = spiro_bed.salt_run_cli.run("spiro.check_token", *args)
    assert ret.returncode == 0, ret
    verdict = ret.data if isinstance(ret.data, bool) else ret.stdout.strip()
    assert verdict in (True, False, "True", "False"), ret
    return verdict in (True, "True")


def deployed(spiro_bed, project: str, deployment: str) -> bool:
    return (spiro_bed.deploy_dir(project, deployment) / "top.sls").is_file()


def test_narrowed_token_deploys_its_project_only(spiro_bed, tmp_path):
    project_dir = spiro_bed.make_project(tmp_path)
    broad = write_token(tmp_path / "broad.token", spiro_bed.issue_token([ALLOWED, OTHER]))
    job = tmp_path / "job.token"
    info = narrow(broad, job, "--project", ALLOWED, "--lifetime", "5m")
    assert info["projects"] == [ALLOWED] and "token" not in info
    narrowed = job.read_text().strip()

    proc = deploy(spiro_bed, project_dir, job, ALLOWED, "narrowed")
    assert proc.returncode == 0, describe(proc)
    assert deployed(spiro_bed, ALLOWED, "narrowed")

    # The client refuses the other project before sending anything ...
    proc = deploy(spiro_bed, project_dir, job, OTHER, "narrowed")
    assert proc.returncode == 5, describe(proc)
    assert f"may not deploy project {OTHER!r}" in proc.stderr and "nothing was sent" in proc.stderr
    assert proc.stdout == "", describe(proc)
    # ... and the server itself refuses it too (while the broad token may).
    assert not server_allows(spiro_bed, narrowed, OTHER)
    assert server_allows(spiro_bed, narrowed, ALLOWED)
    assert server_allows(spiro_bed, broad.read_text().strip(), OTHER)
    time.sleep(3)  # a bundle that reached the server would be deployed after a 403
    assert not deployed(spiro_bed, OTHER, "narrowed")


def test_narrowed_token_stops_working_after_its_lifetime(spiro_bed, tmp_path):
    project_dir = spiro_bed.make_project(tmp_path)
    root = write_token(tmp_path / "root.token", spiro_bed.root_token)
    job = tmp_path / "job.token"
    info = narrow(root, job, "--project", ALLOWED, "--lifetime", "4s")
    narrowed = job.read_text().strip()
    auth = {"Authorization": f"Bearer {narrowed}"}
    assert requests.get(spiro_bed.http_url, headers=auth, timeout=10).status_code == 200

    time.sleep(max(0.0, info["not_after"] - time.time()) + 1)
    assert requests.get(spiro_bed.http_url, headers=auth, timeout=10).status_code == 401
    proc = deploy(spiro_bed, project_dir, job, ALLOWED, "expired")
    assert proc.returncode == 5, describe(proc)
    assert "expired" in proc.stderr and proc.stdout == "", describe(proc)
    assert not deployed(spiro_bed, ALLOWED, "expired")


def test_real_token_with_two_more_caveats_is_judged_by_intersection(spiro_bed, tmp_path):
    """A later caveat that allows more must not widen an earlier one, and a
    later expiry must not hide an earlier one (the server checks every caveat)."""
    project_dir = spiro_bed.make_project(tmp_path)
    issued = tokens.Macaroon.parse(spiro_bed.issue_token([ALLOWED, OTHER]))
    # Narrowed twice, the second time "wider" (made with the library: the CLI
    # refuses to widen).
    twice = (issued.add_first_party_caveat(json.dumps({"project_allow": [ALLOWED]}))
             .add_first_party_caveat(json.dumps({"project_allow": [ALLOWED, OTHER],
                                                 "not_after": time.time() + 600}))
             .serialize())
    assert server_allows(spiro_bed, twice, ALLOWED)
    assert not server_allows(spiro_bed, twice, OTHER)

    twice_file = write_token(tmp_path / "twice.token", twice)
    proc = run("spirodeploy.token_cli", "--token-file", str(twice_file), "inspect", "--json",
               cwd=tmp_path)
    assert proc.returncode == 0 and json.loads(proc.stdout)["projects"] == [ALLOWED], describe(proc)
    proc = deploy(spiro_bed, project_dir, twice_file, OTHER, "twice")
    assert proc.returncode == 5 and "nothing was sent" in proc.stderr, describe(proc)
    proc = deploy(spiro_bed, project_dir, twice_file, ALLOWED, "twice")
    assert proc.returncode == 0, describe(proc)
    assert deployed(spiro_bed, ALLOWED, "twice") and not deployed(spiro_bed, OTHER, "twice")

    expired_first = (issued.add_first_party_caveat(json.dumps({"not_after": time.time() - 1}))
                     .add_first_party_caveat(json.dumps({"not_after": time.time() + 600}))
                     .serialize())
    assert not server_allows(spiro_bed, expired_first)
    proc = deploy(spiro_bed, project_dir, write_token(tmp_path / "exp.token", expired_first),
                  ALLOWED, "twice-expired")
    assert proc.returncode == 5 and "expired" in proc.stderr, describe(proc)
    assert not deployed(spiro_bed, ALLOWED, "twice-expired")
