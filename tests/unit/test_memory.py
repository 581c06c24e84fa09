"""Regression guard: bundling and uploading a large artifact take bounded memory.

Not a timing test.  Each case runs in a fresh child process, which resets
its peak-RSS counter (``/proc/self/clear_refs``) once everything is imported
and warmed up, does the work on a large *sparse* artifact (no disk space, no
disk reads), and reports ``VmHWM`` (peak RSS) minus ``VmRSS`` before the
work.  Bounded memory means that growth stays a small constant, far below
the artifact size; a bundle held in memory (what spiro-deploy 0.4 does,
twice) would grow by at least the artifact size.  The bound is generous, so
the test does not flake; the artifact is several times larger than the
bound, so it cannot pass by accident.

Linux only (``/proc``); skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from tests.conftest import make_token

MiB = 1 << 20
#: Size of the sparse artifact.  Several times the bound below.
ARTIFACT = 384 * MiB
#: Allowed peak-RSS growth while bundling/uploading it.
BOUND = 64 * MiB

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and os.path.exists("/proc/self/clear_refs")),
    reason="needs Linux /proc (VmHWM and clear_refs)",
)

# Runs in the child.  ``work()`` is defined by the case; ``warm()`` runs the
# same code on a tiny input first, so imports, thread start-up and buffers
# are not counted as growth.
_PRELUDE = textwrap.dedent("""
    import json, os, sys

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    def measure(warm, work):
        warm()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
        except OSError as e:
            print(json.dumps({"skip": "cannot reset peak RSS: %s" % e}))
            return
        before = status("VmRSS")
        result = work()
        peak = status("VmHWM")
        print(json.dumps({"before": before, "peak": peak, "result": result}))
""")


def _run_child(body: str, timeout: float = 300) -> dict:
    code = _PRELUDE + textwrap.dedent(body)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=str(REPO))
    assert proc.returncode == 0, f"child failed:\n{proc.stdout}\n{proc.stderr}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in out:
        pytest.skip(out["skip"])
    return out


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


def _growth(out: dict) -> int:
    return out["peak"] - out["before"]


def _fmt(n: int) -> str:
    return f"{n / MiB:.1f} MiB"


def test_building_a_large_bundle_takes_bounded_memory(tmp_path):
    root = _project(tmp_path)
    out = _run_child(f"""
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
    growth = _growth(out)
    assert growth < BOUND, (
        f"building a bundle with a {_fmt(ARTIFACT)} artifact grew peak RSS by {_fmt(growth)} "
        f"(bound {_fmt(BOUND)}): the bundle is being held in memory")


class _DiscardServer:
    """Reads a POST body of any size and throws it away; answers one SSE event.

    Counts the body bytes, so the test knows the whole bundle went out.
    """

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[int] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    self._handle(conn)
                except OSError:
                    pass

    def _handle(self, conn):
        f = conn.makefile("rb")
        headers = {}
        f.readline()
        while True:
            line = f.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            key, _, value = line.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        if headers.get("expect", "").lower() == "100-continue":
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        n = 0
        if "content-length" in headers:
            left = int(headers["content-length"])
            while left:
                chunk = f.read(min(left, MiB))
                if not chunk:
                    break
                n += len(chunk)
                left -= len(chunk)
        else:  # chunked
            while True:
                size = int(f.readline().split(b";")[0].strip() or b"0", 16)
                if not size:
                    while f.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                left = size
                while left:
                    chunk = f.read(min(left, MiB))
                    if not chunk:
                        raise OSError("cut")
                    n += len(chunk)
                    left -= len(chunk)
                f.readline()
        self.received.append(n)
        body = b'event: deploy-bundle\ndata: {"msg": "Deploying bundle"}\n\n'
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    def close(self):
        self.sock.close()


def test_deploying_a_large_bundle_takes_bounded_memory(tmp_path):
    """The CLI's deploy path: build to a spooled temp file, then stream the upload."""
    root = _project(tmp_path)
    server = _DiscardServer()
    token_file = tmp_path / "token"
    token_file.write_text(make_token() + "\n")
    try:
        out = _run_child(f"""
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
    growth = _growth(out)
    assert growth < BOUND, (
        f"deploying a bundle with a {_fmt(ARTIFACT)} artifact grew peak RSS by {_fmt(growth)} "
        f"(bound {_fmt(BOUND)}): the bundle is being held in memory")
