"""The pip route: an installed spiro-deploy is all Salt needs (``salt.loader`` entry points).

These run real ``salt-call --local`` and ``salt-run`` processes of this
virtualenv with a configuration that names no module directory at all, so
the modules can only come from the entry points that setup.py registers.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory):
    """Minion and master configs for local runs, with no *_dirs options."""
    root = tmp_path_factory.mktemp("salt-local")
    conf = root / "conf"
    conf.mkdir()
    common = "\n".join([
        "user: " + __import__("getpass").getuser(),
        f"pki_dir: {root}/{{role}}/pki",
        f"cachedir: {root}/{{role}}/cache",
        f"sock_dir: {root}/{{role}}/sock",
        f"log_file: {root}/{{role}}/log",
        f"root_dir: {root}/{{role}}",
    ])
    (conf / "minion").write_text("id: pip-route\nfile_client: local\n"
                                 + common.format(role="minion") + "\n")
    (conf / "master").write_text(common.format(role="master") + "\n")
    return conf


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, cwd="/", timeout=100)


def test_entry_points_are_registered():
    points = {ep.name: ep.value for ep in metadata.entry_points(group="salt.loader")
              if ep.value.startswith("spirodeploy.")}
    assert points == {"module_dirs": "spirodeploy.saltloader:module_dirs",
                      "runner_dirs": "spirodeploy.saltloader:runner_dirs",
                      "states_dirs": "spirodeploy.saltloader:states_dirs",
                      "outputter_dirs": "spirodeploy.saltloader:outputter_dirs"}, (
        "pyproject.toml must register the salt.loader entry points (then reinstall)")


def test_salt_call_finds_the_module_and_the_state(config_dir):
    ret = run(str(BIN / "salt-call"), "--local", "-c", str(config_dir), "--out=json",
              "sys.list_functions", "spirodeploy")
    assert '"spirodeploy.deploy"' in ret.stdout and '"spirodeploy.status"' in ret.stdout, ret
    ret = run(str(BIN / "salt-call"), "--local", "-c", str(config_dir), "--out=json",
              "sys.list_state_functions", "spirodeploy")
    assert '"spirodeploy.deployed"' in ret.stdout, ret


def test_salt_run_finds_the_runner(config_dir):
    ret = run(str(BIN / "salt-run"), "-c", str(config_dir), "-d", "spirodeploy")
    assert "spirodeploy.deploy:" in ret.stdout and "spirodeploy.check_token:" in ret.stdout, ret
