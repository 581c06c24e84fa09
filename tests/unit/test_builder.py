"""Tests for spirodeploy.builder: the seed API, reproducibility, memory, safety."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import tracemalloc
import types

import pytest

from spirodeploy import __version__
from spirodeploy.builder import (
    DEFAULT_MTIME,
    Bundle,
    TarballBuilder,
    build_bundle,
    diff_manifests,
    fs_scanner,
    git_scanner,
    read_manifest,
)
from spirodeploy.builder.names import default_should_skip
from spirodeploy.builder.tarformat import TarHeaders
from spirodeploy.errors import BundleError, UsageError
from spirodeploy.manifest import manifest_chunks, manifest_parts
from tests.support import build_manifest, content_digest, dump_manifest, make_manifest

MiB = 1 << 20
HAVE_GIT = shutil.which("git") is not None
needs_git = pytest.mark.skipif(not HAVE_GIT, reason="git is not installed")


# --------------------------------------------------------------------------
# helpers

def write_tree(root, files):
    """Create files under root: {relpath: bytes | str | (bytes, executable)}."""
    for rel, content in files.items():
        path = os.path.join(str(root), rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        executable = False
        if isinstance(content, tuple):
            content, executable = content
        if isinstance(content, str):
            content = content.encode()
        with open(path, "wb") as fh:
            fh.write(content)
        os.chmod(path, 0o755 if executable else 0o644)


def read_members(fileobj):
    """{name: (data, TarInfo)} of a tar, in archive order (dicts keep order)."""
    pos = fileobj.tell()
    out = {}
    with tarfile.open(fileobj=fileobj, mode="r:") as tf:
        for m in tf.getmembers():
            data = tf.extractfile(m).read() if m.isfile() else None
            out[m.name] = (data, m)
    fileobj.seek(pos)
    return out


def tar_bytes(builder):
    data = builder.buffer.read()
    builder.buffer.seek(0)
    return data


def git(root, *args):
    env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", HOME=str(root))
    return subprocess.run(["git", "-C", str(root), "-c", "user.name=Test",
                           "-c", "user.email=test@example.com", "-c", "init.defaultBranch=main",
                           "-c", "commit.gpgsign=false"] + list(args),
                          check=True, capture_output=True, env=env).stdout.decode().strip()


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "proj"
    write_tree(root, {
        "_salt/top.sls": "base:\n  '*':\n    - web\n",
        "_salt/web/init.sls": "nginx: pkg.installed\n",
        "_salt/files/run.sh": (b"#!/bin/sh\necho hi\n", True),
        "build/eggs": b"egg" * 100,
        "build/dist/app.whl": b"wheel",
        "src/app.py": "print('hi')\n",
        "README": "readme\n",
    })
    return root


@pytest.fixture(autouse=True)
def _no_source_date_epoch(monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


SEED_SAMPLE = '''
with TarballBuilder() as builder:
    try:
        builder.add_gitcommit()
    except FileNotFoundError:
        print("Warning: No git binary", file=sys.stderr, flush=True)
    if os.path.exists('_salt'):
        builder.add_saltdir('_salt')
    for a in args.artifact:
        builder.add_artifact(a, a)
    if args.include_source is not ...:
        builder.add_source(args.include_source)
'''


def run_seed_sample(artifact=(), include_source=...):
    """Run the sample from the seed docs (cli.py of 0.4) verbatim."""
    args = types.SimpleNamespace(artifact=list(artifact), include_source=include_source)
    ns = {"TarballBuilder": TarballBuilder, "os": os, "sys": sys, "args": args}
    exec(SEED_SAMPLE, ns)
    return ns["builder"]


# --------------------------------------------------------------------------
# the seed API

@needs_git
def test_seed_sample_runs_unchanged(project, monkeypatch):
    git(project, "init", "-q")
    git(project, "add", ".")
    git(project, "commit", "-q", "-m", "first")
    monkeypatch.chdir(project)
    builder = run_seed_sample(artifact=["build/eggs", "build/dist"], include_source=fs_scanner)
    assert builder.buffer.tell() == 0
    members = read_members(builder.buffer)
    names = list(members)
    assert names == sorted(names[:-1]) + [".spirodeploy.json"]
    assert members["top.sls"][0].startswith(b"base:")
    assert members["web/init.sls"][0] == b"nginx: pkg.installed\n"
    assert members["_artifacts/build/eggs"][0] == b"egg" * 100
    assert members["_artifacts/build/dist/app.whl"][0] == b"wheel"
    assert members["_source/src/app.py"][0] == b"print('hi')\n"
    assert members["_source/README"][0] == b"readme\n"
    assert members["_source/build/eggs"][0] == b"egg" * 100
    # _salt and VCS metadata are not part of the source
    assert not any(n.startswith(("_source/_salt", "_source/.git")) for n in names)
    commit, describe = members[".gitcommit"][0].decode().split("\n")
    assert commit == git(project, "rev-parse", "HEAD")
    assert describe == "heads/main"
    assert builder.manifest["gitcommit"] == members[".gitcommit"][0].decode()


@needs_git
def test_seed_sample_with_git_scanner(project, monkeypatch):
    git(project, "init", "-q")
    git(project, "add", ".")
    git(project, "commit", "-q", "-m", "first")
    (project / "untracked.txt").write_text("not committed")
    monkeypatch.chdir(project)
    builder = run_seed_sample(include_source=git_scanner)
    members = read_members(builder.buffer)
    assert members["_source/src/app.py"][0] == b"print('hi')\n"
    assert "_source/untracked.txt" not in members
    assert not any(n.startswith("_source/_salt") for n in members)


def test_seed_sample_without_git_binary(project, monkeypatch, tmp_path, capsys):
    empty = tmp_path / "emptybin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.chdir(project)
    builder = run_seed_sample()
    assert "Warning: No git binary" in capsys.readouterr().err
    members = read_members(builder.buffer)
    assert ".gitcommit" not in members
    assert "top.sls" in members


def test_buffer_lifecycle(project, monkeypatch):
    monkeypatch.chdir(project)
    b = TarballBuilder()
    assert not hasattr(b, "buffer")
    with b:
        assert hasattr(b, "buffer")
        b.add_virtual("hello.txt", b"hello")
    assert b.buffer.tell() == 0
    assert b.buffer.seekable()
    data = b.buffer.read()
    # BytesIO's getvalue() still works for code written against the original
    assert b.buffer.getvalue() == data and b.buffer.tell() == len(data)
    assert len(data) == b.size and len(data) % 10240 == 0
    assert hashlib.sha256(data).hexdigest() == b.sha256
    assert b.file_count == 1
    with pytest.raises(RuntimeError):
        b.add_virtual("late.txt", b"x")
    with pytest.raises(RuntimeError):
        with b:
            pass


def test_methods_outside_with_block_fail():
    b = TarballBuilder()
    with pytest.raises(RuntimeError):
        b.add_virtual("x", b"y")


def test_exception_in_block_propagates_and_writes_nothing(tmp_path):
    out = io.BytesIO()
    with pytest.raises(ZeroDivisionError):
        with TarballBuilder(out) as b:
            b.add_virtual("x", b"y")
            1 / 0  # noqa: B018 - the error is the point
    assert out.getvalue() == b""


def test_add_virtual_and_names(tmp_path):
    with TarballBuilder() as b:
        b.add_virtual("a/b.txt", b"data")
        b.add_virtual("./c.txt", bytearray(b"c"))
        b.add_virtual("d//e.txt", memoryview(b"e"))
    m = read_members(b.buffer)
    assert m["a/b.txt"][0] == b"data"
    assert m["c.txt"][0] == b"c"
    assert m["d/e.txt"][0] == b"e"
    with pytest.raises(TypeError):
        with TarballBuilder() as b:
            b.add_virtual("x", "text is not bytes")


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/passwd", "", ".", "a/.."])
def test_unsafe_virtual_names_refused(name):
    with pytest.raises(BundleError):
        with TarballBuilder() as b:
            b.add_virtual(name, b"x")


@pytest.mark.parametrize("name", ["../x", "/abs/x", "a/../../x", ".", ""])
def test_unsafe_artifact_names_refused(project, name):
    with pytest.raises(BundleError) as e:
        with TarballBuilder() as b:
            b.add_artifact(str(project / "build" / "eggs"), name)
    assert "\n" not in str(e.value)


def test_artifact_file_and_directory(project, monkeypatch):
    monkeypatch.chdir(project)
    with TarballBuilder() as b:
        b.add_artifact("build/eggs", "eggs")
        b.add_artifact("build", "all/build")
    m = read_members(b.buffer)
    assert m["_artifacts/eggs"][0] == b"egg" * 100
    assert m["_artifacts/all/build/eggs"][0] == b"egg" * 100
    assert m["_artifacts/all/build/dist/app.whl"][0] == b"wheel"


def test_missing_artifact_is_a_bundle_error(project, monkeypatch):
    monkeypatch.chdir(project)
    with pytest.raises(BundleError, match="artifact nope does not exist"):
        with TarballBuilder() as b:
            b.add_artifact("nope", "nope")


def test_missing_saltdir_is_a_bundle_error(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        with TarballBuilder() as b:
            b.add_saltdir(str(tmp_path / "_salt"))


def test_bundle_error_is_a_usage_error():
    assert issubclass(BundleError, UsageError)


# --------------------------------------------------------------------------
# format and reproducibility

def test_member_metadata_is_normalised(project, monkeypatch):
    monkeypatch.chdir(project)
    os.chmod("_salt/web/init.sls", 0o600)
    os.chmod("build/eggs", 0o700)
    with TarballBuilder() as b:
        b.add_saltdir("_salt")
        b.add_artifact("build/eggs", "eggs")
    members = read_members(b.buffer)
    for name, (_data, m) in members.items():
        assert m.isreg(), name
        assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "", "")
        assert m.mtime == DEFAULT_MTIME
        assert not m.pax_headers
    assert members["files/run.sh"][1].mode == 0o755
    assert members["web/init.sls"][1].mode == 0o644
    assert members["_artifacts/eggs"][1].mode == 0o755
    assert members["top.sls"][1].mode == 0o644
    assert not any(m.isdir() for _, m in members.values())


def test_entries_sorted_and_manifest_last(project, monkeypatch):
    monkeypatch.chdir(project)
    with TarballBuilder() as b:
        b.add_virtual("zz.txt", b"z")
        b.add_saltdir("_salt")
        b.add_virtual("A.txt", b"a")
        b.add_artifact("build", "build")
    names = list(read_members(b.buffer))
    assert names[-1] == ".spirodeploy.json"
    assert names[:-1] == sorted(names[:-1])


def build_project(project, **kw):
    with TarballBuilder(**kw) as b:
        b.add_saltdir(str(project / "_salt"))
        b.add_artifact(str(project / "build"), "build")
        b.add_source(functools.partial(fs_scanner, root=str(project)))
    return tar_bytes(b)


def test_two_builds_are_byte_identical(project):
    assert build_project(project) == build_project(project)


def test_build_ignores_mtime_atime_and_creation_order(project, tmp_path):
    first = build_project(project)
    for dirpath, dirs, files in os.walk(project):
        for f in files + dirs:
            os.utime(os.path.join(dirpath, f), (1234567, 7654321))
    assert build_project(project) == first
    # same tree created in another order, in another place
    copy = tmp_path / "copy" / "proj"
    paths = sorted(p for p in project.rglob("*") if p.is_file())
    for p in reversed(paths):
        dest = copy / p.relative_to(project)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, dest)
    assert build_project(copy) == first


@pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")
def test_build_ignores_owner(project):
    first = build_project(project)
    for dirpath, dirs, files in os.walk(project):
        for f in files + dirs:
            os.chown(os.path.join(dirpath, f), 1234, 5678)
    assert build_project(project) == first


def test_source_date_epoch(project, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    data = build_project(project)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        assert {m.mtime for m in tf.getmembers()} == {1700000000}
    assert build_project(project, mtime=1700000000) == data
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(BundleError, match="SOURCE_DATE_EPOCH"):
        build_project(project)


def test_fast_path_header_matches_generic_header(tmp_path):
    """Files from disk (inlined header code) and virtual entries (generic
    header code) with the same name, mode and content give the same bytes."""
    write_tree(tmp_path / "s", {"a/b.txt": b"hello", "c": b"", "d" * 100: b"x" * 513})
    with TarballBuilder() as b1:
        b1.add_saltdir(str(tmp_path / "s"))
    with TarballBuilder() as b2:
        b2.add_virtual("a/b.txt", b"hello")
        b2.add_virtual("c", b"")
        b2.add_virtual("d" * 100, b"x" * 513)
    assert tar_bytes(b1) == tar_bytes(b2)


def test_long_and_unicode_names_round_trip(tmp_path):
    names = [
        "x" * 100,                                    # fits the name field exactly
        "d" * 60 + "/" + "f" * 99,                    # ustar prefix/name split
        "/".join([f"seg{i:03d}" + "y" * 40 for i in range(7)]),  # > 255: pax path
        "a/" + "z" * 120,                             # last component > 100: pax
        "unicodé/ファイル.sls",                        # non-ASCII: pax path
    ]
    files = {n: n.encode() * 3 for n in names}
    write_tree(tmp_path / "s", files)
    with TarballBuilder() as b:
        b.add_saltdir(str(tmp_path / "s"))
    members = read_members(b.buffer)
    for n in names:
        assert members[n][0] == n.encode() * 3
    # the manifest names the same paths
    assert {f["path"] for f in b.manifest["files"]} == set(names)
    # GNU tar reads the same names
    if shutil.which("tar"):
        out = tmp_path / "x"
        out.mkdir()
        (tmp_path / "b.tar").write_bytes(tar_bytes(b))
        subprocess.run(["tar", "-xf", str(tmp_path / "b.tar"), "-C", str(out)], check=True)
        for n in names:
            assert (out / n).read_bytes() == n.encode() * 3


def test_big_file_size_uses_pax_size_record():
    hdr = TarHeaders(DEFAULT_MTIME).header("big.bin", 0o644, 9 * 1024 ** 3)
    assert b"size=9663676416\n" in hdr
    info = tarfile.TarInfo.frombuf(hdr[-512:], "utf-8", "strict")
    assert info.name == "big.bin"


# --------------------------------------------------------------------------
# the manifest

def test_manifest_contents(project, monkeypatch):
    monkeypatch.chdir(project)
    with TarballBuilder() as b:
        b.add_saltdir("_salt")
        b.add_virtual(".gitcommit", b"abc123\nheads/main")
    members = read_members(b.buffer)
    raw = members[".spirodeploy.json"][0]
    manifest = json.loads(raw)
    assert manifest == b.manifest
    assert raw == dump_manifest(manifest)
    assert manifest["format"] == 1
    assert manifest["tool"] == f"spiro-deploy {__version__}"
    assert manifest["gitcommit"] == "abc123\nheads/main"
    paths = [f["path"] for f in manifest["files"]]
    assert paths == sorted(paths) == sorted(n for n in members if n != ".spirodeploy.json")
    for f in manifest["files"]:
        data, m = members[f["path"]]
        assert f["size"] == len(data) == m.size
        assert f["sha256"] == hashlib.sha256(data).hexdigest()
        assert f["mode"] == m.mode
    expected = hashlib.sha256("".join(
        "{}\0{}\0{:o}\n".format(f["path"], f["sha256"], f["mode"]) for f in manifest["files"]
    ).encode()).hexdigest()
    assert manifest["digest"] == expected == content_digest(manifest["files"])
    assert b.file_count == len(manifest["files"])
    assert read_manifest(b.buffer) == manifest
    assert b.buffer.tell() == 0


def test_manifest_without_gitcommit_is_null():
    with TarballBuilder() as b:
        b.add_virtual("x", b"y")
    assert b.manifest["gitcommit"] is None


def test_build_manifest_matches_json_dumps():
    records = [("a\"b\\c\n", 1, "00" * 32, 0o644), ("z" * 300, 12345678901, "ab" * 32, 0o644),
               ("é/ü", 0, "ff" * 32, 0o755)]  # sorted by path
    manifest, data = build_manifest(records, gitcommit="x\ny\u2603")
    assert data == dump_manifest(manifest)
    assert manifest == make_manifest(manifest["files"], gitcommit="x\ny\u2603")
    assert json.loads(data) == manifest



def test_manifest_formatted_in_slices_and_segments_is_the_json_dump():
    # more records than manifest_parts formats at a time, split unevenly in two
    # segments the way the builder's two processes format them
    records = [(f"d{i % 13:02d}/f{i:05d}\u00e9", i, f"{i:064x}", 0o644 if i % 3 else 0o755)
               for i in range(9000)]
    records.sort()
    content = hashlib.sha256()
    body = manifest_parts(records[:4100], content.update)
    body.append(b",".join(manifest_parts(records[4100:], content.update)))
    manifest = make_manifest([dict(path=p, size=s, sha256=d, mode=m) for p, s, d, m in records])
    assert content.hexdigest() == manifest["digest"]
    assert b"".join(manifest_chunks(manifest["digest"], body)) == dump_manifest(manifest)

def test_contents_add_up_segments_and_make_the_manifest_on_demand():
    import marshal

    from spirodeploy.manifest import Contents

    head = [("_salt/x.sls", 1, "aa" * 32, 0o644), ("a/b", 2, "bb" * 32, 0o644)]
    tail = [("a/c", 3, "cc" * 32, 0o755), ("a0", 4, "dd" * 32, 0o644),
            ("spirotop.sls", 5, "ee" * 32, 0o644)]
    whole, data = build_manifest(head + tail, gitcommit="c")
    contents = Contents([head, marshal.dumps(tail)], digest=whole["digest"], gitcommit="c",
                        summaries=[Contents.summarise(head), Contents.summarise(tail)])
    assert (contents.count, contents.has_top) == (5, True)
    assert contents.top_counts == {"_salt": 1, "a": 2, "": 2}
    assert contents.manifest == whole and contents.manifest is contents.manifest
    # formatted in two segments, the tail's pieces comma-joined as the child does
    content = hashlib.sha256()
    body = manifest_parts(head, content.update) + [b",".join(manifest_parts(tail, content.update))]
    assert content.hexdigest() == whole["digest"]
    assert b"".join(manifest_chunks(whole["digest"], body, gitcommit="c")) == data
    assert not Contents.summarise(head)[1]  # neither top.sls nor spirotop.sls

def test_digest_independent_of_tar_bytes(project):
    with TarballBuilder(mtime=1) as b1:
        b1.add_saltdir(str(project / "_salt"))
    with TarballBuilder(mtime=2) as b2:
        b2.add_saltdir(str(project / "_salt"))
    assert b1.sha256 != b2.sha256
    assert b1.manifest["digest"] == b2.manifest["digest"]


def test_diff_manifests(project):
    with TarballBuilder() as b1:
        b1.add_saltdir(str(project / "_salt"))
    (project / "_salt" / "web" / "init.sls").write_text("changed")
    (project / "_salt" / "new.sls").write_text("new")
    (project / "_salt" / "top.sls").unlink()
    os.chmod(project / "_salt" / "files" / "run.sh", 0o644)
    with TarballBuilder() as b2:
        b2.add_saltdir(str(project / "_salt"))
    diff = diff_manifests(b1.manifest, b2.manifest)
    assert diff == {"added": ["new.sls"], "removed": ["top.sls"],
                    "modified": ["files/run.sh", "web/init.sls"]}
    assert diff_manifests(b2.manifest, b2.manifest) == {"added": [], "removed": [],
                                                         "modified": []}
    assert diff_manifests(None, b1.manifest)["added"] == sorted(
        f["path"] for f in b1.manifest["files"])


def test_read_manifest_from_path_and_foreign_tar(tmp_path):
    plain = tmp_path / "plain.tar"
    with tarfile.open(plain, "w") as tf:
        info = tarfile.TarInfo("top.sls")
        tf.addfile(info, io.BytesIO(b""))
    assert read_manifest(str(plain)) is None
    with pytest.raises(BundleError, match="not a tar"):
        read_manifest(io.BytesIO(b"this is not a tar file at all" * 40))


# --------------------------------------------------------------------------
# bounded memory

def _sparse(path, size):
    with open(path, "wb") as fh:
        fh.truncate(size)


def _peak_during(fn):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_bounded_for_a_big_artifact(tmp_path):
    size = 64 * MiB
    _sparse(tmp_path / "big.bin", size)
    out = tmp_path / "out.tar"

    def run():
        with open(out, "wb") as fh, TarballBuilder(fh) as b:
            b.add_artifact(str(tmp_path / "big.bin"), "big.bin")
        assert b.size > size

    peak = _peak_during(run)
    assert peak < 16 * MiB, "peak %.1f MiB" % (peak / MiB)
    with tarfile.open(out) as tf:
        m = tf.getmember("_artifacts/big.bin")
        assert m.size == size


def test_memory_bounded_with_default_spooled_buffer(tmp_path):
    size = 64 * MiB
    _sparse(tmp_path / "big.bin", size)
    result = {}

    def run():
        with TarballBuilder(spool_threshold=1 * MiB) as b:
            b.add_artifact(str(tmp_path / "big.bin"), "big.bin")
        result["b"] = b

    peak = _peak_during(run)
    assert peak < 16 * MiB, "peak %.1f MiB" % (peak / MiB)
    b = result["b"]
    assert b.buffer.tell() == 0
    h = hashlib.sha256()
    for chunk in iter(lambda: b.buffer.read(MiB), b""):
        h.update(chunk)
    assert h.hexdigest() == b.sha256
    b.buffer.close()


def test_memory_bounded_build_bundle_to_output(tmp_path):
    root = tmp_path / "proj"
    write_tree(root, {"_salt/top.sls": "base: {}\n"})
    (root / "build").mkdir()
    _sparse(root / "build" / "big.bin", 64 * MiB)

    def run():
        with build_bundle(root, artifacts=["build/big.bin"], gitcommit=False,
                          output=str(tmp_path / "b.tar")) as bundle:
            assert bundle.size > 64 * MiB

    peak = _peak_during(run)
    assert peak < 16 * MiB, "peak %.1f MiB" % (peak / MiB)


@needs_git
def test_memory_bounded_git_scanner(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    _sparse(root / "big.bin", 48 * MiB)
    (root / "small.txt").write_text("small")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "big")

    def run():
        with open(tmp_path / "out.tar", "wb") as fh, TarballBuilder(fh) as b:
            b.add_source(functools.partial(git_scanner, root=str(root)))

    peak = _peak_during(run)
    assert peak < 16 * MiB, "peak %.1f MiB" % (peak / MiB)
    with tarfile.open(tmp_path / "out.tar") as tf:
        assert tf.getmember("_source/big.bin").size == 48 * MiB


def test_non_seekable_output(project):
    expected = build_project(project)
    r, w = os.pipe()
    chunks = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(
        functools.partial(os.read, r, 65536), b"")))
    reader.start()
    try:
        with open(w, "wb") as out:
            assert not out.seekable()
            with TarballBuilder(out) as b:
                b.add_saltdir(str(project / "_salt"))
                b.add_artifact(str(project / "build"), "build")
                b.add_source(functools.partial(fs_scanner, root=str(project)))
    finally:
        reader.join()
        os.close(r)
    assert b"".join(chunks) == expected
    assert b.sha256 == hashlib.sha256(expected).hexdigest()


def test_write_failure_is_a_bundle_error(project):
    class Full(io.RawIOBase):
        def writable(self):
            return True

        def write(self, b):
            raise OSError(28, "No space left on device")

    with pytest.raises(BundleError, match="cannot write the bundle: No space left"):
        with TarballBuilder(Full()) as b:
            b.add_saltdir(str(project / "_salt"))


# --------------------------------------------------------------------------
# safety

def test_vcs_metadata_never_included(tmp_path, monkeypatch):
    files = {"top.sls": "x"}
    for vcs in (".git", ".hg", ".svn"):
        files[f"{vcs}/config"] = "secret"
        files[f"sub/{vcs}/config"] = "secret"
    write_tree(tmp_path / "_salt", files)
    write_tree(tmp_path / "art", files)
    write_tree(tmp_path, {".git/HEAD": "ref", "src/.hg/x": "y", "src/a.py": "a"})
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".git").write_text("gitdir: elsewhere")  # a worktree's .git file
    monkeypatch.chdir(tmp_path)
    with TarballBuilder() as b:
        b.add_saltdir("_salt")
        b.add_artifact("art", "art")
        b.add_source(fs_scanner)

        def sneaky(should_skip):  # a scanner that ignores should_skip
            yield ".git/config", lambda: io.BytesIO(b"secret")
            yield "ok.txt", lambda: io.BytesIO(b"ok")
        b.add_source(sneaky)
        with pytest.raises(BundleError):
            b.add_virtual(".git/config", b"x")
    names = list(read_members(b.buffer))
    for n in names:
        assert not {".git", ".hg", ".svn"} & set(n.split("/")), n
    assert "_source/ok.txt" in names and "_source/src/a.py" in names


def test_symlink_inside_is_dereferenced(tmp_path):
    write_tree(tmp_path / "_salt", {"real/file.sls": "content", "top.sls": "t"})
    os.symlink("real/file.sls", tmp_path / "_salt" / "link.sls")
    os.symlink("real", tmp_path / "_salt" / "linkdir")
    with TarballBuilder() as b:
        b.add_saltdir(str(tmp_path / "_salt"))
    m = read_members(b.buffer)
    assert m["link.sls"][0] == b"content" and m["link.sls"][1].isreg()
    assert m["linkdir/file.sls"][0] == b"content"


def test_symlink_outside_is_refused(tmp_path):
    write_tree(tmp_path, {"_salt/top.sls": "t", "secret.txt": "secret"})
    os.symlink(str(tmp_path / "secret.txt"), tmp_path / "_salt" / "evil.sls")
    with pytest.raises(BundleError, match=r"symlink .*evil\.sls points outside"):
        with TarballBuilder() as b:
            b.add_saltdir(str(tmp_path / "_salt"))


def test_symlink_to_outside_directory_is_refused(tmp_path):
    write_tree(tmp_path, {"_salt/top.sls": "t"})
    os.symlink("/etc", tmp_path / "_salt" / "etc")
    with pytest.raises(BundleError, match="points outside"):
        with TarballBuilder() as b:
            b.add_saltdir(str(tmp_path / "_salt"))


def test_symlink_within_project_root_allowed_with_root(tmp_path):
    root = tmp_path / "proj"
    write_tree(root, {"_salt/top.sls": "t", "shared/common.sls": "common"})
    os.symlink("../shared/common.sls", root / "_salt" / "common.sls")
    # with the project as root (build_bundle), the link stays inside
    bundle = build_bundle(root, gitcommit=False)
    assert read_members(bundle.file)["common.sls"][0] == b"common"
    bundle.close()
    # without a root, the boundary is the directory being added
    with pytest.raises(BundleError, match="points outside"):
        with TarballBuilder() as b:
            b.add_saltdir(str(root / "_salt"))


@pytest.mark.parametrize("kind", ["self", "parent", "pair"])
def test_symlink_loops_are_refused(tmp_path, kind):
    salt = tmp_path / "_salt"
    write_tree(salt, {"top.sls": "t", "d/x.sls": "x"})
    if kind == "self":
        os.symlink("loop", salt / "loop")
    elif kind == "parent":
        os.symlink("..", salt / "d" / "up")
    else:
        os.symlink("b", salt / "a")
        os.symlink("a", salt / "b")
    with pytest.raises(BundleError, match="loop"):
        with TarballBuilder() as b:
            b.add_saltdir(str(salt))


def test_symlink_cycle_between_directories_is_refused(tmp_path):
    salt = tmp_path / "_salt"
    write_tree(salt, {"a/x": "x", "b/y": "y"})
    os.symlink("../b", salt / "a" / "to_b")
    os.symlink("../a", salt / "b" / "to_a")
    with pytest.raises(BundleError, match="loop"):
        with TarballBuilder() as b:
            b.add_saltdir(str(salt))


def test_broken_symlink_is_refused(tmp_path):
    write_tree(tmp_path / "_salt", {"top.sls": "t"})
    os.symlink("missing", tmp_path / "_salt" / "dangling.sls")
    with pytest.raises(BundleError, match="dangling.sls is a broken symlink"):
        with TarballBuilder() as b:
            b.add_saltdir(str(tmp_path / "_salt"))


def test_vanished_file(tmp_path):
    write_tree(tmp_path / "_salt", {"top.sls": "t", "gone.sls": "x"})
    with pytest.raises(BundleError, match="gone.sls vanished"):
        with TarballBuilder() as b:
            b.add_saltdir(str(tmp_path / "_salt"))
            os.unlink(tmp_path / "_salt" / "gone.sls")


def test_unreadable_file(tmp_path, monkeypatch):
    write_tree(tmp_path / "_salt", {"top.sls": "t", "secret.sls": "x"})
    target = str(tmp_path / "_salt" / "secret.sls")
    os.chmod(target, 0)
    if os.geteuid() == 0:  # root reads anything: simulate the kernel's answer
        real_open = os.open

        def fake_open(path, flags, *a, **kw):
            if os.fspath(path) == target:
                raise PermissionError(13, "Permission denied", path)
            return real_open(path, flags, *a, **kw)
        monkeypatch.setattr(os, "open", fake_open)
    with pytest.raises(BundleError, match=r"secret\.sls is not readable \(permission denied\)"):
        with TarballBuilder() as b:
            b.add_saltdir(str(tmp_path / "_salt"))


@pytest.mark.parametrize("size", [100, 300 * 1024])
@pytest.mark.parametrize("change", ["grow", "shrink"])
def test_file_changing_size_while_bundled(tmp_path, monkeypatch, size, change):
    write_tree(tmp_path / "_salt", {"top.sls": "t", "moving.bin": b"m" * size})
    target = os.stat(tmp_path / "_salt" / "moving.bin")
    real_fstat = os.fstat
    delta = -10 if change == "grow" else 10   # the file has more / fewer bytes than stat says

    def fake_fstat(fd):
        st = real_fstat(fd)
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            fields = list(st[:10])
            fields[6] = st.st_size + delta
            return os.stat_result(fields)
        return st

    with pytest.raises(BundleError, match="moving.bin %s while the bundle was being built"
                       % ("grew" if change == "grow" else "shrank")):
        with TarballBuilder() as b:
            b.add_saltdir(str(tmp_path / "_salt"))
            monkeypatch.setattr(os, "fstat", fake_fstat)


def test_non_utf8_file_name_is_refused(tmp_path):
    salt = tmp_path / "_salt"
    write_tree(salt, {"top.sls": "t"})
    bad = os.path.join(os.fsencode(str(salt)), b"caf\xe9.sls")
    try:
        with open(bad, "wb") as fh:
            fh.write(b"x")
    except OSError:
        pytest.skip("file system refuses non-UTF-8 names")
    with pytest.raises(BundleError, match=r"not valid UTF-8: b'.*caf\\xe9\.sls'") as e:
        with TarballBuilder() as b:
            b.add_saltdir(str(salt))
    assert "\n" not in str(e.value)


def test_fifo_is_refused(tmp_path):
    write_tree(tmp_path / "_salt", {"top.sls": "t"})
    os.mkfifo(tmp_path / "_salt" / "pipe")
    with pytest.raises(BundleError, match="pipe is a fifo"):
        with TarballBuilder() as b:
            b.add_saltdir(str(tmp_path / "_salt"))


def test_socket_is_refused(tmp_path, monkeypatch):
    write_tree(tmp_path / "_salt", {"top.sls": "t"})
    monkeypatch.chdir(tmp_path / "_salt")
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind("sock")
        with pytest.raises(BundleError, match="sock is a socket"):
            with TarballBuilder() as b:
                b.add_saltdir(".")
    finally:
        s.close()


def test_device_file_is_refused(tmp_path):
    write_tree(tmp_path / "_salt", {"top.sls": "t"})
    try:
        os.mknod(tmp_path / "_salt" / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except (PermissionError, AttributeError):
        pytest.skip("cannot create device files here")
    with pytest.raises(BundleError, match="null is a device file"):
        with TarballBuilder() as b:
            b.add_saltdir(str(tmp_path / "_salt"))


def test_symlink_to_fifo_is_refused(tmp_path):
    write_tree(tmp_path / "_salt", {"top.sls": "t"})
    os.mkfifo(tmp_path / "_salt" / "pipe")
    with pytest.raises(BundleError, match="fifo"):
        with TarballBuilder() as b:
            b.add_artifact(str(tmp_path / "_salt" / "pipe"), "pipe")


def test_output_file_is_never_swept_in(project, monkeypatch):
    monkeypatch.chdir(project)
    for _ in range(2):  # the second run finds the first run's bundle.tar
        bundle = build_bundle(".", include_source="fs", output="bundle.tar", gitcommit=False)
        names = [f["path"] for f in bundle.manifest["files"]]
        assert "_source/src/app.py" in names
        assert not [n for n in names if "bundle.tar" in n], names
        bundle.close()
    assert sorted(os.listdir(project)) == ["README", "_salt", "build", "bundle.tar", "src"]
    # with the seed API and an output file object inside the project
    with open("out.tar", "wb") as fh, TarballBuilder(fh) as b:
        b.add_source(fs_scanner)
    assert "_source/out.tar" not in {f["path"] for f in b.manifest["files"]}
    assert "_source/bundle.tar" in {f["path"] for f in b.manifest["files"]}


def test_exclude_is_honoured(project, tmp_path):
    token = project / "token.txt"
    token.write_text("s3cret-token")
    os.link(token, project / "_salt" / "hardlinked-token")
    bundle = build_bundle(project, include_source="fs", gitcommit=False,
                          exclude=[str(token)])
    names = {f["path"] for f in bundle.manifest["files"]}
    assert "_source/token.txt" not in names
    assert "hardlinked-token" not in names  # same file by identity
    data = bundle.file.read()
    assert b"s3cret-token" not in data
    bundle.close()


def test_reserved_manifest_name(tmp_path):
    write_tree(tmp_path / "_salt", {".spirodeploy.json": "{}"})
    with pytest.raises(BundleError, match="reserved"):
        with TarballBuilder() as b:
            b.add_saltdir(str(tmp_path / "_salt"))


def test_file_and_directory_clash(tmp_path):
    write_tree(tmp_path / "_salt", {"_artifacts/x": "x"})
    with pytest.raises(BundleError, match="both a file and a directory"):
        with TarballBuilder() as b:
            b.add_saltdir(str(tmp_path / "_salt"))
            b.add_virtual("_artifacts", b"oops")


def test_duplicate_names_keep_the_last_and_warn(tmp_path):
    with TarballBuilder() as b:
        b.add_virtual("a", b"first")
        b.add_virtual("a", b"second")
    assert read_members(b.buffer)["a"][0] == b"second"
    assert any("added twice" in w for w in b.warnings)


def test_unsafe_scanner_names_refused():
    def scanner(should_skip):
        yield "../../etc/passwd", lambda: io.BytesIO(b"x")

    with pytest.raises(BundleError, match=r"\.\."):
        with TarballBuilder() as b:
            b.add_source(scanner)


def test_foreign_scanner_is_staged(tmp_path):
    """A scanner whose openers die with its generator still works."""
    def scanner(should_skip):
        files = {"./b.txt": b"bee", "a/c.txt": b"sea" * 100000, "_salt/x": b"skip me"}
        for name, data in files.items():
            if should_skip(name.split("/")[0]):
                continue
            buf = io.BytesIO(data)
            yield name, lambda buf=buf: buf
            buf.close()  # invalid after the generator moves on

    with TarballBuilder() as b:
        b.add_source(scanner)
    m = read_members(b.buffer)
    assert m["_source/b.txt"][0] == b"bee"
    assert m["_source/a/c.txt"][0] == b"sea" * 100000
    assert "_source/_salt/x" not in m


# --------------------------------------------------------------------------
# fs_scanner and .spiroignore

def test_fs_scanner_names_and_skip(project):
    seen = []

    def skip(path):
        seen.append(path)
        return path.rpartition("/")[2] == "build"

    names = sorted(n for n, _ in fs_scanner(skip, root=str(project)))
    assert "src/app.py" in names and "README" in names
    assert not any(n.startswith("build") for n in names)
    assert not any(n.startswith("./") for n in names)
    assert "build" in seen and "src/app.py" in seen
    name, opener = next(iter(fs_scanner(lambda p: False, root=str(project / "src"))))
    with opener() as fh:
        assert fh.read() == b"print('hi')\n"


def test_spiroignore(project):
    write_tree(project, {
        ".spiroignore": "# comment\n*.log\nbuild/\n!keep.log\n/rootonly.txt\nnode_modules\n"
                        "docs/**/*.tmp\n",
        "a.log": "x", "sub/b.log": "x", "keep.log": "kept",
        "rootonly.txt": "x", "sub/rootonly.txt": "kept",
        "node_modules/pkg/index.js": "x",
        "docs/a/b/c.tmp": "x", "docs/a/b/c.md": "kept",
    })
    # a broken symlink inside an ignored directory is never looked at
    os.symlink("missing", project / "node_modules" / "broken")
    names = {n for n, _ in fs_scanner(lambda p: False, root=str(project))}
    assert names == {".spiroignore", "README", "_salt/top.sls", "_salt/web/init.sls",
                     "_salt/files/run.sh", "src/app.py", "keep.log", "sub/rootonly.txt",
                     "docs/a/b/c.md"}


def test_spiroignore_via_builder_add_source(project, monkeypatch):
    write_tree(project, {".spiroignore": "src/\n"})
    monkeypatch.chdir(project)
    with TarballBuilder() as b:
        b.add_source(fs_scanner)
    names = set(read_members(b.buffer))
    assert "_source/README" in names and "_source/.spiroignore" in names
    assert not any(n.startswith(("_source/src", "_source/_salt")) for n in names)


def test_fs_scanner_symlinks(tmp_path):
    root = tmp_path / "proj"
    write_tree(root, {"a.txt": "a", "d/b.txt": "b"})
    os.symlink("a.txt", root / "alink")
    os.symlink("d", root / "dlink")
    names = {n: op().read() for n, op in fs_scanner(lambda p: False, root=str(root))}
    assert names == {"a.txt": b"a", "d/b.txt": b"b", "alink": b"a", "dlink/b.txt": b"b"}
    os.symlink(str(tmp_path), root / "out")
    with pytest.raises(BundleError, match="out points outside"):
        list(fs_scanner(lambda p: False, root=str(root)))


# --------------------------------------------------------------------------
# git

@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    write_tree(root, {
        "_salt/top.sls": "base: {}\n",
        "src/app.py": "app\n",
        "bin/run": (b"#!/bin/sh\n", True),
        "dir/inner.txt": "inner\n",
    })
    os.symlink("src/app.py", root / "applink")
    os.symlink("dir", root / "dirlink")
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "initial")
    return root


@needs_git
def test_git_scanner(repo):
    (repo / "src" / "app.py").write_text("uncommitted change\n")
    got = {n: op().read() for n, op in git_scanner(default_should_skip, root=str(repo))}
    assert got == {"src/app.py": b"app\n", "bin/run": b"#!/bin/sh\n", "dir/inner.txt": b"inner\n",
                   "applink": b"app\n", "dirlink/inner.txt": b"inner\n"}
    with TarballBuilder() as b:
        b.add_source(functools.partial(git_scanner, root=str(repo)))
    m = read_members(b.buffer)
    assert m["_source/bin/run"][1].mode == 0o755
    assert m["_source/src/app.py"][1].mode == 0o644
    assert m["_source/applink"][1].isreg()


@needs_git
def test_git_scanner_subdirectory_root(repo):
    got = {n for n, _ in git_scanner(lambda p: False, root=str(repo / "dir"))}
    assert got == {"inner.txt"}


@needs_git
def test_git_scanner_symlink_escaping_is_refused(repo):
    os.symlink("../../outside", repo / "src" / "escape")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "escape")
    with pytest.raises(BundleError, match="escape points outside"):
        list(git_scanner(lambda p: False, root=str(repo)))


@needs_git
def test_git_scanner_symlink_loop_is_refused(repo):
    os.symlink(".", repo / "dir" / "self")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "loop")
    with pytest.raises(BundleError, match="loop"):
        list(git_scanner(lambda p: False, root=str(repo)))


@needs_git
def test_git_scanner_outside_checkout_and_without_commits(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(BundleError, match="not inside a git checkout"):
        list(git_scanner(lambda p: False, root=str(plain)))
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    with pytest.raises(BundleError, match="has no commits"):
        list(git_scanner(lambda p: False, root=str(empty)))


def test_git_scanner_without_git(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BundleError, match="git is not installed"):
        list(git_scanner(lambda p: False, root=str(tmp_path)))


@needs_git
def test_add_gitcommit(repo, tmp_path):
    with TarballBuilder() as b:
        b.add_gitcommit(root=str(repo))
    data = read_members(b.buffer)[".gitcommit"][0].decode()
    commit, describe = data.split("\n")
    assert commit == git(repo, "rev-parse", "HEAD") and len(commit) == 40
    assert describe == git(repo, "describe", "--always", "--all")
    git(repo, "tag", "v1.0")
    with TarballBuilder() as b:
        b.add_gitcommit(root=str(repo))
    assert b.manifest["gitcommit"].split("\n")[1] == "tags/v1.0"
    # outside a checkout, and in a repository without commits: nothing
    plain = tmp_path / "plain"
    plain.mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    for where in (plain, empty):
        with TarballBuilder() as b:
            b.add_gitcommit(root=str(where))
        assert ".gitcommit" not in read_members(b.buffer)


def test_add_gitcommit_without_git_raises_file_not_found(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError):
        with TarballBuilder() as b:
            b.add_gitcommit()


# --------------------------------------------------------------------------
# build_bundle

def test_build_bundle(project):
    bundle = build_bundle(project, artifacts=["build/eggs", str(project / "build" / "dist")],
                          include_source="fs", gitcommit=False)
    with bundle:
        assert isinstance(bundle, Bundle)
        assert bundle.file.tell() == 0
        data = bundle.file.read()
        assert len(data) == bundle.size
        assert hashlib.sha256(data).hexdigest() == bundle.sha256
        names = {f["path"] for f in bundle.manifest["files"]}
        assert {"top.sls", "_artifacts/build/eggs", "_artifacts/build/dist/app.whl",
                "_source/src/app.py"} <= names
        assert bundle.file_count == len(names)
        assert bundle.has_top and bundle.warnings == []
        assert bundle.digest == bundle.manifest["digest"]
    assert bundle.file.closed


def test_build_bundle_output(project, tmp_path):
    out = tmp_path / "out" / "b.tar"
    out.parent.mkdir()
    bundle = build_bundle(project, output=str(out), gitcommit=False)
    assert bundle.path == str(out)
    assert out.read_bytes() == bundle.file.read()
    assert os.listdir(out.parent) == ["b.tar"]
    bundle.close()


def test_build_bundle_output_permissions_follow_umask(project, tmp_path):
    old = os.umask(0o022)
    try:
        with build_bundle(project, output=str(tmp_path / "b.tar"), gitcommit=False):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "b.tar").st_mode) == 0o644


def test_build_bundle_output_in_missing_directory(project, tmp_path):
    with pytest.raises(BundleError, match="cannot write output"):
        build_bundle(project, output=str(tmp_path / "nope" / "b.tar"), gitcommit=False)


def test_build_bundle_failure_leaves_no_output(project, tmp_path):
    out = tmp_path / "b.tar"
    out.write_bytes(b"previous bundle")
    os.symlink("/etc/passwd", project / "_salt" / "evil")
    with pytest.raises(BundleError):
        build_bundle(project, output=str(out), gitcommit=False)
    assert out.read_bytes() == b"previous bundle"
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_build_bundle_refuses_empty_salt(tmp_path):
    root = tmp_path / "proj"
    root.mkdir()
    with pytest.raises(BundleError) as e:
        build_bundle(root, gitcommit=False)
    msg = str(e.value)
    assert "_salt" in msg and "--allow-empty" in msg and "wipe" in msg and "\n" not in msg
    (root / "_salt").mkdir()
    (root / "_salt" / ".git").mkdir()
    (root / "_salt" / ".git" / "x").write_text("x")
    with pytest.raises(BundleError, match="has no files"):
        build_bundle(root, gitcommit=False)
    bundle = build_bundle(root, gitcommit=False, allow_empty=True)
    assert bundle.file_count == 0
    assert not bundle.has_top
    assert any("empties the saltenv" in w for w in bundle.warnings)
    bundle.close()


def test_missing_top_file_is_a_warning_only_with_highstate(tmp_path):
    from spirodeploy.deploy import bundle_warnings

    root = tmp_path / "proj"
    write_tree(root, {"_salt/web.sls": "x"})
    with build_bundle(root, gitcommit=False) as bundle:
        assert not bundle.has_top
        assert [w[:30] for w in bundle_warnings(bundle, highstate=True)] == [
            "no top.sls or spirotop.sls in "]
        assert bundle_warnings(bundle, highstate=False) == []
    write_tree(root, {"_salt/spirotop.sls": "x"})
    with build_bundle(root, gitcommit=False) as bundle:
        assert bundle.has_top and not bundle_warnings(bundle, highstate=True)


@pytest.mark.parametrize("artifact,match", [
    ("../outside", "escape _artifacts"),
    ("build/../../outside", "escape _artifacts"),
    ("/etc/hostname", "outside the project"),
    (".", "whole project"),
    ("missing.bin", "does not exist"),
])
def test_build_bundle_bad_artifacts(project, artifact, match):
    with pytest.raises(BundleError, match=match):
        build_bundle(project, artifacts=[artifact], gitcommit=False)


def test_build_bundle_artifact_through_symlink_outside(project, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.bin").write_text("x")
    os.symlink(str(tmp_path / "elsewhere"), project / "ext")
    with pytest.raises(BundleError, match="outside the project"):
        build_bundle(project, artifacts=["ext/x.bin"], gitcommit=False)


def test_build_bundle_salt_symlink_outside(tmp_path):
    write_tree(tmp_path, {"elsewhere/top.sls": "x"})
    root = tmp_path / "proj"
    root.mkdir()
    os.symlink(str(tmp_path / "elsewhere"), root / "_salt")
    with pytest.raises(BundleError, match="outside the project"):
        build_bundle(root, gitcommit=False)


def test_build_bundle_unknown_source_method(project):
    with pytest.raises(BundleError, match="unknown source method"):
        build_bundle(project, include_source="svn")


@needs_git
def test_build_bundle_source_auto(project, repo):
    with build_bundle(project, include_source="auto", gitcommit=False) as b:
        assert "_source/src/app.py" in {f["path"] for f in b.manifest["files"]}
    (repo / "untracked").write_text("u")
    with build_bundle(repo, include_source="auto") as b:
        names = {f["path"] for f in b.manifest["files"]}
        assert "_source/applink" in names and "_source/untracked" not in names
        assert ".gitcommit" in names and b.manifest["gitcommit"]
    with pytest.raises(BundleError, match="not inside a git checkout"):
        build_bundle(project, include_source="git")


def test_build_bundle_without_git_warns(project, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with build_bundle(project) as b:
        assert any("git is not installed" in w for w in b.warnings)


def test_build_bundle_missing_root(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        build_bundle(tmp_path / "nope")


def test_import_is_light():
    code = ("import sys, spirodeploy.builder; "
            "bad = [m for m in ('salt', 'pathspec', 'tarfile', 'subprocess', 'requests') "
            "if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.PIPE,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert out.stdout.decode().strip() == "[]"


@pytest.mark.parametrize("enabled_before", [True, False])
def test_the_cyclic_collector_is_paused_while_building(project, enabled_before):
    import gc

    seen = []

    def scanner(should_skip):
        seen.append(("scan", gc.isenabled()))
        yield "a.txt", lambda: io.BytesIO(b"a")

    class Recording(io.BytesIO):
        def write(self, data):
            seen.append(("write", gc.isenabled()))
            return super().write(data)

    was = gc.isenabled()
    (gc.enable if enabled_before else gc.disable)()
    try:
        build_bundle(project, include_source=scanner, gitcommit=False, stream=Recording())
        with TarballBuilder(Recording()) as builder:
            builder.add_virtual("b.txt", b"b")
        after = gc.isenabled()
    finally:
        (gc.enable if was else gc.disable)()
    assert seen[0] == ("scan", False)
    assert {kind for kind, _ in seen} == {"scan", "write"}
    assert not any(enabled for _, enabled in seen)
    assert after is enabled_before


def test_the_builder_keeps_one_source_per_directory_not_per_file(tmp_path, monkeypatch):
    # At 50,000 files an object per file costs the scan, the fork and the free;
    # fs_scanner (bare or as build_bundle's partial) is walked without them.
    from functools import partial

    write_tree(tmp_path, {"_salt/top.sls": "t", "_salt/a/b.sls": "b", "src/x.py": "x",
                          "src/y.py": "y", "src/pkg/z.py": "z"})
    monkeypatch.chdir(tmp_path)
    expected = ["_source/src/pkg/z.py", "_source/src/x.py", "_source/src/y.py", "a/b.sls",
                "top.sls"]
    for scanner, per_file in ((fs_scanner, False), (partial(fs_scanner, root="."), False),
                              (lambda skip: fs_scanner(skip), True)):  # public: openers
        with TarballBuilder() as b:
            b.add_saltdir("_salt")
            b.add_source(scanner)
            sources = {id(source) for source in b._entries.values()}
        # _salt, _salt/a, src, src/pkg; with per-file openers, one per file under src
        assert len(sources) == (2 + 3 if per_file else 4)
        assert [f["path"] for f in b.manifest["files"]] == expected


@pytest.mark.parametrize("how", ["small file", "large file", "bytes"])
def test_the_manifest_gitcommit_is_the_member_whatever_writes_it(tmp_path, how):
    # One general write path keeps .gitcommit's text for every kind of source,
    # a file too big for the fast path included.
    text = "0123abcd\nheads/main\n" + ("#" * 300_000 if how == "large file" else "")
    write_tree(tmp_path, {"_salt/top.sls": "t"})
    with TarballBuilder(root=tmp_path) as b:
        if how == "bytes":
            b.add_virtual(".gitcommit", text.encode())
        else:
            (tmp_path / "_salt" / ".gitcommit").write_text(text)
        b.add_saltdir(tmp_path / "_salt")
    assert read_members(b.buffer)[".gitcommit"][0] == text.encode()
    assert b.manifest["gitcommit"] == b.contents.gitcommit == text


def test_a_scanner_offering_member_sources_is_walked_through_them(tmp_path):
    # The explicit scanner protocol: no identity test on fs_scanner, so any
    # scanner (and a partial of it) can hand the builder its own sources.
    from functools import partial

    from spirodeploy.builder.sources import InMemory

    def scanner(should_skip, greeting="hi"):
        raise AssertionError("the builder should use member_sources")

    def sources(should_skip, greeting="hi"):
        assert should_skip("x/.git") and should_skip("_salt") and not should_skip("a.txt")
        yield "a.txt", InMemory(greeting.encode())
        yield "bin/run", InMemory(b"#!/bin/sh\n", 0o755)

    scanner.member_sources = sources
    for given, expected in ((scanner, b"hi"), (partial(scanner, greeting="hello"), b"hello")):
        with TarballBuilder() as b:
            b.add_source(given)
        members = read_members(b.buffer)
        assert members["_source/a.txt"][0] == expected
        assert members["_source/bin/run"][1].mode == 0o755


def test_the_builder_modules_import_one_way():
    # Each module may import only those before it, so the package reads bottom-up.
    import ast
    import pathlib

    import spirodeploy.builder

    order = ["names", "sources", "tarformat", "sink", "writer", "parallel", "fswalk", "gitscan",
             "tarball", "bundle", "__init__"]
    package = pathlib.Path(spirodeploy.builder.__file__).parent
    assert sorted(p.stem for p in package.glob("*.py")) == sorted(order)
    for module in order:
        tree = ast.parse((package / f"{module}.py").read_text())
        imported = {node.module.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module}
        later = imported - set(order[:order.index(module)])
        assert not later, f"builder/{module}.py imports {sorted(later)}, which come after it"
