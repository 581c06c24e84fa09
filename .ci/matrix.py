#!/usr/bin/env python3
"""Run the test suite against each supported Salt and Python version.

    python3 .ci/matrix.py                 # every leg (what `make test-matrix` runs)
    python3 .ci/matrix.py salt3006 py312  # some legs
    python3 .ci/matrix.py --list          # the legs, with what each installs and runs
    python3 .ci/matrix.py salt3007 -- tests/integration/test_bed.py -x   # other pytest args

Each leg gets its own virtualenv, ``.venv-<leg>`` at the top of the checkout
(gitignored), made with that leg's interpreter (pyenv's 3.X, else
``python3.X`` on PATH). Into it go this checkout (editable),
the test extra of pyproject.toml with its ``salt==`` pin replaced by the leg's
Salt, and, for 3006 and 3007, Salt's own pinned requirement file from its
sdist (the versions its onedir packages ship; 3007.x's package metadata
declares no dependencies at all). A venv is
reused while its recipe (interpreter, Salt, pyproject.toml, setup.py) is
unchanged; otherwise it is made again from scratch.

The default `make test` (.venv, the pin in pyproject.toml) is one more line of
the matrix; .ci/run runs it and then this script. Any leg that fails,
including pytest's "no tests ran" (exit 5), fails the run; a summary with
each leg's install and test times is printed at the end.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 running the driver
    tomllib = None

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "matrix"


@dataclass(frozen=True)
class Leg:
    name: str
    python: str  #: "3.10": the interpreter's minor version
    salt: str | None  #: exact Salt version, or None for no Salt at all
    #: pytest arguments (paths); the whole suite by default.
    tests: tuple[str, ...] = ()
    #: Install the pinned requirement file Salt's sdist ships for this Python
    #: on Linux: the versions its onedir packages run. Needed for 3007.x, whose
    #: package metadata on PyPI declares no dependencies at all.
    salt_requirements: bool = False
    why: str = ""


# The support matrix. `make test` adds one line: Salt from pyproject.toml's
# test extra on the machine's python3 (3008.4 on Python 3.11 here).
LEGS = [
    Leg("salt3006", "3.10", "3006.28", salt_requirements=True,
        why="3006 LTS as its onedir ships it (Python 3.10); 3006.30 needs a certifi the index lacks"),
    Leg("salt3007", "3.10", "3007.14", salt_requirements=True,
        why="3007 (Python 3.10 onedir); 3007.17 needs a certifi the index lacks"),
    Leg("salt3008", "3.13", "3008.4", tests=("tests/unit",),
        why="3008.4 on the newest Python, unit tests (make test runs the whole suite on 3008.3); "
            "3008.5 needs a certifi the index lacks"),
    Leg("py312", "3.12", "3008.4", tests=("tests/unit",),
        why="the library, CLI and Salt modules' unit tests on Python 3.12"),
]


def find_python(minor: str) -> str:
    """The interpreter for ``minor`` ("3.10"): pyenv's newest 3.X.*, else python3.X on PATH.

    pyenv's own directories come first: its ``python3.X`` shim on PATH exists
    for every version but runs only the ones pyenv has activated.
    """
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = sorted(glob.glob(f"{root}/versions/{minor}.*/bin/python{minor}"),
                        key=lambda p: [int(x) for x in re.findall(r"\d+", Path(p).parts[-3])])
    on_path = shutil.which(f"python{minor}")
    for candidate in [*reversed(candidates), *([on_path] if on_path else [])]:
        if subprocess.run([candidate, "-c", ""], capture_output=True).returncode == 0:
            return candidate
    sys.exit(f"matrix: no Python {minor} (neither {root}/versions/{minor}.* nor python{minor} on PATH)")


def test_requirements(salt: str | None) -> list[str]:
    """pyproject.toml's test extra, its Salt pin replaced by ``salt``."""
    text = (REPO / "pyproject.toml").read_text()
    if tomllib is not None:
        extra = tomllib.loads(text)["project"]["optional-dependencies"]["test"]
    else:  # good enough for our own file: the test = [...] list of strings
        block = re.search(r"^test\s*=\s*\[(.*?)^\]", text, re.S | re.M).group(1)
        extra = [m.group(1) for m in re.finditer(r'^\s*"([^"]+)"', block, re.M)]
    reqs = [r for r in extra if not re.match(r"salt\s*[=<>!~]", r)]
    if len(reqs) == len(extra):
        sys.exit("matrix: pyproject.toml's test extra has no salt== pin to replace")
    if salt is not None:
        reqs.append(f"salt=={salt}")
    return reqs


