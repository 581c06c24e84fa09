"""The forked two-process writer: a child writes the second half of a big tree.

A tree of tens of thousands of small files costs CPython about as much CPU
per file as the system calls themselves, so on a machine with a spare core
the builder splits the sorted names (:func:`fork_split`) and a forked child
writes the tail (:class:`ForkedTail`).  The bytes are the same as a
one-process build's.
"""

from __future__ import annotations

import marshal
import os
import tempfile
import threading
from functools import partial

from ..manifest import Contents, manifest_parts
from .sink import FileRange, Sink, write_all
from .writer import TarWriter

# Trees of at least this many files are written by two processes.
PARALLEL_MIN = 4096
# The parent also appends the child's segment and builds the manifest, so
# the child takes the larger share.
PARENT_SHARE = 0.5
CAN_FORK = hasattr(os, "fork") and hasattr(os, "preadv") and hasattr(os, "sched_getaffinity")


class ForkedTail:
    """Writes the tail of the sorted entries in a forked child process.

    A tree of tens of thousands of small files costs CPython about as much
    CPU per file as the system calls themselves, so on a machine with a spare
    core the builder splits the sorted names: the child writes the tar
    members of ``names[start:]`` (headers, data, padding, per-file sha256)
    into an anonymous temporary file while the parent writes the head; the
    parent then appends that segment, hashing the whole stream itself.

    The child is only an optimisation: if it fails in any way (an
    unreadable file, a signal, a full disk), :meth:`collect` returns None and
    the parent writes the tail itself, so errors are raised, typed and
    worded, exactly as in a serial build.  The output is byte-identical.

    Forking is only done while this process has a single thread (a thread
    holding a lock at fork time could deadlock the child), so inside a
    threaded host such as a Salt minion the build stays serial.
    """

    def __init__(self, names, start: int, entries, mtime: int, excluded: frozenset):
        self.segment = tempfile.TemporaryFile(prefix="spirodeploy-part-", buffering=0)
        # The child's records go through a file, not a pipe: several MB through
        # a 64 KiB pipe would make the two processes take turns.
        self._results = tempfile.TemporaryFile(prefix="spirodeploy-part-", buffering=0)
        # The child says "done" on a pipe before it exits: tearing down a
        # forked address space takes a while, and the results are ready first.
        try:
            self._done_r, done_w = os.pipe()
        except BaseException:
            self.segment.close()
            self._results.close()
            raise
        try:
            self.pid = os.fork()
        except BaseException:
            os.close(self._done_r)
            os.close(done_w)
            self.segment.close()
            self._results.close()
            raise
        if self.pid == 0:  # pragma: no cover - runs in the child (coverage cannot see it)
            status = 1
            try:
                os.close(self._done_r)
                w = TarWriter(self.segment, mtime, excluded, hashing=False, threaded=False)
                try:
                    w.write_entries(names[start:], entries)
                    _sha, size = w.sink.close()
                except BaseException:
                    w.sink.abort()
                    raise
                # Results file: the content-digest lines, the manifest's JSON
                # objects (comma-joined), then the facts; each piece is written
                # as it is made, so no whole-manifest string exists here.
                out = self._results
                put = partial(write_all, out.write)
                body = manifest_parts(w.files, lambda data: put(memoryview(data)))
                lines_size = out.tell()
                for i, piece in enumerate(body):
                    put(memoryview(b"," if i else b""))
                    put(memoryview(piece))
                facts_at = out.tell()
                # The records go as one opaque blob: the parent only unpacks
                # them if someone asks for the manifest dict.
                put(memoryview(marshal.dumps((
                    size, w.gitcommit, Contents.summarise(w.files), marshal.dumps(w.files),
                    lines_size, facts_at - lines_size))))
                os.write(done_w, b"%d\n" % facts_at)
                status = 0
            except BaseException:
                pass
            finally:
                os._exit(status)
        os.close(done_w)

    def collect(self) -> tuple | None:
        """Wait for the child's results; None if it failed, else ``(segment size,
        gitcommit, Contents.summarise(records), marshal.dumps(records), the
        content-digest lines, the manifest's JSON objects)``, the last two as
        :class:`FileRange`."""
        done = os.read(self._done_r, 32)
        if not done.endswith(b"\n"):  # the pipe closed without a word: the child failed
            self._reap()
            return None
        facts_at = int(done)
        fd = self._results.fileno()
        try:
            size, gitcommit, summary, blob, lines_size, body_size = marshal.loads(
                os.pread(fd, os.fstat(fd).st_size - facts_at, facts_at))
        except (EOFError, ValueError, TypeError):
            return None
        return (size, gitcommit, summary, blob, FileRange(fd, 0, lines_size),
                FileRange(fd, lines_size, body_size))

    def append_to(self, sink: Sink, size: int) -> None:
        """Copy the child's segment into ``sink`` (which hashes and writes it)."""
        sink.copy_from(FileRange(self.segment.fileno(), 0, size))

    def _reap(self) -> None:
        if self.pid is not None:
            os.waitpid(self.pid, 0)
            self.pid = None

    def close(self) -> None:
        """Stop the child if it still runs (or is still exiting), reap it, and
        drop the segment."""
        if self.pid is not None:
            try:
                os.kill(self.pid, 9)
            except OSError:
                pass
        self._reap()
        os.close(self._done_r)
        self._results.close()
        self.segment.close()


def fork_split(names) -> int:
    """Where to split ``names`` between this process and a forked child; 0: do not fork."""
    if len(names) < PARALLEL_MIN or not CAN_FORK:
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    if cpus < 2 or threading.active_count() != 1:
        return 0
    return int(len(names) * PARENT_SHARE)
