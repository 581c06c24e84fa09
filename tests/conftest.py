"""Shared fixtures: the fake server for fault injection, tokens, projects."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import pytest

from tests.fakeserver import FakeSpiroServer

REPO = Path(__file__).resolve().parent.parent

# In CI a skipped test is a test that did not run: fail the run instead of
# counting it as passed (a platform guard that fires there means CI lacks
# something the suite needs).
_SKIPPED: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        _SKIPPED.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("CI") and _SKIPPED and session.exitstatus == 0:
        print(f"\nCI: {len(_SKIPPED)} test(s) skipped, failing the run: {', '.join(_SKIPPED)}")
        session.exitstatus = 1


@pytest.fixture
def fake_server():
    """A scriptable SpiroFS stand-in on plain HTTP (clients need insecure mode)."""
    with FakeSpiroServer() as server:
        yield server


def make_token(caveats: dict | None = None) -> str:
    """A token shaped like SpiroFS's (pymacaroons v1) with the given caveat.

    The fake server does not verify signatures; the client only reads caveats.
    """
    caveats = {"not_before": time.time() - 10} if caveats is None else caveats

    def packet(key: str, value: str) -> bytes:
        body = f"{key} {value}\n".encode()
        return b"%04x" % (len(body) + 4) + body

    raw = (packet("location", "") + packet("identifier", "test-ident")
           + packet("cid", json.dumps(caveats)) + packet("signature", "0" * 32))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.fixture
def token() -> str:
    return make_token()


@pytest.fixture
def project(tmp_path) -> Path:
    """A minimal project: _salt with a top file and one state."""
    root = tmp_path / "proj"
    (root / "_salt").mkdir(parents=True)
    (root / "_salt" / "top.sls").write_text("{{ saltenv }}:\n  '*':\n    - hello\n")
    (root / "_salt" / "hello.sls").write_text("hello:\n  test.succeed_without_changes\n")
    return root