def salt_requirement_file(salt: str, python: str, pip: list[str]) -> Path:
    """Salt's pinned Linux requirements for ``python``, from the Salt sdist (cached)."""
    dest = CACHE / f"salt-{salt}-requirements"
    # 3006 calls its lock files linux.lock, 3007 linux.txt.
    candidates = [dest / f"requirements/static/pkg/py{python}/linux.{ext}" for ext in ("txt", "lock")]
    for wanted in candidates:
        if wanted.is_file():
            return wanted
    download = CACHE / "downloads"
    run([*pip, "download", "--no-deps", "--no-binary", ":all:", "--dest", str(download),
         f"salt=={salt}"])
    [sdist] = glob.glob(str(download / f"salt-{salt}.tar.gz"))
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(sdist) as tar:
        prefix = f"salt-{salt}/requirements/"
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile()]
        for m in members:
            m.name = m.name[len(f"salt-{salt}/"):]
        tar.extractall(tmp, members=members, filter="data")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    for wanted in candidates:
        if wanted.is_file():
            return wanted
    sys.exit(f"matrix: Salt {salt}'s sdist has no requirements/static/pkg/py{python}/linux.txt or .lock")


def run(cmd: list[str], **kwargs) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, **kwargs)


def setup_leg(leg: Leg) -> Path:
    """Make (or reuse) the leg's venv; return its python."""
    venv = REPO / f".venv-{leg.name}"
    interpreter = find_python(leg.python)
    reqs = test_requirements(leg.salt)
    recipe = json.dumps({
        "python": subprocess.run([interpreter, "-c", "import sys; print(sys.version)"],
                                 capture_output=True, text=True, check=True).stdout.strip(),
        "requirements": reqs,
        "salt_requirements": leg.salt_requirements,
        "files": {f: hashlib.sha256((REPO / f).read_bytes()).hexdigest()
                  for f in ("pyproject.toml", "setup.py")},
    }, sort_keys=True)
    stamp = venv / ".matrix-recipe"
    py = venv / "bin" / "python"
    if stamp.is_file() and stamp.read_text() == recipe and py.exists():
        print(f"matrix: {leg.name}: reusing {venv.name}", flush=True)
        return py
    shutil.rmtree(venv, ignore_errors=True)
    run([interpreter, "-m", "venv", str(venv)])
    pip = [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    run([*pip, "--upgrade", "pip"])
    install = [*pip, "-e", str(REPO), *reqs]
    if leg.salt_requirements:
        install += ["-r", str(salt_requirement_file(leg.salt, leg.python, [str(py), "-m", "pip"]))]
    run(install)
    stamp.write_text(recipe)
    return py


def run_leg(leg: Leg, pytest_args: list[str]) -> tuple[int, float, float]:
    started = time.monotonic()
    py = setup_leg(leg)
    installed = time.monotonic()
    versions = subprocess.run(
        [str(py), "-c", "import sys, importlib.metadata as m\n"
         "v = lambda d: m.version(d) if any(True for _ in m.distributions(name=d)) else '-'\n"
         "print(f'Python {sys.version.split()[0]}, Salt {v(\"salt\")}, "
         "spiro-deploy {v(\"spiro-deploy\")}')"],
        capture_output=True, text=True).stdout.strip()
    print(f"matrix: {leg.name}: {versions}", flush=True)
    args = pytest_args or list(leg.tests)
    proc = subprocess.run([str(py), "-m", "pytest", *args], cwd=REPO, stdin=subprocess.DEVNULL)
    return proc.returncode, installed - started, time.monotonic() - installed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("legs", nargs="*", help="legs to run (default: all)")
    parser.add_argument("--list", action="store_true", help="show the legs and exit")
    parser.add_argument("--setup-only", action="store_true", help="make the venvs, run nothing")
    argv = sys.argv[1:] if argv is None else argv
    pytest_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, pytest_args = argv[:cut], argv[cut + 1:]
    opts = parser.parse_args(argv)
    by_name = {leg.name: leg for leg in LEGS}
    if opts.list:
        for leg in LEGS:
            print(f"{leg.name:9} Python {leg.python:5} Salt {leg.salt or '-':8} "
                  f"{' '.join(leg.tests) or 'whole suite':12} {leg.why}")
        return 0
    unknown = [name for name in opts.legs if name not in by_name]
    if unknown:
        parser.error(f"unknown leg(s) {', '.join(unknown)}; known: {', '.join(by_name)}")
    legs = [by_name[name] for name in opts.legs] if opts.legs else LEGS

    results = []
    for leg in legs:
        print(f"\n===== matrix leg {leg.name}: Python {leg.python}, Salt {leg.salt} =====", flush=True)
        if opts.setup_only:
            t0 = time.monotonic()
            setup_leg(leg)
            results.append((leg, 0, time.monotonic() - t0, 0.0))
            continue
        try:
            code, t_install, t_test = run_leg(leg, pytest_args)
        except subprocess.CalledProcessError as exc:
            print(f"matrix: {leg.name}: setup failed: {exc}", flush=True)
            code, t_install, t_test = 1, 0.0, 0.0
        results.append((leg, code, t_install, t_test))

    print("\n===== matrix summary =====")
    for leg, code, t_install, t_test in results:
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"{leg.name:9} Python {leg.python:5} Salt {leg.salt or '-':8} "
              f"install {t_install:6.0f}s  tests {t_test:6.0f}s  {status}")
    return 0 if all(code == 0 for _, code, _, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
