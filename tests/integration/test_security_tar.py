"""Crafted tars against the real bed.

A token scoped to project ``PROJECT`` must not write outside it, whatever
tar ``--bundle`` (or the Salt module's ``upload``) is given.  Each attack
bundle is refused before anything is sent (exit 2, one error line), and the
server's spirofs cache shows nothing landed: no ``INJECTED`` file anywhere,
the other project's deployment unchanged, and no deployment (or staging
directory) of the attacker's.  The tars are built byte by byte here, as an
attacker would.

Also: ``--bundle /dev/stdin`` deploys (a pipe cannot be read twice, so the
check and the upload share one read), and what is deployed is the plain tar
that was checked.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.support import (
    REPO,
    SCRUBBED_ENV,
    assert_single_line_error,
    describe,
)

pytestmark = pytest.mark.timeout(240)

PROJECT = "sectar"
VICTIM = "sectar-v"
INJECTED = f"../../{VICTIM}/prod/INJECTED.sls"
#: The victim's file that stands in for the master's ``master.pem``.
SECRET = "secret.sls"


# --- crafted tars ------------------------------------------------------------------

def member(name: str, kind: str = "file", data: bytes = b"pwned: {}\n",
           link: str = "") -> bytes:
    """One member's header (and data blocks), no end-of-archive blocks."""
    info = tarfile.TarInfo(name)
    if kind == "file":
        info.size = len(data)
        return info.tobuf(tarfile.PAX_FORMAT) + data + b"\0" * (-len(data) % 512)
    info.type = {"sym": tarfile.SYMTYPE, "lnk": tarfile.LNKTYPE, "dir": tarfile.DIRTYPE}[kind]
    info.linkname = link
    return info.tobuf(tarfile.PAX_FORMAT)


END = b"\0" * 1024
COMPRESS = {"gzip": lambda d: gzip.compress(d, mtime=0), "bzip2": bz2.compress,
            "xz": lzma.compress}


def duplicate_name_through_symlink() -> bytes:
    """A duplicate name: file ``s`` would be written through the first ``s``, a symlink."""
    return (member("s", "sym", link=f"../../{VICTIM}/prod/INJECTED.sls") + member("s")
            + member("ok.sls", data=b"ok: {}\n") + member("s", "sym", link="ok.sls") + END)


def hard_link_through_symlinked_dir() -> bytes:
    """A hard link through a symlinked directory: ``h`` would link the victim's
    secret (as it would link the master's ``master.pem``)."""
    return (member("d", "sym", link=f"../../{VICTIM}/prod") + member("h", "lnk", link=f"d/{SECRET}")
            + member("d", "sym", link=".") + END)


def concatenated(kind: str) -> bytes:
    """Concatenated streams: a harmless first one without end-of-archive blocks, then
    INJECTED."""
    return (COMPRESS[kind](member("top.sls", data=b"base: {}\n"))
            + COMPRESS[kind](member(INJECTED) + END))


def lzma_polyglot() -> bytes:
    """A polyglot: a plain tar (member ``]``) whose first name field is
    also a whole ``.lzma`` stream of a tar holding INJECTED; the server's
    tarfile tries xz/lzma before plain tar."""
    stream = lzma.compress(tarfile.TarInfo(INJECTED).tobuf(tarfile.USTAR_FORMAT),
                           format=lzma.FORMAT_ALONE, filters=[
                               {"id": lzma.FILTER_LZMA1, "lc": 3, "lp": 0, "pb": 2,
                                "dict_size": 4096}])
    assert len(stream) <= 100
    header = bytearray(tarfile.TarInfo("]").tobuf(tarfile.USTAR_FORMAT))
    header[0:100] = stream.ljust(100, b"\0")
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + END


ATTACKS = {
    "duplicate-name": (duplicate_name_through_symlink, "'s' is a symlink that points outside"),
    "hardlink-symlinked-dir": (hard_link_through_symlinked_dir,
                               "'d' is a symlink that points outside"),
    "concat-gzip": (lambda: concatenated("gzip"), "INJECTED.sls' has a '..' component"),
    "concat-bzip2": (lambda: concatenated("bzip2"), "INJECTED.sls' has a '..' component"),
    "concat-xz": (lambda: concatenated("xz"), "INJECTED.sls' has a '..' component"),
    "lzma-polyglot": (lzma_polyglot, "read by the server as xz or lzma data"),
}


# --- helpers -------------------------------------------------------------------------

def run_cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    environ.update({"NO_COLOR": "1", "PYTHONUNBUFFERED": "1"})
    return subprocess.run([sys.executable, "-m", "spirodeploy", *args], env=environ, check=False,
                          input=stdin if stdin is not None else b"", capture_output=True,
                          timeout=150)


