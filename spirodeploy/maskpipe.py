"""Mask the token in ``--json`` output on the other core.

``--json`` prints every event as it came: at 10,000 minions that is 150 MiB,
and searching it for the token (or 12 characters of it) took a third of the
client's time, on the same core as the parsing.  Once the output is big
enough to matter, :class:`MaskingPipe` hands the lines to a small child
process (``python -m spirodeploy.maskpipe``) that masks and prints them,
while this process goes on reading the stream.

The child writes to the same standard output, in the order it was given the
lines, and flushes each one (a reader sees every event as it arrives).  The
caller prints on its own until the child says it is ready, so a child that
cannot start loses nothing.  The
protocol on its standard input is lines: a line that starts with NUL carries
a secret to mask (JSON-encoded), any other line is printed.  Printed lines
never start with NUL: JSON escapes it.  The secrets travel over the pipe, not
in the arguments or the environment, where ``ps`` would show them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterable
from typing import IO

_SECRET = b"\x00"


class MaskingPipe:
    """A child process that masks ``secrets`` in each line written, then prints it.

    The child says when it is ready (its imports done) on a pipe of its own;
    until :meth:`ready` is True the caller keeps printing itself.  A child
    that cannot start (an interpreter that is not Python, a broken install)
    is never ready, and nothing is lost: the caller never stopped printing.
    """

    def __init__(self, out: IO[str], secrets: Iterable[str]):
        ready_read, ready_write = os.pipe()
        try:
            self._child = subprocess.Popen(
                [sys.executable, "-m", "spirodeploy.maskpipe", str(ready_write)],
                stdin=subprocess.PIPE, stdout=out.fileno(), pass_fds=(ready_write,),
                # Ctrl-C and kill signals go to the deploy, which reports and
                # then closes the pipe: the child ends when its input does.
                start_new_session=True, bufsize=1 << 20)
        except BaseException:
            os.close(ready_read)
            raise
        finally:
            os.close(ready_write)
        self._ready_fd: int | None = ready_read
        self._ready = False
        self._out = out
        _widen(self._child.stdin)
        self._closed = False
        self.hide(*secrets)

    def ready(self) -> bool | None:
        """True once the child prints, None while it starts, False if it never will."""
        if self._ready or self._ready_fd is None:
            return self._ready or (None if self._ready_fd is not None else False)
        import select

        if not select.select([self._ready_fd], [], [], 0)[0]:
            return None
        said = os.read(self._ready_fd, 1)
        os.close(self._ready_fd)
        self._ready_fd = None
        if said != b"1":  # it ended before its imports were done
            self.close()
            return False
        self._out.flush()  # what the caller printed comes first
        self._ready = True
        return True
    def hide(self, *secrets: str) -> None:
        """Mask these too, in every line written from now on."""
        for secret in secrets:
            self._send(_SECRET + json.dumps(secret).encode() + b"\n")

    def write(self, text: str) -> None:
        """Print ``text`` (whole lines, or the pieces of one) once masked."""
        self._send(text.encode())

    def flush(self) -> None:
        self._send(b"", flush=True)

    def close(self) -> None:
        """Wait until the child has printed everything."""
        if self._ready_fd is not None:
            os.close(self._ready_fd)
            self._ready_fd = None
        if self._closed:
            return
        self._closed = True
        try:
            self._child.stdin.close()
        except OSError:  # the reader of our output went away; so did the child
            pass
        self._child.wait()

    def _send(self, data: bytes, flush: bool = False) -> None:
        if self._closed:
            return
        try:
            if data:
                self._child.stdin.write(data)
            # Each whole line goes on at once: a reader of the output sees
            # every event as it arrives.
            if flush or data.endswith(b"\n"):
                self._child.stdin.flush()
        except BrokenPipeError:
            # The child is gone: our standard output was closed (``| head``).
            # Nothing more can be shown; the deploy itself goes on.
            self._closed = True


def _widen(pipe: IO[bytes]) -> None:
    # A pipe holds 64 KiB: a burst of events would stop this process until
    # the child has masked them.  1 MiB lets the two run side by side
    # (Linux; the most an unprivileged process may ask for by default).
    try:
        import fcntl

        fcntl.fcntl(pipe.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (ImportError, OSError):  # not Linux, or not allowed
        pass


def start(out: IO[str], secrets: Iterable[str]) -> MaskingPipe | None:
    """A :class:`MaskingPipe` to ``out``, or None where one cannot help or run.

    ``out`` must be a real file (the CLI's standard output) on a POSIX
    system (the readiness pipe); the child must start.
    """
    if os.name != "posix":
        return None
    try:
        out.fileno()
    except (AttributeError, OSError, ValueError):  # a StringIO, pytest's capture
        return None
    try:
        return MaskingPipe(out, secrets)
    except OSError:
        return None


def _main() -> None:
    from .sanitize import may_hold_secret, scrub

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ready = int(sys.argv[1])
    try:
        os.write(ready, b"1")  # from here on the lines are ours to print
    except OSError:  # the deploy ended before we started: print what it sent
        pass
    os.close(ready)
    secrets: list[str] = []
    unfinished: list[bytes] = []  # the start of a line still arriving
    try:
        # Whatever has arrived is masked and printed in one write before the
        # next read waits: lines go out as soon as they come, and a fleet's
        # stream costs a write per pipe-full, not per line.
        while chunk := os.read(0, 1 << 20):
            lines = chunk.split(b"\n")
            if len(lines) == 1:
                unfinished.append(chunk)
                continue
            if unfinished:
                lines[0] = b"".join([*unfinished, lines[0]])
            tail = lines.pop()
            unfinished = [tail] if tail else []
            shown = []
            for line in lines:
                if line.startswith(_SECRET):
                    secrets.append(json.loads(line[1:]))
                elif may_hold_secret(line, secrets):
                    shown.append(scrub(line.decode("utf-8", "replace"), secrets).encode())
                else:
                    shown.append(line)
            if shown:
                _write_all(1, b"\n".join(shown) + b"\n")
    except BrokenPipeError:
        pass  # our reader went away; the deploy goes on without output
    # No interpreter clean-up that could flush a broken stdout again.
    os._exit(0)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


if __name__ == "__main__":
    _main()
