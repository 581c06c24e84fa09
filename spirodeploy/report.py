"""Fold the server's deploy events into one result: :class:`DeployReport`.

The CLI prints it, ``--json`` and the Salt modules return :meth:`to_dict`.
It knows the SpiroFS protocol (``deploy-bundle``, ``highstate-*``,
``exception``) and the shapes Salt's ``cmd_iter`` gives per minion: a dict of
state results, a list of render errors, a plain string, or ``failed: true``
when the minion did not answer.

It only counts as success what it saw succeed, since a server (or anything
between it and us) can send events in any order and of any shape:

* a minion succeeded only if its return is a non-empty dict of states, each
  with ``result`` exactly ``True`` (or ``None``: Salt's "would change" of a
  test run, which Salt's own retcode does not count as a failure), and its
  ``retcode``, when given, is the integer 0.  ``"False"``, ``"2"``, ``{}``,
  ``null`` and a missing ``result`` are failures;
* a minion's first failure sticks: a later ``highstate-update`` for it
  cannot turn it into a success;
* the expected minions only grow: a second ``highstate-start`` adds to them;
* a deploy the server never announced (no ``deploy-bundle`` before the end)
  did not happen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .errors import ExitCode

#: Events the SpiroFS 0.3 protocol defines, in the order they come.
KNOWN_EVENTS = (
    "deploy-bundle",
    "highstate-calc",
    "highstate-start",
    "highstate-update",
    "highstate-finish",
    "exception",
)


@dataclass
class StateResult:
    """One state of a minion's highstate, reduced to what a person reads."""

    id: str
    name: str
    function: str
    result: bool | None
    comment: str
    changed: bool
    run_num: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "function": self.function,
            "result": self.result,
            "comment": self.comment,
            "changed": self.changed,
        }


@dataclass
class MinionResult:
    """What one minion reported for its highstate."""

    minion: str
    retcode: int | None = None
    #: The minion did not answer (``failed: true`` from the master).
    no_response: bool = False
    #: Render or compile errors (``ret`` given as a list or a string).
    errors: list[str] = field(default_factory=list)
    states: list[StateResult] = field(default_factory=list)

    @classmethod
    def from_event(cls, minion: str, result: Any) -> "MinionResult":
        """Build from the ``result`` of a ``highstate-update`` event."""
        report = cls(minion=minion)
        if not isinstance(result, dict):
            report.errors.append(_text(result))
            return report
        if result.get("failed"):
            report.no_response = True
            return report
        retcode = result.get("retcode")
        if retcode is not None:
            report.retcode = _retcode(retcode)
            if report.retcode is None:
                report.errors.append(f"the minion returned a retcode that is not a number: "
                                     f"{_text(retcode)}")
        ret = result.get("ret")
        if isinstance(ret, dict) and ret:
            report.states = sorted(
                (_state_result(key, value) for key, value in ret.items()),
                key=lambda state: (state.run_num, state.id),
            )
        elif isinstance(ret, list) and ret:
            report.errors.extend(_text(item) for item in ret)
        elif isinstance(ret, str) and ret:
            report.errors.append(ret)
        elif "ret" not in result or ret in (None, {}, [], ""):
            # Nothing ran, or nothing says it did: not a success.
            report.errors.append("the minion returned no state results")
        else:
            report.errors.append(_text(ret))
        return report

    @property
    def failed_states(self) -> list[StateResult]:
        return [state for state in self.states if state.result is False]

    @property
    def changed_states(self) -> list[StateResult]:
        return [state for state in self.states if state.changed and state.result is not False]

    @property
    def counts(self) -> dict[str, int]:
        """States ok (no change), changed, failed."""
        failed = len(self.failed_states)
        changed = len(self.changed_states)
        return {"ok": len(self.states) - failed - changed, "changed": changed, "failed": failed}

    @property
    def succeeded(self) -> bool:
        return (
            not self.no_response
            and not self.errors
            and bool(self.states)
            and not self.failed_states
            and not self.retcode
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "minion": self.minion,
            "succeeded": self.succeeded,
            "no_response": self.no_response,
            "retcode": self.retcode,
            "counts": self.counts,
            "errors": list(self.errors),
            "failed": [state.to_dict() for state in self.failed_states],
            "changed": [state.to_dict() for state in self.changed_states],
        }


