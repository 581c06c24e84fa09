#!/usr/bin/env python3
"""Check the built sdist and wheel for what twine and check-wheel-contents do not.

    python .ci/check_dist.py dist/

* The sdist holds every tracked file or directory the README names in
  backquotes (`examples/hello`, `bench/run.py`, `Makefile`, ...), since the
  README is also the PyPI page, plus LICENSE and CHANGELOG.md.
* Neither holds a virtualenv, VCS metadata, caches, benchmark output or a
  token file.
* The wheel holds the Salt modules where spirodeploy.saltloader looks for
  them, the licence, and the console and salt.loader entry points.

Prints one line per problem and exits 1 if there is any.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import tarfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORBIDDEN = re.compile(r"(^|/)(\.venv|\.git|\.hg|\.cache|__pycache__|\.hypothesis|\.pytest_cache"
                       r"|bench/work)(/|$)|(^|/)(\.token|[^/]*\.token|\.netrc)$|\.py[cod]$")
# Named by the README in commands (make test, make demo, make bench, .ci/run)
# rather than as paths, or needed to build and test from the sdist.
SDIST_NEEDS = ["LICENSE", "CHANGELOG.md", "pyproject.toml", "setup.py", "MANIFEST.in",
               "Makefile", "pytest.ini", "Dockerfile", ".dockerignore", ".ci/run",
               "tests/conftest.py", "tests/saltbed/demo.py", "tests/unit", "tests/integration",
               "examples/hello/_salt/top.sls", "bench/run.py"]
WHEEL_NEEDS = [
    "spirodeploy/__init__.py",
    "spirodeploy/cli.py",
    "spirodeploy/saltloader.py",
    "spirodeploy/salt_modules/spirodeploy_mod.py",
    "spirodeploy/salt_runners/spirodeploy_mod.py",
    "spirodeploy/salt_states/spirodeploy_mod.py",
    "spirodeploy/salt_output/spirodeploy_progress.py",
]
ENTRY_POINTS = [
    "spiro-deploy = spirodeploy.cli:run",
    "module_dirs = spirodeploy.saltloader:module_dirs",
    "runner_dirs = spirodeploy.saltloader:runner_dirs",
    "states_dirs = spirodeploy.saltloader:states_dirs",
    "outputter_dirs = spirodeploy.saltloader:outputter_dirs",
]


def tracked() -> set:
    """Paths tracked by git (files and their parent directories); empty outside a checkout."""
    try:
        out = subprocess.run(["git", "-C", ROOT, "ls-files", "-z"], capture_output=True,
                             check=True).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        return set()
    paths = set()
    for f in filter(None, out.split("\0")):
        paths.add(f)
        while "/" in f:
            f = f.rpartition("/")[0]
            paths.add(f)
    return paths


def readme_paths() -> list:
    """Repository paths the README names in backquotes."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        text = fh.read()
    known = tracked()
    found = []
    for word in re.findall(r"`([A-Za-z0-9_.][\w./-]*)`", text):
        path = word.rstrip("/")
        if ".." in path.split("/") or not path.strip("."):
            continue
        if path in known or (not known and os.path.exists(os.path.join(ROOT, path))):
            found.append(path)
    return sorted(set(found))


def check_sdist(path: str) -> list:
    problems = []
    with tarfile.open(path) as tf:
        names = [m.name.partition("/")[2] for m in tf.getmembers()]
    present = set(names)
    for n in names:
        while "/" in n:
            n = n.rpartition("/")[0]
            present.add(n)
    for need in readme_paths():
        if need not in present:
            problems.append(f"{os.path.basename(path)}: missing {need} (the README refers to it)")
    for need in SDIST_NEEDS:
        if need not in present:
            problems.append(f"{os.path.basename(path)}: missing {need}")
    problems += [f"{os.path.basename(path)}: must not contain {n}"
                 for n in names if n and FORBIDDEN.search(n)]
    return problems


def check_wheel(path: str) -> list:
    problems = []
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        entry = next((n for n in names if n.endswith(".dist-info/entry_points.txt")), None)
        entry_text = zf.read(entry).decode() if entry else ""
    for need in WHEEL_NEEDS:
        if need not in names:
            problems.append(f"{os.path.basename(path)}: missing {need}")
    if not any(re.search(r"\.dist-info/licenses/LICENSE$", n) for n in names):
        problems.append(f"{os.path.basename(path)}: missing the LICENSE file")
    for line in ENTRY_POINTS:
        if line not in entry_text:
            problems.append(f"{os.path.basename(path)}: missing entry point {line!r}")
    problems += [f"{os.path.basename(path)}: must not contain {n}"
                 for n in names if FORBIDDEN.search(n) or n.startswith(("tests/", "bench/"))]
    return problems


def main(argv: list) -> int:
    outdir = argv[1] if len(argv) > 1 else "dist"
    sdists = glob.glob(os.path.join(outdir, "*.tar.gz"))
    wheels = glob.glob(os.path.join(outdir, "*.whl"))
    if len(sdists) != 1 or len(wheels) != 1:
        print(f"check_dist: expected one sdist and one wheel in {outdir}, "
              f"found {len(sdists)} and {len(wheels)}", file=sys.stderr)
        return 1
    problems = check_sdist(sdists[0]) + check_wheel(wheels[0])
    for p in problems:
        print(f"check_dist: {p}", file=sys.stderr)
    if not problems:
        print(f"check_dist: {os.path.basename(sdists[0])} and {os.path.basename(wheels[0])}: OK "
              f"({len(readme_paths())} README paths present)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
