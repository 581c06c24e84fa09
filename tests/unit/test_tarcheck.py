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
from spirodeploy.errors import BundleError, ExitCode
from spirodeploy.tarcheck import TarSummary, check_tarball, checked_copy


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


# --- a name that appears twice; links judged when they appear ---------------------

@pytest.mark.parametrize("members,match", [
    # the reported attack: the file 's' is written through the first 's', which a
    # harmless 's' then hides from a check made on the final map of links
    ([("s", "sym", "../../../otherproj/prod"), ("s", "file", b"pwned"), ("s", "sym", "ok")],
     "'s' is a symlink that points outside"),
    # the same with a symlink that looks harmless alone: only the name repeats
    ([("s", "sym", "sub"), ("sub", "dir", None), ("s", "file", b"x")], "'s' appears twice"),
    # the master.pem attack: a hard link through a directory symlink that a later
    # symlink of the same name makes look harmless
    ([("d", "sym", "../../../../pki/master"), ("h", "lnk", "d/master.pem"), ("d", "sym", ".")],
     "'d' is a symlink that points outside"),
    ([("d", "sym", "sub"), ("sub", "dir", None), ("h", "lnk", "d/master.pem"),
      ("d", "sym", ".")], "'h' is a hard link through 'd', which is a symlink"),
    # a hard link to a symlink links whatever the symlink leads to
    ([("k", "sym", "../../../etc/salt/pki/master/master.pem"), ("h", "lnk", "k"),
      ("k", "sym", "x"), ("x", "file", b"x")], "'k' is a symlink that points outside"),
    ([("x", "file", b"x"), ("k", "sym", "x"), ("h", "lnk", "k")],
     "'h' is a hard link to 'k', which is a symlink"),
    ([("sub", "dir", None), ("sub/f", "file", b"x"), ("d", "sym", "sub"),
      ("h", "lnk", "d/f")], "'h' is a hard link through 'd', which is a symlink"),
    ([("h", "lnk", "later"), ("later", "file", b"x")],
     "'h' is a hard link to 'later', which is not a file earlier in the bundle"),
    ([("d", "dir", None), ("h", "lnk", "d")], "is not a file earlier"),
    # a directory member after a symlink of the same name: mkdir keeps the link
    ([("d", "sym", "sub"), ("sub", "dir", None), ("d", "dir", None),
      ("d/INJECTED.sls", "file", b"x")], "'d' appears twice"),
    # every spelling of a name is the same name for the server
    ([("a", "file", b"1"), ("./a", "file", b"2")], "'./a' appears twice"),
    ([("d", "dir", None), ("d/", "dir", None)], "appears twice"),
    ([("a/b", "file", b"1"), ("a//./b", "file", b"2")], "appears twice"),
    ([("./", "dir", None), (".", "dir", None)], "appears twice"),
    ([(".", "file", b"x")], "names the bundle's root"),
    # judged when it appears: 'x' leaves the bundle while 'y' is still a plain name
    ([("x", "sym", "y/../.."), ("d", "dir", None), ("d/e", "dir", None), ("y", "sym", "d/e")],
     "'x' is a symlink that points outside"),
    # a member stored through a symlink seen earlier
    ([("l", "sym", "sub"), ("sub", "dir", None), ("l/f", "file", b"x")],
     r"'l/f' is stored inside 'l', which is a symlink"),
    ([("l", "sym", "sub"), ("sub", "dir", None), ("l/in", "sym", "x")],
     r"'l/in' is stored inside 'l'"),
    # a later symlink over a directory that earlier members were stored in
    ([("d/f", "file", b"x"), ("sub", "dir", None), ("d", "sym", "sub")],
     r"'d/f' is stored inside 'd', which is a symlink"),
])
def test_duplicate_names_and_links_when_they_appear(members, match):
    with pytest.raises(BundleError, match=match) as e:
        check_tarball(make_tar(members))
    assert "\n" not in str(e.value)
    with pytest.raises(BundleError, match=match):
        checked_copy(make_tar(members))


def test_the_reported_duplicate_attack_really_escapes_on_extraction(tmp_path):
    """What the server's extraction does with such a tar (so the cases above are attacks)."""
    data = make_tar([("s", "sym", "../outside.sls"), ("s", "file", b"pwned"),
                     ("s", "sym", "ok")]).getvalue()
    dest = tmp_path / "deploy"
    dest.mkdir()
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        tf.extractall(dest, filter="fully_trusted")  # the server passes no filter
    assert (tmp_path / "outside.sls").read_bytes() == b"pwned"
    assert os.readlink(dest / "s") == "ok"


def test_gnu_tar_layout_with_hard_links_is_accepted():
    summary = check_tarball(make_tar([("./", "dir", None), ("./top.sls", "file", b"x"),
                                      ("./d/", "dir", None), ("./d/a.sls", "file", b"y"),
                                      ("./d/b.sls", "lnk", "./d/a.sls"),
                                      ("./c.sls", "lnk", "d/b.sls"), ("./l", "sym", "d")]))
    assert summary.file_count == 2 and summary.has_top


