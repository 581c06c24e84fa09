"""Plain helpers for the staged-rollout tests (tests/unit/test_rollout*.py).

* highstate returns as ``LocalClient.cmd_batch(..., raw=True)`` yields them
  (:data:`OK_STATE`, :data:`BAD_STATE`, :func:`envelope`);
* stand-ins for the runner's Salt: :class:`FakeLocalClient` (``salt.client``)
  and :class:`RunnerFunctions` (its ``__salt__``), and for the state's
  ``saltutil.runner``: :class:`Runners`;
* the loader dunders each test module hands salt-factories from its own
  ``configure_loader_modules`` (:func:`runner_loader_modules`,
  :func:`state_loader_modules`);
* the fake server's side: :func:`upload_only`.

The fixtures built from these are in tests/unit/conftest.py.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from tests.fakeserver import FakeSpiroServer, sse
from tests.saltloader_support import minion_salt

OK_STATE = {"test_|-ok_|-ok_|-succeed_with_changes": {
    "result": True, "changes": {"x": 1}, "comment": "Success!", "__run_num__": 0,
    "__id__": "ok", "name": "ok"}}
BAD_STATE = {"test_|-broken_|-broken_|-fail_without_changes": {
    "result": False, "changes": {}, "comment": "Failure!", "__run_num__": 0,
    "__id__": "broken", "name": "broken"}}

# What ``state.show_top`` answers: m1..m3 use p/prod, "other" does not.
TOPS = {"m1": {"base": [], "p/prod": ["hello"]}, "m2": {"p/prod": ["hello"]},
        "m3": {"p/prod": ["hello"]}, "other": {"base": ["x"]}}


def envelope(minion, ret, retcode=0, jid="20260101000000000001"):
    """What ``LocalClient.cmd_batch(..., raw=True)`` yields for one minion."""
    return {"tag": f"salt/job/{jid}/ret/{minion}",
            "data": {"id": minion, "return": ret, "retcode": retcode, "jid": jid,
                     "fun": "state.highstate", "success": True}}


class FakeLocalClient:
    """Stands in for ``salt.client.LocalClient``: ``cmd_batch`` with raw returns."""

    def __init__(self, fail=(), silent=()):
        self.fail, self.silent = set(fail), set(silent)
        self.calls = []
        self.destroyed = 0

    def cmd_batch(self, tgt, fun, arg=(), tgt_type="glob", ret="", kwarg=None, batch="10%",
                  **kwargs):
        self.calls.append({"tgt": list(tgt), "fun": fun, "tgt_type": tgt_type, "kwarg": kwarg,
                           "batch": batch, **kwargs})
        for minion in tgt:
            if minion in self.silent:
                yield {"data": {"id": minion, "return": {}, "retcode": 0}}
                continue
            bad = minion in self.fail
            yield envelope(minion, BAD_STATE if bad else OK_STATE, 2 if bad else 0)

    def destroy(self):
        self.destroyed += 1

    @property
    def highstated(self):
        return [m for call in self.calls for m in call["tgt"]]


class RunnerFunctions(dict):
    """Stands in for the runner's ``__salt__`` (other runner functions)."""

    def __init__(self, tops):
        super().__init__()
        self.show_top_calls = 0

        def execute(tgt, fun, kwarg=None, **kwargs):
            assert (tgt, fun, kwarg) == ("*", "state.show_top", {"concurrent": True})
            self.show_top_calls += 1
            return tops
        self["salt.execute"] = execute


class Runners:
    """Stands in for ``saltutil.runner``: answers ``spirodeploy.rollout`` calls."""

    def __init__(self):
        self.calls = []
        self.check = {"result": True, "test": True, "batches": [["m1"], ["m2"]]}
        self.outcome = {"result": True, "summary": "Rolled out proj/prod: 2 of 2 minions done",
                        "minions": {"done": ["m1", "m2"], "failed": [], "no_response": [],
                                    "never_started": []},
                        "stopped_at_batch": None, "jids": ["1", "2"], "on_failure": None}

    def __call__(self, name, arg=None, kwarg=None, **kwargs):
        self.calls.append((name, list(arg or []), dict(kwarg or {})))
        return self.check if (kwarg or {}).get("test") else self.outcome


def runner_loader_modules(spirorunner: ModuleType, server: str, token: str, tmp_path,
                          salt_functions: RunnerFunctions, jid_event) -> dict[ModuleType, Any]:
    """The runner's loader dunders, for a test module's ``configure_loader_modules``."""
    opts = {"__role": "master", "conf_file": str(tmp_path / "master"),
            "sock_dir": str(tmp_path / "sock"), "cachedir": str(tmp_path),
            "spirodeploy": {"server": server, "token": token, "insecure": True}}
    return {spirorunner: {"__opts__": opts, "__context__": {}, "__salt__": salt_functions,
                          "__jid_event__": jid_event}}


def state_loader_modules(spiromod: ModuleType, spirostates: ModuleType, server: str,
                         token: str, opts: dict, bus, fileserver,
                         runners: Runners) -> dict[ModuleType, Any]:
    """The state's (and the execution module's) loader dunders on the master, for a test
    module's ``configure_loader_modules``."""
    salt = {**minion_salt(spiromod, server, token, bus, fileserver), "saltutil.runner": runners}
    return {spiromod: {"__opts__": opts, "__salt__": salt, "__context__": {}},
            spirostates: {"__opts__": opts, "__salt__": salt, "__context__": {}}}


def upload_only(fake_server: FakeSpiroServer) -> None:
    """The server's answer to a deploy without highstate."""
    fake_server.then(chunks=[sse("deploy-bundle", {"msg": "Deploying bundle"})])
