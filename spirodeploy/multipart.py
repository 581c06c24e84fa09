"""The upload body: ``multipart/form-data`` streamed from the bundle file.

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

import uuid
from typing import IO, Callable, Mapping

BLOCK = 1024 * 1024


class MultipartBody:
    """A readable body: ``len(body)`` bytes, sent with ``read(size)``."""

    def __init__(self, fields: Mapping[str, str], file_field: str, filename: str,
                 fileobj: IO[bytes], content_type: str = "application/octet-stream",
                 progress: Callable[[int, int], None] | None = None):
        self.boundary = uuid.uuid4().hex
        self.content_type = f"multipart/form-data; boundary={self.boundary}"
        dash = f"--{self.boundary}\r\n"
        head = "".join(
            f'{dash}Content-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
            for name, value in fields.items()
        )
        head += (f'{dash}Content-Disposition: form-data; name="{file_field}"; '
                 f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n')
        self._head = head.encode("utf-8")
        self._tail = f"\r\n--{self.boundary}--\r\n".encode()
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