@dataclass
class DeployReport:
    """Everything known about one deploy, built up event by event.

    Feed events with :meth:`add`; the properties answer the questions a
    person or a pipeline asks: did it deploy, which minions reported, which
    failed, which never answered, and did it all succeed.
    """

    project: str
    deployment: str
    highstate: bool = True
    #: ``{"sha256", "size", "file_count"}`` of the uploaded bundle, if known.
    bundle: dict[str, Any] | None = None
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    minions_expected: list[str] = field(default_factory=list)
    minions: dict[str, MinionResult] = field(default_factory=dict)
    exception: str | None = None
    #: The stream ended the way the protocol ends a deploy.
    finished: bool = False
    #: A client-side problem that cut the deploy short (stream cut, timeout).
    error: str | None = None
    error_exit_code: int | None = None
    #: What is known about the server's copy when the deploy was cut short.
    server_has_bundle: bool | None = None

    def add(self, event: str, data: dict[str, Any]) -> None:
        """Fold one event into the report."""
        self.events.append((event, data))
        if event == "highstate-start":
            # Only ever add: a second start must not forget a minion that was
            # expected and never reported.
            minions = data.get("minions")
            if isinstance(minions, str):
                minions = [minions]
            for minion in minions if isinstance(minions, list) else []:
                if str(minion) not in self.minions_expected:
                    self.minions_expected.append(str(minion))
        elif event == "highstate-update":
            minion = str(data.get("minion"))
            result = MinionResult.from_event(minion, data.get("result"))
            earlier = self.minions.get(minion)
            # The first failure sticks: a later update cannot make it a success.
            if earlier is None or earlier.succeeded:
                self.minions[minion] = result
        elif event == "highstate-finish":
            # Finished only if the deploy was announced first.
            self.finished = self.deployed
        elif event == "exception":
            self.exception = str(data.get("msg", ""))

    def end_of_stream(self) -> None:
        """The server closed the stream cleanly.

        Without highstate the protocol ends right after ``deploy-bundle``, so
        a clean close after it is the sign that the bundle was deployed.
        """
        if not self.highstate and self.deployed and self.exception is None:
            self.finished = True

    def fail(self, error: Exception, exit_code: int, server_has_bundle: bool | None) -> None:
        """Record the client-side error that ended the deploy early."""
        self.error = str(error)
        self.error_exit_code = int(exit_code)
        self.server_has_bundle = server_has_bundle

    @property
    def deployed(self) -> bool:
        """The server started deploying the bundle."""
        return any(event == "deploy-bundle" for event, _ in self.events)

    @property
    def messages(self) -> list[str]:
        return [str(data.get("msg", "")) for _, data in self.events if isinstance(data, dict)]

    @property
    def reported(self) -> list[str]:
        return sorted(self.minions)

    @property
    def failed(self) -> list[str]:
        return sorted(name for name, minion in self.minions.items() if not minion.succeeded)

    @property
    def unreported(self) -> list[str]:
        return sorted(set(self.minions_expected) - set(self.minions))

    @property
    def succeeded(self) -> bool:
        return self.exit_code == ExitCode.OK

    @property
    def exit_code(self) -> int:
        """The CLI's exit status for this outcome (see :class:`ExitCode`)."""
        if self.error_exit_code is not None:
            return self.error_exit_code
        if self.exception is not None or self.failed:
            return ExitCode.DEPLOY_FAILED
        if not self.finished or not self.deployed:
            return ExitCode.STREAM
        if self.unreported:
            return ExitCode.UNREPORTED
        return ExitCode.OK

    def summary(self) -> str:
        """One line saying how the deploy went."""
        target = f"{self.project}/{self.deployment}"
        if self.error is not None:
            return f"Deploy of {target} did not complete: {self.error}"
        if self.exception is not None:
            return f"Deploy of {target} failed on the server: {_headline(self.exception)}"
        if not self.deployed:
            return (f"Deploy of {target} did not complete: the server never said it was "
                    "deploying the bundle")
        if not self.highstate:
            return f"Deployed {target} (no highstate)" if self.finished else f"Deploy of {target} did not complete"
        parts = [f"{len(self.minions)} of {len(self.minions_expected)} minions reported"]
        if self.failed:
            parts.append("failed: " + ", ".join(self.failed))
        if self.unreported:
            parts.append("never reported: " + ", ".join(self.unreported))
        if not self.finished:
            parts.append("the server never said the highstate finished")
        return f"Deployed {target}: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-able data (the Salt modules return this)."""
        return {
            "result": self.succeeded,
            "exit_code": int(self.exit_code),
            "summary": self.summary(),
            "project": self.project,
            "deployment": self.deployment,
            "highstate": self.highstate,
            "bundle": self.bundle,
            "deployed": self.deployed,
            "finished": self.finished,
            "events": [{"event": event, "data": data} for event, data in self.events],
            "minions": {
                "expected": list(self.minions_expected),
                "reported": self.reported,
                "failed": self.failed,
                "unreported": self.unreported,
            },
            "results": {name: minion.to_dict() for name, minion in sorted(self.minions.items())},
            "exception": self.exception,
            "error": self.error,
            "server_has_bundle": self.server_has_bundle,
        }


def _state_result(key: str, value: Any) -> StateResult:
    # Salt's state keys look like "file_|-hello_|-/tmp/x_|-managed".
    parts = str(key).split("_|-")
    state_id = parts[1] if len(parts) == 4 else str(key)
    function = f"{parts[0]}.{parts[3]}" if len(parts) == 4 else ""
    value = value if isinstance(value, dict) else {"result": False, "comment": _text(value)}
    # Strict: "True", "False", 1 or a missing result are not a success.
    result = value.get("result", False)
    return StateResult(
        id=str(value.get("__id__", state_id)),
        name=str(value.get("name", parts[2] if len(parts) == 4 else "")),
        function=function,
        result=result if result is True or result is None else False,
        comment=_text(value.get("comment", "")),
        changed=bool(value.get("changes")),
        run_num=value.get("__run_num__", 0) if isinstance(value.get("__run_num__"), int) else 0,
    )


def _retcode(value: Any) -> int | None:
    """A retcode as an int; None if it is not one (``"2"`` is read as 2)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+\s*", value):
        return int(value)
    return None


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(_text(item) for item in value)
    return repr(value)


def _headline(text: str) -> str:
    # A formatted exception ends with its most telling line.
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text
