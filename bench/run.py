#!/usr/bin/env python3
"""spiro-deploy performance benchmark (issue 6): one command, one table.

    .venv/bin/python bench/run.py            # full run: 1 GiB artifact, 50,000 files, 3 runs
    .venv/bin/python bench/run.py --quick    # small sizes, 1 run (a couple of minutes)
    .venv/bin/python bench/run.py --runs 5 --sizes 256M,1G --big

What it does, in one process that starts every measured command as a fresh
child and reads the kernel's accounting of that child: wall clock around it,
user+sys CPU from ``os.wait4``, and peak RSS (``ru_maxrss``) from GNU
``/usr/bin/time -f %M`` wrapped around the command.  (Our own ``wait4``
would report at least this harness's RSS: a forked child keeps the parent's
pages until it execs, and Linux carries that high-water mark across exec.)
A child's reaped descendants, such as ``git archive``, count too.

1. Generates its inputs deterministically under bench/work/inputs (fixed
   seeds; regenerated only when missing or when the parameters change):
   (a) a git project with a 1 GiB artifact (git-ignored ``dist/``), a
   ``_salt`` tree and ~300 source files; (b) a source tree of 50,000 small
   files; (c) a typical small project (~300 files, ~3.5 MB).
2. Installs spiro-deploy 0.4 from PyPI into bench/work/ref-venv.
3. Bundle build, per input: ``spiro-deploy --dry-run --output`` vs GNU
   ``tar --sort=name -cf`` of the same files vs 0.4's ``TarballBuilder``.
4. End to end on (a) and (c), against a real SpiroFS 0.3 server (salt-master
   with the test bed's shim, HTTPS: the plain-HTTP server stops at 100 MB),
   all with ``--no-highstate``: ``spiro-deploy`` (which streams the tar into
   the upload as it is built; also with ``--no-stream``, build then upload)
   vs ``curl -F bundle=@<the
   same bundle, prebuilt>`` (+ the GNU tar time) vs 0.4's CLI.  The server
   runs on the same 2 cores, so it is part of every figure alike.  Plus what
   a user sees over plain HTTP with a bundle over 100 MB.
5. The client alone: the same deploys of (a) to bench/sink_server.py (HTTPS,
   drops the body), with ``--json`` and with the progress bar on a pty too;
   and the progress display's own CPU cost, in-process (progress_cost.py).
6. Peak RSS of building and deploying (to the sink) at several artifact
   sizes (flat?), and ``--help`` start-up, ours vs 0.4's.

Medians over --runs; the tools of one run are interleaved so that drift hits
all alike, and each run starts with the next tool (no tool always follows
the same one).  Before each measured run: ``sync`` (dirty pages of the previous
run are not flushed on the next one's clock) and, for deploys, the previous
deployment is removed on the server so every deploy does the same work.
Inputs are in the page cache for everyone (written just before or read once).

Prints a markdown report and writes it to bench/results.md (and the raw
samples to bench/work/results.json).  Big generated files are deleted at the
end unless --keep.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import os
import platform
import random
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import termios
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORK = BENCH / "work"
INPUTS = WORK / "inputs"
OUT = WORK / "out"
LOGS = WORK / "logs"
REF_VENV = WORK / "ref-venv"
REF_VERSION = "0.4"
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
PROJECT = "bench"
TIME_BIN = shutil.which("time", path="/usr/bin:/bin") if os.path.exists("/usr/bin/time") else None

# ---------------------------------------------------------------------------
# Measuring one child


@dataclass
class Sample:
    wall: float
    user: float
    sys: float
    rss_kib: int
    rc: int
    error: str | None = None     # no figure: the command failed
    warning: str | None = None   # figure kept, flagged: e.g. its output is not a valid tar

    @property
    def cpu(self) -> float:
        return self.user + self.sys


@dataclass
class Stat:
    """Medians of the samples of one (section, case)."""

    label: str
    samples: list[Sample] = field(default_factory=list)
    skipped: str | None = None

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.error is None]

    @property
    def failed(self) -> str | None:
        bad = [s.error for s in self.samples if s.error]
        return bad[0] if bad else None

    @property
    def warning(self) -> str | None:
        bad = [s.warning for s in self.samples if s.warning]
        return bad[0] if bad else None

    def med(self, attr: str) -> float | None:
        values = [getattr(s, attr) for s in self.ok]
        return statistics.median(values) if values else None

    @property
    def wall(self):
        return self.med("wall")

    @property
    def cpu(self):
        return self.med("cpu")

    @property
    def rss_mib(self):
        value = self.med("rss_kib")
        return None if value is None else value / 1024


def _drain(fd: int, sink) -> None:
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            return
        if not data:
            return
        sink.write(data)


def run_measured(cmd: list[str], *, log: Path, cwd: Path | None = None,
                 env: dict | None = None, tty: bool = False, timeout: float = 1200,
                 check: Callable[[int, str], str | None] | None = None) -> Sample:
    """Run ``cmd`` as a fresh child; return its wall time, CPU and peak RSS.

    stdout+stderr go to ``log`` (or, with ``tty``, through a pseudo-terminal
    drained into ``log``).  ``check(rc, output)`` returns an error or None.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    sink = open(log, "wb")
    master = slave = None
    if tty:
        import pty

        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        out = err = slave
    else:
        out, err = sink, subprocess.STDOUT
    env = dict(os.environ if env is None else env)
    env.pop("PYTHONSTARTUP", None)
    if tty:
        env["TERM"] = "xterm"
    rss_file = None
    if TIME_BIN:
        # Peak RSS from GNU time, not from our own wait4: a child forked from
        # this (big) Python process inherits its RSS until exec, and Linux
        # keeps that pre-exec high-water mark in ru_maxrss.  time's own child
        # is forked from a ~2 MiB process.
        rss_file = log.with_suffix(".rss")
        rss_file.unlink(missing_ok=True)
        cmd = [TIME_BIN, "-f", "%M", "-o", str(rss_file), *cmd]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                            stderr=err, start_new_session=True)
    drainer = None
    if tty:
        os.close(slave)
        drainer = threading.Thread(target=_drain, args=(master, sink), daemon=True)
        drainer.start()
    timer = threading.Timer(timeout, lambda: _killpg(proc.pid))
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if drainer is not None:
        drainer.join(5)
        os.close(master)
    sink.close()
    text = log.read_text(errors="replace")
    rss = usage.ru_maxrss
    if rss_file is not None:
        try:
            rss = int(rss_file.read_text().strip().splitlines()[-1])
        except (OSError, ValueError, IndexError):
            pass
        if text.startswith("Command exited with non-zero status"):
            text = text.split("\n", 1)[-1]
    error = warning = None
    if proc.returncode != 0:
        error = f"exit {proc.returncode}: {_tail(text)}"
    elif check is not None:
        problem = check(proc.returncode, text)
        if problem and problem.startswith("FATAL: "):
            error = problem[7:]
        else:
            warning = problem
    return Sample(wall, usage.ru_utime, usage.ru_stime, rss, proc.returncode, error, warning)


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _tail(text: str, n: int = 3) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:])[-400:]


