"""Measuring one command as a fresh child: wall, CPU and peak RSS, and their medians."""

from __future__ import annotations

import fcntl
import os
import signal
import statistics
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common import TIME_BIN


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


def paired_ratios(a: Stat | None, b: Stat | None, attr: str = "wall") -> list[float]:
    """``a``'s ``attr`` (wall or cpu) / ``b``'s in the same run, for every run both finished."""
    if a is None or b is None:
        return []
    return [getattr(x, attr) / getattr(y, attr) for x, y in zip(a.samples, b.samples, strict=False)
            if x.error is None and y.error is None and getattr(y, attr) > 0]


def paired_ratio(a: Stat | None, b: Stat | None, attr: str = "wall") -> float | None:
    """Median over runs of ``a``'s wall (or ``attr``) / ``b``'s in the same run.

    The two tools of a run are measured back to back, so slow drift of the
    host (the walls here swing by 20% over minutes) cancels out of each
    pair, which a ratio of the two medians does not do.
    """
    pairs = paired_ratios(a, b, attr)
    return statistics.median(pairs) if pairs else None


def paired_order(pair: tuple[str, str], others: tuple[str, ...], run: int) -> list[str]:
    """Run order: the compared pair back to back, which one first alternating, then the others.

    Each of the pair follows the previous run's last tool equally often, so
    the slow-write penalty described in :func:`rotated` is shared.
    """
    first, second = pair if run % 2 == 0 else pair[::-1]
    return [first, second, *others]


def sync() -> None:
    os.sync()
