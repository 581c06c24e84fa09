"""Staged rollouts: highstate a deployment's minions canaries first, then in batches.

SpiroFS highstates every affected minion at once.  A staged rollout
deploys with the highstate off and then highstates the minions itself, a
batch at a time, stopping at the first batch with a failure.  This module
is the plain-Python part (no Salt): it reads the options, works out the
plan, folds each batch's returns into per-minion outcomes and decides when
to stop.  The Salt side (the ``spirodeploy`` runner) feeds it: the
``state.show_top`` returns, and a ``run_batch`` callable that highstates
one batch through Salt's batch machinery and yields the returns.

Options:

* ``batch``: how many minions to highstate at once, ``N`` (a count) or
  ``N%`` (a share of the affected minions, at least one minion; Salt's own
  rounding: below one minion is one, otherwise rounded down);
* ``canary``: highstated first, on their own: a count (``2``: the first two
  affected minions by id) or minion ids and globs (``web1,web2``,
  ``web*``), matched against the affected minions;
* ``on_batch_failure``: ``stop`` or ``rollback`` (:func:`failure_action`,
  which also reads the deploy's ``rollback_on_failure`` switch).

Outcomes per minion: ``done`` (highstate succeeded), ``failed`` (a failed
state, a render error, a retcode other than 0, or no answer;
``no_response`` names those that did not answer) and ``never_started``
(the rollout stopped before their batch).
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ExitCode, UsageError
from .report import MinionResult

#: What a batch yields per minion: its id and Salt's return for it.
MinionReturn = tuple[str, Any]
#: Highstates the given minions and yields their returns (the Salt side).
BatchRunner = Callable[[list[str]], Iterable[MinionReturn]]

_COUNT = re.compile(r"-?[0-9]+")
_PERCENT = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*%")


class RolloutError(UsageError):
    """A staged rollout cannot start: bad ``batch`` or ``canary``, nobody to highstate."""


# --- options -------------------------------------------------------------------

@dataclass(frozen=True)
class BatchSize:
    """A parsed ``batch`` option: a count, or a percentage of the fleet."""

    value: float
    percent: bool = False

    def size(self, total: int) -> int:
        """Minions per batch for a fleet of ``total`` minions (at least 1)."""
        if not self.percent:
            return int(self.value)
        share = self.value / 100.0 * total
        # Salt's batch rounding (salt.cli.batch.Batch.get_bnum).
        return max(1, math.ceil(share) if share < 1 else int(share))

    def __str__(self) -> str:
        if self.percent:
            return f"{self.value:g}%"
        return str(int(self.value))


def parse_batch(value: Any) -> BatchSize | None:
    """Read ``batch``: ``None`` (not staged), a count ``N`` >= 1, or ``N%`` with 0 < N <= 100.

    Raises :class:`RolloutError` for anything else (``0``, ``-1``,
    ``200%``, ``abc``).
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise RolloutError(f"batch must be a number of minions or a percentage, not {value!r}")
    text = str(value).strip()
    if isinstance(value, float):
        if not value.is_integer():
            raise RolloutError(f"batch must be a whole number of minions, not {value!r}")
        text = str(int(value))
    if _COUNT.fullmatch(text):
        count = int(text)
        if count < 1:
            raise RolloutError(f"batch must be at least 1 minion, not {value!r}")
        return BatchSize(count)
    match = _PERCENT.fullmatch(text)
    if match:
        percent = float(match.group(1))
        if not 0 < percent <= 100:
            raise RolloutError(f"batch percentage must be more than 0% and at most 100%, "
                               f"not {value!r}")
        return BatchSize(percent, percent=True)
    raise RolloutError(f"batch must be a number of minions (10) or a percentage (10%), "
                       f"not {value!r}")


@dataclass(frozen=True)
class Canary:
    """A parsed ``canary`` option: a count, or minion ids and globs."""

    count: int | None = None
    patterns: tuple[str, ...] = ()

    def select(self, minions: Sequence[str]) -> list[str]:
        """The canaries among ``minions`` (sorted ids), in order."""
        if self.count is not None:
            return list(minions[: self.count])
        return [m for m in minions if any(fnmatch.fnmatchcase(m, p) for p in self.patterns)]

    def __str__(self) -> str:
        return str(self.count) if self.count is not None else ",".join(self.patterns)


