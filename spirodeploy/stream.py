"""Bundling while uploading: the builder feeds the request body as it writes.

A deploy that first builds the whole tar and then uploads it costs the two
one after the other; streaming overlaps them, so a deploy costs about the
upload alone.  :class:`BundleStream` runs a build (normally
:func:`spirodeploy.builder.build_bundle` with ``stream=``) in a thread and
hands its tar out, block by block, through a bounded queue: memory stays at
a few MiB whatever the bundle's size.

If the build fails half way, :meth:`BundleStream.chunks` raises its error
instead of ending, so the request body is never completed: the client drops
the connection before the closing boundary and the final chunk, and the
server, which only acts on a whole request, deploys nothing.

No memory is fresh per block, and the builder's blocks are not copied: the
builder hands over its buffers themselves (:meth:`_QueueWriter.hand_over`)
and gets each back once it was sent; other writers' blocks are copied into
a few recycled buffers.  Blocks go out in pieces of :data:`PIECE` bytes:
urllib3 copies each chunk it frames into a new bytes object, and a new
object of 256 KiB or 1 MiB was fresh memory from the kernel nearly every
time (above glibc's default mmap threshold and top pad, both 128 KiB).  A
1 GiB deploy took 277,000 page faults and 1.6 s of system time with pieces
of 256 KiB, 9,000 and 0.8 s with pieces of 64 KiB, whose copies reuse the
same heap memory.  The client's own connections copy nothing: they frame
each whole block as one chunk (:meth:`Pieces.whole_blocks`), and the pieces
remain for any other sender (a proxy's connection, another HTTP stack).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

#: Blocks of up to 1 MiB waiting for the connection (bounds memory).
QUEUE_BLOCKS = 8
#: The most bytes :meth:`BundleStream.chunks` yields at once (see the module's notes).
PIECE = 64 * 1024
#: The size of the recycled buffers (a bigger write gets a buffer of its own size).
BUFFER = 1 << 20
_END = None


class BundleCancelled(Exception):
    """Raised inside the build thread once the upload has given up."""


class BundleStream:
    """Run ``build(writer)`` in a thread; :meth:`chunks` yields what it writes.

    ``build`` gets a write-only file object and returns the finished bundle,
    which is then :attr:`bundle`.  Use it as a context manager (or call
    :meth:`close`) so the thread is always stopped.
    """

    def __init__(self, build: Callable[[BinaryIO], Any], blocks: int = QUEUE_BLOCKS):
        # Items are (buffer, length, give_back: called with the buffer once it
        # was sent, or None).
        self._queue: queue.Queue[tuple[Any, int, Any] | None] = queue.Queue(maxsize=blocks)
        self.blocks = blocks
        # Buffers the connection is done with; at most blocks + 2 ever exist
        # (the queue's, the one being sent, the one being filled).
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._cancelled = threading.Event()
        self.bundle: Any = None
        self.error: BaseException | None = None
        self._first: list[tuple[Any, int, Any] | None] | None = None
        self._thread = threading.Thread(target=self._run, args=(build,),
                                        name="spirodeploy-bundle-stream", daemon=True)
        self._thread.start()

    def _run(self, build: Callable[[BinaryIO], Any]) -> None:
        try:
            self.bundle = build(_QueueWriter(self))
        except BaseException as exc:  # handed to the consumer in chunks()
            self.error = exc
        finally:
            self._put(_END)

    def _put(self, item: tuple[Any, int, Any] | None) -> None:
        while not self._cancelled.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        if item is not _END:
            raise BundleCancelled("the upload stopped")

    def wait_for_first_block(self) -> None:
        """Wait until the tar starts coming out; raise the build's error if it failed first.

        The builder collects every file before it writes anything, so this
        is where a bad input shows, before a connection is opened.
        """
        if self._first is None:
            self._first = [self._queue.get()]
        if self._first[0] is _END:
            self._thread.join()
            if self.error is not None:
                raise self.error

    def chunks(self) -> Pieces:
        """The tar, in pieces of at most :data:`PIECE` bytes; raises the build's error
        rather than end short.

        Each piece is a view of a recycled buffer: it is valid until the next
        piece is asked for (copy it to keep it).  A sender that frames the
        blocks itself, without copying them, takes them whole instead
        (:meth:`Pieces.whole_blocks`).
        """
        return Pieces(self._blocks())

    def _blocks(self) -> Iterator[memoryview]:
        """The tar, block by block as the build wrote them (each valid until the next)."""
        pending, self._first = self._first or [], []
        while True:
            item = pending.pop() if pending else self._queue.get()
            if item is _END:
                break
            buf, n, give_back = item
            yield memoryview(buf)[:n]
            if give_back is not None:
                give_back(buf)
        self._thread.join()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Stop the build if it still runs, and wait for its thread."""
        self._cancelled.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
        self._thread.join()

    def __enter__(self) -> BundleStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Pieces:
    """What :meth:`BundleStream.chunks` returns: an iterator of pieces of the blocks.

    Pieces of at most :data:`PIECE` bytes suit a sender that copies each one
    (see the module's notes).  One that sends a buffer without copying it
    (:meth:`spirodeploy.multipart.MultipartStream.send_chunked`) asks for
    :meth:`whole_blocks` before the first piece: one HTTP chunk per 1 MiB
    block costs it and the server 16 times fewer chunks, TLS records cut
    short and trips through the interpreter than one per piece.
    """

    def __init__(self, blocks: Iterator[memoryview]):
        self._blocks: Iterator[memoryview] | None = blocks
        self._pieces: Iterator[memoryview] | None = None

    def __iter__(self) -> Pieces:
        return self

    def __next__(self) -> memoryview:
        if self._pieces is None:
            self._pieces = self._split(self.whole_blocks())
        return next(self._pieces)

    def whole_blocks(self) -> Iterator[memoryview]:
        """The blocks themselves, each valid until the next; only once, instead of the pieces."""
        blocks, self._blocks = self._blocks, None
        if blocks is None:
            raise RuntimeError("the bundle's blocks were already taken")
        return blocks

    @staticmethod
    def _split(blocks: Iterator[memoryview]) -> Iterator[memoryview]:
        for block in blocks:
            n = len(block)
            for start in range(0, n, PIECE):
                yield block[start:start + PIECE] if n - start > PIECE else block[start:n]


