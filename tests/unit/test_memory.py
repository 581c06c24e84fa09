"""Regression guard: bundling and uploading a large artifact take bounded memory.

Not a timing test.  Each case runs in a fresh child process, which resets
its peak-RSS counter (``/proc/self/clear_refs``) once everything is imported
and warmed up, does the work on a large *sparse* artifact (no disk space, no
disk reads), and reports ``VmHWM`` (peak RSS) minus ``VmRSS`` before the
work.  Bounded memory means that growth stays a small constant, far below
the artifact size; a bundle held in memory would grow by at least the
artifact size.  The bound is generous, so
the test does not flake; the artifact is several times larger than the
bound, so it cannot pass by accident.

Linux only (``/proc``); skipped elsewhere.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.support import RSS_BOUND, DiscardServer, MiB, fmt_bytes, make_token, rss_growth, run_child

#: Size of the sparse artifact.  Several times the bound, RSS_BOUND.
ARTIFACT = 384 * MiB

pytestmark = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and os.path.exists("/proc/self/clear_refs")),
    reason="needs Linux /proc (VmHWM and clear_refs)",
)


def _project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "_salt").mkdir(parents=True)
    (root / "_salt" / "top.sls").write_text("{{ saltenv }}:\n  '*':\n    - app\n")
    (root / "_salt" / "app.sls").write_text("app:\n  test.succeed_without_changes\n")
    (root / "dist").mkdir()
    with open(root / "dist" / "big.bin", "wb") as f:
        f.truncate(ARTIFACT)  # sparse: reads as zeros, takes no disk space
    with open(root / "dist" / "tiny.bin", "wb") as f:
        f.write(b"x" * 1000)
    return root


def test_building_a_large_bundle_takes_bounded_memory(tmp_path):
    root = _project(tmp_path)
    out = run_child(f"""
        from spirodeploy.builder import TarballBuilder

        ROOT = {str(root)!r}

        def build(artifact):
            # The tar goes to /dev/null: only the builder's own memory counts.
            with open(os.devnull, "wb") as sink:
                with TarballBuilder(sink, root=ROOT) as b:
                    b.add_saltdir(os.path.join(ROOT, "_salt"))
                    b.add_artifact(os.path.join(ROOT, "dist", artifact), "dist/" + artifact)
                return b.size

        measure(lambda: build("tiny.bin"), lambda: build("big.bin"))
    """)
    assert out["result"] >= ARTIFACT
    growth = rss_growth(out)
    assert growth < RSS_BOUND, (
        f"building a bundle with a {fmt_bytes(ARTIFACT)} artifact grew peak RSS by {fmt_bytes(growth)} "
        f"(bound {fmt_bytes(RSS_BOUND)}): the bundle is being held in memory")


def test_deploying_a_large_bundle_takes_bounded_memory(tmp_path):
    """The CLI's deploy path: build to a spooled temp file, then stream the upload."""
    root = _project(tmp_path)
    server = DiscardServer()
    token_file = tmp_path / "token"
    token_file.write_text(make_token() + "\n")
    try:
        out = run_child(f"""
            from spirodeploy import cli

            def deploy(artifact):
                rc = cli.main(["-C", {str(root)!r}, "--no-highstate", "--no-progress", "--json",
                               "--insecure", "--server", "http://127.0.0.1:{server.port}/",
                               "--token-file", {str(token_file)!r},
                               "--artifact", "dist/" + artifact, "memtest", "prod"])
                assert rc == 0, rc
                return rc

            measure(lambda: deploy("tiny.bin"), lambda: deploy("big.bin"))
        """)
    finally:
        server.close()
    assert server.received and server.received[-1] >= ARTIFACT, server.received
    growth = rss_growth(out)
    assert growth < RSS_BOUND, (
        f"deploying a bundle with a {fmt_bytes(ARTIFACT)} artifact grew peak RSS by {fmt_bytes(growth)} "
        f"(bound {fmt_bytes(RSS_BOUND)}): the bundle is being held in memory")
