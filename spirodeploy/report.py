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

It stays small as the fleet grows: per minion it keeps the counts, the
durations and the first few failed and changed states (their comments cut
short), never the whole return; of the events it keeps the first
:data:`MAX_EVENTS` and counts the rest.  The full returns stay in Salt's
job cache, under the job ids in :attr:`DeployReport.jids`.
"""


from __future__ import annotations

import re
import time
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

#: A state's comment and name are cut to this many characters.
COMMENT_LIMIT = 300
#: The failed states kept per minion (the first in run order); the rest are counted.
MAX_FAILED_STATES = 10
#: The changed states kept per minion (the first in run order); the rest are counted.
MAX_CHANGED_STATES = 5
#: Render errors kept per minion, and the length each is cut to.
MAX_ERRORS = 10
ERROR_LIMIT = 2000
#: Events kept (with ``highstate-update``'s ``result`` left out); the rest are counted.
MAX_EVENTS = 100
#: A kept event's ``msg`` is cut to this many characters, its lists to this many items.
EVENT_TEXT_LIMIT = 1000
EVENT_LIST_LIMIT = 20
#: What :meth:`MinionResult.to_dict` spends on state details, in bytes (about):
#: a minion that succeeded stays under 2 KB however many states changed.
CHANGED_BUDGET = 1200
FAILED_BUDGET = 6000


@dataclass(slots=True)
class StateResult:
    """One state of a minion's highstate, reduced to what a person reads."""

    id: str
    name: str
    function: str
    result: bool | None
    #: Cut to :data:`COMMENT_LIMIT` characters.
    comment: str
    changed: bool
    run_num: int
    #: From the state's ``duration`` (milliseconds), if Salt gave one.
    duration_ms: float | None = None
    #: The SLS file the state came from (``__sls__``).
    sls: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "function": self.function,
            "result": self.result,
            "comment": self.comment,
            "changed": self.changed,
            "duration_ms": self.duration_ms,
            "sls": self.sls,
        }


