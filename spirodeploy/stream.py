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
"""

from __future__ import annotations

import queue
import threading
from typing import Any, BinaryIO, Callable, Iterator

#: Blocks of up to 1 MiB waiting for the connection (bounds memory).
QUEUE_BLOCKS = 8
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
        self._queue: "queue.Queue[bytes | None]" = queue.Queue(maxsize=blocks)
        self._cancelled = threading.Event()
        self.bundle: Any = None
        self.error: BaseException | None = None
        self._first: "list[bytes | None] | None" = None
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

    def _put(self, item: "bytes | None") -> None:
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

    def chunks(self) -> Iterator[bytes]:
        """The tar, block by block; raises the build's error rather than end short."""
        pending, self._first = self._first or [], []
        while True:
            item = pending.pop() if pending else self._queue.get()
            if item is _END:
                break
            yield item
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

    def __enter__(self) -> "BundleStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _QueueWriter:
    """The write-only file the build writes into; each write becomes one block."""

    whole_writes = True  # the builder hands each of its buffers in one write

    def __init__(self, stream: BundleStream):
        self._stream = stream

    def write(self, data: Any) -> int:
        # The builder reuses its buffers, so the block is copied once here.
        block = bytes(data)
        self._stream._put(block)
        return len(block)

    def flush(self) -> None:
        pass

    def seekable(self) -> bool:
        return False
