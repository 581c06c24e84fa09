"""The CLI's side of the history: its options, the listing, rollback and promotion.

The verbs are options (``--history``, ``--rollback``, ``--promote-from``),
never positional words, so ``spiro-deploy [options] <project> <deployment>``
keeps meaning the same for any project name, ``history`` and ``rollback``
included.  Kept apart from :mod:`spirodeploy.cli` so that module stays about
the deploy; nothing heavy is imported until a flow runs (``--help`` stays
fast).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
from collections.abc import Callable
from typing import Any

from .errors import ExitCode, UsageError
from .sanitize import escape

SERVED_NOTE = ("* = the last deploy recorded as deployed; the CLI cannot see what the server "
               "serves now")


def add_options(parser: argparse.ArgumentParser) -> None:
    """The "history" option group."""
    group = parser.add_argument_group(
        "history", "every deploy is recorded (bundle and outcome) in a history directory; "
                   "these act on <project> <deployment>")
    verbs = group.add_mutually_exclusive_group()
    verbs.add_argument("--history", action="store_true",
                       help="list the recorded deploys, newest first; deploy nothing")
    verbs.add_argument("--rollback", action="store_true",
                       help="deploy a recorded bundle again: by default the last successful "
                            "one before the last deployed (see --to)")
    verbs.add_argument("--promote-from", metavar="DEPLOYMENT",
                       help="deploy the bundle last deployed to <project>/DEPLOYMENT "
                            "(e.g. staging) to <deployment>")
    group.add_argument("--to", metavar="REF",
                       help="with --rollback or --promote-from: the entry to deploy, by number "
                            "(as --history shows) or sha256/digest prefix (6+ hex digits)")
    group.add_argument("--rollback-on-failure", action="store_true",
                       help="if the highstate fails, deploy the previous successful bundle "
                            "again (the exit code still says failed)")
    group.add_argument("--force", action="store_true",
                       help="roll back or promote even to the bundle already deployed, or a "
                            "bundle whose top file targets nothing in <deployment>")
    group.add_argument("--history-dir", metavar="DIR",
                       help="the history directory (overrides SPIRO_HISTORY_DIR; default "
                            "$XDG_STATE_HOME/spiro-deploy or ~/.local/state/spiro-deploy)")
    group.add_argument("--no-history", action="store_true",
                       help="do not record this deploy")
    group.add_argument("--keep", type=int, metavar="N",
                       help="bundles kept per deployment (default 10; older ones are deleted)")
    group.add_argument("--history-max-size", metavar="SIZE",
                       help="cap on all kept bundles together, e.g. 2G (each deployment's "
                            "newest bundle is always kept)")


class HistoryCLI:
    """What the history options ask of one run of the command."""

    def __init__(self, args: argparse.Namespace, printer: Any):
        self.args = args
        self.printer = printer
        self.outcome: Any = None
        self._store: Any = None
        self._check()

    @property
    def action(self) -> bool:
        """A verb that replaces the deploy (list, roll back, promote)."""
        return bool(self.args.history or self.args.rollback or self.args.promote_from)

    def _check(self) -> None:
        args = self.args
        if args.to is not None and not (args.rollback or args.promote_from):
            raise UsageError("--to goes with --rollback or --promote-from")
        if args.force and not (args.rollback or args.promote_from):
            raise UsageError("--force goes with --rollback or --promote-from")
        if args.no_history and (self.action or args.rollback_on_failure):
            raise UsageError("--no-history contradicts --history, --rollback, --promote-from "
                             "and --rollback-on-failure")
        if self.action and (args.dry_run or args.bundle or args.rollback_on_failure):
            raise UsageError("--history, --rollback and --promote-from deploy no new bundle: "
                             "drop --dry-run, --bundle and --rollback-on-failure")
        if args.rollback_on_failure and args.dry_run:
            raise UsageError("--rollback-on-failure deploys: it cannot go with --dry-run")
        if args.keep is not None and args.keep < 0:
            raise UsageError("--keep must be 0 or more")

    def store(self) -> Any:
        if self._store is None:
            from .history import DEFAULT_KEEP, HistoryStore, default_dir

            self._store = HistoryStore(
                self.args.history_dir or default_dir(),
                keep=DEFAULT_KEEP if self.args.keep is None else self.args.keep,
                max_bytes=_size(self.args.history_max_size),
                on_warning=self.printer.warn)
        return self._store

    # --- the verbs -------------------------------------------------------------------

    def list(self) -> int:
        """``--history``: the saltenv's entries, newest first."""
        from .history import HistoryError

        args = self.args
        store = self.store()
        entries = store.entries(args.project, args.deployment)
        if not entries:
            raise HistoryError(f"no deploys of {args.project}/{args.deployment} are recorded "
                               f"in {store.directory}")
        served = store.served(args.project, args.deployment, entries)
        rows = []
        for entry in reversed(entries):
            row = dict(entry, served=served is not None and entry["id"] == served["id"],
                       bundle_kept=store.has_bundle(entry["sha256"]))
            rows.append(row)
        if args.json:
            print(json.dumps({"history": {
                "project": args.project, "deployment": args.deployment,
                "directory": store.directory, "served": served["id"] if served else None,
                "entries": rows}}, sort_keys=True), flush=True)
            return ExitCode.OK
        print(f"History of {args.project}/{args.deployment} in {store.directory}, newest first",
              flush=True)
        print(f"({SERVED_NOTE})")
        print(f"   {'#':>3}  {'time (UTC)':<19}  {'outcome':<12}  {'sha256':<12}  "
              f"{'digest':<12}  {'commit':<10}  by")
        for row in rows:
            # Commit descriptions and CI variables are recorded as given.
            print(escape(format_row(row)), flush=True)
        return ExitCode.OK

    def run_action(self, settings: Any, callbacks: dict[str, Any]) -> int:
        """``--rollback`` / ``--promote-from``: deploy a recorded bundle."""
        from .rollback import entry_ref, promote, rollback

        args = self.args
        store = self.store()
        store.ensure()
        if args.rollback:
            outcome = rollback(store, args.project, args.deployment, settings, to=args.to,
                               force=args.force, highstate=args.highstate, **callbacks)
            what = f"Rolling back {args.project}/{args.deployment} to {entry_ref(outcome.source)}"
        else:
            outcome = promote(store, args.project, args.promote_from, args.deployment, settings,
                              to=args.to, force=args.force, highstate=args.highstate,
                              **callbacks)
            what = f"Promoted {entry_ref(outcome.source)} to {args.project}/{args.deployment}"
        if not args.json:
            self.printer.line(what)
        self.printer.finish(outcome.report)
        if outcome.report.error and not args.json:
            self.printer.error(outcome.report.error)
        return int(outcome.report.exit_code)

    # --- a normal deploy ---------------------------------------------------------------

    def deploy(self, settings: Any, callbacks: dict[str, Any], run: Callable[[Any], Any]) -> Any:
        """Run ``run(recording)`` (recording None with ``--no-history``); with
        ``--rollback-on-failure`` roll back a failed highstate.  Returns the
        report to print last (the rollback's, when one ran)."""
        if self.args.no_history:
            return run(None)
        store = self.store()
        if not self.args.rollback_on_failure:
            return run(store.recording(server=settings.server))
        from .rollback import deploy_with_rollback, entry_ref

        def rolling_back(report: Any, target: dict) -> None:
            # Show the failed deploy before the rollback's own events.
            self.printer.finish(report)
            if not self.args.json:
                self.printer.line(f"The highstate failed: rolling back to {entry_ref(target)}")

        self.outcome = outcome = deploy_with_rollback(
            store, self.args.project, self.args.deployment, settings, run,
            highstate=self.args.highstate, on_warning=self.printer.warn,
            on_rollback=rolling_back, **callbacks)
        return outcome.rollback if outcome.rollback is not None else outcome.report

    def exit_code(self, report: Any) -> int:
        """The command's exit status; says when a failed deploy was rolled back."""
        outcome = self.outcome
        if outcome is None or outcome.report is report and outcome.no_rollback is None:
            return int(report.exit_code)
        from .rollback import entry_ref

        target = f"{self.args.project}/{self.args.deployment}"
        if outcome.rollback is None:
            message = f"the highstate of {target} failed and it was not rolled back: " \
                      f"{outcome.no_rollback}"
        else:
            state = ("succeeded" if outcome.rollback.succeeded
                     else f"also failed (exit {int(outcome.rollback.exit_code)})")
            message = (f"the highstate of {target} failed; rolled back to "
                       f"{entry_ref(outcome.source)}, and the rollback {state}")
        self.printer.error(message, int(outcome.exit_code))
        if self.args.json:
            print(json.dumps({"rollback": {
                "message": message,
                "failed": outcome.entry["id"] if outcome.entry else None,
                "to": outcome.source["id"] if outcome.source and outcome.rollback else None,
                "result": bool(outcome.rollback and outcome.rollback.succeeded),
                "exit_code": int(outcome.report.exit_code)}}, sort_keys=True), flush=True)
        return int(outcome.exit_code)


