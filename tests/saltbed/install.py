"""Fetch the real SpiroFS server (spirofs 0.3 from PyPI) for the test bed.

spirofs is AGPL and is never vendored: it is pip-installed into
``<repo>/.cache/spirofs-0.3`` (gitignored) on first use, so a fresh clone works.

The directory is deliberately *not* put on ``sys.path``: spirofs registers
``salt.loader`` entry points that Salt 3008 refuses, and the salt-master only
needs the module directories, which the bed points it at through the
``*_dirs`` master options (see ``bed.master_config``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

SPIROFS_VERSION = "0.3"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TARGET = REPO_ROOT / ".cache" / f"spirofs-{SPIROFS_VERSION}"


def ensure_spirofs(target: Path | None = None) -> Path:
    """Install spirofs==0.3 into ``target`` if needed; return its ``spirofs`` package dir."""
    target = Path(target or DEFAULT_TARGET)
    pkg = target / "spirofs"
    if (pkg / "engines" / "spiro.py").is_file():
        return pkg
    target.parent.mkdir(parents=True, exist_ok=True)
    # Install next to the target and rename, so an interrupted install never
    # leaves a half-populated directory that would be trusted next time.
    staging = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--no-deps", "--target", str(staging), f"spirofs=={SPIROFS_VERSION}",
    ]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(
            f"could not install spirofs=={SPIROFS_VERSION} (needed by the test bed):\n"
            f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
        )
    try:
        staging.rename(target)
    except OSError:
        # Someone else finished first; theirs is as good as ours.
        shutil.rmtree(staging, ignore_errors=True)
    if not (pkg / "engines" / "spiro.py").is_file():
        raise RuntimeError(f"spirofs install at {target} is incomplete")
    return pkg


if __name__ == "__main__":
    print(ensure_spirofs())