def parse_canary(value: Any) -> Canary | None:
    """Read ``canary``: ``None``, a count >= 1, or minion ids/globs (list or comma-separated).

    A number is a count; ``0`` or a negative number is an error.
    """
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, bool):
        raise RolloutError(f"canary must be a number of minions or minion ids, not {value!r}")
    if isinstance(value, int):
        value = str(value)
    if isinstance(value, str):
        text = value.strip()
        if _COUNT.fullmatch(text):
            count = int(text)
            if count < 1:
                raise RolloutError(f"canary must be at least 1 minion, not {value!r}")
            return Canary(count=count)
        items = [item.strip() for item in text.split(",")]
    elif isinstance(value, (list, tuple)):
        items = [str(item).strip() for item in value]
    else:
        raise RolloutError(f"canary must be a number of minions or minion ids, not {value!r}")
    patterns = tuple(item for item in items if item)
    if not patterns:
        raise RolloutError(f"canary names no minion: {value!r}")
    return Canary(patterns=patterns)


#: What a staged rollout does when a batch fails (``on_batch_failure``).
STOP, ROLLBACK = "stop", "rollback"


def failure_action(on_batch_failure: Any = None, rollback_on_failure: Any = None) -> str:
    """What to do when a batch fails: :data:`STOP` or :data:`ROLLBACK`.

    ``on_batch_failure`` is ``stop`` or ``rollback`` (any case; None: not
    given).  ``rollback_on_failure`` is the deploy's own yes/no switch (None:
    not given); in a staged rollout it means ``on_batch_failure=rollback``,
    so a rollout that fails is rolled back whichever of the two asked for it.
    The two must agree when both are given: ``on_batch_failure=stop`` with
    ``rollback_on_failure=True`` (or ``rollback`` with ``False``) raises
    :class:`RolloutError`, as does a value that is neither.  Nothing is
    ignored: a Salt admin who asked for a rollback gets one or an error.
    """
    from .saltsupport import to_bool

    action = None
    if on_batch_failure is not None and str(on_batch_failure).strip() != "":
        action = str(on_batch_failure).strip().lower()
        if action not in (STOP, ROLLBACK):
            raise RolloutError(f"on_batch_failure must be stop or rollback, "
                               f"not {on_batch_failure!r}")
    if rollback_on_failure is None or str(rollback_on_failure).strip() == "":
        return action or STOP
    wanted = to_bool(rollback_on_failure, "rollback_on_failure")
    asked = ROLLBACK if wanted else STOP
    if action is not None and action != asked:
        raise RolloutError(f"on_batch_failure={action} and rollback_on_failure={wanted} "
                           "contradict each other; give one (a failed batch is rolled back "
                           "with on_batch_failure=rollback or rollback_on_failure=True)")
    return asked


@dataclass(frozen=True)
class RolloutOptions:
    """The staged-rollout options of a deploy; ``staged`` is False when none were given."""

    batch: BatchSize | None = None
    canary: Canary | None = None

    @property
    def staged(self) -> bool:
        return self.batch is not None or self.canary is not None


def parse_options(batch: Any = None, canary: Any = None) -> RolloutOptions:
    """Both options at once (raises :class:`RolloutError` on the first bad one)."""
    return RolloutOptions(batch=parse_batch(batch), canary=parse_canary(canary))


# --- who is affected, and the plan ----------------------------------------------

def affected_minions(tops: Mapping[str, Any], saltenv: str) -> list[str]:
    """Minions whose ``state.show_top`` return names ``saltenv``, sorted.

    That is how SpiroFS picks the minions to highstate.  A minion whose
    return is not a mapping (it did not answer, its top did not render)
    is not affected, as for the server.
    """
    return sorted(str(minion) for minion, envs in tops.items()
                  if isinstance(envs, Mapping) and saltenv in envs)


def check_canary(options: RolloutOptions, minions: Sequence[str], what: str) -> None:
    """Raise unless the canary option picks at least one of ``minions``.

    ``what`` says what ``minions`` are, for the message.
    """
    canary = options.canary
    if canary is None or canary.count is not None:
        return
    if not canary.select(sorted(minions)):
        shown = ", ".join(sorted(minions)[:10]) or "none"
        raise RolloutError(f"canary {canary} matches none of the {what} ({shown})")