@dataclass(slots=True)
class MinionResult:
    """What one minion reported for its highstate: a bounded summary.

    ``counts`` covers every state; ``failed_states`` and ``changed_states``
    hold only the first few (in run order), ``failed_omitted`` and
    ``changed_omitted`` say how many more there were.
    """

    minion: str
    retcode: int | None = None
    #: The minion did not answer (``failed: true`` from the master).
    no_response: bool = False
    #: Render or compile errors (``ret`` given as a list or a string), bounded.
    errors: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "changed": 0, "failed": 0})
    failed_states: list[StateResult] = field(default_factory=list)
    changed_states: list[StateResult] = field(default_factory=list)
    failed_omitted: int = 0
    changed_omitted: int = 0
    errors_omitted: int = 0
    #: Sum of every state's duration, and of those that succeeded unchanged (ms).
    duration_ms: float | None = None
    unchanged_duration_ms: float | None = None
    #: Seconds since the deploy started when this minion's update arrived.
    reported_at: float | None = None
    #: The highstate job's id, if the return named it.
    jid: str | None = None

    @classmethod
    def from_event(cls, minion: str, result: Any) -> MinionResult:
        """Build from the ``result`` of a ``highstate-update`` event."""
        report = cls(minion=minion)
        if not isinstance(result, dict):
            report.add_error(_text(result))
            return report
        jid = result.get("jid")
        if isinstance(jid, (str, int)) and not isinstance(jid, bool):
            report.jid = _cut(str(jid), 100)
        if result.get("failed"):
            report.no_response = True
            return report
        retcode = result.get("retcode")
        if retcode is not None:
            report.retcode = _retcode(retcode)
            if report.retcode is None:
                report.add_error(f"the minion returned a retcode that is not a number: "
                                 f"{_cut(_text(retcode), 200)}")
        ret = result.get("ret")
        if isinstance(ret, dict) and ret:
            report._fold_states(ret)
        elif isinstance(ret, list) and ret:
            for item in ret:
                report.add_error(_text(item))
        elif isinstance(ret, str) and ret:
            report.add_error(ret)
        elif "ret" not in result or ret in (None, {}, [], ""):
            # Nothing ran, or nothing says it did: not a success.
            report.add_error("the minion returned no state results")
        else:
            report.add_error(_text(ret))
        return report

    def _fold_states(self, ret: dict[Any, Any]) -> None:
        # One pass over every state for the counts and durations; only the
        # failed and changed ones are kept, and of those only the first few.
        ok = 0
        total = unchanged = 0.0
        timed = False
        failed: list[tuple[int, str, Any, Any]] = []
        changed: list[tuple[int, str, Any, Any]] = []
        # This loop runs for every state of every minion (500,000 for a
        # 10,000-minion fleet): the common case, a float duration, is read
        # inline, and the run order is looked up only for kept states.
        for key, value in ret.items():
            if type(value) is not dict:
                value = (value if isinstance(value, dict)
                         else {"result": False, "comment": _text(value)})
            result = value.get("result", False)
            duration = value.get("duration")
            if type(duration) is not float or not duration >= 0:  # nan fails ">="
                duration = _duration(duration)
            if duration is not None:
                total += duration
                timed = True
            # Strict: "True", "False", 1 or a missing result are not a success.
            if result is not True and result is not None:
                failed.append((_run_num(value), _state_id(key, value), key, value))
            elif value.get("changes"):
                changed.append((_run_num(value), _state_id(key, value), key, value))
            else:
                ok += 1
                if duration is not None:
                    unchanged += duration
        self.counts = {"ok": ok, "changed": len(changed), "failed": len(failed)}
        if timed:
            self.duration_ms = round(total, 3)
            self.unchanged_duration_ms = round(unchanged, 3)
        failed.sort(key=_run_order)
        changed.sort(key=_run_order)
        self.failed_states = [_state_result(k, v) for _, _, k, v in failed[:MAX_FAILED_STATES]]
        self.failed_omitted = max(0, len(failed) - MAX_FAILED_STATES)
        self.changed_states = [_state_result(k, v)
                               for _, _, k, v in changed[:MAX_CHANGED_STATES]]
        self.changed_omitted = max(0, len(changed) - MAX_CHANGED_STATES)

    def add_error(self, text: str) -> None:
        """Record a render or compile error (the first few, each cut short)."""
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(_cut(text, ERROR_LIMIT))
        else:
            self.errors_omitted += 1

    @property
    def state_count(self) -> int:
        return self.counts["ok"] + self.counts["changed"] + self.counts["failed"]

    @property
    def succeeded(self) -> bool:
        return (
            not self.no_response
            and not self.errors
            and self.state_count > 0
            and not self.counts["failed"]
            and not self.failed_states
            and not self.retcode
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data, a bounded size: under 2 KB for a minion that succeeded."""
        failed, failed_left = _fit(self.failed_states, FAILED_BUDGET)
        changed, changed_left = _fit(self.changed_states, CHANGED_BUDGET)
        return {
            "minion": self.minion,
            "succeeded": self.succeeded,
            "no_response": self.no_response,
            "retcode": self.retcode,
            "jid": self.jid,
            "counts": dict(self.counts),
            "duration_ms": self.duration_ms,
            "unchanged_duration_ms": self.unchanged_duration_ms,
            "reported_at": self.reported_at,
            "errors": list(self.errors),
            "errors_omitted": self.errors_omitted,
            "failed": failed,
            "failed_omitted": self.failed_omitted + failed_left,
            "changed": changed,
            "changed_omitted": self.changed_omitted + changed_left,
        }


@dataclass
class DeployReport:
    """Everything known about one deploy, built up event by event.

    Feed events with :meth:`add`; the properties answer the questions a
    person or a pipeline asks: did it deploy, which minions reported, which
    failed, which never answered, and did it all succeed.  Its size grows
    with the failures, not with the fleet: see the module's notes.
    """

    project: str
    deployment: str
    highstate: bool = True
    #: ``{"sha256", "size", "file_count"}`` of the uploaded bundle, if known.
    bundle: dict[str, Any] | None = None
    #: The first :data:`MAX_EVENTS` events, trimmed (no per-minion ``result``).
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
    #: How many events of each name arrived, and how many were not kept.
    event_counts: dict[str, int] = field(default_factory=dict)
    events_dropped: int = 0
    #: The highstate job ids seen, in order: look the full returns up in the job cache.
    jids: list[str] = field(default_factory=list)
    #: When the report was started (epoch seconds).
    started_at: float = field(default_factory=time.time)
    _clock: float = field(default_factory=time.monotonic, repr=False, compare=False)
    _expected: set[str] = field(default_factory=set, repr=False, compare=False)
    _updates: int = field(default=0, repr=False, compare=False)
    _failed: tuple[Any, list[str]] = field(default=(None, []), repr=False, compare=False)

    def add(self, event: str, data: dict[str, Any]) -> None:
        """Fold one event into the report."""
        self.event_counts[event] = self.event_counts.get(event, 0) + 1
        if len(self.events) < MAX_EVENTS:
            self.events.append((event, _kept_event(event, data)))
        else:
            self.events_dropped += 1
        if not isinstance(data, dict):
            return
        if event == "highstate-start":
            # Only ever add: a second start must not forget a minion that was
            # expected and never reported.
            minions = data.get("minions")
            if isinstance(minions, str):
                minions = [minions]
            for minion in minions if isinstance(minions, list) else []:
                minion = str(minion)
                if minion not in self._expected:
                    self._expected.add(minion)
                    self.minions_expected.append(minion)
        elif event == "highstate-update":
            minion = str(data.get("minion"))
            result = MinionResult.from_event(minion, data.get("result"))
            result.reported_at = round(self.elapsed, 3)
            if result.jid is not None and result.jid not in self.jids:
                self.jids.append(result.jid)
            self._updates += 1
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
    def elapsed(self) -> float:
        """Seconds since the report was started."""
        return time.monotonic() - self._clock

    @property
    def deployed(self) -> bool:
        """The server started deploying the bundle."""
        return self.event_counts.get("deploy-bundle", 0) > 0

    @property
    def messages(self) -> list[str]:
        return [str(data.get("msg", "")) for _, data in self.events if isinstance(data, dict)]

    @property
    def reported(self) -> list[str]:
        return sorted(self.minions)

    @property
    def failed(self) -> list[str]:
        # Asked often (per minion, by callers): worked out once per update.
        key = (self._updates, id(self.minions), len(self.minions))
        if self._failed[0] != key:
            self._failed = (key, sorted(name for name, minion in self.minions.items()
                                        if not minion.succeeded))
        return list(self._failed[1])

    @property
    def unreported(self) -> list[str]:
        return sorted(self._expected_set() - set(self.minions))

    def _expected_set(self) -> set[str]:
        # minions_expected is public and may have been filled in directly.
        if len(self._expected) != len(self.minions_expected):
            self._expected = set(self.minions_expected)
        return self._expected

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
        """One line saying how the deploy went (long minion lists are shortened)."""
        target = f"{self.project}/{self.deployment}"
        if self.error is not None:
            return f"Deploy of {target} did not complete: {self.error}"
        if self.exception is not None:
            return f"Deploy of {target} failed on the server: {_headline(self.exception)}"
        if not self.deployed:
            return (f"Deploy of {target} did not complete: the server never said it was "
                    "deploying the bundle")
        if not self.highstate:
            if self.finished:
                return f"Deployed {target} (no highstate)"
            return f"Deploy of {target} did not complete"
        parts = [f"{len(self.minions)} of {len(self.minions_expected)} minions reported"]
        failed = self.failed
        if failed:
            parts.append("failed: " + shorten_names(failed))
        unreported = self.unreported
        if unreported:
            parts.append("never reported: " + shorten_names(unreported))
        if not self.finished:
            parts.append("the server never said the highstate finished")
        return f"Deployed {target}: " + "; ".join(parts)

    def to_dict(self, results: bool = True) -> dict[str, Any]:
        """The report as plain JSON-able data (the Salt modules return this).

        Per minion a bounded summary (:meth:`MinionResult.to_dict`); of the
        events the kept ones, without the minions' returns.  ``results=False``
        leaves the per-minion summaries out (``results`` is ``{}``), for a
        caller that writes them one at a time.
        """
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
            "started_at": self.started_at,
            "events": [{"event": event, "data": data} for event, data in self.events],
            "events_dropped": self.events_dropped,
            "event_counts": dict(self.event_counts),
            "jids": list(self.jids),
            "minions": {
                "expected": list(self.minions_expected),
                "reported": self.reported,
                "failed": self.failed,
                "unreported": self.unreported,
            },
            "results": ({name: minion.to_dict() for name, minion in sorted(self.minions.items())}
                        if results else {}),
            "exception": self.exception,
            "error": self.error,
            "server_has_bundle": self.server_has_bundle,
        }


def shorten_names(names: list[str], limit: int = 10) -> str:
    """``a, b, c`` or, past ``limit`` names, ``a, b, … (+N)``."""
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f", … (+{len(names) - limit})"


def _kept_event(event: str, data: Any) -> dict[str, Any]:
    # What the report keeps of an event: never a minion's return, never a
    # long message or list.
    if not isinstance(data, dict):
        return {"msg": _cut(_text(data), EVENT_TEXT_LIMIT)}
    kept: dict[str, Any] = {}
    for key, value in data.items():
        if event == "highstate-update" and key == "result":
            continue
        if isinstance(value, str):
            value = _cut(value, EVENT_TEXT_LIMIT if key != "msg" or event != "exception"
                         else 20 * EVENT_TEXT_LIMIT)
        elif isinstance(value, list) and len(value) > EVENT_LIST_LIMIT:
            kept[f"{key}_omitted"] = len(value) - EVENT_LIST_LIMIT
            value = value[:EVENT_LIST_LIMIT]
        elif isinstance(value, dict) and len(_text(value)) > EVENT_TEXT_LIMIT:
            value = _cut(_text(value), EVENT_TEXT_LIMIT)
        kept[key] = value
    return kept


def _fit(states: list[StateResult], budget: int) -> tuple[list[dict[str, Any]], int]:
    """The states' dicts that fit in about ``budget`` bytes, and how many did not."""
    shown = []
    for state in states:
        size = (len(state.id) + len(state.name) + len(state.function) + len(state.comment)
                + len(state.sls or "") + 120)
        if size > budget:
            break
        budget -= size
        shown.append(state.to_dict())
    return shown, len(states) - len(shown)


def _state_id(key: Any, value: dict[str, Any]) -> str:
    # Salt's state keys look like "file_|-hello_|-/tmp/x_|-managed".
    state_id = value.get("__id__")
    if state_id is not None:
        return str(state_id)
    parts = str(key).split("_|-")
    return parts[1] if len(parts) == 4 else str(key)


def _run_num(value: dict[str, Any]) -> int:
    run_num = value.get("__run_num__")
    return run_num if type(run_num) is int else 0


def _run_order(item: tuple[int, str, Any, Any]) -> tuple[int, str]:
    return item[0], item[1]


def _state_result(key: Any, value: dict[str, Any]) -> StateResult:
    parts = str(key).split("_|-")
    function = f"{parts[0]}.{parts[3]}" if len(parts) == 4 else ""
    result = value.get("result", False)
    sls = value.get("__sls__")
    return StateResult(
        id=_cut(_state_id(key, value), COMMENT_LIMIT),
        name=_cut(str(value.get("name", parts[2] if len(parts) == 4 else "")), COMMENT_LIMIT),
        function=_cut(function, 200),
        result=result if result is True or result is None else False,
        comment=_cut(_text(value.get("comment", "")), COMMENT_LIMIT),
        changed=bool(value.get("changes")),
        run_num=_run_num(value),
        duration_ms=_duration(value.get("duration")),
        sls=None if sls is None else _cut(str(sls), 200),
    )


_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?)\s*(?:ms)?\s*")


def _duration(value: Any) -> float | None:
    """A state's duration in ms: Salt gives a number, old versions ``"12.3 ms"``."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value) if value >= 0 and value == value else None
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        return float(match.group(1)) if match else None
    return None


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"… (+{len(text) - limit} chars)"


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
