"""The upload body: ``multipart/form-data`` streamed from the bundle file.

(:class:`MultipartStream`, at the end, is the same body for a bundle that is
still being built: no length, sent chunked.)

Small text fields, then the bundle read from its file in 1 MiB blocks into
one reused buffer, then the closing boundary.  It has a length, so the
request carries a ``Content-Length``, and it counts what has been sent, so
the client knows whether the server can have received anything.

Why not requests_toolbelt's ``MultipartEncoder``: measured on a 1 GiB
bundle it cost about one extra second of CPU per GiB (every block copied
through a fresh BytesIO) and it loads any object with ``getvalue()`` into
memory.  The framing itself is a few lines (RFC 7578).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, Any

BLOCK = 1024 * 1024


def _framing(fields: Mapping[str, str], file_field: str, filename: str,
             content_type: str) -> tuple[str, bytes, bytes]:
    """``(boundary, head, tail)``: everything of the body around the file's bytes."""
    # 128 random bits, as uuid4().hex gives, without importing uuid (10 ms of
    # start-up, before the first byte of the upload).
    boundary = os.urandom(16).hex()
    dash = f"--{boundary}\r\n"
    head = "".join(
        f'{dash}Content-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    )
    head += (f'{dash}Content-Disposition: form-data; name="{file_field}"; '
             f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n')
    return boundary, head.encode("utf-8"), f"\r\n--{boundary}--\r\n".encode()


class MultipartBody:
    """A readable body: ``len(body)`` bytes, sent with ``read(size)``."""

    def __init__(self, fields: Mapping[str, str], file_field: str, filename: str,
                 fileobj: IO[bytes], content_type: str = "application/octet-stream",
                 progress: Callable[[int, int], None] | None = None):
        self.boundary, self._head, self._tail = _framing(fields, file_field, filename,
                                                          content_type)
        self.content_type = f"multipart/form-data; boundary={self.boundary}"
        self._file = fileobj
        start = fileobj.tell()
        self._file_size = fileobj.seek(0, 2) - start
        fileobj.seek(start)
        self._total = len(self._head) + self._file_size + len(self._tail)
        self._progress = progress
        self._buffer = bytearray(BLOCK)
        self._file_left = self._file_size
        self._stage = 0  # 0: head, 1: file, 2: tail, 3: done
        #: Bytes handed to the connection so far.
        self.sent = 0

    def __len__(self) -> int:
        return self._total

    @property
    def complete(self) -> bool:
        """True once all of the body went to the connection."""
        return self.sent >= self._total

    def read(self, size: int = -1) -> bytes | memoryview:
        """The next piece of the body; empty at the end.

        File blocks are views of one reused buffer, valid until the next
        call: the connection sends each block before it asks for another.
        """
        if self._stage == 0:
            self._stage = 1
            return self._count(self._head)
        if self._stage == 1:
            if self._file_left > 0:
                return self._count(self._read_file(min(BLOCK, self._file_left)))
            self._stage = 2
        if self._stage == 2:
            self._stage = 3
            return self._count(self._tail)
        return b""

    def _read_file(self, want: int) -> memoryview:
        view = memoryview(self._buffer)[:want]
        readinto = getattr(self._file, "readinto", None)
        if readinto is not None:
            got = readinto(view)
        else:
            data = self._file.read(want)
            got = len(data)
            view[:got] = data
        if not got:
            raise OSError(f"the bundle file ended {self._file_left} bytes early")
        self._file_left -= got
        return view[:got]

    def _count(self, piece):
        self.sent += len(piece)
        if self._progress is not None:
            self._progress(self.sent, self._total)
        return piece


class SourceFailed(Exception):
    """The file's bytes could not be produced; ``error`` says why.

    Deliberately not an ``OSError``: the HTTP stack must not mistake it for a
    network error (and retry, or wrap it); it drops the connection instead.
    """

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


class MultipartStream:
    """A body of unknown length: the file's bytes come from an iterable of blocks.

    Iterating it yields the fields, the blocks as they come and the closing
    boundary; the HTTP client sends them with chunked transfer encoding.  If
    the blocks fail, :class:`SourceFailed` is raised before the closing
    boundary, so the server never sees a whole request.
    """

    def __init__(self, fields: Mapping[str, str], file_field: str, filename: str,
                 blocks: Iterable[bytes], content_type: str = "application/octet-stream",
                 progress: Callable[[int, int | None], None] | None = None):
        self.boundary, self._head, self._tail = _framing(fields, file_field, filename,
                                                          content_type)
        self.content_type = f"multipart/form-data; boundary={self.boundary}"
        self._blocks = blocks
        self._progress = progress
        #: Bytes handed to the connection so far.
        self.sent = 0
        #: True once the closing boundary went out: the body is whole.
        self.complete = False
        self._started = False

    def __iter__(self) -> Iterator[bytes]:
        if self._started:
            raise RuntimeError("a streamed body can only be sent once")
        self._started = True
        yield self._count(self._head)
        try:
            for block in self._blocks:
                if block:
                    yield self._count(block)
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
                raise
            raise SourceFailed(exc) from exc
        yield self._count(self._tail)
        self.complete = True
        if self._progress is not None:
            self._progress(self.sent, self.sent)

    def _count(self, piece: bytes) -> bytes:
        self.sent += len(piece)
        if self._progress is not None:
            self._progress(self.sent, None)
        return piece

    def send_chunked(self, send: Callable[[bytes | memoryview], Any]) -> Iterator[bytes]:
        """Send the body through ``send`` (a connection's sendall) as HTTP/1.1 chunks.

        A generator that yields nothing: it stands in for the body in the
        HTTP client's own chunk loop, which then only sends the final empty
        chunk.  Unlike that loop it copies no block: each goes out as it is,
        after its chunk-size line (the CRLF that ends a chunk rides with the
        next size line).  Blocks come whole where the iterable offers them
        (``whole_blocks()``, :class:`spirodeploy.stream.Pieces`): a 1 MiB
        chunk each instead of 16 of 64 KiB.  If the blocks fail,
        :class:`SourceFailed` is raised before the closing boundary, as by
        :meth:`__iter__`; errors of ``send`` itself pass through as they are.
        """
        self._send_chunks(send)
        yield from ()

    def _send_chunks(self, send: Callable[[bytes | memoryview], Any]) -> None:
        if self._started:
            raise RuntimeError("a streamed body can only be sent once")
        self._started = True
        whole = getattr(self._blocks, "whole_blocks", None)
        blocks = iter(whole() if whole is not None else self._blocks)
        send(b"%x\r\n%b" % (len(self._head), self._head))
        self._count(self._head)
        while True:
            try:
                block = next(blocks)
            except StopIteration:
                break
            except BaseException as exc:
                if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
                    raise
                raise SourceFailed(exc) from exc
            if len(block):
                send(b"\r\n%x\r\n" % len(block))
                send(block)
                self._count(block)
        send(b"\r\n%x\r\n%b\r\n" % (len(self._tail), self._tail))
        self._count(self._tail)
        self.complete = True
        if self._progress is not None:
            self._progress(self.sent, self.sent)
