"""Helpers that several test modules share (fixtures live in the conftest files).

* tokens and paths: :data:`REPO`, :func:`make_token`;
* the manifest written the slow, obvious way, as the oracle the builder's
  fast writer is checked against: :func:`content_digest`,
  :func:`make_manifest`, :func:`build_manifest`, :func:`dump_manifest`;
* peak-memory measurement in a child process: :func:`run_child`,
  :func:`rss_growth`, :func:`fmt_bytes`, :class:`DiscardServer`, :data:`RSS_BOUND`;
* running the CLI as a subprocess and reading what it printed:
  :func:`run_cli`, :func:`describe`, :func:`events_and_report`, :func:`names`,
  :func:`assert_single_line_error`;
* Salt on the bed: :func:`call`, :func:`sync_minion`, :func:`state_results`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from spirodeploy import __version__
from spirodeploy.manifest import MANIFEST_FORMAT, manifest_chunks, manifest_dict, manifest_parts

REPO = Path(__file__).resolve().parent.parent


# --- tokens -----------------------------------------------------------------------------

def make_token(caveats: dict | list | None = None) -> str:
    """A token shaped like SpiroFS's (pymacaroons v1) with the given caveat.

    ``caveats`` is one caveat (a dict) or a list of them, each a dict
    (written as JSON) or a str (written as it is).  The fake server does not
    verify signatures; the client only reads caveats.
    """
    caveats = {"not_before": time.time() - 10} if caveats is None else caveats

    def packet(key: str, value: str) -> bytes:
        body = f"{key} {value}\n".encode()
        return f"{len(body) + 4:04x}".encode() + body

    cids = b"".join(packet("cid", c if isinstance(c, str) else json.dumps(c))
                    for c in (caveats if isinstance(caveats, list) else [caveats]))
    raw = (packet("location", "") + packet("identifier", "test-ident")
           + cids + packet("signature", "0" * 32))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# --- the manifest, the obvious way -------------------------------------------------------

def content_digest(files: Iterable[Mapping[str, Any]]) -> str:
    """The content digest over ``files`` (already sorted by path), as the
    manifest's docstring defines it."""
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f['path']}\0{f['sha256']}\0{f['mode']:o}\n".encode())
    return h.hexdigest()


def make_manifest(files: Sequence[Mapping[str, Any]], *, gitcommit: str | None = None,
                  tool: str | None = None) -> dict:
    """The manifest dict for ``files`` (dicts with path, size, sha256, mode)."""
    files = sorted(files, key=lambda f: f["path"])
    return {
        "format": MANIFEST_FORMAT,
        "tool": f"spiro-deploy {__version__}" if tool is None else tool,
        "gitcommit": gitcommit,
        "digest": content_digest(files),
        "files": [{"path": f["path"], "size": f["size"], "sha256": f["sha256"], "mode": f["mode"]}
                  for f in files],
    }


def dump_manifest(manifest: Mapping[str, Any]) -> bytes:
    """The manifest's one stable serialisation, through :mod:`json`."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode("ascii") + b"\n"


def build_manifest(records: Sequence[tuple[str, int, str, int]], *,
                   gitcommit: str | None = None, tool: str | None = None) -> tuple[dict, bytes]:
    """``(manifest dict, its bytes)`` for sorted ``(path, size, sha256, mode)``
    records, through the library's fast writer (what the builder does)."""
    content = hashlib.sha256()
    body = manifest_parts(records, content.update)
    digest = content.hexdigest()
    data = b"".join(manifest_chunks(digest, body, gitcommit=gitcommit, tool=tool))
    return manifest_dict(records, digest=digest, gitcommit=gitcommit, tool=tool), data


# --- peak memory in a child process --------------------------------------------------------

MiB = 1 << 20
#: Allowed peak-RSS growth while a large bundle is built, compressed or sent:
#: generous, so the memory tests do not flake, and several times smaller
#: than their artifacts, so a bundle held in memory cannot pass.
RSS_BOUND = 64 * MiB

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
            print(json.dumps({"skip": f"cannot reset peak RSS: {e}"}))
            return
        before = status("VmRSS")
        result = work()
        peak = status("VmHWM")
        print(json.dumps({"before": before, "peak": peak, "result": result}))