def rotated(tools, run: int) -> list:
    """The tools in the order of run ``run``: each run starts one later.

    On the benchmark VM a command that writes a GiB right after another one
    freed a GiB sometimes pays 1-2 s of extra system time (in the kernel's
    copy into fresh page-cache pages; host-side, as far as we can see), so a
    fixed order would always hand that penalty to the same tool.
    """
    tools = list(tools)
    k = run % len(tools) if tools else 0
    return tools[k:] + tools[:k]


def sync() -> None:
    os.sync()


# ---------------------------------------------------------------------------
# Inputs (deterministic)


def parse_size(text: str) -> int:
    text = text.strip().upper().rstrip("B").rstrip("I")
    units = {"K": KiB, "M": MiB, "G": GiB}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def fmt_size(n: int) -> str:
    for unit, size in (("G", GiB), ("M", MiB), ("K", KiB)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def human(n: float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def write_blob(path: Path, size: int, seed: int) -> None:
    """``size`` pseudo-random bytes (incompressible; each MiB differs)."""
    if path.exists() and path.stat().st_size == size:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    block = bytearray(random.Random(seed).randbytes(MiB))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        full, rest = divmod(size, MiB)
        for i in range(full):
            block[:8] = struct.pack("<Q", i)
            handle.write(block)
        if rest:
            handle.write(block[:rest])
    tmp.rename(path)


class TextPool:
    """Deterministic text for source files: slices of a seeded hex pool."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        raw = self.rng.randbytes(512 * KiB).hex()
        # Lines of 64 characters, like source code.
        self.pool = "\n".join(raw[i:i + 63] for i in range(0, len(raw), 63)).encode()

    def text(self, size: int) -> bytes:
        start = self.rng.randrange(0, len(self.pool) - size)
        return self.pool[start:start + size]


def write_salt_tree(root: Path, pool: TextPool, states: int = 30, templates: int = 12) -> int:
    salt = root / "_salt"
    (salt / "files").mkdir(parents=True, exist_ok=True)
    names = [f"state{i:02d}" for i in range(states)]
    (salt / "top.sls").write_text("{{ saltenv }}:\n  '*':\n" + "".join(f"    - {n}\n" for n in names))
    for name in names:
        body = (f"{name}-file:\n  file.managed:\n    - name: /tmp/spirobench/{name}\n"
                f"    - contents: |\n")
        body += "".join(f"        {line}\n" for line in pool.text(1500).decode().splitlines())
        (salt / f"{name}.sls").write_text(body)
    for i in range(templates):
        (salt / "files" / f"template{i:02d}.j2").write_bytes(pool.text(pool.rng.randint(500, 6000)))
    return 1 + states + templates


def write_source(root: Path, pool: TextPool, dirs: int, subdirs: int, per_dir: int,
                 lo: int, hi: int) -> int:
    count = 0
    for d in range(dirs):
        for s in range(subdirs):
            where = root / "src" / f"pkg{d:02d}" / (f"mod{s:02d}" if subdirs > 1 else "")
            where.mkdir(parents=True, exist_ok=True)
            for f in range(per_dir):
                (where / f"file{f:03d}.py").write_bytes(pool.text(pool.rng.randint(lo, hi)))
                count += 1
    return count


def git_commit_all(root: Path) -> None:
    env = dict(os.environ, GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@example.invalid",
               GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@example.invalid",
               GIT_AUTHOR_DATE="2024-01-01T00:00:00Z", GIT_COMMITTER_DATE="2024-01-01T00:00:00Z")
    for cmd in (["git", "-c", "init.defaultBranch=main", "init", "-q"],
                ["git", "add", "-A"],
                ["git", "-c", "commit.gpgsign=false", "commit", "-q", "-m", "bench input"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)


@dataclass
class Scenario:
    key: str           # "a", "b", "c"
    title: str
    root: Path
    source: str        # --include-source method for every tool
    artifacts: list[str]   # paths relative to root
    tar_paths: list[str]   # what GNU tar archives (same files)
    files: int = 0
    size: int = 0


def _stamp_ok(root: Path, params: dict) -> bool:
    stamp = root / ".bench-stamp.json"
    try:
        return json.loads(stamp.read_text()) == params
    except (OSError, ValueError):
        return False


def _stamp(root: Path, params: dict) -> None:
    (root / ".bench-stamp.json").write_text(json.dumps(params))


def tree_stats(root: Path, paths: list[str]) -> tuple[int, int]:
    files = size = 0
    for rel in paths:
        p = root / rel
        if p.is_file():
            files, size = files + 1, size + p.stat().st_size
            continue
        for dirpath, _, names in os.walk(p):
            for name in names:
                files += 1
                size += os.stat(os.path.join(dirpath, name)).st_size
    return files, size


def make_inputs(cfg) -> dict[str, Scenario]:
    INPUTS.mkdir(parents=True, exist_ok=True)
    scenarios = {}

    # (a) big artifact + _salt + ~300 source files, in a git checkout; the
    # artifact directory is git-ignored, so --include-source git does not
    # bundle it twice (0.4's fs scanner has no ignore file).
    root = INPUTS / "a-artifact"
    params = {"v": 1, "seed": 1}
    if not _stamp_ok(root, params):
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        pool = TextPool(1)
        write_salt_tree(root, pool)
        write_source(root, pool, dirs=10, subdirs=1, per_dir=30, lo=500, hi=16000)
        (root / ".gitignore").write_text("dist/\n")
        git_commit_all(root)
        _stamp(root, params)
    for size in sorted(set(cfg.sizes) | {cfg.artifact_size}):
        write_blob(root / "dist" / f"app-{fmt_size(size)}.bin", size, seed=size)
    art = f"dist/app-{fmt_size(cfg.artifact_size)}.bin"
    scenarios["a"] = Scenario("a", f"(a) {human(cfg.artifact_size)} artifact + _salt + ~300 source files",
                              root, "git", [art], ["_salt", "src", art])

    # (b) 50,000 small source files (fs scanner: no git needed).
    root = INPUTS / f"b-files-{cfg.many_files}"
    params = {"v": 1, "seed": 2, "files": cfg.many_files}
    if not _stamp_ok(root, params):
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        pool = TextPool(2)
        write_salt_tree(root, pool)
        per_dir = 50
        subdirs = 20
        dirs = max(1, cfg.many_files // (per_dir * subdirs))
        write_source(root, pool, dirs=dirs, subdirs=subdirs, per_dir=per_dir, lo=64, hi=2048)
        _stamp(root, params)
    scenarios["b"] = Scenario("b", f"(b) {cfg.many_files:,} small source files", root, "fs", [],
                              ["_salt", "src"])

    # (c) a typical small project: ~300 files, ~3.5 MB, one 2 MiB artifact.
    root = INPUTS / "c-small"
    params = {"v": 1, "seed": 3}
    if not _stamp_ok(root, params):
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        pool = TextPool(3)
        write_salt_tree(root, pool)
        write_source(root, pool, dirs=10, subdirs=1, per_dir=25, lo=200, hi=10000)
        (root / ".gitignore").write_text("dist/\n")
        write_blob(root / "dist" / "app.tar.gz", 2 * MiB, seed=3)
        git_commit_all(root)
        _stamp(root, params)
    scenarios["c"] = Scenario("c", "(c) typical small project", root, "git", ["dist/app.tar.gz"],
                              ["_salt", "src", "dist/app.tar.gz"])

    for sc in scenarios.values():
        sc.files, sc.size = tree_stats(sc.root, sc.tar_paths)
        # Warm the page cache for everyone (the first tool must not pay the reads).
        subprocess.run(["tar", "-cf", "/dev/null", "-C", str(sc.root), *sc.tar_paths, ".git"]
                       if (sc.root / ".git").exists() else
                       ["tar", "-cf", "/dev/null", "-C", str(sc.root), *sc.tar_paths], check=False)
        for rel in sc.artifacts:
            subprocess.run(["cat", str(sc.root / rel)], stdout=subprocess.DEVNULL, check=False)
    return scenarios


# ---------------------------------------------------------------------------
# Tools


OURS_VENV = WORK / "ours-venv"
_ours: list[str] = []


def ours_bin() -> list[str]:
    """The command that runs spiro-deploy (see :func:`install_ours`)."""
    if _ours:
        return list(_ours)
    for candidate in (Path(sys.executable).parent / "spiro-deploy", REPO / ".venv" / "bin" / "spiro-deploy"):
        if candidate.exists():
            return [str(candidate)]
    return [sys.executable, "-m", "spirodeploy"]


def install_ours() -> str | None:
    """Install this checkout as a user would: a wheel, in its own venv.

    The development venv has the checkout installed in editable mode, whose
    import hook costs every run about 13 ms of interpreter start-up (measured:
    23 vs 10 ms for ``python -c pass``) that no installed copy pays; 0.4 is
    measured from its own venv too.  Falls back to the development venv (its
    bytecode compiled first) when pip cannot build or install; returns a note.
    """
    python = OURS_VENV / "bin" / "python"
    wheels = WORK / "ours-wheel"
    shutil.rmtree(wheels, ignore_errors=True)
    steps = [] if python.exists() else [[sys.executable, "-m", "venv", str(OURS_VENV)]]
    steps += [[str(python), "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), str(REPO)],
              [str(python), "-m", "pip", "install", "--quiet", "--force-reinstall", "--no-deps"],
              [str(python), "-m", "pip", "install", "--quiet"]]  # its dependencies, if missing
    for cmd in steps:
        if cmd[-1] == "--quiet" or cmd[-1] == "--no-deps":
            cmd = cmd + [str(w) for w in wheels.glob("spiro_deploy-*.whl")]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=WORK)
        if proc.returncode != 0:
            compile_ours()
            return f"could not install spiro-deploy from a wheel ({_tail(proc.stderr)}): measured " \
                   f"the development install, which starts about 13 ms slower"
    _ours[:] = [str(OURS_VENV / "bin" / "spiro-deploy")]
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


# ---------------------------------------------------------------------------
# Sections


@dataclass
class Target:
    """Where deploys go: the real SpiroFS, or the sink (reads and drops the body)."""

    name: str
    url: str
    ca_cert: Path
    token_file: Path
    token: str
    header_file: Path
    deploy_dir: Callable[[str], Path] | None = None


class Bench:
    def __init__(self, cfg):
        self.cfg = cfg
        self.stats: dict[str, dict[str, Stat]] = {}
        self.notes: list[str] = []
        self.ref_bin: Path | None = None
        self.server = None
        self.server_skip: str | None = None
        self.targets: dict = {}
        self.prebuilt_size: dict = {}

    def stat(self, section: str, key: str, label: str | None = None) -> Stat:
        return self.stats.setdefault(section, {}).setdefault(key, Stat(label or key))

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    # -- bundle build -------------------------------------------------------
    def bench_build(self, sc: Scenario, runs: int) -> None:
        section = f"build-{sc.key}"
        for run in range(runs):
            for tool in rotated(("ours", "tar", "0.4"), run):
                if tool == "0.4" and self.ref_bin is None:
                    continue
                out = OUT / f"{section}-{tool.replace('.', '')}.tar"
                cmds = build_cmds(sc, out, self.ref_bin)
                out.unlink(missing_ok=True)
                sync()
                sample = run_measured(cmds[tool], cwd=sc.root, log=LOGS / f"{section}-{tool}.log",
                                      check=check_tar(out, sc.size, sc.files))
                self.stat(section, tool).samples.append(sample)
                self.log(f"build {sc.key} {tool:5} run {run + 1}: {sample.wall:.2f}s "
                         f"cpu {sample.cpu:.2f}s rss {sample.rss_kib / 1024:.0f} MiB"
                         + (f"  FAILED {sample.error}" if sample.error else "")
                         + (f"  WARNING {sample.warning}" if sample.warning else ""))
                out.unlink(missing_ok=True)
        if sc.key == "a":
            # Reference: hashing the artifact alone, once (OpenSSL's sha256, the
            # same code as Python's hashlib; coreutils' sha256sum is slower).
            hasher = (["openssl", "dgst", "-sha256"] if shutil.which("openssl")
                      else ["sha256sum"])
            for run in range(runs):
                sync()
                sample = run_measured(hasher + sc.artifacts, cwd=sc.root,
                                      log=LOGS / f"{section}-sha256.log")
                self.stat(section, "sha256").samples.append(sample)

    # -- memory vs size -----------------------------------------------------
    def bench_sizes(self, sc: Scenario) -> None:
        """Peak RSS of ours (build, and deploy to the sink) and 0.4 (build) by artifact size."""
        for size in self.cfg.sizes:
            art = f"dist/app-{fmt_size(size)}.bin"
            key = fmt_size(size)
            out = OUT / f"size-{key}.tar"
            for tool in ("ours", "0.4"):
                if tool == "0.4" and (self.ref_bin is None or size > 2 * GiB):
                    continue
                if size == self.cfg.artifact_size and self.stats.get("build-a", {}).get(tool):
                    self.stats.setdefault("size-build", {})[f"{tool}-{key}"] = self.stats["build-a"][tool]
                    continue
                cmds = build_cmds(sc, out, self.ref_bin, artifacts=[art])
                out.unlink(missing_ok=True)
                sync()
                sample = run_measured(cmds[tool], cwd=sc.root, log=LOGS / f"size-{tool}-{key}.log",
                                      check=check_tar(out, size))
                self.stat("size-build", f"{tool}-{key}").samples.append(sample)
                self.log(f"size {key} build {tool}: rss {sample.rss_kib / 1024:.0f} MiB"
                         + (f"  FAILED {sample.error}" if sample.error else ""))
                out.unlink(missing_ok=True)
            target = self.targets.get("sink")
            if target is None:
                continue
            if size == self.cfg.artifact_size and self.stats.get("sink-a", {}).get("ours"):
                self.stats.setdefault("size-deploy", {})[f"ours-{key}"] = self.stats["sink-a"]["ours"]
                continue
            cmd = self.deploy_cmds(sc, target, "size", artifacts=[art])["ours"]
            sample = run_measured(cmd, cwd=sc.root, log=LOGS / f"size-deploy-{key}.log")
            self.stat("size-deploy", f"ours-{key}").samples.append(sample)
            self.log(f"size {key} deploy ours (sink): {sample.wall:.2f}s "
                     f"rss {sample.rss_kib / 1024:.0f} MiB"
                     + (f"  FAILED {sample.error}" if sample.error else ""))

    # -- servers ------------------------------------------------------------
    def start_servers(self) -> None:
        """The real SpiroFS (salt-master + spirofs 0.3) and the sink, both HTTPS."""
        self.targets: dict[str, Target] = {}
        if self.cfg.no_e2e:
            self.server_skip = "--no-e2e given"
            return
        tls_dir = None
        try:
            from spiroserver import SpiroServer

            self.log("starting SpiroFS (salt-master + spirofs 0.3) on 127.0.0.1 ...")
            srv = self.server = SpiroServer(WORK / "server", venv_bin()).start()
            header = WORK / "server" / "auth-header"
            header.write_text(f"Authorization: Bearer {srv.token}\n")
            os.chmod(header, 0o600)
            self.targets["spirofs"] = Target(
                "spirofs", srv.https_url, srv.ca_cert, srv.token_file, srv.token, header,
                deploy_dir=lambda dep: srv.deploy_dir(PROJECT, dep))
            tls_dir = srv.dir / "tls"
            self.log(f"SpiroFS up: {srv.https_url}")
        except Exception as exc:  # noqa: BLE001 - any failure means: no e2e figures
            self.server = None
            self.server_skip = f"no server ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
            self.log(f"skipped end-to-end against SpiroFS: {self.server_skip}")
        try:
            self.start_sink(tls_dir)
        except Exception as exc:  # noqa: BLE001
            self.sink_skip = f"no sink server ({type(exc).__name__}: {exc})"
            self.log(f"skipped the client-only measurements: {self.sink_skip}")

    def start_sink(self, tls_dir: Path | None) -> None:
        if tls_dir is None:
            sys.path.insert(0, str(REPO / "tests"))
            from saltbed import bed

            tls_dir = WORK / "sink-tls"
            bed.make_tls_files(tls_dir)
        portfile = WORK / "sink.port"
        portfile.unlink(missing_ok=True)
        self.sink = subprocess.Popen(
            [str(venv_bin() / "python"), str(BENCH / "sink_server.py"), str(portfile),
             str(tls_dir / "server.pem"), str(tls_dir / "server.key")],
            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while not (portfile.exists() and portfile.read_text().strip()):
            if time.monotonic() > deadline or self.sink.poll() is not None:
                raise RuntimeError("the sink server did not start")
            time.sleep(0.05)
        url = f"https://127.0.0.1:{portfile.read_text().strip()}/"
        srv = self.server
        if srv is not None:
            token, token_file, header = srv.token, srv.token_file, WORK / "server" / "auth-header"
        else:
            sys.path.insert(0, str(REPO))
            from tests.conftest import make_token

            token = make_token()
            token_file = WORK / "sink-token"
            token_file.write_text(token + "\n")
            header = WORK / "sink-header"
            header.write_text(f"Authorization: Bearer {token}\n")
        self.targets["sink"] = Target("sink", url, tls_dir / "ca.pem", token_file, token, header)
        self.log(f"sink server up: {url}")

    def stop_servers(self) -> None:
        if getattr(self, "sink", None) is not None and self.sink.poll() is None:
            os.killpg(self.sink.pid, signal.SIGTERM)
            self.sink.wait(10)
        if self.server is not None:
            self.server.stop()

    # -- end to end ---------------------------------------------------------
    def deploy_cmds(self, sc: Scenario, target: "Target", dep: str,
                    artifacts: list[str] | None = None,
                    prebuilt: Path | None = None) -> dict[str, list[str]]:
        artifacts = sc.artifacts if artifacts is None else artifacts
        arts = [x for a in artifacts for x in ("--artifact", a)]
        base = ours_bin() + ["-C", str(sc.root), "--no-highstate", "--server", target.url,
                             "--ssl-cert", str(target.ca_cert), "--token-file",
                             str(target.token_file), "--include-source", sc.source, *arts]
        cmds = {
            "ours": base + ["--no-progress", PROJECT, dep],
            "ours --no-stream": base + ["--no-progress", "--no-stream", PROJECT, dep],
            "ours --json": base + ["--json", PROJECT, dep],
            "ours, progress bar on a tty": base + [PROJECT, dep],
        }
        if prebuilt is not None:
            cmds["curl"] = ["curl", "-sS", "--no-buffer", "--cacert", str(target.ca_cert),
                            "-H", f"@{target.header_file}", "-F", f"project={PROJECT}",
                            "-F", f"deployment={dep}",
                            "-F", f"bundle=@{prebuilt};type=application/x-tar", target.url]
        if self.ref_bin is not None:
            cmds["0.4"] = [str(self.ref_bin / "spiro-deploy"), PROJECT, dep, "--no-highstate",
                           "--server", target.url, "--ssl-cert", str(target.ca_cert),
                           "--include-source", sc.source, *arts]
        return cmds

    def reset_deployment(self, target: "Target", dep: str) -> None:
        if target.deploy_dir is not None:
            shutil.rmtree(target.deploy_dir(dep), ignore_errors=True)
        sync()

    def check_deployed(self, target: "Target", dep: str, min_size: int, curl: bool = False):
        def check(rc: int, text: str) -> str | None:
            if curl and ("event: deploy-bundle" not in text or "event: exception" in text):
                return f"FATAL: curl: no clean deploy in the answer: {_tail(text)}"
            if "Error occurred on server" in text or "event: exception" in text:
                return f"FATAL: server error: {_tail(text)}"
            if target.deploy_dir is None:
                return None
            where = target.deploy_dir(dep)
            if not where.is_dir():
                return f"FATAL: nothing deployed at {where}: {_tail(text)}"
            _, size = tree_stats(where, ["."])
            if size < min_size:
                return f"the server deployed only {size} of the {min_size} bytes"
            return None
        return check

    def bench_e2e(self, sc: Scenario, runs: int, target_name: str, tools: list[str]) -> None:
        """Deploys of ``sc`` to a target: ``spirofs`` (the real server) or ``sink``."""
        section = f"{'deploy' if target_name == 'spirofs' else 'sink'}-{sc.key}"
        target = self.targets.get(target_name)
        if target is None:
            self.stat(section, "ours").skipped = (self.server_skip if target_name == "spirofs"
                                                  else getattr(self, "sink_skip", "not run"))
            return
        prebuilt = OUT / f"prebuilt-{sc.key}.tar"
        if not prebuilt.exists():
            build = build_cmds(sc, prebuilt, None)["ours"]
            subprocess.run(build, cwd=sc.root, check=True, stdout=subprocess.DEVNULL)
        self.prebuilt_size[sc.key] = prebuilt.stat().st_size
        dep = f"e2e-{sc.key}"
        cmds = self.deploy_cmds(sc, target, dep, prebuilt=prebuilt)
        for run in range(runs):
            for tool in rotated(tools, run):
                if tool not in cmds:
                    continue
                env = dict(os.environ)
                if tool == "0.4":
                    env["SPIRO_TOKEN"] = target.token
                self.reset_deployment(target, dep)
                sample = run_measured(cmds[tool], cwd=sc.root, env=env,
                                      log=LOGS / f"{section}-{tool.split(',')[0].replace(' ', '')}.log",
                                      tty=tool.startswith("ours, progress"),
                                      check=self.check_deployed(target, dep, sc.size,
                                                                curl=tool == "curl"))
                self.stat(section, tool).samples.append(sample)
                self.log(f"{section} {tool:12} run {run + 1}: {sample.wall:.2f}s "
                         f"cpu {sample.cpu:.2f}s rss {sample.rss_kib / 1024:.0f} MiB"
                         + (f"  FAILED {sample.error}" if sample.error else "")
                         + (f"  WARNING {sample.warning}" if sample.warning else ""))
        self.reset_deployment(target, dep)

    def bench_http_limit(self, sc: Scenario) -> None:
        """What a user sees deploying a >100 MB bundle over plain HTTP."""
        if self.server is None or sc.size <= 100 * 1000 * 1000:
            return
        srv = self.server
        cmd = ours_bin() + ["-C", str(sc.root), "--no-highstate", "--no-progress", "--insecure",
                            "--server", srv.http_url, "--token-file", str(srv.token_file),
                            "--include-source", sc.source,
                            *[x for a in sc.artifacts for x in ("--artifact", a)], PROJECT, "httplimit"]
        log = LOGS / "http-limit.log"
        sample = run_measured(cmd, cwd=sc.root, log=log, timeout=600)
        text = log.read_text(errors="replace")
        msg = [line for line in text.splitlines() if "error" in line.lower()]
        self.http_limit = (sample, msg[-1] if msg else _tail(text))
        self.log(f"plain HTTP > 100 MB: exit {sample.rc} in {sample.wall:.1f}s: {self.http_limit[1]}")

    def bench_progress(self, size: int) -> None:
        """The progress bar's and --json's own cost for a bundle of ``size`` (in-process)."""
        proc = subprocess.run([str(venv_bin() / "python"), str(BENCH / "progress_cost.py"),
                               str(size)], capture_output=True, text=True, cwd=REPO)
        try:
            self.progress_cost = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            self.notes.append(f"bench/progress_cost.py failed: {_tail(proc.stderr)}")

    # -- start-up -----------------------------------------------------------
    def bench_startup(self, runs: int) -> None:
        python = Path(ours_bin()[0]).parent / "python"  # the interpreter ours runs on
        if not python.exists():
            python = venv_bin() / "python"
        cmds = {"ours": ours_bin() + ["--help"],
                "python -c pass (floor)": [str(python), "-c", "pass"]}
        if self.ref_bin is not None:
            cmds["0.4"] = [str(self.ref_bin / "spiro-deploy"), "--help"]
        for name, cmd in cmds.items():
            run_measured(cmd, log=LOGS / "startup-warm.log")  # warm the page cache / pyc
        for _ in range(runs):
            for name, cmd in cmds.items():
                self.stat("startup", name).samples.append(
                    run_measured(cmd, log=LOGS / f"startup-{name.split()[0]}.log"))


# ---------------------------------------------------------------------------
# Report


def machine_info() -> list[tuple[str, str]]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = human(int(line.split()[1]) * KiB)
    except OSError:
        pass
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = ", ".join(f for f in ("sha_ni", "avx2", "avx512f", "aes") if f" {f}" in text)
    except OSError:
        pass
    disk = shutil.disk_usage(WORK)
    fstype = subprocess.run(["stat", "-f", "-c", "%T", str(WORK)], capture_output=True,
                            text=True).stdout.strip()

    def first_line(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[0]
        except (OSError, IndexError):
            return "?"

    ours_py = subprocess.run([str(venv_bin() / "python"), "-c", "import sys; print(sys.version.split()[0])"],
                             capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip()
    return [
        ("CPU", f"{model} ({os.cpu_count()} cores; {flags})"),
        ("memory", mem),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("python", f"{ours_py} (ours and 0.4's venv)"),
        ("disk", f"{fstype}, {human(disk.free)} free of {human(disk.total)} at {WORK}"),
        ("tools", f"{first_line(['tar', '--version'])}; {first_line(['curl', '--version']).split(' (')[0]}"),
        ("spiro-deploy", f"{commit} (working tree)"),
        ("load average", f"{LOAD_AT_START} at start, {_loadavg()} at end (1/5/15 min; "
                         "other work on the machine shows here)"),
    ]


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


LOAD_AT_START = _loadavg()


def f2(x, digits=2):
    return "n/a" if x is None else f"{x:.{digits}f}"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def cpu_ratio(a, b) -> str:
    r = ratio(a and a.cpu, b and b.cpu)
    return "" if r is None else f"; CPU {r:.2f}x"


def verdict(value, goal):
    if value is None:
        return "n/a"
    return f"{value:.2f}x {'✅' if value <= goal else '❌'} (goal ≤ {goal}x)"


def render(bench: Bench, scenarios: dict[str, Scenario], cfg, elapsed: float) -> str:
    lines: list[str] = []
    warnings: list[str] = []
    add = lines.append
    cmdline = "python bench/run.py " + " ".join(sys.argv[1:])
    add(f"# spiro-deploy benchmark ({datetime.date.today().isoformat()})")
    add("")
    add(f"Command: `{cmdline.strip()}` — medians of {cfg.runs} run(s); wall and CPU (user+sys) "
        f"in seconds, peak RSS in MiB ("
        + ("GNU time's `%M`: the child's `ru_maxrss`, descendants included"
           if TIME_BIN else "`ru_maxrss` of the child from `wait4`, which includes the "
           "harness's own RSS copied by fork: figures below ~30 MiB are inflated")
        + "). "
        f"Took {elapsed / 60:.1f} min.")
    add("")
    add("| machine | |")
    add("| --- | --- |")
    for k, v in machine_info():
        add(f"| {k} | {v} |")
    add("")

    def row(label, st: Stat | None, *extra, spread: bool = False):
        if st is None:
            return f"| {label} | n/a | n/a | n/a | " + " | ".join(extra) + " |"
        if st.skipped:
            return f"| {label} | skipped: {st.skipped} | | | " + " | ".join(extra) + " |"
        if not st.ok:
            return f"| {label} | FAILED: {st.failed} | | | " + " | ".join(extra) + " |"
        flag = ""
        if st.warning:
            flag = f" ⚠{len(warnings) + 1}"
            warnings.append(f"{label}: {st.warning}")
        wall = f2(st.wall)
        if spread and len(st.ok) > 1:
            walls = [s.wall for s in st.ok]
            wall += f" ({min(walls):.2f}–{max(walls):.2f})"
        return (f"| {label}{flag} | {wall} | {f2(st.cpu)} | {f2(st.rss_mib, 0)} | "
                + " | ".join(extra) + " |")

    add("## Bundle build (`spiro-deploy --dry-run --output FILE`)")
    add("")
    goals = {"a": 1.25, "b": 1.5}
    for key, sc in scenarios.items():
        section = bench.stats.get(f"build-{key}", {})
        ours, tar, ref = section.get("ours"), section.get("tar"), section.get("0.4")
        add(f"### {sc.title}: {sc.files:,} files, {human(sc.size)}, source via `{sc.source}`")
        add("")
        add("| tool | wall s | CPU s | peak RSS MiB | ours / this |")
        add("| --- | ---: | ---: | ---: | --- |")
        add(row("spiro-deploy (ours)", ours, ""))
        r_tar = ratio(ours and ours.wall, tar and tar.wall)
        add(row("GNU tar --sort=name -cf", tar,
                (verdict(r_tar, goals[key]) if key in goals else f2(r_tar) + "x")
                + cpu_ratio(ours, tar)))
        add(row("spiro-deploy 0.4 TarballBuilder", ref,
                f2(ratio(ours and ours.wall, ref and ref.wall)) + "x" + cpu_ratio(ours, ref)))
        if "sha256" in section:
            add(row("sha256 of the artifact, once (`openssl dgst -sha256`; hashing alone)",
                    section["sha256"], f2(ratio(ours and ours.wall, section["sha256"].wall)) + "x"))
        add("")

    add("## End to end: deploy with `--no-highstate` to a real SpiroFS 0.3 over HTTPS")
    add("")
    add("The server (salt-master + spirofs engine, TLS, Python/Tornado) runs on the same "
        "2 cores; every figure includes it receiving, buffering, parsing and extracting the "
        "bundle, so these walls are noisy (min–max shown). HTTPS because SpiroFS 0.3 over "
        "plain HTTP refuses bodies over 100 MB (Tornado's default limit; see below); HTTPS "
        "allows 10 GiB. curl uploads the bundle spiro-deploy built (same bytes).")
    add("")

    def deploy_table(section_name: str, key: str, goals: bool, extra_rows: bool) -> None:
        section = bench.stats.get(section_name)
        if not section or (section.get("ours") and section["ours"].skipped):
            skip = section["ours"].skipped if section and section.get("ours") else None
            add(f"skipped: {skip or bench.server_skip or 'not run'}")
            add("")
            return
        ours, curl, ref = section.get("ours"), section.get("curl"), section.get("0.4")
        tar = bench.stats.get(f"build-{key}", {}).get("tar")
        add("| client | wall s (min–max) | CPU s | peak RSS MiB | ours / this |")
        add("| --- | ---: | ---: | ---: | --- |")
        ow = ours and ours.wall
        add(row("spiro-deploy (ours), --no-progress", ours, "", spread=True))
        if "ours --no-stream" in section:
            st = section["ours --no-stream"]
            add(row("spiro-deploy --no-stream (builds, then uploads)", st,
                    f2(ratio(ow, st.wall)) + "x" + cpu_ratio(ours, st), spread=True))
        if extra_rows:
            for label, shown in (("ours --json", "spiro-deploy --json"),
                                 ("ours, progress bar on a tty",
                                  "spiro-deploy, progress bar on a pty")):
                if label in section:
                    st = section[label]
                    cost = ratio(st.wall, ow)
                    add(row(shown, st, "" if cost is None else
                            f"costs {100 * (cost - 1):+.1f}% wall, "
                            f"{100 * (ratio(st.cpu, ours.cpu) - 1):+.1f}% CPU vs --no-progress "
                            f"{'✅' if cost <= 1.05 else '❌'} (goal < 5%)", spread=True))
        add(row("curl -F bundle=@prebuilt.tar", curl,
                ((verdict(ratio(ow, curl and curl.wall), 1.05) + " (stretch)") if goals
                 else f2(ratio(ow, curl and curl.wall)) + "x") + cpu_ratio(ours, curl),
                spread=True))
        if curl and curl.wall is not None and tar and tar.wall is not None:
            tc_wall, tc_cpu = tar.wall + curl.wall, tar.cpu + curl.cpu
            tc_rss = max(tar.med("rss_kib"), curl.med("rss_kib")) / 1024
            add(f"| GNU tar, then curl (sum of medians) | {f2(tc_wall)} | {f2(tc_cpu)} | "
                f"{f2(tc_rss, 0)} | "
                + (verdict(ratio(ow, tc_wall), 1.2) if goals else f2(ratio(ow, tc_wall)) + "x")
                + " |")
        add(row("spiro-deploy 0.4 CLI", ref, f2(ratio(ow, ref and ref.wall)) + "x"
                + cpu_ratio(ours, ref), spread=True))
        add("")

    for key in ("a", "c"):
        add(f"### {scenarios[key].title}"
            + (f" (bundle {human(bench.prebuilt_size[key])})" if key in bench.prebuilt_size else ""))
        add("")
        deploy_table(f"deploy-{key}", key, goals=key == "a", extra_rows=False)
    if getattr(bench, "http_limit", None):
        sample, message = bench.http_limit
        add(f"Plain HTTP with the bundle of (a) (over 100 MB): exit {sample.rc} after "
            f"{sample.wall:.1f}s: `{message.strip()}`")
        add("")

    add("## The client alone: deploy (a) to a sink server")
    add("")
    add("Same commands, but the server is `bench/sink_server.py`: HTTPS, reads the body and "
        "drops it, answers one `deploy-bundle` event (no multipart parsing, no extraction). "
        "What remains is the client's own cost (and the sink's TLS reads, the same for all).")
    add("")
    deploy_table("sink-a", "a", goals=False, extra_rows=True)
    pc = getattr(bench, "progress_cost", None)
    ours_sink = bench.stats.get("sink-a", {}).get("ours")
    if pc and ours_sink and ours_sink.cpu:
        bar = (pc["bar_ms"] + pc["import_ms"]) / 1000
        share = 100 * bar / ours_sink.cpu
        add(f"The walls above are too noisy to resolve 5%, so the display's own cost is also "
            f"measured in-process (`bench/progress_cost.py`): the {pc['calls']} progress "
            f"callbacks of this upload cost {pc['bar_ms']:.1f} ms CPU with the tqdm bar drawn "
            f"on a pty (+ {pc['import_ms']:.0f} ms to import tqdm, once) and "
            f"{pc['json_ms']:.1f} ms with `--json`: {share:.1f}% and "
            f"{100 * pc['json_ms'] / 1000 / ours_sink.cpu:.2f}% of the deploy's "
            f"{ours_sink.cpu:.2f} s CPU {'✅' if share < 5 else '❌'} (goal < 5%).")
        add("")

    add("## Peak RSS by artifact size (project (a))")
    add("")
    sizes = [fmt_size(s) for s in cfg.sizes]
    add("| | " + " | ".join(sizes) + " |")
    add("| --- | " + " | ".join("---:" for _ in sizes) + " |")
    for label, section, tool in (("spiro-deploy, build (`--dry-run --output`)", "size-build", "ours"),
                                 ("spiro-deploy, deploy (HTTPS, to the sink)", "size-deploy", "ours"),
                                 ("0.4, build (TarballBuilder)", "size-build", "0.4")):
        cells = []
        for s in sizes:
            st = bench.stats.get(section, {}).get(f"{tool}-{s}")
            if st is None:
                cells.append("skipped: no sink server" if section == "size-deploy"
                             and "sink" not in bench.targets else "n/a")
            elif not st.ok:
                cells.append("FAILED")
            else:
                cells.append(f"{st.rss_mib:.0f} MiB")
        add(f"| {label} | " + " | ".join(cells) + " |")
    add("")
    add("Goal: spiro-deploy ≤ 100 MiB at 1 GiB, built or deployed, and flat in the size.")
    add("")

    add("## `--help` start-up")
    add("")
    st = bench.stats.get("startup", {})
    add("| command | wall ms | CPU ms | peak RSS MiB | |")
    add("| --- | ---: | ---: | ---: | --- |")
    ours = st.get("ours")
    ref = st.get("0.4")
    for name, s in st.items():
        extra = ""
        if name == "0.4" and ours is not None:
            extra = verdict(ratio(ours.wall, s.wall), 1.0)
        add(f"| {'spiro-deploy --help' if name == 'ours' else ('spiro-deploy 0.4 --help' if name == '0.4' else name)} "
            f"| {f2(s.wall and s.wall * 1000, 0)} | {f2(s.cpu and s.cpu * 1000, 0)} | {f2(s.rss_mib, 0)} | {extra} |")
    add("")
    if warnings:
        add("## Warnings (figures kept, but something is wrong)")
        add("")
        for i, text in enumerate(warnings, 1):
            add(f"{i}. {text}")
        add("")
    if bench.notes:
        add("## Notes")
        add("")
        for note in bench.notes:
            add(f"- {note}")
        add("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small and fast: 128 MiB artifact, 5,000 files, 1 run")
    parser.add_argument("--runs", type=int, help="runs per measurement (default 3; --quick 1)")
    parser.add_argument("--sizes", help="artifact sizes for the RSS-by-size table "
                                        "(default 256M,1G; --quick 32M,128M)")
    parser.add_argument("--artifact-size", help="artifact of input (a) (default 1G; --quick 128M)")
    parser.add_argument("--files", type=int, help="files of input (b) (default 50000; --quick 5000)")
    parser.add_argument("--big", action="store_true", help="add 4G to the sizes (needs ~10 GB disk)")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end deploys")
    parser.add_argument("--only", help="comma list of parts: build,e2e,sizes,startup (default all)")
    parser.add_argument("--keep", action="store_true", help="keep generated inputs and outputs")
    cfg = parser.parse_args(argv)
    cfg.runs = cfg.runs or (1 if cfg.quick else 3)
    cfg.artifact_size = parse_size(cfg.artifact_size or ("128M" if cfg.quick else "1G"))
    cfg.many_files = cfg.files or (5000 if cfg.quick else 50000)
    cfg.sizes = sorted({parse_size(s) for s in (cfg.sizes or ("32M,128M" if cfg.quick else "256M,1G")).split(",")}
                       | ({4 * GiB} if cfg.big else set()))
    parts = set((cfg.only or "build,e2e,sizes,startup").split(","))

    need = (cfg.artifact_size + sum(cfg.sizes)) * 4 + 2 * GiB
    free = shutil.disk_usage(REPO).free
    if free < need:
        print(f"bench: needs about {human(need)} free disk, {human(free)} free", file=sys.stderr)
        return 2

    # SIGTERM takes the same path as Ctrl-C: the finally below stops the server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    for d in (OUT, LOGS):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    sys.path.insert(0, str(BENCH))
    bench = Bench(cfg)
    bench.log(f"generating inputs under {INPUTS} ...")
    scenarios = make_inputs(cfg)
    for sc in scenarios.values():
        bench.log(f"  {sc.title}: {sc.files:,} files, {human(sc.size)}")
    bench.log("installing spiro-deploy from this checkout into its own venv ...")
    note = install_ours()
    if note:
        bench.notes.append(note)
    bench.log(f"  measuring {' '.join(ours_bin())}")
    try:
        bench.ref_bin = ensure_ref_venv()
    except (subprocess.CalledProcessError, OSError) as exc:
        bench.notes.append(f"spiro-deploy 0.4 could not be installed from PyPI ({exc}): no 0.4 figures")
    try:
        if "build" in parts:
            for sc in scenarios.values():
                bench.bench_build(sc, cfg.runs)
        if "e2e" in parts or "sizes" in parts:
            bench.start_servers()
        if "e2e" in parts:
            bench.bench_e2e(scenarios["a"], cfg.runs, "spirofs",
                            ["ours", "ours --no-stream", "curl", "0.4"])
            bench.bench_e2e(scenarios["c"], cfg.runs, "spirofs", ["ours", "curl", "0.4"])
            bench.bench_e2e(scenarios["a"], cfg.runs, "sink",
                            ["ours", "ours --no-stream", "ours --json",
                             "ours, progress bar on a tty", "curl", "0.4"])
            bench.bench_http_limit(scenarios["a"])
            bench.bench_progress(bench.prebuilt_size.get("a") or scenarios["a"].size)
        if "sizes" in parts:
            bench.bench_sizes(scenarios["a"])
        if "startup" in parts:
            bench.bench_startup(max(10, cfg.runs * 5))
    finally:
        bench.stop_servers()
        if not cfg.keep:
            shutil.rmtree(OUT, ignore_errors=True)
            shutil.rmtree(WORK / "server", ignore_errors=True)
            for p in (INPUTS / "a-artifact" / "dist").glob("*.bin"):
                p.unlink()
            for p in INPUTS.glob("b-files-*"):
                shutil.rmtree(p, ignore_errors=True)
    report = render(bench, scenarios, cfg, time.monotonic() - started)
    print(report)
    (BENCH / "results.md").write_text(report + "\n")
    raw = {section: {k: {"label": st.label, "skipped": st.skipped,
                         "samples": [asdict(s) for s in st.samples]}
                     for k, st in stats.items()}
           for section, stats in bench.stats.items()}
    (WORK / "results.json").write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
