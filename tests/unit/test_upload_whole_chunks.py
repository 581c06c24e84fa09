"""A streamed upload sends the builder's 1 MiB buffers whole and uncopied (issue 17, overlap).

urllib3 copies each chunk of a body of unknown length into a new object with
its framing; the client's connections let the body frame its own chunks
instead (client._SendsStreamsWhole, MultipartStream.send_chunked).
"""

from __future__ import annotations

import hashlib
import socket

import pytest
import requests

from spirodeploy.deploy import deploy
from spirodeploy.errors import ExitCode
from spirodeploy.multipart import MultipartStream, SourceFailed
from spirodeploy.settings import Settings
from spirodeploy.stream import Pieces

MiB = 1 << 20
#: requests 2.32 and later send a chunked body through urllib3's connection
#: (which the client's connections take over); older ones (Debian 12's 2.28)
#: frame it themselves, with no copy but in the stream's 64 KiB pieces.
REQUESTS_FRAMES_THROUGH_URLLIB3 = tuple(map(int, requests.__version__.split(".")[:2])) >= (2, 32)


@pytest.fixture
def settings(fake_server, token):
    return Settings.resolve(server=fake_server.url, token=token, insecure=True)


def dechunk(raw: bytes) -> tuple[bytes, list[int]]:
    """The payload of a chunked body (without its final empty chunk) and its chunk sizes."""
    data, sizes, pos = bytearray(), [], 0
    while pos < len(raw):
        eol = raw.index(b"\r\n", pos)
        size = int(raw[pos:eol], 16)
        data += raw[eol + 2:eol + 2 + size]
        assert raw[eol + 2 + size:eol + 4 + size] == b"\r\n"
        sizes.append(size)
        pos = eol + 4 + size
    return bytes(data), sizes


@pytest.fixture
def sent(project, monkeypatch) -> list:
    """What the sockets are given to send, for a project with an 8 MiB artifact."""
    (project / "dist").mkdir()
    with open(project / "dist" / "app.bin", "wb") as fh:
        fh.truncate(8 * MiB)
    given = []
    real_sendall = socket.socket.sendall

    def sendall(sock, data, *args):
        given.append(data)
        return real_sendall(sock, data, *args)

    monkeypatch.setattr(socket.socket, "sendall", sendall)
    return given


def test_a_deploy_sends_the_builders_buffers_themselves(project, fake_server, settings, sent):
    report = deploy("proj", "prod", settings, root=str(project), artifacts=["dist/app.bin"])
    assert report.exit_code == ExitCode.OK, report.error
    # The tar's bytes went out as views of the Sink's 1 MiB buffers, not as
    # copies (urllib3 frames a copy of each chunk: bytes of 64 KiB + 7).
    views = [d for d in sent if isinstance(d, memoryview)
             and isinstance(d.obj, bytearray) and len(d.obj) == MiB]
    assert sum(map(len, views)) >= 8 * MiB, sorted({(type(d).__name__, len(d)) for d in sent})
    if REQUESTS_FRAMES_THROUGH_URLLIB3:
        # ... and whole, one chunk per buffer.
        assert sum(len(d) == MiB for d in views) >= 7, sorted({len(d) for d in views})
    got = fake_server.received[0]
    assert got.body_complete
    assert hashlib.sha256(got.bundle).hexdigest() == report.bundle["sha256"]


def test_send_chunked_frames_the_same_body_as_iterating_it():
    blocks = [b"a" * 10, b"", memoryview(bytearray(b"b" * 300)), b"c"]
    body = MultipartStream({"project": "p"}, "bundle", "bundle.tar", iter(blocks))
    out = []
    assert list(body.send_chunked(out.append)) == []  # it yields nothing: it sends
    data, sizes = dechunk(b"".join(bytes(x) for x in out))
    assert body.complete and body.sent == len(data)
    again = MultipartStream({"project": "p"}, "bundle", "bundle.tar", iter(blocks))
    again.boundary, again._head, again._tail = body.boundary, body._head, body._tail
    assert data == b"".join(again)
    assert sizes[1:-1] == [10, 300, 1]  # a chunk per non-empty block, between head and tail
    assert any(x is blocks[2] for x in out)  # uncopied


