"""The builder's two hashes (issue 17): the bundle's sha256, taken by the writer
thread, and each member's sha256, taken as it is read, are those of hashlib."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import tarfile
import threading

import pytest

from spirodeploy.builder import build_bundle
from spirodeploy.builder.sink import FileRange, Sink
from spirodeploy.errors import BundleError

MiB = 1 << 20


class Collect:
    def __init__(self, fail_after: int | None = None):
        self.data = bytearray()
        self.fail_after = fail_after

    def write(self, data):
        if self.fail_after is not None and len(self.data) + len(data) > self.fail_after:
            raise OSError(28, "No space left on device")
        self.data += data
        return len(data)


def writer_threads():
    return [t for t in threading.enumerate() if t.name == "spirodeploy-bundle-writer"]


def _project(tmp_path, big: int = 5 * MiB + 123):
    root = tmp_path / "proj"
    (root / "_salt").mkdir(parents=True)
    (root / "_salt" / "top.sls").write_text("base: {'*': [a]}\n")
    (root / "_salt" / "a.sls").write_text("a: test.nop\n")
    (root / "dist").mkdir()
    rng = random.Random(17)
    (root / "dist" / "app.bin").write_bytes(rng.randbytes(big))  # several output buffers
    (root / "dist" / "small.txt").write_bytes(rng.randbytes(3000))  # the fast path
    return root


def test_bundle_and_member_hashes_are_hashlibs(tmp_path):
    root = _project(tmp_path)
    out = Collect()
    bundle = build_bundle(root, artifacts=["dist"], gitcommit=False, stream=out)
    assert bundle.sha256 == hashlib.sha256(out.data).hexdigest()
    assert bundle.size == len(out.data)
    with tarfile.open(fileobj=io.BytesIO(bytes(out.data))) as tf:
        manifest = json.loads(tf.extractfile(".spirodeploy.json").read())
        listed = {f["path"]: f["sha256"] for f in manifest["files"]}
        for member in tf.getmembers():
            if member.name == ".spirodeploy.json":
                continue
            data = tf.extractfile(member).read()
            assert listed[member.name] == hashlib.sha256(data).hexdigest(), member.name
    assert listed["_artifacts/dist/app.bin"] == hashlib.sha256(
        (root / "dist" / "app.bin").read_bytes()).hexdigest()


def _feed(sink: Sink, rng: random.Random, tmp_path) -> bytes:
    """Every way bytes enter a sink; returns what went in."""
    whole = bytearray()
    for _ in range(40):
        piece = rng.randbytes(rng.choice([1, 511, 4096, 300_000, MiB + 7]))
        sink.write(piece)
        whole += piece
        tail = sink.tail(1000)
        n = min(len(tail), 777)
        tail[:n] = b"t" * n
        sink.commit(n)
        whole += b"t" * n
    part = tmp_path / "part"
    blob = rng.randbytes(3 * MiB + 5)
    part.write_bytes(blob)
    fd = os.open(part, os.O_RDONLY)
    try:
        sink.copy_from(FileRange(fd, 100, len(blob) - 200))
    finally:
        os.close(fd)
    whole += blob[100:-100]
    sink.write(b"end")
    return bytes(whole + b"end")


def test_the_threaded_stream_hash_equals_the_serial_one(tmp_path):
    got = {}
    for threaded in (True, False):
        out = Collect()
        sink = Sink(out, threaded=threaded)
        fed = _feed(sink, random.Random(5), tmp_path)
        digest, size = sink.close()
        assert bytes(out.data) == fed and size == len(fed)
        got[threaded] = digest
    assert got[True] == got[False] == hashlib.sha256(fed).hexdigest()


@pytest.mark.parametrize("fail_after", [0, 3 * MiB])
def test_the_writer_thread_ends_on_a_write_error(tmp_path, fail_after):
    root = _project(tmp_path)
    before = len(writer_threads())
    with pytest.raises(BundleError, match="cannot write the bundle: No space left"):
        build_bundle(root, artifacts=["dist"], gitcommit=False, stream=Collect(fail_after))
    assert len(writer_threads()) == before


def test_the_writer_thread_ends_when_a_file_fails(tmp_path, monkeypatch):
    root = _project(tmp_path)
    before = len(writer_threads())
    from spirodeploy.builder import writer

    real = writer._readinto

    def vanishing(fd, mv):  # the big file ends early: it changed while bundled
        got = real(fd, mv)
        return 0 if got and os.fstat(fd).st_size > MiB else got

    monkeypatch.setattr(writer, "_readinto", vanishing)
    with pytest.raises(BundleError):
        build_bundle(root, artifacts=["dist"], gitcommit=False, stream=Collect())
    assert len(writer_threads()) == before
