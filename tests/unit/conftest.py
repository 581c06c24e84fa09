"""Fixtures for the unit tests of the Salt faces: the loader's stand-ins
(classes in tests/saltloader_support.py and, for staged rollouts,
tests/rollout_support.py).

``configure_loader_modules`` itself stays in each test module: salt-factories
only looks for it there.
"""

from __future__ import annotations

import io
import sys
import tarfile
import types

import pytest

from spirodeploy import saltsupport
from spirodeploy.cli import main
from tests.rollout_support import TOPS, FakeLocalClient, RunnerFunctions, Runners
from tests.saltloader_support import Bus, Fileserver, JidEvent


@pytest.fixture
def run_main(project, monkeypatch, capsys):
    """``main()`` in the project directory with no ``SPIRO_*`` setting but those a
    test sets; returns ``(exit status, stdout, stderr)``."""
    monkeypatch.chdir(project)
    for name in ("SPIRO_URL", "SPIRO_TOKEN", "SPIRO_TOKEN_FILE", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def cli(run_main, fake_server, token, monkeypatch):
    """:func:`run_main` against the fake server, with a token that may deploy."""
    monkeypatch.setenv("SPIRO_URL", fake_server.url)
    monkeypatch.setenv("SPIRO_TOKEN", token)
    return run_main


@pytest.fixture
def bus() -> Bus:
    """What the faces fire with ``event.send``."""
    return Bus()


@pytest.fixture
def fileserver(fake_server) -> Fileserver:
    """Serve each uploaded bundle as saltenv <project>/<deployment>, as SpiroFS does."""
    served = Fileserver()

    def deployed(received):
        if received.bundle is None:
            return
        with tarfile.open(fileobj=io.BytesIO(received.bundle)) as tar:
            files = {m.name: tar.extractfile(m).read().decode() for m in tar if m.isfile()}
        served.envs[f"{received.fields['project']}/{received.fields['deployment']}"] = files

    fake_server.on_request = deployed
    return served


@pytest.fixture
def jid_event() -> JidEvent:
    """The runner's ``__jid_event__`` (its progress lines)."""
    return JidEvent()


@pytest.fixture
def fired(monkeypatch) -> list:
    """Events the runner (or a state run on the master) puts on the master's bus."""
    events = []
    monkeypatch.setattr(saltsupport, "fire_event",
                        lambda opts, send, tag, data: events.append((tag, data)) or True)
    return events


# --- staged rollouts (tests/unit/test_rollout*.py) -----------------------------------

@pytest.fixture
def local(monkeypatch) -> FakeLocalClient:
    """The runner's ``salt.client.get_local_client()``: highstates nobody for real."""
    client = FakeLocalClient()
    salt_client = types.ModuleType("salt.client")
    salt_client.get_local_client = lambda *args, **kwargs: client
    monkeypatch.setitem(sys.modules, "salt.client", salt_client)
    monkeypatch.setitem(sys.modules, "salt", types.ModuleType("salt"))
    sys.modules["salt"].client = salt_client
    return client


@pytest.fixture
def salt_functions() -> RunnerFunctions:
    """The runner's ``__salt__``: ``salt.execute`` answers ``state.show_top`` with TOPS."""
    return RunnerFunctions(TOPS)


@pytest.fixture
def runners() -> Runners:
    """The state's ``saltutil.runner`` (``spirodeploy.rollout`` answers)."""
    return Runners()


@pytest.fixture
def orchestration_opts(tmp_path) -> dict:
    """The state's ``__opts__`` when an orchestration runs it on the master."""
    return {"id": "master_master", "__role": "master", "cachedir": str(tmp_path / "cache"),
            "test": False}
