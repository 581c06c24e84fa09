"""Property tests for the bundle builder: random trees round-trip exactly and
two builds of the same tree are byte-identical."""

from __future__ import annotations

import functools
import hashlib
import io
import os
import tarfile
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spirodeploy.builder import TarballBuilder, fs_scanner
from spirodeploy.tarcheck import check_tarball

# Names from a safe alphabet, including non-ASCII letters (pax path records)
# and long components (ustar prefix split and pax for names over 100 bytes).
_ALPHABET = "abcxyzABC019_-.é字"
component = st.text(_ALPHABET, min_size=1, max_size=40).filter(
    lambda c: c not in (".", "..") and c not in (".git", ".hg", ".svn", ".bzr", "_salt")
    and c != ".spirodeploy.json")
path = st.lists(component, min_size=1, max_size=5).map("/".join)
content = st.one_of(st.binary(max_size=2048), st.sampled_from([b"", b"x" * 513, b"\0" * 1024]))
entry = st.tuples(content, st.booleans())


def _no_prefix_clash(tree):
    names = set(tree)
    for n in names:
        parts = n.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in names:
                return False
    return True


trees = st.dictionaries(path, entry, min_size=0, max_size=25).filter(_no_prefix_clash)

PROPS = settings(max_examples=30, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def _materialise(root, tree):
    for rel, (data, executable) in tree.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as fh:
            fh.write(data)
        os.chmod(p, 0o755 if executable else 0o644)


def _build(root):
    with TarballBuilder() as b:
        b.add_saltdir(os.path.join(root, "_salt"))
        b.add_source(functools.partial(fs_scanner, root=os.path.join(root, "src")))
    data = b.buffer.read()
    b.buffer.close()
    return b, data


@PROPS
@given(salt=trees, src=trees)
def test_random_tree_round_trips(salt, src):
    with tempfile.TemporaryDirectory() as root:
        os.makedirs(os.path.join(root, "_salt"))
        os.makedirs(os.path.join(root, "src"))
        _materialise(os.path.join(root, "_salt"), salt)
        _materialise(os.path.join(root, "src"), src)
        b, data = _build(root)

    expected = {name: v for name, v in salt.items()}
    expected.update({"_source/" + name: v for name, v in src.items()})
    got = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        members = tf.getmembers()
        for m in members:
            assert m.isreg()
            assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "", "")
            got[m.name] = (tf.extractfile(m).read(), m.mode)
    names = [m.name for m in members]
    assert names[-1] == ".spirodeploy.json"
    assert names[:-1] == sorted(names[:-1])
    del got[".spirodeploy.json"]
    assert got == {n: (d, 0o755 if x else 0o644) for n, (d, x) in expected.items()}
    assert b.file_count == len(expected)
    assert {f["path"]: f["sha256"] for f in b.manifest["files"]} == {
        n: hashlib.sha256(d).hexdigest() for n, (d, _) in expected.items()}
    assert hashlib.sha256(data).hexdigest() == b.sha256 and len(data) == b.size
    summary = check_tarball(io.BytesIO(data))
    assert summary.file_count == len(expected) + 1
    assert summary.sha256 == b.sha256


@PROPS
@given(tree=trees, order_seed=st.randoms(use_true_random=False))
def test_two_builds_are_byte_identical(tree, order_seed):
    with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as two:
        for root in (one, two):
            os.makedirs(os.path.join(root, "_salt"))
            os.makedirs(os.path.join(root, "src"))
        _materialise(os.path.join(one, "_salt"), tree)
        _materialise(os.path.join(one, "src"), tree)
        # the second copy is created in another order with other timestamps
        items = list(tree.items())
        order_seed.shuffle(items)
        for sub in ("_salt", "src"):
            _materialise(os.path.join(two, sub), dict(items))
            for rel in tree:
                os.utime(os.path.join(two, sub, rel), (order_seed.randint(0, 2**31),) * 2)
        _, first = _build(one)
        _, again = _build(one)
        _, other = _build(two)
    assert first == again == other