def plan(minions: Iterable[str], options: RolloutOptions) -> list[list[str]]:
    """The batches, in order: the canaries (if any), then the rest by ``batch``.

    Without ``batch`` the rest is one batch.  Raises :class:`RolloutError`
    when there is nobody to highstate or the canary matches nobody.
    """
    minions = sorted(set(minions))
    if not minions:
        raise RolloutError("no minion's top file uses this deployment: nobody to highstate")
    stages: list[list[str]] = []
    rest = minions
    if options.canary is not None:
        check_canary(options, minions, "affected minions")
        canaries = options.canary.select(minions)
        stages.append(canaries)
        chosen = set(canaries)
        rest = [m for m in minions if m not in chosen]
    size = options.batch.size(len(minions)) if options.batch is not None else len(rest)
    for start in range(0, len(rest), max(1, size)):
        stages.append(rest[start:start + size])
    return stages


# --- folding a batch's returns -----------------------------------------------

def minion_return(minion: str, value: Any) -> tuple[MinionResult, str | None]:
    """One minion's batch return as a :class:`MinionResult`, and the job id.

    ``value`` is what ``LocalClient.cmd_batch(..., raw=True)`` yields (an
    event envelope ``{"data": {"id", "return", "retcode", "jid"}, "tag"}``),
    or a plain ``{"ret", "retcode"}`` as ``cmd_iter`` gives.  Salt reports a
    minion that timed out as an empty return with retcode 0, and a
    highstate never returns an empty dict, so that is "no response".
    """
    data = value.get("data") if isinstance(value, Mapping) and "data" in value else value
    if not isinstance(data, Mapping):
        return MinionResult.from_event(minion, data), None
    if data.get("failed") is True:
        return MinionResult.from_event(minion, {"failed": True}), None
    ret = data.get("return", data.get("ret"))
    jid = data.get("jid")
    if ret == {} or ret is None:
        return MinionResult(minion=minion, no_response=True), jid
    retcode = data.get("retcode", 0)
    if isinstance(retcode, Mapping):
        retcode = max(retcode.values(), default=0)
    return MinionResult.from_event(minion, {"ret": ret, "retcode": retcode}), jid


def fold_batch(members: Sequence[str], returns: Iterable[MinionReturn],
               on_minion: Callable[[MinionResult], None] | None = None,
               missing: Callable[[str], MinionResult] | None = None,
               ) -> tuple[dict[str, MinionResult], list[str]]:
    """Every member's result, and the job ids seen.

    A member with no return did not answer (or gets ``missing(minion)``).
    Returns from minions outside the batch are ignored (Salt would not send
    them; a stray one must not count).
    """
    wanted = set(members)
    results: dict[str, MinionResult] = {}
    jids: list[str] = []
    for minion, value in returns:
        minion = str(minion)
        if minion not in wanted or minion in results:
            continue
        result, jid = minion_return(minion, value)
        results[minion] = result
        if jid and jid not in jids:
            jids.append(str(jid))
        if on_minion is not None:
            on_minion(result)
    for minion in members:
        if minion not in results:
            results[minion] = (missing(minion) if missing is not None
                               else MinionResult(minion=minion, no_response=True))
            if on_minion is not None:
                on_minion(results[minion])
    return results, jids


def batch_failed(results: Mapping[str, MinionResult]) -> bool:
    """A batch fails when any of its minions did not succeed (state, retcode, no answer)."""
    return any(not result.succeeded for result in results.values())


# --- the rollout -----------------------------------------------------------------

