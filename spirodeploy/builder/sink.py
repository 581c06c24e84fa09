"""The hashing writer: tar bytes go into large buffers that a thread hashes and writes.

The main thread fills the free tail of the current buffer (file data is
read straight into it, so it is copied once); a worker thread hashes the
whole stream with sha256 and writes it out meanwhile.  At most
``NBUFFERS`` buffers exist, which bounds memory.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Iterator
from typing import Any, NamedTuple

from ..errors import BundleError

MiB = 1 << 20
CHUNK = MiB                # size of each output buffer and of each read
NBUFFERS = 4               # output buffers in flight (bounds memory)
# Largest write() into a file.  Writing a 1 GiB bundle in 1 MiB calls made
# the kernel's copy into the page cache 2-5x slower in one run out of two on
# the benchmark VM (our guess: large page-cache folios on host memory not yet
# faulted in); 256 KiB calls were fast in every A/B run and cost nothing
# measurable elsewhere.
WRITE_MAX = 256 * 1024


def write_all(write, mv, most: int = WRITE_MAX) -> None:
    """Write all of ``mv``, in calls of at most ``most`` bytes."""
    while len(mv):
        n = write(mv[:most])
        if n is None:
            n = min(most, len(mv))
        mv = mv[n:]


class FileRange(NamedTuple):
    """``size`` bytes of the open file ``fd`` from ``offset``; a manifest chunk."""

    fd: int
    offset: int
    size: int

    def __len__(self) -> int:  # what manifest_chunks and the tar header measure
        return self.size

    def pieces(self, block: int = CHUNK) -> Iterator[memoryview]:
        """The bytes, read into one reused buffer (views valid until the next)."""
        mv = memoryview(bytearray(min(block, self.size)))
        pos, end = self.offset, self.offset + self.size
        while pos < end:
            got = os.preadv(self.fd, [mv[:end - pos]], pos)
            if not got:
                raise BundleError("internal temporary file of the bundle is truncated")
            yield mv[:got]
            pos += got


class Sink:
    """Collects tar bytes into large buffers; a worker thread hashes and writes them.

    The main thread reads files straight into the free tail of the current
    buffer (:meth:`tail`/:meth:`commit`), so file data is copied once; the
    worker hashes the whole stream and writes it out while the main thread
    goes on reading.  At most ``NBUFFERS`` buffers exist, which bounds memory
    (plus ``out.holds`` for a writer that takes the buffers themselves and
    gives them back once sent: the upload queue, :mod:`spirodeploy.stream`).
    """

    def __init__(self, out, chunk: int = CHUNK, nbuffers: int = NBUFFERS,
                 hashing: bool = True, threaded: bool = True):
        self._out = out
        # A writer that takes each write as one block (the upload queue of a
        # streamed deploy) gets whole buffers; files get WRITE_MAX at a time.
        self._write_max = chunk if getattr(out, "whole_writes", False) else WRITE_MAX
        # One that can hold a buffer until it is done with it (the upload
        # queue: ``hand_over(buffer, length, give_back)``) gets the buffers
        # themselves, not a copy; it holds up to ``out.holds`` of them, so
        # there are that many more, and memory stays bounded.
        self._hand_over = getattr(out, "hand_over", None) if threaded else None
        if self._hand_over is not None:
            nbuffers += getattr(out, "holds", 0)
        self.chunk = chunk
        self.sha = hashlib.sha256() if hashing else None
        self._flushed = 0
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(nbuffers - 1 if threaded else 0):
            self._free.put(bytearray(chunk))
        self._buf = bytearray(chunk)
        self.mv = memoryview(self._buf)
        self.fill = 0
        self._error: BaseException | None = None
        self._thread = None
        if threaded:
            self._todo: queue.SimpleQueue[Any] = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._run, name="spirodeploy-bundle-writer",
                                            daemon=True)
            self._thread.start()
        else:
            # Without a spare core, handing buffers to a thread only adds switches.
            self._todo = _Inline(self._consume)

    @property
    def size(self) -> int:
        return self._flushed + self.fill

    def _run(self):
        while True:
            item = self._todo.get()
            if item is None:
                return
            self._consume(item)

    def _consume(self, item) -> None:
        if item is None:
            return
        if type(item) is threading.Event:
            item.set()
            return
        buf, n, hashed = item
        if self._error is None:
            try:
                mv = memoryview(buf)[:n]
                if self.sha is not None and not hashed:
                    self.sha.update(mv)
                if self._hand_over is not None:
                    del mv
                    # The upload gives the buffer back once it has sent it.
                    self._hand_over(buf, n, self._free.put)
                    return
                write_all(self._out.write, mv, self._write_max)
                del mv
            except BaseException as e:  # reported to the main thread
                self._error = e
        self._free.put(buf)

    def _raise(self):
        e = self._error
        if isinstance(e, OSError):
            raise BundleError(f"cannot write the bundle: {e.strerror or e}") from e
        raise e

    def flush(self, hashed: bool = False) -> None:
        """Hand the current buffer to the writer (hashed: this thread hashed it already)."""
        if self._error is not None:
            self._raise()
        if not self.fill:
            return
        self._todo.put((self._buf, self.fill, hashed))
        self._flushed += self.fill
        self._buf = self._free.get()
        self.mv = memoryview(self._buf)
        self.fill = 0

    def write(self, data) -> None:
        n = len(data)
        fill = self.fill
        if fill + n <= self.chunk:
            self._buf[fill:fill + n] = data
            self.fill = fill + n
            return
        src = memoryview(data)
        off = 0
        while off < n:
            room = self.chunk - self.fill
            if not room:
                self.flush()
                continue
            take = min(room, n - off)
            self._buf[self.fill:self.fill + take] = src[off:off + take]
            self.fill += take
            off += take

    def tail(self, need: int) -> memoryview:
        """A writable view of the free space of the current buffer (>= ``need`` bytes)."""
        if self.chunk - self.fill < need:
            self.flush()
        return self.mv[self.fill:]

    def commit(self, n: int) -> None:
        self.fill += n

    def copy_from(self, source: FileRange) -> None:
        """Append the bytes of ``source``, a range of a file.

        With a writer thread, this thread hashes each block and the writer
        only writes it, so the two run side by side; blocks queued before
        are hashed first (their turn comes before this call starts hashing).
        """
        hash_here = self._thread is not None and self.sha is not None
        if hash_here:
            self.flush()
            drained = threading.Event()
            self._todo.put(drained)
            drained.wait()
        fd, pos, size = source
        end = pos + size
        while pos < end:
            if self.fill == self.chunk:
                self.flush(hashed=hash_here)
            tail = self.mv[self.fill:self.fill + end - pos]
            got = os.preadv(fd, [tail], pos)
            if not got:
                raise BundleError("internal temporary file of the bundle is truncated")
            if hash_here:
                self.sha.update(tail[:got])
            self.fill += got
            pos += got
        self.flush(hashed=hash_here)

    def close(self) -> tuple[str, int]:
        try:
            self.flush()
        finally:
            self._todo.put(None)
            if self._thread is not None:
                self._thread.join()
        if self._error is not None:
            self._raise()
        return (self.sha.hexdigest() if self.sha is not None else ""), self._flushed

    def abort(self) -> None:
        if self._error is None:
            self._error = RuntimeError("bundle aborted")
        self._todo.put(None)
        if self._thread is not None:
            self._thread.join()


class _Inline:
    """Stands in for the work queue of an unthreaded :class:`Sink`."""

    __slots__ = ("put",)

    def __init__(self, consume):
        self.put = consume
