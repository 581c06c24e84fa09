"""Tests for spirodeploy.tarcheck: bundles built elsewhere are checked before upload."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import tracemalloc

import pytest

from spirodeploy.builder import TarballBuilder
from spirodeploy.errors import BundleError
from spirodeploy.tarcheck import TarSummary, check_tarball


def make_tar(members, fmt=tarfile.PAX_FORMAT, mode="w"):
    """members: list of (name, kind, extra); kind in file/dir/sym/lnk/chr/blk/fifo."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=fmt) as tf:
        for name, kind, extra in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                data = extra if isinstance(extra, bytes) else b"data"
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "lnk": tarfile.LNKTYPE,
                         "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE,
                         "fifo": tarfile.FIFOTYPE, "cont": tarfile.CONTTYPE}[kind]
            if kind in ("sym", "lnk"):
                info.linkname = extra
            tf.addfile(info)
    buf.seek(0)
    return buf


def test_good_tar_summary():
    buf = make_tar([("top.sls", "file", b"base: {}\n"), ("web", "dir", None),
                    ("web/init.sls", "file", b"x"), ("web/link.sls", "sym", "init.sls"),
                    ("./hard.sls", "lnk", "web/init.sls"), ("up", "sym", "web/../top.sls")])
    data = buf.getvalue()
    buf.seek(123)
    summary = check_tarball(buf)
    assert isinstance(summary, TarSummary)
    assert summary.file_count == 2
    assert summary.has_top
    assert summary.size == len(data)
    assert summary.sha256 == hashlib.sha256(data).hexdigest()
    assert summary.content_size == len(b"base: {}\n") + 1
    assert summary.manifest is None
    assert buf.tell() == 0


def test_our_bundles_pass_and_manifest_is_read():
    with TarballBuilder() as b:
        b.add_virtual("top.sls", b"base: {}\n")
        b.add_virtual("x" * 200 + "/y", b"long")
    summary = check_tarball(b.buffer)
    assert summary.sha256 == b.sha256 and summary.size == b.size
    assert summary.file_count == 3 and summary.has_top
    assert summary.manifest == b.manifest
    assert b.buffer.tell() == 0


def test_compressed_tar_is_accepted():
    raw = make_tar([("spirotop.sls", "file", b"x")]).getvalue()
    gz = gzip.compress(raw, mtime=0)
    summary = check_tarball(io.BytesIO(gz))
    assert summary.has_top and summary.file_count == 1
    assert summary.sha256 == hashlib.sha256(gz).hexdigest() and summary.size == len(gz)


def test_path_argument(tmp_path):
    p = tmp_path / "b.tar"
    p.write_bytes(make_tar([("a", "file", b"a")]).getvalue())
    assert check_tarball(str(p)).file_count == 1
    with pytest.raises(BundleError, match="cannot read bundle"):
        check_tarball(str(tmp_path / "missing.tar"))


def test_non_seekable_stream():
    data = make_tar([("a", "file", b"a")]).getvalue()
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    with open(r, "rb") as fh:
        summary = check_tarball(fh)
    assert summary.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("data", [b"", b"hello, this is not a tar" * 100, os.urandom(4096),
                                  gzip.compress(b"not a tar inside gzip" * 50)])
def test_not_a_tar(data):
    with pytest.raises(BundleError, match="not a (valid )?tar archive") as e:
        check_tarball(io.BytesIO(data))
    assert "\n" not in str(e.value)


def test_truncated_tar():
    data = make_tar([("a", "file", b"a" * 5000)]).getvalue()[:2000]
    with pytest.raises(BundleError, match="tar archive"):
        check_tarball(io.BytesIO(data))


@pytest.mark.parametrize("members,match", [
    ([("/etc/passwd", "file", b"x")], "'/etc/passwd' has an absolute"),
    ([("../escape", "file", b"x")], r"'../escape' has a '\.\.'"),
    ([("a/../../escape", "file", b"x")], r"'a/../../escape' has a '\.\.'"),
    ([("ok/../..", "dir", None)], r"has a '\.\.'"),
    ([("l", "sym", "/etc")], "'l' is a symlink to an absolute path"),
    ([("d/l", "sym", "../../etc")], "'d/l' is a symlink that points outside"),
    ([("l", "sym", "..")], "'l' is a symlink that points outside"),
    # each link looks harmless alone; together they escape (B is the root, so
    # d/A = d/../B/.. = the root's parent)
    ([("B", "sym", "."), ("d", "dir", None), ("d/A", "sym", "../B/..")], "points outside"),
    # a later symlink changes where an earlier one leads
    ([("a", "sym", "b/.."), ("b", "sym", "c/d/.."), ("c", "sym", "..")], "points outside"),
    ([("loop1", "sym", "loop2"), ("loop2", "sym", "loop1")], "symlink loop"),
    ([("link", "sym", "sub"), ("sub", "dir", None), ("link/file", "file", b"x")],
     r"'link/file' is stored inside 'link', which is a symlink"),
    ([("h", "lnk", "/etc/shadow")], "'h' is a hard link to an absolute path"),
    ([("h", "lnk", "../x")], "'h' is a hard link whose target"),
    ([("out", "sym", ".."), ("h", "lnk", "out/x")], "outside"),
    ([("null", "chr", None)], "'null' is a device file"),
    ([("sda", "blk", None)], "'sda' is a device file"),
    ([("pipe", "fifo", None)], "'pipe' is a fifo"),
])
def test_bad_members_refused(members, match):
    with pytest.raises(BundleError, match=match) as e:
        check_tarball(make_tar(members))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_formats(fmt):
    summary = check_tarball(make_tar([("top.sls", "file", b"x"), ("d", "dir", None)], fmt=fmt))
    assert summary.file_count == 1 and summary.has_top


def test_gnu_long_name_escape():
    long_bad = "../" + "x" * 200
    with pytest.raises(BundleError, match=r"has a '\.\.'"):
        check_tarball(make_tar([(long_bad, "file", b"x")], fmt=tarfile.GNU_FORMAT))


def test_memory_is_bounded(tmp_path):
    path = tmp_path / "big.tar"
    with tarfile.open(path, "w") as tf:
        info = tarfile.TarInfo("big.bin")
        info.size = 64 << 20

        class Zeros(io.RawIOBase):
            left = info.size

            def readable(self):
                return True

            def readinto(self, b):
                n = min(len(b), self.left)
                b[:n] = bytes(n)
                self.left -= n
                return n
        tf.addfile(info, io.BufferedReader(Zeros(), 1 << 20))
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        summary = check_tarball(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert summary.content_size == 64 << 20
    assert peak < 16 << 20, "peak %.1f MiB" % (peak / (1 << 20))


def test_manifest_not_json_is_ignored():
    summary = check_tarball(make_tar([(".spirodeploy.json", "file", b"{not json")]))
    assert summary.manifest is None
    good = json.dumps({"format": 1, "files": []}).encode()
    assert check_tarball(make_tar([("./.spirodeploy.json", "file", good)])).manifest == {
        "format": 1, "files": []}