@dataclass
class RolloutReport:
    """What a staged rollout did: the plan, each minion's outcome, where it stopped."""

    project: str
    deployment: str
    batches: list[list[str]]
    canary: bool = False
    results: dict[str, MinionResult] = field(default_factory=dict)
    #: Index of the batch that failed (the rollout stopped after it), if any.
    stopped_at: int | None = None
    jids: list[str] = field(default_factory=list)
    error: str | None = None
    #: What the ``on_failure`` hook returned (a rollback's outcome), if it ran.
    on_failure: Any = None

    @property
    def minions(self) -> list[str]:
        return [minion for batch in self.batches for minion in batch]

    @property
    def done(self) -> list[str]:
        return sorted(m for m, r in self.results.items() if r.succeeded)

    @property
    def failed(self) -> list[str]:
        return sorted(m for m, r in self.results.items() if not r.succeeded)

    @property
    def no_response(self) -> list[str]:
        return sorted(m for m, r in self.results.items() if r.no_response)

    @property
    def never_started(self) -> list[str]:
        return sorted(m for m in self.minions if m not in self.results)

    @property
    def succeeded(self) -> bool:
        return self.error is None and not self.failed and not self.never_started

    @property
    def exit_code(self) -> int:
        return int(ExitCode.OK if self.succeeded else ExitCode.DEPLOY_FAILED)

    def batch_name(self, index: int) -> str:
        """``canary batch`` or ``batch N of M`` (counting the canary batch as batch 1)."""
        if self.canary and index == 0:
            return f"canary batch (1 of {len(self.batches)})"
        return f"batch {index + 1} of {len(self.batches)}"

    def summary(self) -> str:
        target = f"{self.project}/{self.deployment}"
        parts = [f"{len(self.done)} of {len(self.minions)} minions done"]
        if self.failed:
            parts.append("failed: " + ", ".join(self.failed))
        if self.never_started:
            parts.append("never started: " + ", ".join(self.never_started))
        if self.error is not None:
            return f"Rollout of {target} stopped: {self.error}; " + "; ".join(parts)
        if self.stopped_at is not None:
            return (f"Rollout of {target} stopped after {self.batch_name(self.stopped_at)} "
                    "failed: " + "; ".join(parts))
        return f"Rolled out {target}: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "result": self.succeeded,
            "exit_code": self.exit_code,
            "summary": self.summary(),
            "project": self.project,
            "deployment": self.deployment,
            "batches": [{"minions": list(batch), "canary": self.canary and index == 0,
                         "started": any(m in self.results for m in batch)}
                        for index, batch in enumerate(self.batches)],
            "stopped_at_batch": None if self.stopped_at is None else self.stopped_at + 1,
            "minions": {"done": self.done, "failed": self.failed,
                        "no_response": self.no_response,
                        "never_started": self.never_started},
            "results": {name: result.to_dict() for name, result in sorted(self.results.items())},
            "jids": list(self.jids),
            "error": self.error,
            "on_failure": self.on_failure,
        }


def run_rollout(
    project: str,
    deployment: str,
    batches: list[list[str]],
    run_batch: BatchRunner,
    *,
    canary: bool = False,
    on_batch: Callable[[int, list[str], RolloutReport], None] | None = None,
    on_minion: Callable[[MinionResult], None] | None = None,
    on_failure: Callable[[RolloutReport], Any] | None = None,
) -> RolloutReport:
    """Highstate ``batches`` one after another with ``run_batch``; stop at the first failure.

    ``on_batch(index, minions, report)`` runs before each batch starts and
    ``on_minion(result)`` as each minion's result is known.  When a batch
    fails, no later batch starts, and ``on_failure(report)`` (a rollback)
    runs; what it returns is kept in ``report.on_failure``.  An error from
    ``run_batch`` (Salt could not publish) also stops the rollout: that
    batch's minions without a return are reported failed with the error.
    """
    report = RolloutReport(project=project, deployment=deployment, batches=batches,
                           canary=canary)
    for index, members in enumerate(batches):
        if on_batch is not None:
            on_batch(index, members, report)

        def returns(members: list[str] = members, index: int = index) -> Iterable[MinionReturn]:
            try:
                yield from run_batch(list(members))
            except Exception as exc:  # noqa: BLE001  # pylint: disable=broad-except
                # Whatever Salt raised, the batches before it must still be reported.
                report.error = f"{report.batch_name(index)}: {exc}"

        def missing(minion: str) -> MinionResult:
            if report.error is not None:
                return MinionResult(minion=minion, errors=[report.error])
            return MinionResult(minion=minion, no_response=True)

        results, jids = fold_batch(members, returns(), on_minion, missing=missing)
        report.results.update(results)
        report.jids.extend(j for j in jids if j not in report.jids)
        if report.error is not None or batch_failed(results):
            report.stopped_at = index
            break
    if report.stopped_at is not None and on_failure is not None:
        report.on_failure = on_failure(report)
    return report
