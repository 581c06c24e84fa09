"""The builder's two-process write (builder.parallel): same bytes, same errors."""

from __future__ import annotations

import marshal
import os
import threading

import pytest

from spirodeploy import builder as B
from spirodeploy.builder import build_bundle, parallel
from spirodeploy.builder.writer import SMALL
from spirodeploy.errors import BundleError

pytestmark = pytest.mark.skipif(not parallel.CAN_FORK, reason="needs os.fork (Linux)")


def make_tree(root, count=300):
    """A project whose source mixes every kind of member the writer handles."""
    salt = root / "_salt"
    salt.mkdir(parents=True)
    (salt / "top.sls").write_text("base:\n  '*': [app]\n")
    (salt / "app.sls").write_text("app: {}\n")
    src = root / "src"
    for i in range(count):
        d = src / f"d{i % 7:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:04d}.txt").write_bytes(b"x" * (i * 37 % 1500) + b"\n")
    tail = src / "zz"            # sorts last: lands in the child's half
    tail.mkdir()
    (tail / "big.bin").write_bytes(os.urandom(SMALL + 4096))        # large-file path
    (tail / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(tail / "run.sh", 0o755)
    (tail / ("long-" + "n" * 120 + ".txt")).write_text("long name: pax header\n")
    (tail / "caf\u00e9.txt").write_text("non-ASCII name\n")
    os.symlink("run.sh", tail / "run-link")
    (tail / "empty").write_bytes(b"")
    return root


class _Results(list):
    """What each child returned; ``pids``: the children's process ids."""

    def __init__(self):
        super().__init__()
        self.pids = []


@pytest.fixture
def forks(monkeypatch):
    """Force the two-process write on any tree; record what the child returned."""
    monkeypatch.setattr(parallel, "PARALLEL_MIN", 2)
    # pytest may run helper threads; the real guard is tested on its own below
    monkeypatch.setattr(parallel.threading, "active_count", lambda: 1)
    results = _Results()
    collect = parallel.ForkedTail.collect

    def spy(self):
        results.pids.append(self.pid)
        got = collect(self)
        results.append(got)
        return got

    monkeypatch.setattr(parallel.ForkedTail, "collect", spy)
    return results


def serial_build(project, tmp_path, monkeypatch, name="serial.tar"):
    """The bytes and the bundle of the same build in one process."""
    with monkeypatch.context() as m:
        m.setattr(parallel, "PARALLEL_MIN", 10 ** 9)
        out = tmp_path / name
        bundle = build_bundle(project, include_source="fs", output=out)
        bundle.close()
        return out.read_bytes(), bundle


def test_two_processes_write_the_same_bytes_as_one(tmp_path, monkeypatch, forks):
    project = make_tree(tmp_path / "proj")
    expected, serial = serial_build(project, tmp_path, monkeypatch)

    out = tmp_path / "parallel.tar"
    bundle = build_bundle(project, include_source="fs", output=out)

    assert len(forks) == 1 and forks[0] is not None, "the child did not deliver its half"
    size, _gitcommit, (count, has_top, _tops), blob, _lines, _body = forks[0]
    records = marshal.loads(blob)
    assert size > SMALL and any(r[0].startswith("_source/src/zz/") for r in records)
    assert count == len(records) and has_top  # top.sls sorts after _source/: the child's
    assert out.read_bytes() == expected
    assert bundle.sha256 == serial.sha256
    # what the two halves reported adds up to what one process saw
    assert bundle.file_count == len(bundle.manifest["files"]) == 300 + 2 + 6
    assert bundle.manifest == serial.manifest
    assert bundle.top_counts == serial.top_counts == {"": 2, "_source": 306}
    assert bundle.has_top
    with pytest.raises(ChildProcessError):  # the child was reaped
        os.waitpid(forks.pids[0], os.WNOHANG)


def test_a_failing_child_leaves_the_work_to_the_parent(tmp_path, monkeypatch, forks):
    project = make_tree(tmp_path / "proj")
    expected, _bundle = serial_build(project, tmp_path, monkeypatch)
    parent = os.getpid()
    real_parts = parallel.manifest_parts

    def parts_failing_in_child(records, lines):
        if os.getpid() != parent:
            raise OSError("simulated failure in the child")
        return real_parts(records, lines)

    monkeypatch.setattr(parallel, "manifest_parts", parts_failing_in_child)
    out = tmp_path / "parallel.tar"
    build_bundle(project, include_source="fs", output=out)

    assert forks == [None]
    assert out.read_bytes() == expected


def test_an_error_in_the_childs_half_is_raised_as_in_a_serial_build(tmp_path, forks):
    project = make_tree(tmp_path / "proj")
    with pytest.raises(BundleError, match=r"src/zz/empty.*vanished"):
        with B.TarballBuilder(root=project) as tb:
            tb.add_saltdir(project / "_salt")
            tb.add_source(lambda skip: B.fs_scanner(skip, root=project))
            (project / "src" / "zz" / "empty").unlink()  # gone before the tar is written
    assert forks == [None]


def test_no_fork_while_other_threads_run(monkeypatch):
    monkeypatch.setattr(parallel, "PARALLEL_MIN", 2)
    names = [f"n{i}" for i in range(10)]
    with monkeypatch.context() as alone:  # pytest itself may run helper threads
        alone.setattr(parallel.threading, "active_count", lambda: 1)
        assert parallel.fork_split(names) == int(10 * parallel.PARENT_SHARE)
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert parallel.fork_split(names) == 0
    finally:
        stop.set()
        t.join()


def test_small_trees_are_written_by_one_process():
    assert parallel.fork_split(["a"] * (parallel.PARALLEL_MIN - 1)) == 0


def test_a_failed_fork_falls_back_to_one_process(tmp_path, monkeypatch, forks):
    project = make_tree(tmp_path / "proj")
    expected, _bundle = serial_build(project, tmp_path, monkeypatch)

    def no_fork():
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(parallel.os, "fork", no_fork)
    out = tmp_path / "parallel.tar"
    build_bundle(project, include_source="fs", output=out)
    assert forks == []
    assert out.read_bytes() == expected
