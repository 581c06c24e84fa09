"""The benchmark's inputs, generated deterministically (fixed seeds) under bench/work/inputs."""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from common import INPUTS, KiB, MiB, fmt_size, human


def write_blob(path: Path, size: int, seed: int) -> None:
    """``size`` pseudo-random bytes (incompressible; each MiB differs)."""
    if path.exists() and path.stat().st_size == size:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    block = bytearray(random.Random(seed).randbytes(MiB))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        full, rest = divmod(size, MiB)
        for i in range(full):
            block[:8] = struct.pack("<Q", i)
            handle.write(block)
        if rest:
            handle.write(block[:rest])
    tmp.rename(path)


class TextPool:
    """Deterministic text for source files: slices of a seeded hex pool."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        raw = self.rng.randbytes(512 * KiB).hex()
        # Lines of 64 characters, like source code.
        self.pool = "\n".join(raw[i:i + 63] for i in range(0, len(raw), 63)).encode()

    def text(self, size: int) -> bytes:
        start = self.rng.randrange(0, len(self.pool) - size)
        return self.pool[start:start + size]


def write_salt_tree(root: Path, pool: TextPool, states: int = 30, templates: int = 12) -> int:
    salt = root / "_salt"
    (salt / "files").mkdir(parents=True, exist_ok=True)
    names = [f"state{i:02d}" for i in range(states)]
    (salt / "top.sls").write_text("{{ saltenv }}:\n  '*':\n" + "".join(f"    - {n}\n" for n in names))
    for name in names:
        body = (f"{name}-file:\n  file.managed:\n    - name: /tmp/spirobench/{name}\n"
                f"    - contents: |\n")
        body += "".join(f"        {line}\n" for line in pool.text(1500).decode().splitlines())
        (salt / f"{name}.sls").write_text(body)
    for i in range(templates):
        (salt / "files" / f"template{i:02d}.j2").write_bytes(pool.text(pool.rng.randint(500, 6000)))
    return 1 + states + templates


def write_source(root: Path, pool: TextPool, dirs: int, subdirs: int, per_dir: int,
                 lo: int, hi: int) -> int:
    count = 0
    for d in range(dirs):
        for s in range(subdirs):
            where = root / "src" / f"pkg{d:02d}" / (f"mod{s:02d}" if subdirs > 1 else "")
            where.mkdir(parents=True, exist_ok=True)
            for f in range(per_dir):
                (where / f"file{f:03d}.py").write_bytes(pool.text(pool.rng.randint(lo, hi)))
                count += 1
    return count


def git_commit_all(root: Path) -> None:
    env = dict(os.environ, GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@example.invalid",
               GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@example.invalid",
               GIT_AUTHOR_DATE="2024-01-01T00:00:00Z", GIT_COMMITTER_DATE="2024-01-01T00:00:00Z")
    for cmd in (["git", "-c", "init.defaultBranch=main", "init", "-q"],
                ["git", "add", "-A"],
                ["git", "-c", "commit.gpgsign=false", "commit", "-q", "-m", "bench input"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)


@dataclass
class Scenario:
    key: str           # "a", "b", "c"
    title: str
    root: Path
    source: str        # --include-source method for every tool
    artifacts: list[str]   # paths relative to root
    tar_paths: list[str]   # what GNU tar archives (same files)
    files: int = 0
    size: int = 0


def _stamp_ok(root: Path, params: dict) -> bool:
    stamp = root / ".bench-stamp.json"
    try:
        return json.loads(stamp.read_text()) == params
    except (OSError, ValueError):
        return False


def _stamp(root: Path, params: dict) -> None:
    (root / ".bench-stamp.json").write_text(json.dumps(params))


def tree_stats(root: Path, paths: list[str]) -> tuple[int, int]:
    files = size = 0
    for rel in paths:
        p = root / rel
        if p.is_file():
            files, size = files + 1, size + p.stat().st_size
            continue
        for dirpath, _, names in os.walk(p):
            for name in names:
                files += 1
                size += os.stat(os.path.join(dirpath, name)).st_size
    return files, size


def make_inputs(cfg) -> dict[str, Scenario]:
    INPUTS.mkdir(parents=True, exist_ok=True)
    scenarios = {}

    # (a) big artifact + _salt + ~300 source files, in a git checkout; the
    # artifact directory is git-ignored, so --include-source git does not
    # bundle it twice (0.4's fs scanner has no ignore file).
    root = INPUTS / "a-artifact"
    params = {"v": 1, "seed": 1}
    if not _stamp_ok(root, params):
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        pool = TextPool(1)
        write_salt_tree(root, pool)
        write_source(root, pool, dirs=10, subdirs=1, per_dir=30, lo=500, hi=16000)
        (root / ".gitignore").write_text("dist/\n")
        git_commit_all(root)
        _stamp(root, params)
    for size in sorted(set(cfg.sizes) | {cfg.artifact_size} | set(getattr(cfg, "sink_sizes", ()))):
        write_blob(root / "dist" / f"app-{fmt_size(size)}.bin", size, seed=size)
    art = f"dist/app-{fmt_size(cfg.artifact_size)}.bin"
    scenarios["a"] = Scenario("a", f"(a) {human(cfg.artifact_size)} artifact + _salt + ~300 source files",
                              root, "git", [art], ["_salt", "src", art])

    # (b) 50,000 small source files (fs scanner: no git needed).
    root = INPUTS / f"b-files-{cfg.many_files}"
    params = {"v": 1, "seed": 2, "files": cfg.many_files}
    if not _stamp_ok(root, params):
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        pool = TextPool(2)
        write_salt_tree(root, pool)
        per_dir = 50
        subdirs = 20
        dirs = max(1, cfg.many_files // (per_dir * subdirs))
        write_source(root, pool, dirs=dirs, subdirs=subdirs, per_dir=per_dir, lo=64, hi=2048)
        _stamp(root, params)
    scenarios["b"] = Scenario("b", f"(b) {cfg.many_files:,} small source files", root, "fs", [],
                              ["_salt", "src"])

    # (c) a typical small project: ~300 files, ~3.5 MB, one 2 MiB artifact.
    root = INPUTS / "c-small"
    params = {"v": 1, "seed": 3}
    if not _stamp_ok(root, params):
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        pool = TextPool(3)
        write_salt_tree(root, pool)
        write_source(root, pool, dirs=10, subdirs=1, per_dir=25, lo=200, hi=10000)
        (root / ".gitignore").write_text("dist/\n")
        write_blob(root / "dist" / "app.tar.gz", 2 * MiB, seed=3)
        git_commit_all(root)
        _stamp(root, params)
    scenarios["c"] = Scenario("c", "(c) typical small project", root, "git", ["dist/app.tar.gz"],
                              ["_salt", "src", "dist/app.tar.gz"])

    for sc in scenarios.values():
        sc.files, sc.size = tree_stats(sc.root, sc.tar_paths)
        # Warm the page cache for everyone (the first tool must not pay the reads).
        subprocess.run(["tar", "-cf", "/dev/null", "-C", str(sc.root), *sc.tar_paths, ".git"]
                       if (sc.root / ".git").exists() else
                       ["tar", "-cf", "/dev/null", "-C", str(sc.root), *sc.tar_paths], check=False)
        for rel in sc.artifacts:
            subprocess.run(["cat", str(sc.root / rel)], stdout=subprocess.DEVNULL, check=False)
    return scenarios
