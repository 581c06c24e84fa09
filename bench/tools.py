"""The commands compared: ours (installed from a wheel), GNU tar, spiro-deploy 0.4."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from common import BENCH, OURS_VENV, PROJECT, REF_VENV, REF_VERSION, REPO, WORK
from inputs import Scenario
from measure import _tail

_ours: list[str] = []


def ours_bin() -> list[str]:
    """The command that runs spiro-deploy (see :func:`install_ours`)."""
    if _ours:
        return list(_ours)
    for candidate in (Path(sys.executable).parent / "spiro-deploy", REPO / ".venv" / "bin" / "spiro-deploy"):
        if candidate.exists():
            return [str(candidate)]
    return [sys.executable, "-m", "spirodeploy"]


def install_ours(src: Path | None = None) -> str | None:
    """Install this checkout (or the one at ``src``) as a user would: a wheel, in its own venv.

    The development venv has the checkout installed in editable mode, whose
    import hook costs every run about 13 ms of interpreter start-up (measured:
    23 vs 10 ms for ``python -c pass``) that no installed copy pays; 0.4 is
    measured from its own venv too.  Falls back to the development venv (its
    bytecode compiled first) when pip cannot build or install; returns a note.
    """
    # Another checkout (--ours-src: the same harness measures a before and an
    # after) gets a venv of its own, so neither reinstalls over the other.
    venv = OURS_VENV if src is None else OURS_VENV.with_name("ours-venv-src")
    python = venv / "bin" / "python"
    wheels = WORK / "ours-wheel"
    shutil.rmtree(wheels, ignore_errors=True)
    steps = [] if python.exists() else [[sys.executable, "-m", "venv", str(venv)]]
    steps += [[str(python), "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels),
               str(src or REPO)],
              [str(python), "-m", "pip", "install", "--quiet", "--force-reinstall", "--no-deps"],
              [str(python), "-m", "pip", "install", "--quiet"]]  # its dependencies, if missing
    for cmd in steps:
        if cmd[-1] == "--quiet" or cmd[-1] == "--no-deps":
            cmd = cmd + [str(w) for w in wheels.glob("spiro_deploy-*.whl")]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=WORK)
        if proc.returncode != 0:
            if src is not None:
                raise OSError(f"cannot install spiro-deploy from {src}: {_tail(proc.stderr)}")
            compile_ours()
            return f"could not install spiro-deploy from a wheel ({_tail(proc.stderr)}): measured " \
                   f"the development install, which starts about 13 ms slower"
    _ours[:] = [str(venv / "bin" / "spiro-deploy")]
    return None


def compile_ours() -> None:
    """Write our bytecode, as pip does when it installs a wheel.

    The checkout is installed in development mode, where a shell with
    PYTHONDONTWRITEBYTECODE set (or a stale .pyc) would make every timed run
    compile the sources again; 0.4's venv has its bytecode from pip.
    """
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "spirodeploy")],
                   check=True, stdout=subprocess.DEVNULL)


def venv_bin() -> Path:
    here = Path(sys.executable).parent
    return here if (here / "salt-master").exists() else REPO / ".venv" / "bin"


def ensure_ref_venv() -> Path:
    """spiro-deploy 0.4 from PyPI in its own venv; returns its bin dir."""
    bindir = REF_VENV / "bin"
    probe = [str(bindir / "python"), "-c",
             "import importlib.metadata as m; print(m.version('spiro-deploy'))"]
    try:
        if subprocess.run(probe, capture_output=True, text=True).stdout.strip() == REF_VERSION:
            return bindir
    except OSError:
        pass
    shutil.rmtree(REF_VENV, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(REF_VENV)], check=True)
    proc = subprocess.run([str(bindir / "python"), "-m", "pip", "install", "--quiet",
                           "--disable-pip-version-check", f"spiro-deploy=={REF_VERSION}"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise OSError(f"pip install spiro-deploy=={REF_VERSION} failed: {_tail(proc.stderr)}")
    return bindir


def build_cmds(sc: Scenario, out: Path, ref_bin: Path | None, artifacts: list[str] | None = None
               ) -> dict[str, list[str]]:
    artifacts = sc.artifacts if artifacts is None else artifacts
    tar_paths = [p for p in sc.tar_paths if p not in sc.artifacts] + artifacts
    cmds = {
        "ours": ours_bin() + ["-C", str(sc.root), "--dry-run", "--output", str(out), "--no-progress",
                              "--include-source", sc.source,
                              *[x for a in artifacts for x in ("--artifact", a)], PROJECT, sc.key],
        "tar": ["tar", "--sort=name", "-cf", str(out), "-C", str(sc.root), *tar_paths],
    }
    if ref_bin is not None:
        cmds["0.4"] = [str(ref_bin / "python"), str(BENCH / "ref_build.py"), str(out),
                       str(sc.root), sc.source, *artifacts]
    return cmds


def check_tar(out: Path, min_size: int, min_members: int = 0):
    """The output exists, is big enough, and GNU tar lists it cleanly (untimed)."""
    def check(rc: int, text: str) -> str | None:
        if not out.exists():
            return "FATAL: no output file"
        if out.stat().st_size < min_size:
            return f"FATAL: output is {out.stat().st_size} bytes, expected >= {min_size}"
        listing = subprocess.run(["tar", "-tf", str(out)], capture_output=True, text=True)
        members = [n for n in listing.stdout.splitlines() if not n.endswith("/")]
        if listing.returncode != 0 or listing.stderr.strip():
            return (f"output is not a valid tar: GNU tar -t says "
                    f"{' '.join(listing.stderr.split())[:160]!r} ({len(members)} members listed)")
        if len(members) < min_members:
            return f"output lists {len(members)} files, expected >= {min_members}"
        return None
    return check