class _QueueWriter:
    """The write-only file the build writes into; each write becomes one block."""

    whole_writes = True  # the builder hands each of its buffers in one write

    def __init__(self, stream: BundleStream):
        self._stream = stream
        #: How many buffers :meth:`hand_over` may hold at once: the queue's,
        #: the one being sent, the one waiting for room in the queue.
        self.holds = stream.blocks + 2

    def hand_over(self, buf: Any, n: int, give_back: Callable[[Any], None]) -> None:
        """Send the first ``n`` bytes of ``buf`` without copying them.

        ``give_back(buf)`` is called once they were sent (never if the upload
        stops first); until then the caller must not change ``buf``.
        """
        if n:
            self._stream._put((buf, n, give_back))
        else:
            give_back(buf)

    def write(self, data: Any) -> int:
        n = len(data)
        if not n:
            return 0
        if type(data) is bytes:  # immutable: handed on as it is
            self._stream._put((data, n, None))
            return n
        # The writer may reuse its buffer (the builder's tee to --output
        # does), so the block is copied here, into a buffer the connection
        # gave back (no fresh pages to fault in).
        free = self._stream._free
        buf = None
        while buf is None and not free.empty():
            buf = free.get()
            if len(buf) < n:
                buf = None
        if buf is None:
            buf = bytearray(max(n, BUFFER))
        buf[:n] = data
        self._stream._put((buf, n, free.put))
        return n

    def flush(self) -> None:
        pass

    def seekable(self) -> bool:
        return False