# --- concatenated compressed streams, and the checked copy ----------------------------

INJECTED = "../../otherproj/prod/INJECTED.sls"


def raw_member(name: str, data: bytes = b"x") -> bytes:
    """One member's header and data blocks, and no end-of-archive blocks."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info.tobuf(tarfile.PAX_FORMAT) + data + b"\0" * (-len(data) % 512)


def compress(kind: str, data: bytes) -> bytes:
    import bz2
    import lzma

    return {"gzip": lambda d: gzip.compress(d, mtime=0), "bzip2": bz2.compress,
            "xz": lzma.compress}[kind](data)


@pytest.mark.parametrize("kind", ["gzip", "bzip2", "xz"])
def test_concatenated_streams_are_all_checked(kind):
    first = compress(kind, raw_member("top.sls", b"base: {}\n"))
    second = compress(kind, raw_member(INJECTED, b"pwned: {}\n") + b"\0" * 1024)
    data = first + second
    # what the server reads: both streams
    assert INJECTED in tarfile.open(fileobj=io.BytesIO(data)).getnames()
    with pytest.raises(BundleError, match=r"INJECTED.sls' has a '\.\.'"):
        check_tarball(io.BytesIO(data))
    with pytest.raises(BundleError, match=r"INJECTED.sls' has a '\.\.'"):
        checked_copy(io.BytesIO(data))


@pytest.mark.parametrize("kind", ["gzip", "bzip2", "xz"])
def test_checked_copy_of_concatenated_streams_is_the_whole_plain_tar(kind):
    plain = raw_member("top.sls", b"base: {}\n") + raw_member("b.sls", b"b") + b"\0" * 1024
    data = compress(kind, plain[:1024]) + compress(kind, plain[1024:])
    with checked_copy(io.BytesIO(data)) as copy:
        body = copy.file.read()
        summary = copy.summary
    assert body == plain
    assert summary.compression == kind and summary.file_count == 2
    assert summary.size == len(plain) and summary.sha256 == hashlib.sha256(plain).hexdigest()


def lzma_polyglot() -> bytes:
    """A plain tar whose first member, ']', is harmless, but whose name field
    is also a whole ``.lzma`` stream holding a tar with INJECTED: the server's
    tarfile tries xz (which reads ``.lzma``) before plain tar."""
    import lzma

    evil = tarfile.TarInfo(INJECTED).tobuf(tarfile.USTAR_FORMAT)
    stream = lzma.compress(evil, format=lzma.FORMAT_ALONE, filters=[
        {"id": lzma.FILTER_LZMA1, "lc": 3, "lp": 0, "pb": 2, "dict_size": 4096}])
    assert len(stream) <= 100 and stream.startswith(b"]\0")
    header = bytearray(tarfile.TarInfo("]").tobuf(tarfile.USTAR_FORMAT))
    header[0:100] = stream.ljust(100, b"\0")
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + b"\0" * 1024


def test_a_tar_the_server_would_decompress_is_refused():
    data = lzma_polyglot()
    assert tarfile.open(fileobj=io.BytesIO(data), mode="r:").getnames() == ["]"]
    assert tarfile.open(fileobj=io.BytesIO(data)).getnames() == [INJECTED]  # the server's view
    with pytest.raises(BundleError, match="read by the server as xz or lzma data") as e:
        check_tarball(io.BytesIO(data))
    assert "\n" not in str(e.value)
    with pytest.raises(BundleError, match="read by the server as xz or lzma data"):
        checked_copy(io.BytesIO(data))
    # the same tar gzipped: its plain copy would be uploaded, and is refused too
    with pytest.raises(BundleError, match="read by the server as xz or lzma data"):
        checked_copy(io.BytesIO(gzip.compress(data)))


def test_zstd_is_refused():
    with pytest.raises(BundleError, match="zstd"):
        check_tarball(io.BytesIO(b"\x28\xb5\x2f\xfd" + bytes(100)))


def test_checked_copy_of_a_plain_tar_is_byte_identical(tmp_path):
    buf = make_tar([("top.sls", "file", b"base: {}\n"), ("d", "dir", None)])
    data = buf.getvalue()
    path = tmp_path / "b.tar"
    path.write_bytes(data)
    with checked_copy(str(path)) as copy:
        assert copy.file.tell() == 0
        assert copy.file.read() == data
        assert copy.summary.sha256 == hashlib.sha256(data).hexdigest()
        assert copy.summary.size == len(data) and copy.summary.compression is None


@pytest.mark.parametrize("after", [b"", b"junk after the members" * 40, b"\0" * 700 + b"junk"])
def test_checked_copy_ends_at_the_end_of_archive(after):
    """Nothing after the last member's end-of-archive zeros is sent, and the
    copy always ends with two zero blocks (the server never reads further)."""
    members = raw_member("top.sls", b"base: {}\n") + raw_member("a", b"a")
    with checked_copy(io.BytesIO(members + after)) as copy:
        body = copy.file.read()
    zeros = len(after) - len(after.lstrip(b"\0"))
    assert body == members + b"\0" * max(1024, zeros)
    assert tarfile.open(fileobj=io.BytesIO(body)).getnames() == ["top.sls", "a"]


def test_checked_copy_reads_a_pipe_once():
    data = make_tar([("top.sls", "file", b"x" * 300_000)]).getvalue()
    r, w = os.pipe()

    def feed():
        with open(w, "wb") as fh:
            fh.write(gzip.compress(data))

    import threading

    writer = threading.Thread(target=feed)
    writer.start()
    with open(r, "rb") as fh, checked_copy(fh) as copy:
        assert copy.file.read() == data
    writer.join()


def test_checked_copy_removes_its_file(tmp_path, monkeypatch):
    import tempfile

    made = []
    real = tempfile.TemporaryFile

    def recording(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(tempfile, "TemporaryFile", recording)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with checked_copy(make_tar([("a", "file", b"a")])):
        pass
    with pytest.raises(BundleError):
        checked_copy(make_tar([("../a", "file", b"a")]))
    assert len(made) == 2 and all(f.closed for f in made)
    assert list(tmp_path.iterdir()) == []


def test_checked_copy_memory_is_bounded(tmp_path):
    path = tmp_path / "big.tar.gz"
    with tarfile.open(path, "w:gz", compresslevel=1) as tf:
        info = tarfile.TarInfo("big.bin")
        info.size = 64 << 20
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        with checked_copy(str(path)) as copy:
            peak = tracemalloc.get_traced_memory()[1]
            assert copy.summary.size >= 64 << 20
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, "peak %.1f MiB" % (peak / (1 << 20))


# --- deploy_file uploads the checked copy (the race; --bundle on a pipe) ---------------

@pytest.fixture
def deploy_cli(fake_server, token, monkeypatch, capsys, tmp_path):
    from spirodeploy.cli import main
    from tests.fakeserver import sse

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPIRO_URL", fake_server.url)
    monkeypatch.setenv("SPIRO_TOKEN", token)
    monkeypatch.delenv("SPIRO_TOKEN_FILE", raising=False)
    fake_server.then(chunks=[sse("deploy-bundle", {"msg": "Deploying bundle"})])

    def run(*args: str):
        code = main(["proj", "prod", "--insecure", "--no-highstate", *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_a_bundle_rewritten_after_the_check_is_not_what_is_uploaded(deploy_cli, fake_server,
                                                                    tmp_path, monkeypatch):
    import spirodeploy.deploy as deploy_module

    good = make_tar([("top.sls", "file", b"base: {}\n")]).getvalue()
    evil = make_tar([(INJECTED, "file", b"pwned")]).getvalue()
    path = tmp_path / "bundle.tar"
    path.write_bytes(good)
    real = deploy_module.deploy_bundle

    def rewrite_then_upload(*args, **kwargs):
        with open(path, "r+b") as fh:  # in place: the same inode, as an attacker would
            fh.write(evil)
            fh.truncate()
        return real(*args, **kwargs)

    monkeypatch.setattr(deploy_module, "deploy_bundle", rewrite_then_upload)
    code, _, err = deploy_cli("--bundle", str(path))
    assert path.read_bytes() == evil
    assert code == 0, err
    assert fake_server.received[0].bundle == good


def test_bundle_on_a_pipe_is_uploaded(deploy_cli, fake_server, tmp_path):
    import threading

    data = make_tar([("top.sls", "file", b"base: {}\n")]).getvalue()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def feed():
        try:
            with open(fifo, "wb") as fh:
                fh.write(gzip.compress(data))
        except BrokenPipeError:
            pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        code, _, err = deploy_cli("--bundle", str(fifo))
    finally:
        if writer.is_alive():  # the fifo was never opened: let the writer's open return
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        writer.join(10)
    assert code == 0, err
    assert fake_server.received[0].bundle == data


def test_concatenated_gzip_bundle_is_refused_before_upload(deploy_cli, fake_server, tmp_path):
    path = tmp_path / "evil.tar.gz"
    path.write_bytes(compress("gzip", raw_member("top.sls", b"base: {}\n"))
                     + compress("gzip", raw_member(INJECTED) + b"\0" * 1024))
    code, _, err = deploy_cli("--bundle", str(path))
    assert code == ExitCode.USAGE and "INJECTED.sls' has a '..' component" in err
    errors = [line for line in err.splitlines() if not line.startswith("Warning:")]
    assert len(errors) == 1 and errors[0].startswith("spiro-deploy: error: ")
    assert fake_server.received == []


def test_checked_copy_of_our_bundle_keeps_its_sha256():
    """``spirodeploy.bundle`` then ``spirodeploy.upload`` reports the built bundle's sha256."""
    with TarballBuilder() as b:
        b.add_virtual("top.sls", b"base: {}\n")
        b.add_virtual("x" * 200 + "/y", b"long")
    with checked_copy(b.buffer) as copy:
        assert copy.summary.sha256 == b.sha256 and copy.summary.size == b.size
        assert copy.summary.manifest == b.manifest
