"""Bundling while uploading (spirodeploy.stream, deploy(stream=True)) against the fake server."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import time

import pytest

from spirodeploy.builder import build_bundle
from spirodeploy.deploy import deploy
from spirodeploy.errors import BundleError, ExitCode
from spirodeploy.settings import Settings
from spirodeploy.stream import BundleStream

MiB = 1 << 20


@pytest.fixture
def settings(fake_server, token):
    return Settings.resolve(server=fake_server.url, token=token, insecure=True)


def big_project(project, size=40 * MiB):
    """The project plus a sparse artifact: the bundle is many blocks long."""
    (project / "dist").mkdir()
    with open(project / "dist" / "app.bin", "wb") as fh:
        fh.truncate(size)
    (project / "_salt" / "zz.sls").write_text("zz: {}\n")  # sorts after the artifact
    return project


def settled(received, timeout=10.0):
    """The request once the fake server has read all of its body (it reads in a thread)."""
    deadline = time.monotonic() + timeout
    while not received.body_size and time.monotonic() < deadline:
        time.sleep(0.02)
    return received


def stream_threads():
    return [t for t in threading.enumerate() if t.name.startswith("spirodeploy-bundle")]


def test_the_bundle_goes_out_chunked_as_built(project, fake_server, settings):
    big_project(project)
    seen = []

    report = deploy("proj", "prod", settings, root=str(project), artifacts=["dist/app.bin"],
                    on_bundle=lambda bundle: seen.append(("bundle", len(fake_server.received))),
                    on_event=lambda event, data, report: seen.append(("event", event)))

    assert report.exit_code == ExitCode.OK, report.error
    got = fake_server.received[0]
    assert got.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in got.headers
    assert got.body_complete and got.bundle_parts == 1
    # the bytes the server got are the bundle the report describes
    assert hashlib.sha256(got.bundle).hexdigest() == report.bundle["sha256"]
    assert len(got.bundle) == report.bundle["size"] > 40 * MiB
    assert report.bundle["file_count"] == 4
    # the bundle is announced once it has gone out, before the first event
    assert seen[0] == ("bundle", 1) and seen[1][0] == "event"
    assert not stream_threads()


def test_same_bytes_as_a_bundle_built_first(project, fake_server, settings):
    streamed = deploy("proj", "prod", settings, root=str(project))
    built = deploy("proj", "prod", settings, root=str(project), stream=False)
    first, second = fake_server.received
    assert first.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" in second.headers
    assert first.bundle == second.bundle
    assert streamed.bundle == built.bundle


def test_output_gets_the_streamed_bytes(project, fake_server, settings, tmp_path):
    out = tmp_path / "bundle.tar"
    report = deploy("proj", "prod", settings, root=str(project), output=str(out))
    assert report.exit_code == ExitCode.OK
    assert out.read_bytes() == fake_server.received[0].bundle
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_build_failing_half_way_leaves_the_request_unfinished(project, fake_server, settings):
    big_project(project)
    vanish = project / "_salt" / "zz.sls"

    def progress(sent, total):
        # The first blocks are out; the builder is still on the artifact.
        if sent > MiB and vanish.exists():
            vanish.unlink()

    with pytest.raises(BundleError) as caught:
        deploy("proj", "prod", settings, root=str(project), artifacts=["dist/app.bin"],
               on_progress=progress)

    message = str(caught.value)
    assert "zz.sls" in message and "vanished" in message
    assert "upload was stopped unfinished, so the server deploys nothing" in message
    assert caught.value.server_has_bundle is False
    got = settled(fake_server.received[0])
    # Blocks queued before the failure may still go out, so the body may hold
    # the whole artifact, but nothing of the member that failed after it.
    assert MiB < got.body_size < 40 * MiB + 4096
    assert not got.body_complete  # the server never saw a whole request
    assert not stream_threads()


def test_bad_input_is_refused_before_connecting(project, fake_server, settings):
    with pytest.raises(BundleError, match="missing.bin"):
        deploy("proj", "prod", settings, root=str(project), artifacts=["missing.bin"])
    assert fake_server.received == []
    assert not stream_threads()


def test_interrupt_during_a_streamed_upload(project, fake_server, settings):
    big_project(project)

    def progress(sent, total):
        if sent > MiB:
            raise KeyboardInterrupt

    report = deploy("proj", "prod", settings, root=str(project), artifacts=["dist/app.bin"],
                    on_progress=progress)

    assert report.exit_code == ExitCode.INTERRUPTED
    assert report.server_has_bundle is False
    assert "during the upload" in str(report.error)
    assert not settled(fake_server.received[0]).body_complete
    assert not stream_threads()


def test_progress_has_no_total_until_the_last_block(project, fake_server, settings):
    calls = []
    deploy("proj", "prod", settings, root=str(project),
           on_progress=lambda sent, total: calls.append((sent, total)))
    assert all(total is None for _sent, total in calls[:-1])
    sent, total = calls[-1]
    assert total == sent == calls[-2][0] > 0


def test_closing_a_stream_stops_a_blocked_build():
    blocks = []

    def build(writer):
        for _ in range(100):  # far more than the queue holds
            writer.write(b"x" * 1024)
            blocks.append(1)
        return "done"

    stream = BundleStream(build, blocks=2)
    stream.wait_for_first_block()
    stream.close()
    assert not stream_threads()
    assert len(blocks) < 100
    assert stream.bundle is None


def test_chunks_end_with_the_builds_error():
    def build(writer):
        writer.write(b"first")
        raise BundleError("file x vanished")

    with BundleStream(build) as stream:
        got = []
        with pytest.raises(BundleError, match="vanished"):
            for block in stream.chunks():
                got.append(block)
    assert got == [b"first"]


def test_build_bundle_stream_without_output_has_no_file(project):
    class Collect:
        def __init__(self):
            self.data = bytearray()

        def write(self, data):
            self.data += data
            return len(data)

    sink = Collect()
    bundle = build_bundle(project, stream=sink)
    assert bundle.file is None
    assert hashlib.sha256(sink.data).hexdigest() == bundle.sha256
    bundle.close()


def test_cli_streams_unless_told_not_to(project, fake_server, token, monkeypatch):
    from spirodeploy.cli import main

    monkeypatch.chdir(project)
    monkeypatch.setenv("SPIRO_URL", fake_server.url)
    monkeypatch.setenv("SPIRO_TOKEN", token)
    monkeypatch.delenv("SPIRO_TOKEN_FILE", raising=False)
    assert main(["proj", "prod", "--insecure"]) == ExitCode.OK
    assert main(["proj", "prod", "--insecure", "--no-stream"]) == ExitCode.OK
    streamed, built = fake_server.received
    assert streamed.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" in built.headers and "Transfer-Encoding" not in built.headers
    assert streamed.bundle == built.bundle


def test_output_inside_the_project_is_not_bundled_when_streaming(project, fake_server, settings):
    (project / "notes.txt").write_text("notes\n")
    report = deploy("proj", "prod", settings, root=str(project), include_source="fs",
                    output=str(project / "bundle.tar"))
    assert report.exit_code == ExitCode.OK
    names = [f["path"] for f in
             json.loads(_member(fake_server.received[0].bundle,
                                              ".spirodeploy.json"))["files"]]
    assert "_source/notes.txt" in names
    assert not [n for n in names if "bundle.tar" in n], names


def _member(tar_bytes: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tf:
        return tf.extractfile(name).read()


def test_plain_http_body_limit_is_explained_for_a_stream(fake_server, token, monkeypatch):
    from spirodeploy import client
    from spirodeploy.errors import BundleRejected, ConnectError

    monkeypatch.setattr(client, "PLAIN_HTTP_BODY_LIMIT", 100)
    fake_server.then(status=400, content_type="text/html", chunks=[b"400: Bad Request"])
    with pytest.raises(BundleRejected, match=r"this upload went past \d+ MiB: use HTTPS"):
        list(client.upload(fake_server.url, token, iter([b"\0" * MiB] * 3), "proj", "prod",
                           sslverify=False))
    fake_server.then(close_before_body=True)
    with pytest.raises(ConnectError, match="during the upload.*use HTTPS") as info:
        list(client.upload(fake_server.url, token, iter([b"\0" * MiB] * 64), "proj", "prod",
                           sslverify=False, connect_retries=0))
    assert info.value.server_has_bundle is False


def test_files_get_small_writes_and_the_upload_whole_blocks(project, tmp_path):
    # 1 MiB write() calls into the page cache were 2-5x slower on the
    # benchmark VM; the upload queue still wants one block per write.
    big_project(project, size=5 * MiB)

    class Recording:
        def __init__(self, whole_writes=False):
            self.whole_writes = whole_writes
            self.sizes = []
            self.data = bytearray()

        def write(self, data):
            self.sizes.append(len(data))
            self.data += data
            return len(data)

    to_file, to_queue = Recording(), Recording(whole_writes=True)
    build_bundle(project, artifacts=["dist/app.bin"], gitcommit=False, stream=to_file)
    build_bundle(project, artifacts=["dist/app.bin"], gitcommit=False, stream=to_queue)
    assert to_file.data == to_queue.data and len(to_file.data) > 5 * MiB
    assert max(to_file.sizes) == 256 * 1024
    assert max(to_queue.sizes) == MiB

    out = tmp_path / "bundle.tar"  # a tee: whole blocks to the stream, the same bytes to the file
    teed = Recording(whole_writes=True)
    build_bundle(project, artifacts=["dist/app.bin"], gitcommit=False, stream=teed, output=str(out))
    assert max(teed.sizes) == MiB and out.read_bytes() == teed.data == to_file.data


def test_the_stream_hands_out_small_pieces_of_recycled_buffers():
    # A fresh 1 MiB block per write (and urllib3's copy of each chunk it
    # frames) cost 0.7 s of CPU per GiB in page faults; pieces of 64 KiB
    # from a few recycled buffers cost none.
    block = bytearray(MiB)  # reused and changed by the "builder", like the Sink's buffers

    def build(writer):
        for i in range(40):
            block[:] = bytes([i]) * MiB
            writer.write(block)
        writer.write(b"tail")
        return "done"

    with BundleStream(build, blocks=4) as stream:
        stream.wait_for_first_block()
        sizes, buffers, data = [], set(), hashlib.sha256()
        for piece in stream.chunks():
            sizes.append(len(piece))
            buffers.add(id(getattr(piece, "obj", piece)))
            data.update(piece)
    assert stream.bundle == "done"
    assert max(sizes) <= 64 * 1024 and sum(sizes) == 40 * MiB + 4
    want = hashlib.sha256(b"".join(bytes([i]) * MiB for i in range(40)) + b"tail")
    assert data.hexdigest() == want.hexdigest()
    assert len(buffers) <= 4 + 2 + 1, len(buffers)  # the queue's, in flight, the bytes tail


def test_a_piece_is_valid_until_the_next_is_asked_for(project, fake_server, settings):
    # The same bytes arrive as a bundle built first, although buffers are reused.
    big_project(project, size=5 * MiB)
    report = deploy("proj", "prod", settings, root=str(project), artifacts=["dist/app.bin"])
    assert report.exit_code == ExitCode.OK, report.error
    got = settled(fake_server.received[0]).bundle
    assert hashlib.sha256(got).hexdigest() == report.bundle["sha256"]
    assert len(got) > 5 * MiB


def test_the_builders_buffers_go_out_without_a_copy(project, monkeypatch):
    # The Sink hands its buffers over (and gets them back once sent): no
    # block of the tar passes through _QueueWriter.write's copy.
    from spirodeploy import stream as stream_mod

    big_project(project, size=20 * MiB)
    copied = []
    real_write = stream_mod._QueueWriter.write
    monkeypatch.setattr(stream_mod._QueueWriter, "write",
                        lambda self, data: copied.append(len(data)) or real_write(self, data))
    with BundleStream(lambda w: build_bundle(project, artifacts=["dist/app.bin"],
                                             gitcommit=False, stream=w)) as stream:
        stream.wait_for_first_block()
        data, buffers, size = hashlib.sha256(), set(), 0
        for piece in stream.chunks():
            data.update(piece)
            size += len(piece)
            buffers.add(id(piece.obj))
    assert copied == []
    assert data.hexdigest() == stream.bundle.sha256 and size == stream.bundle.size > 20 * MiB
    assert len(buffers) <= 4 + stream_mod.QUEUE_BLOCKS + 2  # the Sink's, a bounded set


def test_stopping_the_upload_midway_ends_the_build(project):
    big_project(project, size=40 * MiB)
    stream = BundleStream(lambda w: build_bundle(project, artifacts=["dist/app.bin"],
                                                 gitcommit=False, stream=w), blocks=2)
    stream.wait_for_first_block()
    pieces = stream.chunks()
    for _ in range(5):  # the buffers being sent are never given back
        next(pieces)
    started = time.monotonic()
    stream.close()
    assert time.monotonic() - started < 10
    assert not stream_threads()
    assert stream.bundle is None and stream.error is not None
