"""How fast can Python bundle 50,000 small files?  A floor for input (b).

Not used by spiro-deploy.  Writes ``_salt/*`` at the root and ``src/**`` under
``_source/`` as a valid, sorted ustar with a sha256 per file and a manifest
(JSON, last member), like spiro-deploy, with the least Python per file:

* ``walk``: ``os.scandir``, sorted, no per-entry objects (tuples of str);
* ``serial``: one thread: open, fstat, read(size + 1), close, sha256, header
  from a template (checksum computed incrementally), append to a 1 MiB
  bytearray, write when full;
* ``threads``: the same, with the open/fstat/read/close of the next files
  done by a pool of 2 reader threads (they release the GIL), in order.

    python bench/proto_manyfiles.py serial|threads OUT PROJECT_DIR
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

MTIME = b"%011o\0" % 315532800
UIDGID = b"0000000\0" * 2
MID = bytes(100) + b"ustar\x0000" + bytes(64) + b"0000000\0" * 2
BASE = sum(UIDGID) + sum(MTIME) + 8 * 32 + sum(MID) + ord("0")
MODES = {m: b"%07o\0" % m for m in (0o644, 0o755)}
MODE_SUM = {m: sum(v) for m, v in MODES.items()}
TAIL = b"0" + MID + bytes(167)
ZEROS = bytes(10240)


def walk(top: str, prefix: str, out: list) -> None:
    stack = [(top, prefix)]
    while stack:
        path, pre = stack.pop()
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
        dirs = []
        for e in entries:
            if e.name in (".git", "_salt") and pre.startswith("_source/"):
                continue
            if e.is_dir(follow_symlinks=False):
                dirs.append((e.path, pre + e.name + "/"))
            elif e.is_file(follow_symlinks=False):
                out.append((pre + e.name, e.path))
        stack.extend(reversed(dirs))


def header(name: bytes, mode: int, size: int) -> bytes:
    size_f = b"%011o\0" % size
    chk = BASE + MODE_SUM[mode] + sum(name) + sum(size_f)
    return b"".join((name, bytes(100 - len(name)), MODES[mode], UIDGID, size_f, MTIME,
                     b"%06o\0 " % chk, TAIL))


def read_one(path: str):
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        data = os.read(fd, st.st_size + 1)
    finally:
        os.close(fd)
    return st.st_mode, data


def main(argv) -> int:
    mode_arg, out_path, root = argv
    entries: list = []
    walk(os.path.join(root, "_salt"), "", entries)
    walk(os.path.join(root, "src"), "_source/src/", entries)
    entries.sort()
    names = [n for n, _ in entries]
    paths = [p for _, p in entries]
    if mode_arg == "threads":
        pool = ThreadPoolExecutor(2)
        results = pool.map(read_one, paths, chunksize=64)
    else:
        results = map(read_one, paths)
    files = []
    buf = bytearray()
    total = 0
    sha = hashlib.sha256
    with open(out_path, "wb", buffering=0) as out:
        for name, (st_mode, data) in zip(names, results):
            size = len(data)
            mode = 0o755 if st_mode & 0o111 else 0o644
            name_b = name.encode()
            buf += header(name_b, mode, size)
            buf += data
            buf += ZEROS[:-size % 512]
            files.append({"path": name, "size": size, "sha256": sha(data).hexdigest(),
                          "mode": mode})
            if len(buf) >= 1 << 20:
                out.write(buf)
                total += len(buf)
                buf.clear()
        manifest = json.dumps({"format": 1, "files": files}, sort_keys=True,
                              separators=(",", ":")).encode() + b"\n"
        buf += header(b".spirodeploy.json", 0o644, len(manifest)) + manifest
        buf += ZEROS[:-len(manifest) % 512] + ZEROS[:1024]
        buf += ZEROS[:-(total + len(buf)) % 10240]
        out.write(buf)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
