"""Shared fixtures: the fake server for fault injection, tokens, projects.

Plain helpers (no fixtures) are in :mod:`tests.support`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fakeserver import FakeSpiroServer
from tests.support import make_token

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


@pytest.fixture(autouse=True)
def _history_in_a_temp_dir(monkeypatch, tmp_path_factory):
    """Deploys record their history by default: keep it out of the user's home.

    Set in the environment so that CLI subprocesses inherit it too; tests of
    the default location unset it themselves.
    """
    monkeypatch.setenv("SPIRO_HISTORY_DIR", str(tmp_path_factory.mktemp("history")))


@pytest.fixture
def fake_server():
    """A scriptable SpiroFS stand-in on plain HTTP (clients need insecure mode)."""
    with FakeSpiroServer() as server:
        yield server


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
