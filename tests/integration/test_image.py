"""The container image, built from the Dockerfile and smoke-tested: `make test-image`.

Marked ``image`` and left out of the default run (pytest.ini: ``-m "not
image"``): it needs root, podman and a few minutes. .ci/run runs it.

The image is built by ``.ci/build-image`` (podman; see containers notes in
that script). No image registry is reachable here, so the Dockerfile's
``FROM debian:bookworm-slim`` is made from Debian's packages with mmdebstrap
and tagged with that name: the one substitution. Containers run with runc
and explicit ulimits, which is what works on these machines.

The tests run the image as a user would: ``--help``; a ``--dry-run`` of
examples/hello in a mounted project as an unprivileged uid, whose files must
come out owned by that uid; and a real deploy over the host network to the
test bed (HTTPS, verified against the bed's CA, with a token for one project).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from spirodeploy import __version__
from tests.saltbed import bed

pytestmark = [pytest.mark.image, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
TAG = "localhost/spiro-deploy:ci"
#: An unprivileged uid/gid with no entry in the image's /etc/passwd, as a CI
#: runner's often is not.
CALLER = 4321
PROJECT = "image-smoke"
PODMAN_RUN = [
    "podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", "run", "--rm",
    "--network=host", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096",
]


def describe(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


@pytest.fixture(scope="module")
def image() -> str:
    """Build the image (podman's layer cache makes a rebuild quick)."""
    started = time.monotonic()
    proc = subprocess.run([str(REPO / ".ci" / "build-image"), TAG], cwd=REPO,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=840)
    assert proc.returncode == 0, f"image build failed: {describe(proc)}"
    print(f"\nimage {TAG} built in {time.monotonic() - started:.0f}s; "
          + proc.stdout.strip().splitlines()[-1])
    return TAG


def podman_run(image: str, *args: str, options: tuple[str, ...] = (),
               timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*PODMAN_RUN, *options, image, *args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def caller_project(tmp_path: Path) -> Path:
    """A copy of examples/hello owned by the unprivileged caller."""
    project = tmp_path / "hello"
    shutil.copytree(bed.EXAMPLE_PROJECT, project)
    for path in [project, *project.rglob("*")]:
        os.chown(path, CALLER, CALLER)
    return project


def as_caller(project: Path, *extra: str) -> tuple[str, ...]:
    return ("--user", f"{CALLER}:{CALLER}", "-v", f"{project}:/project", *extra)


def test_help_and_version(image):
    proc = podman_run(image, "--help")
    assert proc.returncode == 0, describe(proc)
    assert "usage: spiro-deploy" in proc.stdout and "--dry-run" in proc.stdout, describe(proc)
    proc = podman_run(image, "--version")
    assert proc.returncode == 0 and __version__ in proc.stdout, describe(proc)


def test_runs_unprivileged_and_carries_oci_labels(image):
    proc = podman_run(image, "-c", "import os; print(os.getuid(), os.getgid())",
                      options=("--entrypoint", "python3"))
    assert proc.returncode == 0, describe(proc)
    uid, gid = map(int, proc.stdout.split())
    assert uid != 0 and gid != 0, f"the image runs as root by default: {proc.stdout}"
    proc = subprocess.run(["podman", "image", "inspect", image, "--format",
                           "{{json .Config.Labels}}"], capture_output=True, text=True)
    assert f'"org.opencontainers.image.version":"{__version__}"' in proc.stdout, describe(proc)
    assert '"org.opencontainers.image.licenses":"Apache-2.0"' in proc.stdout, describe(proc)


def test_dry_run_in_a_mounted_project_writes_files_the_caller_owns(image, tmp_path):
    project = caller_project(tmp_path)
    proc = podman_run(image, "--dry-run", "--manifest", "--output", "bundle.tar", PROJECT, "prod",
                      options=as_caller(project))
    assert proc.returncode == 0, describe(proc)
    assert "hello/init.sls" in proc.stdout, describe(proc)
    bundle = project / "bundle.tar"
    assert (bundle.stat().st_uid, bundle.stat().st_gid) == (CALLER, CALLER)
    with tarfile.open(bundle) as tar:
        names = set(tar.getnames())
    assert {"top.sls", "hello/init.sls", ".spirodeploy.json"} <= names, sorted(names)


def test_real_deploy_to_the_bed_over_the_host_network(image, tmp_path, spiro_bed):
    project = caller_project(tmp_path)
    (project / "job.token").write_text(spiro_bed.issue_token([PROJECT], lifespan=900))
    shutil.copy(spiro_bed.ca_cert, project / "ca.pem")
    for name in ("job.token", "ca.pem"):
        os.chown(project / name, CALLER, CALLER)
    (project / "job.token").chmod(0o600)
    deployment = f"container-{os.getpid()}"

    proc = podman_run(
        image, "--ssl-cert", "/project/ca.pem", "--no-progress", PROJECT, deployment,
        options=as_caller(project, "-e", f"SPIRO_URL={spiro_bed.https_url}",
                          "-e", "SPIRO_TOKEN_FILE=/project/job.token"),
    )
    assert proc.returncode == 0, describe(proc)
    written = spiro_bed.output_file(PROJECT, deployment)
    assert written.is_file(), f"the minion's highstate wrote nothing\n{describe(proc)}"
    assert deployment in written.read_text()