def test_send_chunked_takes_whole_blocks_where_offered():
    block = bytearray(b"x" * (3 * 65536 + 5))

    def blocks():
        yield memoryview(block)

    body = MultipartStream({}, "bundle", "bundle.tar", Pieces(blocks()))
    out = []
    list(body.send_chunked(out.append))
    assert dechunk(b"".join(bytes(x) for x in out))[1][1] == len(block)


def test_a_failing_source_and_a_failing_send_stay_apart():
    def failing():
        yield b"x" * 100
        raise OSError("disk gone")

    body = MultipartStream({}, "bundle", "bundle.tar", failing())
    out = []
    with pytest.raises(SourceFailed) as info:
        list(body.send_chunked(out.append))
    assert isinstance(info.value.error, OSError) and not body.complete
    assert body._tail not in out  # the closing boundary never went out

    def broken_pipe(data):
        raise BrokenPipeError("peer gone")

    body = MultipartStream({}, "bundle", "bundle.tar", iter([b"x"]))
    with pytest.raises(BrokenPipeError):  # a network error, for the client to explain
        list(body.send_chunked(broken_pipe))


def test_the_pieces_or_the_blocks_once():
    def blocks():
        yield memoryview(bytearray(200_000))

    pieces = Pieces(blocks())
    assert len(next(pieces)) == 64 * 1024
    with pytest.raises(RuntimeError):
        pieces.whole_blocks()


def test_the_socket_is_corked_while_the_bundle_goes_out(project, fake_server, settings,
                                                       monkeypatch):
    # TLS writes each 16 KiB record on its own and urllib3 sets TCP_NODELAY:
    # corked, only full segments go out (4x fewer wake-ups of a loopback
    # server); uncorked once the body is done, so nothing waits.
    (project / "dist").mkdir()
    with open(project / "dist" / "app.bin", "wb") as fh:
        fh.truncate(4 * MiB)
    events = []
    real_sendall, real_setsockopt = socket.socket.sendall, socket.socket.setsockopt

    def sendall(sock, data, *args):
        events.append(("send", len(data)))
        return real_sendall(sock, data, *args)

    def setsockopt(sock, level, option, value, *args):
        if (level, option) == (socket.IPPROTO_TCP, socket.TCP_CORK):
            events.append(("cork", value))
        return real_setsockopt(sock, level, option, value, *args)

    monkeypatch.setattr(socket.socket, "sendall", sendall)
    monkeypatch.setattr(socket.socket, "setsockopt", setsockopt)
    report = deploy("proj", "prod", settings, root=str(project), artifacts=["dist/app.bin"])
    assert report.exit_code == ExitCode.OK, report.error
    if not REQUESTS_FRAMES_THROUGH_URLLIB3:
        # requests < 2.32 sends a chunked body itself, past the client's connections.
        assert ("cork", 1) not in events
        return
    big = [i for i, (kind, n) in enumerate(events) if kind == "send" and n >= 64 * 1024]
    assert ("cork", 1) in events and ("cork", 0) in events, events[:5]
    corked, uncorked = events.index(("cork", 1)), events.index(("cork", 0))
    assert corked < big[0] and big[-1] < uncorked, (corked, big[0], big[-1], uncorked)
    # Next the last chunk (later sends are the in-process server's answer).
    assert events[uncorked + 1] == ("send", len(b"0\r\n\r\n"))


def test_recording_the_deploy_keeps_the_blocks_whole(project, fake_server, settings, sent,
                                                     tmp_path):
    # The history copies every block as it goes out; it must not hide the
    # whole blocks from the sender (16 times as many chunks otherwise).
    from spirodeploy.history import HistoryStore, Recording

    recording = Recording(HistoryStore(str(tmp_path / "history")), server=fake_server.url)
    report = deploy("proj", "prod", settings, root=str(project), artifacts=["dist/app.bin"],
                    history=recording)
    assert report.exit_code == ExitCode.OK, report.error
    if REQUESTS_FRAMES_THROUGH_URLLIB3:  # older ones send 64 KiB pieces anyway
        sizes = [len(data) for data in sent]
        assert sizes.count(MiB) >= 7, sorted(set(sizes))
    stored = tmp_path / "history" / "bundles" / f"{report.bundle['sha256']}.tar"
    assert stored.read_bytes() == fake_server.received[0].bundle