def format_row(row: dict) -> str:
    """One line of ``--history``."""
    when = datetime.datetime.fromtimestamp(row.get("time") or 0, datetime.timezone.utc)
    commit = (row.get("gitcommit") or "").split()[:1]
    by = f"{row.get('user')}@{row.get('host')}"
    ci = row.get("ci")
    if ci:
        by += f" ({ci.get('system')} {ci.get('job_id')})"
    notes = []
    if row.get("rollback_of") is not None or row.get("restored") is not None:
        notes.append(f"rollback of #{row.get('rollback_of')} to #{row.get('restored')}"
                     + (" (automatic)" if row.get("automatic") else ""))
    if row.get("promoted_from"):
        notes.append(f"promoted from {row['promoted_from']}")
    if not row.get("bundle_kept", True):
        notes.append("bundle no longer kept")
    from .history import outcome_label

    mark = "*" if row.get("served") else " "
    return (f" {mark} {row['id']:>3}  {when:%Y-%m-%d %H:%M:%S}  {outcome_label(row):<12}  "
            f"{row['sha256'][:12]}  {str(row.get('digest') or '-')[:12]:<12}  "
            f"{(commit[0][:10] if commit else '-'):<10}  {by}"
            + (f"  [{'; '.join(notes)}]" if notes else ""))


def _size(text: str | None) -> int | None:
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)i?b?\s*", str(text).lower())
    if not match:
        raise UsageError(f"--history-max-size: {text!r} is not a size (e.g. 500M, 2G)")
    return int(match.group(1)) * 1024 ** " kmgt".index(match.group(2) or " ")