""")


def run_child(body: str, timeout: float = 300) -> dict:
    """Run ``body`` (which calls ``measure(warm, work)``) in a fresh Python;
    return what ``measure`` printed: ``before``, ``peak`` and ``result``."""
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


def rss_growth(out: dict) -> int:
    """Peak RSS growth during ``work()``, from :func:`run_child`'s answer."""
    return out["peak"] - out["before"]


def fmt_bytes(n: int) -> str:
    return f"{n / MiB:.1f} MiB"


class DiscardServer:
    """Reads a POST body of any size and throws it away; answers one SSE event.

    Counts the body bytes (``received``, one count per request), so a test
    knows the whole bundle went out.
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
                     b"Connection: close\r\nContent-Length: " + str(len(body)).encode()
                     + b"\r\n\r\n" + body)

    def close(self):
        self.sock.close()


# --- the CLI as a subprocess -----------------------------------------------------------------

#: The files of ``spiro_bed.make_project``'s ``_salt``.
SALT_FILES = ["hello/files/hello.txt.j2", "hello/init.sls", "top.sls"]
MANIFEST = ".spirodeploy.json"
#: Settings the CLI reads from the environment; :func:`run_cli` clears them all.
SCRUBBED_ENV = ("SPIRO_URL", "SPIRO_TOKEN", "SPIRO_TOKEN_FILE", "REQUESTS_CA_BUNDLE",
                "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR")


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 150) -> subprocess.CompletedProcess:
    """``python -m spirodeploy ARGS`` in ``cwd``; no colour, no progress bar."""
    environ = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    environ.update({"NO_COLOR": "1", "PYTHONUNBUFFERED": "1"})
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "spirodeploy", *args], cwd=cwd, env=environ,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
    )


def describe(proc: subprocess.CompletedProcess) -> str:
    """Everything a failed assertion about ``proc`` should show."""
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


def json_lines(proc: subprocess.CompletedProcess) -> list[dict]:
    """``--json`` output: every stdout line must be one JSON object."""
    return [json.loads(line) for line in proc.stdout.splitlines()]


def events_and_report(proc: subprocess.CompletedProcess) -> tuple[list[tuple[str, dict]], dict]:
    """``--json`` output split into ``[(event name, data), ...]`` and the final report."""
    objs = json_lines(proc)
    assert objs and "report" in objs[-1], describe(proc)
    events = [(obj["event"], obj["data"]) for obj in objs[:-1]]
    assert len(events) == len(objs) - 1, describe(proc)  # nothing but events, then the report
    return events, objs[-1]["report"]


def names(events: list[tuple[str, dict]]) -> list[str]:
    return [name for name, _ in events]


def assert_single_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """stderr is one ``spiro-deploy: error: ...`` line (plus warnings), no traceback."""
    assert "Traceback" not in proc.stderr + proc.stdout, describe(proc)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("spiro-deploy: error:")]
    others = [line for line in proc.stderr.splitlines()
              if line.strip() and not line.startswith(("spiro-deploy: error:", "Warning:"))]
    assert len(errors) == 1 and not others, describe(proc)
    for fragment in fragments:
        assert fragment in errors[0], describe(proc)
    return errors[0]


# --- Salt on the bed -------------------------------------------------------------------------

def call(spiro_bed, *args, **kwargs):
    """``salt-call ARGS`` on the bed's minion."""
    return spiro_bed.salt_call_cli.run(*args, **kwargs)


def state_results(data) -> list[dict]:
    """Every state return (a dict with ``__run_num__``) inside a nested return."""
    found = []

    def walk(value):
        if isinstance(value, dict):
            if "__run_num__" in value and "result" in value:
                found.append(value)
                return
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(data)
    return found


def sync_minion(spiro_bed) -> None:
    """Sync the minion's modules from ``base`` (a plain ``sync_all`` would sync
    from the deployments its top files match)."""
    ret = call(spiro_bed, "saltutil.sync_all", saltenv="base")
    assert ret.returncode == 0, ret