def text(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess(proc.args, proc.returncode,
                                       proc.stdout.decode(errors="replace"),
                                       proc.stderr.decode(errors="replace"))


def snapshot(path: Path) -> dict:
    """Every file under ``path`` (relative name -> bytes), and the directory's inode."""
    files = {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
             if p.is_file() or p.is_symlink()}
    return {"inode": path.stat().st_ino, "files": files}


def assert_nothing_landed(bed, deployment: str, victim_before: dict) -> None:
    """Checked for a while: SpiroFS 0.3 deploys in a background thread."""
    spirofs = bed.cachedir / "spirofs"
    deadline = time.monotonic() + 2.0
    while True:
        assert not list(spirofs.rglob("INJECTED*")), list(spirofs.rglob("INJECTED*"))
        assert snapshot(bed.deploy_dir(VICTIM, "prod")) == victim_before
        ours = spirofs / PROJECT
        leftovers = sorted(p.name for p in ours.iterdir()) if ours.exists() else []
        assert not [n for n in leftovers if n.startswith(deployment)], leftovers
        if time.monotonic() >= deadline:
            break
        time.sleep(0.25)


# --- fixtures ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("security-tar")


@pytest.fixture(scope="module")
def https(spiro_bed, workdir) -> list[str]:
    """Options for the HTTPS engine with a token for PROJECT only."""
    token_file = workdir / "token"
    token_file.write_text(spiro_bed.issue_token([PROJECT]) + "\n")
    token_file.chmod(0o600)
    return ["--server", spiro_bed.https_url, "--ssl-cert", str(spiro_bed.ca_cert),
            "--token-file", str(token_file)]


@pytest.fixture(scope="module")
def victim(spiro_bed, workdir) -> dict:
    """Another project's deployment (deployed with the root token); its snapshot."""
    bundle = workdir / "victim.tar"
    bundle.write_bytes(member(SECRET, data=b"secret: master.pem stand-in\n")
                       + member("init.sls", data=b"victim: {}\n") + END)
    root_token = workdir / "root-token"
    root_token.write_text(spiro_bed.root_token + "\n")
    root_token.chmod(0o600)
    proc = text(run_cli(VICTIM, "prod", "--server", spiro_bed.https_url, "--ssl-cert",
                        str(spiro_bed.ca_cert), "--token-file", str(root_token),
                        "--no-highstate", "--bundle", str(bundle)))
    assert proc.returncode == 0, describe(proc)
    before = snapshot(spiro_bed.deploy_dir(VICTIM, "prod"))
    assert set(before["files"]) == {SECRET, "init.sls"}
    return before


@pytest.fixture(scope="module")
def salt_upload(spiro_bed):
    """The execution module synced to the minion from the master's file_roots."""
    file_root = Path(spiro_bed.master.config["file_roots"]["base"][0])
    dest = file_root / "_modules" / "spirodeploy_mod.py"
    dest.parent.mkdir(exist_ok=True)
    existed = dest.exists()
    if not existed:
        shutil.copy2(REPO / "_modules" / "spirodeploy_mod.py", dest)
    try:
        ret = spiro_bed.salt_call_cli.run("saltutil.sync_modules", saltenv="base")
        assert ret.returncode == 0, ret
        yield
    finally:
        if not existed:
            dest.unlink()


@pytest.fixture(autouse=True)
def undo_landings(spiro_bed):
    """After each test, remove what an attack that got through left, so that a
    failure does not show up again in the tests after it."""
    yield
    spirofs = spiro_bed.cachedir / "spirofs"
    for path in spirofs.rglob("INJECTED*"):
        path.unlink()
    ours = spirofs / PROJECT
    for path in ours.glob("att-*") if ours.exists() else ():
        shutil.rmtree(path, ignore_errors=True)


# --- tests ---------------------------------------------------------------------------

@pytest.mark.parametrize("attack", list(ATTACKS))
def test_crafted_bundle_is_refused_and_nothing_lands(spiro_bed, https, victim, workdir, attack):
    build, fragment = ATTACKS[attack]
    path = workdir / f"{attack}.tar"
    path.write_bytes(build())
    deployment = f"att-{attack}"
    proc = text(run_cli(PROJECT, deployment, *https, "--no-highstate", "--bundle", str(path)))
    assert_nothing_landed(spiro_bed, deployment, victim)
    assert proc.returncode == 2, describe(proc)
    assert_single_line_error(proc, fragment)


@pytest.mark.parametrize("attack", ["duplicate-name", "concat-gzip"])
def test_salt_module_upload_refuses_crafted_bundle(spiro_bed, https, victim, workdir,
                                                   salt_upload, attack):
    build, fragment = ATTACKS[attack]
    path = workdir / f"salt-{attack}.tar"
    path.write_bytes(build())
    deployment = f"att-salt-{attack}"
    settings = [f"server={spiro_bed.https_url}", f"ssl_cert={spiro_bed.ca_cert}",
                f"token_file={https[https.index('--token-file') + 1]}"]
    ret = spiro_bed.salt_call_cli.run("--retcode-passthrough", "spirodeploy.upload", PROJECT,
                                      deployment, str(path), "highstate=False", *settings)
    assert_nothing_landed(spiro_bed, deployment, victim)
    assert ret.returncode == 2, ret
    assert ret.data["result"] is False and ret.data["exit_code"] == 2, ret
    assert fragment in ret.data["error"] and "\n" not in ret.data["error"], ret
    assert ret.data["events"] == [], ret


def test_bundle_from_stdin_deploys_the_checked_plain_tar(spiro_bed, https, victim):
    plain = member("init.sls", data=b"from-stdin: {}\n") + member("x.sls", data=b"x: {}\n") + END
    proc = run_cli(PROJECT, "stdin", *https, "--no-highstate", "--json", "--bundle",
                   "/dev/stdin", stdin=gzip.compress(plain[:512]) + gzip.compress(plain[512:]))
    shown = text(proc)
    assert proc.returncode == 0, describe(shown)
    assert "Traceback" not in shown.stderr
    report = json.loads(shown.stdout.splitlines()[-1])["report"]
    assert report["bundle"]["sha256"] == hashlib.sha256(plain).hexdigest()
    assert report["bundle"]["size"] == len(plain) and report["bundle"]["file_count"] == 2
    deployed = spiro_bed.deploy_dir(PROJECT, "stdin")
    assert sorted(p.name for p in deployed.iterdir()) == ["init.sls", "x.sls"]
    assert (deployed / "init.sls").read_bytes() == b"from-stdin: {}\n"
    assert snapshot(spiro_bed.deploy_dir(VICTIM, "prod")) == victim
