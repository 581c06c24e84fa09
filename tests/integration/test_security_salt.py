"""Names and yes/no arguments through Salt, on the real bed (SpiroFS 0.3,
salt-master, salt-minion).

* Names: SpiroFS joins them into ``<cachedir>/spirofs/<project>/<deployment>``,
  so project ``.`` is the spirofs directory itself (``. otherproj`` would
  replace every deployment of ``otherproj``) and deployment ``.`` is the
  project's directory (``myproj .`` would leave a dot-prefixed staging
  directory behind, served as a saltenv for ever).  Both must be refused
  before anything is sent.
* Yes/no: ``allow_empty`` and ``highstate`` read with ``bool()`` would take
  the text ``"false"`` as true (emptying a saltenv) and ``"no"`` as true
  (highstating).  Salt's CLI turns a bare ``false`` into a bool, but pillar,
  Jinja and orchestration arguments arrive as text; a quoted ``'"false"'``
  argument is that text.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from tests.support import call, describe, run_cli

pytestmark = pytest.mark.timeout(300)

PROJECT = "sec11"
OTHER = "sec11other"


def tree(path: Path) -> dict[str, str]:
    """Every file under ``path`` with the sha256 of its content."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def saltenv_dirs(bed) -> set[str]:
    """``<project>/<deployment>`` for every directory SpiroFS would list as a saltenv."""
    root = bed.cachedir / "spirofs"
    if not root.is_dir():
        return set()
    return {f"{p.name}/{d.name}" for p in root.iterdir() if p.is_dir()
            for d in p.iterdir() if d.is_dir()}


def cli_settings(bed) -> list[str]:
    return ["--server", bed.https_url, "--ssl-cert", str(bed.ca_cert)]


@pytest.fixture(scope="module")
def project(spiro_bed, tmp_path_factory):
    return spiro_bed.make_project(tmp_path_factory.mktemp("sec11-project"))


@pytest.fixture(scope="module")
def empty_project(tmp_path_factory):
    root = tmp_path_factory.mktemp("sec11-empty") / "empty"
    (root / "_salt").mkdir(parents=True)
    return root


def deploy_without_highstate(bed, project_dir: Path, project: str, deployment: str) -> None:
    proc = run_cli(project, deployment, "--no-highstate", *cli_settings(bed), cwd=project_dir,
                   env={"SPIRO_TOKEN": bed.root_token})
    assert proc.returncode == 0, describe(proc)
    assert (bed.deploy_dir(project, deployment) / ".spirodeploy.json").is_file()


def settle(seconds: float = 2.0) -> None:
    """SpiroFS deploys in a background thread, even after refusing a request: give a
    deploy that should not happen the time to happen."""
    time.sleep(seconds)


@pytest.mark.parametrize("names", [(".", OTHER), (PROJECT, "."), (PROJECT, ".stage"),
                                   (".", ".")])
def test_cli_refuses_names_the_server_maps_onto_another_directory(spiro_bed, project, names):
    deploy_without_highstate(spiro_bed, project, OTHER, "prod")
    other_before = tree(spiro_bed.deploy_dir(OTHER, "prod"))
    envs_before = saltenv_dirs(spiro_bed)
    try:
        proc = run_cli(*names, "--no-highstate", *cli_settings(spiro_bed), cwd=project,
                       env={"SPIRO_TOKEN": spiro_bed.root_token})
        assert proc.returncode == 2, describe(proc)
        assert "name" in proc.stderr and "Traceback" not in proc.stderr, describe(proc)
        settle()
        assert tree(spiro_bed.deploy_dir(OTHER, "prod")) == other_before
        assert saltenv_dirs(spiro_bed) == envs_before
    finally:
        # Only needed when the check fails: a stray staging directory is served for ever.
        for env in saltenv_dirs(spiro_bed) - envs_before:
            spiro_bed.remove_deployment(*env.split("/"))


def test_salt_call_allow_empty_false_as_text_keeps_the_saltenv(spiro_bed, synced, project,
                                                               empty_project):
    deploy_without_highstate(spiro_bed, project, PROJECT, "keep")
    before = tree(spiro_bed.deploy_dir(PROJECT, "keep"))
    for value in ("false", '"false"', '"no"', '"Off"'):
        ret = call(spiro_bed, "--retcode-passthrough", "spirodeploy.deploy", PROJECT, "keep",
                   f"root={empty_project}", f"allow_empty={value}", "highstate=False")
        assert ret.returncode == 2, ret
        assert ret.data["result"] is False and "allow_empty=True" in ret.data["error"], ret
        assert "--allow-empty" not in ret.data["error"], ret  # Salt's terms, not the CLI's
        settle(0.5)
        assert tree(spiro_bed.deploy_dir(PROJECT, "keep")) == before, value


def test_salt_call_highstate_no_as_text_does_not_highstate(spiro_bed, synced, project):
    deployment = "nohs"
    try:
        ret = call(spiro_bed, "spirodeploy.deploy", PROJECT, deployment, f"root={project}",
                   'highstate="no"')
        assert ret.returncode == 0, ret
        assert ret.data["highstate"] is False, ret
        assert [e["event"] for e in ret.data["events"]] == ["deploy-bundle"], ret
        assert (spiro_bed.deploy_dir(PROJECT, deployment) / ".spirodeploy.json").is_file()
        settle()
        assert not spiro_bed.output_file(PROJECT, deployment).exists()

        bad = call(spiro_bed, "--retcode-passthrough", "spirodeploy.deploy", PROJECT, "never",
                   f"root={project}", "highstate=maybe")
        assert bad.returncode == 2, bad
        assert bad.data["error"].startswith("highstate must be true or false"), bad
        assert "Traceback" not in bad.stdout + bad.stderr
        assert not spiro_bed.deploy_dir(PROJECT, "never").exists()
    finally:
        spiro_bed.remove_deployment(PROJECT, deployment)
