"""The deploy report as the report files read it (``--junit``, ``--html``).

One place decides what each minion's outcome is called and which text of the
server may reach a file, so the JUnit and the HTML report never disagree:

* a minion's **status** is ``ok``, ``failed`` (a state failed, or a non-zero
  retcode), ``error`` (render or compile errors), ``no-response`` (the master
  says it did not answer) or ``unreported`` (expected by ``highstate-start``,
  never reported);
* every piece of server and minion text goes through :func:`safe_text`: the
  token is masked, and characters that XML 1.0 cannot carry or that a reader
  would not see (C0/C1 controls other than tab and newline, bidirectional
  overrides, lone surrogates, U+FFFE/U+FFFF) are shown as ``\\x1b`` or
  ``\\u202e``.  Escaping for the format itself (XML, HTML) is the writer's job.

It reads the report through ``getattr`` with defaults, so it works with any
object shaped like :class:`spirodeploy.report.DeployReport` (for instance
one that does not time its states).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .sanitize import scrub

STATUSES = ("ok", "failed", "error", "no-response", "unreported")

# What XML 1.0 cannot hold (except tab, newline, carriage return), plus what
# a reader cannot see but which changes what they read.
_UNSAFE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
    "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029"
    "\ud800-\udfff\ufeff\ufffe\uffff]"
)


def safe_text(value: Any, secrets: Iterable[str] = ()) -> str:
    """``value`` as text fit for a report file: token masked, unsafe characters visible.

    Newlines and tabs stay (state comments are often several lines); a
    carriage return stays only as part of ``\\r\\n``, which becomes ``\\n``.
    """
    text = value if isinstance(value, str) else str(value)
    text = scrub(text, secrets).replace("\r\n", "\n").replace("\r", "\\r")
    return _UNSAFE.sub(_visible, text)


def _visible(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


@dataclass
class StateView:
    """One failed or changed state."""

    id: str
    name: str
    function: str
    sls: str
    comment: str
    duration_ms: float | None
    changed: bool
    failed: bool


@dataclass
class MinionView:
    """One minion: its status, counts, the states worth showing, its timings."""

    minion: str
    status: str
    #: Why the minion is not ``ok``, in one line ("" when it is).
    reason: str
    counts: dict[str, int]
    failed_states: list[StateView] = field(default_factory=list)
    changed_states: list[StateView] = field(default_factory=list)
    #: Failed and changed states the report counted but did not keep.
    failed_omitted: int = 0
    changed_omitted: int = 0
    errors: list[str] = field(default_factory=list)
    retcode: int | None = None
    duration_ms: float | None = None
    unchanged_duration_ms: float | None = None
    #: Seconds after the deploy started; ``None`` if the report does not say.
    reported_at: float | None = None
    #: Position in the order the minions reported (0 first); ``None`` if never.
    order: int | None = None
    jid: str = ""


@dataclass
class ReportView:
    """The whole deploy, ready to be written."""

    project: str
    deployment: str
    summary: str
    exit_code: int
    succeeded: bool
    deployed: bool
    finished: bool
    highstate: bool
    #: ``sha256``, ``digest``, ``gitcommit``, ``size``, ``file_count`` ... as text; known ones only.
    bundle: dict[str, str]
    minions: list[MinionView]
    expected: int
    exception: str
    error: str
    started_at: float | None
    messages: list[str]

    @property
    def target(self) -> str:
        return f"{self.project}/{self.deployment}"

    def count(self, status: str) -> int:
        return sum(1 for minion in self.minions if minion.status == status)

    def state_totals(self) -> dict[str, int]:
        totals = {"ok": 0, "changed": 0, "failed": 0}
        for minion in self.minions:
            for key in totals:
                totals[key] += minion.counts.get(key, 0)
        return totals


#: Bundle facts shown, in this order (the rest of ``report.bundle`` is not).
BUNDLE_KEYS = ("sha256", "digest", "gitcommit", "size", "file_count", "compression")


def view(report: Any, secrets: Iterable[str] = ()) -> ReportView:
    """Read ``report`` (a :class:`~spirodeploy.report.DeployReport`) for the writers."""
    secrets = [secret for secret in secrets if secret]

    def text(value: Any) -> str:
        return "" if value is None else safe_text(value, secrets)

    minions: list[MinionView] = []
    for order, (name, minion) in enumerate(getattr(report, "minions", {}).items()):
        minions.append(_minion_view(name, minion, order, text))
    reported = {minion.minion for minion in minions}
    for name in getattr(report, "minions_expected", []):
        if name not in reported:
            reported.add(name)
            minions.append(MinionView(minion=text(name), status="unreported",
                                      reason="the minion never reported", counts=_zero()))
    minions.sort(key=lambda minion: minion.minion)

    bundle = getattr(report, "bundle", None) or {}
    return ReportView(
        project=text(report.project),
        deployment=text(report.deployment),
        summary=text(report.summary()),
        exit_code=int(report.exit_code),
        succeeded=bool(report.succeeded),
        deployed=bool(getattr(report, "deployed", False)),
        finished=bool(getattr(report, "finished", False)),
        highstate=bool(getattr(report, "highstate", True)),
        bundle={key: text(bundle[key]) for key in BUNDLE_KEYS
                if isinstance(bundle, dict) and bundle.get(key) not in (None, "")},
        minions=minions,
        expected=len(getattr(report, "minions_expected", [])),
        exception=text(getattr(report, "exception", None)),
        error=text(getattr(report, "error", None)),
        started_at=_number(getattr(report, "started_at", None)),
        messages=[text(message) for message in getattr(report, "messages", [])],
    )


def _minion_view(name: str, minion: Any, order: int, text) -> MinionView:
    counts = dict(getattr(minion, "counts", None) or _zero())
    errors = [text(error) for error in getattr(minion, "errors", [])]
    omitted_errors = getattr(minion, "errors_omitted", 0)
    if omitted_errors:
        errors.append(f"... and {omitted_errors} more errors")
    failed = [_state_view(state, text, failed=True) for state in getattr(minion, "failed_states", [])]
    changed = [_state_view(state, text, failed=False)
               for state in getattr(minion, "changed_states", [])]
    retcode = getattr(minion, "retcode", None)
    succeeded = getattr(minion, "succeeded", None)
    if getattr(minion, "no_response", False):
        status, reason = "no-response", "the minion did not answer"
    elif errors:
        status, reason = "error", errors[0].splitlines()[0] if errors[0] else "render errors"
    elif counts.get("failed") or failed:
        number = max(counts.get("failed", 0), len(failed))
        status, reason = "failed", f"{number} state{'s' if number != 1 else ''} failed"
    elif retcode:
        status, reason = "failed", f"the highstate returned retcode {retcode}"
    elif succeeded is False:
        status, reason = "failed", "the report does not count this minion as a success"
    else:
        status, reason = "ok", ""
    return MinionView(
        minion=text(name), status=status, reason=reason, counts=counts,
        failed_states=failed, changed_states=changed,
        failed_omitted=max(getattr(minion, "failed_omitted", 0),
                           counts.get("failed", 0) - len(failed), 0),
        changed_omitted=max(getattr(minion, "changed_omitted", 0),
                            counts.get("changed", 0) - len(changed), 0),
        errors=errors, retcode=retcode if isinstance(retcode, int) else None,
        duration_ms=_number(getattr(minion, "duration_ms", None)),
        unchanged_duration_ms=_number(getattr(minion, "unchanged_duration_ms", None)),
        reported_at=_number(getattr(minion, "reported_at", None)),
        order=order, jid=text(getattr(minion, "jid", None)),
    )


def _state_view(state: Any, text, failed: bool) -> StateView:
    return StateView(
        id=text(getattr(state, "id", "")), name=text(getattr(state, "name", "")),
        function=text(getattr(state, "function", "")), sls=text(getattr(state, "sls", None)),
        comment=text(getattr(state, "comment", "")),
        duration_ms=_number(getattr(state, "duration_ms", None)),
        changed=bool(getattr(state, "changed", False)), failed=failed,
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if not math.isnan(value) and value >= 0 else None


def _zero() -> dict[str, int]:
    return {"ok": 0, "changed": 0, "failed": 0}
