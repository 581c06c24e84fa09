"""Salt's loader, faked for the unit tests of the Salt faces (_modules, _runners, _states).

* :func:`load_salt_file` imports a face as a plain module, for salt-factories'
  ``configure_loader_modules`` to give it its loader dunders;
* stand-ins for what the loader would hand it: :class:`Bus` (``event.send``),
  :class:`Fileserver` (``cp.list_master``/``cp.get_file_str``) and
  :class:`JidEvent` (a runner's ``__jid_event__``).

The fixtures built from these are in tests/unit/conftest.py.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from tests.support import REPO


def load_salt_file(kind: str, name: str) -> ModuleType:
    """Import _<kind>/spirodeploy_mod.py as a plain module named ``name``.

    Each test module loads its own copy under its own name, so no two test
    modules share (and configure) one module object.
    """
    path = REPO / f"_{kind}" / "spirodeploy_mod.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class Bus:
    """Stands in for ``event.send``: records what the module fires."""

    def __init__(self):
        self.events = []

    def send(self, tag, data=None, **kwargs):
        self.events.append((tag, data))
        return True

    @property
    def tags(self):
        return [tag for tag, _ in self.events]


class Fileserver:
    """``cp.list_master``/``cp.get_file_str`` over {saltenv: {path: text}}."""

    def __init__(self):
        self.envs = {}

    def list_master(self, saltenv="base", prefix=""):
        return sorted(self.envs.get(saltenv, {}))

    def get_file_str(self, path, saltenv="base"):
        return self.envs.get(saltenv, {}).get(path[len("salt://"):], False)


class JidEvent:
    """Stands in for the runner's ``__jid_event__``."""

    def __init__(self):
        self.fired = []

    def fire_event(self, data, suffix):
        self.fired.append((suffix, data))

    @property
    def messages(self):
        return [data["message"] for suffix, data in self.fired if suffix == "progress"]


def minion_salt(spiromod: ModuleType, server: str, token: str, bus: Bus,
                fileserver: Fileserver) -> dict:
    """The ``__salt__`` of a minion whose master runs the fake server.

    ``config.get`` answers ``spirodeploy:server``, ``:token`` and ``:insecure``;
    ``event.send`` goes to ``bus``; ``cp.*`` read what ``fileserver`` serves;
    ``spirodeploy.status`` is the execution module's own (the state calls it).
    """
    config = {"spirodeploy:server": server, "spirodeploy:token": token,
              "spirodeploy:insecure": True}
    return {
        "config.get": lambda key, default="": config.get(key, default),
        "event.send": bus.send,
        "cp.list_master": fileserver.list_master,
        "cp.get_file_str": fileserver.get_file_str,
        "spirodeploy.status": spiromod.status,
    }
