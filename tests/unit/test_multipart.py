"""The streamed multipart body: framing, length, progress, bounded reads."""

from __future__ import annotations

import io
import re

import pytest

from spirodeploy.multipart import BLOCK, MultipartBody


def collect(body: MultipartBody) -> bytes:
    out = bytearray()
    while True:
        piece = body.read(BLOCK)
        if not piece:
            return bytes(out)
        assert len(piece) <= BLOCK
        out += piece


def test_framing_length_and_progress():
    data = bytes(range(256)) * 10000  # 2.5 MiB: several blocks
    seen = []
    body = MultipartBody({"project": "p", "deployment": "d"}, "bundle", "bundle.tar",
                         io.BytesIO(data), "application/x-tar",
                         progress=lambda sent, total: seen.append((sent, total)))
    raw = collect(body)
    assert len(raw) == len(body) == body.sent
    boundary = re.search(r"boundary=(\w+)", body.content_type).group(1).encode()
    parts = raw.split(b"--" + boundary)
    assert parts[-1] == b"--\r\n"
    assert b'name="project"\r\n\r\np\r\n' in parts[1]
    head, _, payload = parts[3].partition(b"\r\n\r\n")
    assert b'filename="bundle.tar"' in head and b"application/x-tar" in head
    assert payload[:-2] == data
    assert seen[-1] == (len(body), len(body)) and [s for s, _ in seen] == sorted(s for s, _ in seen)


def test_starts_at_the_files_position_and_reuses_one_buffer():
    fileobj = io.BytesIO(b"skipme" + b"x" * (3 * BLOCK))
    fileobj.seek(6)
    body = MultipartBody({}, "bundle", "b.tar", fileobj)
    head = bytes(body.read())
    first = body.read()
    first_bytes = bytes(first)  # the next read reuses this buffer
    second = body.read()
    assert isinstance(first, memoryview) and first.obj is second.obj  # no fresh buffers
    raw = head + first_bytes + bytes(second) + collect(body)
    assert len(raw) == len(body)
    payload = raw.partition(b"\r\n\r\n")[2].rpartition(b"\r\n--")[0]
    assert payload == b"x" * (3 * BLOCK)  # from the file's position: no "skipme"


def test_file_shorter_than_announced_is_an_error():
    class Shrinking(io.BytesIO):
        def readinto(self, view):
            return 0

    body = MultipartBody({}, "bundle", "b.tar", Shrinking(b"abc"))
    body.read()
    with pytest.raises(OSError, match="ended 3 bytes early"):
        body.read()
