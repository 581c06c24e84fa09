"""``salt-run spirodeploy.deploy`` prints its progress as plain lines (issue 14, section 2).

Salt prints a runner's progress events with the outputter the event names
(``salt.client.mixins.print_async_event``); without one, ``nested`` dumps
each event on eight lines.  The runner names ``spirodeploy_progress``
(``_output/``), synced to the master here the way the README's second
install route says (file_roots, then ``salt-run saltutil.sync_output``).
salt-run runs without ``--out``, as a person would run it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def synced_outputter(spiro_bed):
    master = spiro_bed.master
    dest = Path(master.config["file_roots"]["base"][0]) / "_output"
    dest.mkdir(exist_ok=True)
    shutil.copy2(REPO / "_output" / "spirodeploy_progress.py", dest / "spirodeploy_progress.py")
    try:
        ret = spiro_bed.salt_run_cli.run("saltutil.sync_output")
        assert ret.returncode == 0, ret
        assert "output.spirodeploy_progress" in ret.data, ret.data
        yield
    finally:
        (dest / "spirodeploy_progress.py").unlink()


def salt_run_plain(spiro_bed, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """salt-run as a person runs it: no --out (salt-factories adds --out=json)."""
    cmdline = [arg for arg in spiro_bed.salt_run_cli.cmdline(*args)
               if not arg.startswith(("--out=", "--out-indent="))]
    environ = dict(spiro_bed.salt_run_cli.environ or {}, **env)
    import os

    return subprocess.run(cmdline, capture_output=True, text=True, timeout=240,
                          env={**os.environ, **environ})


def test_salt_run_progress_reads_as_plain_lines(spiro_bed, synced_outputter, tmp_path):
    project = spiro_bed.make_project(tmp_path)
    try:
        proc = salt_run_plain(spiro_bed, "spirodeploy.deploy", "hello", "s-plain",
                              f"root={project}", f"server={spiro_bed.https_url}",
                              f"ssl_cert={spiro_bed.ca_cert}",
                              env={"SPIRO_TOKEN": spiro_bed.root_token})
    finally:
        spiro_bed.remove_deployment("hello", "s-plain")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    # The progress lines, each as itself, in the CLI's terms ...
    assert "Deploying bundle" in lines
    assert any(line.startswith("Highstating 1 minions") for line in lines), lines
    assert f"== {spiro_bed.minion_id}: 0 ok, 1 changed, 0 failed ==" in lines
    assert "Deployed hello/s-plain: 1 of 1 minions reported" in lines
    # ... and no event dumps around them.
    progress = lines[:lines.index("Deployed hello/s-plain: 1 of 1 minions reported") + 1]
    for dump in ("_stamp:", "suffix:", "message:", "event:", "progress"):
        assert not [line for line in progress if line.strip().startswith(dump)], progress
    assert spiro_bed.root_token not in proc.stdout
