"""Presenting a deploy to people (lines as events arrive) or machines (JSON).

Both printers take the same callbacks from :mod:`spirodeploy.deploy` and
the same :class:`~spirodeploy.report.DeployReport` at the end.  Colour is
used only on a terminal and never with ``NO_COLOR`` set.

Everything they print passes through :mod:`spirodeploy.sanitize`: the
secrets they were given (:meth:`HumanPrinter.hide`) are masked, and the
human printer shows terminal control characters as escapes, since server
messages, minion ids and state comments are not ours to trust.
"""

from __future__ import annotations

import json
import os
import sys
from typing import IO, TYPE_CHECKING, Any

from .sanitize import clean, scrub

if TYPE_CHECKING:  # a build-only run (--dry-run) never needs the report module
    from .report import DeployReport, MinionResult

_CODES = {"red": "31", "green": "32", "yellow": "33", "cyan": "36", "bold": "1", "dim": "2"}


def use_colour(stream: IO[str], environ=os.environ) -> bool:
    """Colour only for a terminal, and never when NO_COLOR is set (no-color.org)."""
    if "NO_COLOR" in environ and environ["NO_COLOR"] != "":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and environ.get("TERM") != "dumb"


class HumanPrinter:
    """Readable lines: one per stage, a block per minion, a closing summary."""

    def __init__(self, out: IO[str] | None = None, err: IO[str] | None = None,
                 colour: bool | None = None, progress: bool | None = None,
                 secrets: tuple[str | None, ...] = ()):
        # Looked up now, not at import: the streams may have been replaced.
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.colour = use_colour(self.out) if colour is None else colour
        self.show_progress = _isatty(self.err) if progress is None else progress
        self.secrets: list[str] = []
        self.hide(*secrets)
        self._bar = None

    def hide(self, *secrets: str | None) -> None:
        """Mask these (the token) in everything printed from now on."""
        self.secrets.extend(secret for secret in secrets if secret)

    def paint(self, text: str, *styles: str) -> str:
        if not self.colour or not styles:
            return text
        codes = ";".join(_CODES[style] for style in styles)
        return f"\033[{codes}m{text}\033[0m"

    def line(self, text: str = "", *styles: str) -> None:
        """Print one line: secrets masked, control characters escaped, then painted."""
        print(self.paint(clean(text, self.secrets), *styles), file=self.out, flush=True)

    def warn(self, text: str) -> None:
        print(self.paint(clean(f"Warning: {text}", self.secrets), "yellow"), file=self.err,
              flush=True)

    def error(self, message: str, exit_code: int | None = None) -> None:
        """The one-line error the command ends with (on stderr)."""
        print(clean(f"spiro-deploy: error: {message}", self.secrets), file=self.err, flush=True)

    def bundle(self, bundle: Any, verbose: bool = False) -> None:
        """What was bundled: counts, size, digest and, if asked, the files."""
        self.line(f"Bundle: {bundle.file_count} files, {_size(bundle.size)}, "
                  f"sha256 {bundle.sha256}")
        for head, count in sorted(bundle.top_counts.items()):
            self.line(f"  {head or '(root)':<24} {count} files")
        if verbose:
            for entry in bundle.manifest["files"]:
                self.line(f"  {entry['sha256'][:12]}  {entry['size']:>10}  {entry['path']}")

    def deploying(self, bundle: Any, project: str, deployment: str) -> None:
        self.line(f"Deploying {bundle.file_count} files ({_size(bundle.size)}) to "
                  f"{project}/{deployment}")

    def progress(self, sent: int, total: int | None) -> None:
        """Draw the upload bar; ``total`` is None while a streamed bundle is still built."""
        if not self.show_progress:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                             desc="Uploading", file=self.err, leave=False,
                             colour=None, dynamic_ncols=True)
        self._bar.update(sent - self._bar.n)
        if total is not None and sent >= total:
            self._close_bar()

    def event(self, event: str, data: dict[str, Any], report: DeployReport) -> None:
        self._close_bar()
        if event == "highstate-update":
            minion = report.minions.get(str(data.get("minion")))
            if minion is not None:
                self.minion(minion)
            return
        from .report import KNOWN_EVENTS

        message = str(data.get("msg", ""))
        if event == "exception":
            # A formatted traceback: its lines are shown as lines, each escaped.
            first, *rest = message.strip().splitlines() or [""]
            self.line(f"Server error: {first}", "red", "bold")
            for text in rest:
                self.line(text, "red")
        elif event in KNOWN_EVENTS:
            self.line(message or event, "cyan")
        else:
            # Unknown to this client, perhaps from a newer server: show it.
            self.line(f"[{event}] {message or json.dumps(data, sort_keys=True)}")

    def minion(self, minion: MinionResult) -> None:
        counts = minion.counts
        if minion.no_response:
            head, style = f"{minion.minion}: no response", "red"
        elif minion.errors:
            head, style = f"{minion.minion}: highstate did not run", "red"
        else:
            head = (f"{minion.minion}: {counts['ok']} ok, {counts['changed']} changed, "
                    f"{counts['failed']} failed")
            if minion.retcode and not counts["failed"]:
                head += f", retcode {minion.retcode}"
            style = "green" if minion.succeeded else "red"
        self.line(f"== {head} ==", style, "bold")
        for error in minion.errors:
            for text in error.strip().splitlines() or [""]:
                self.line(f"  {text}", "red")
        for state in minion.failed_states:
            self.line(f"  FAILED   {state.function or '?'} {state.id}", "red")
            self._comment(state.comment, "red")
        for state in minion.changed_states:
            self.line(f"  changed  {state.function or '?'} {state.id}", "green")
            self._comment(state.comment, "dim")

    def _comment(self, comment: str, style: str) -> None:
        for text in comment.strip().splitlines()[:20]:
            self.line(f"           {text}", style)

    def finish(self, report: DeployReport) -> None:
        self._close_bar()
        style = "green" if report.succeeded else "red"
        self.line(report.summary(), style, "bold")

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class JsonPrinter:
    """One JSON object per line: each event, then ``{"report": ...}``."""

    def __init__(self, out: IO[str] | None = None, err: IO[str] | None = None,
                 secrets: tuple[str | None, ...] = ()):
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.secrets: list[str] = []
        self.hide(*secrets)

    def hide(self, *secrets: str | None) -> None:
        """Mask these (the token) in everything printed from now on."""
        self.secrets.extend(secret for secret in secrets if secret)

    def _emit(self, obj: dict[str, Any]) -> None:
        # json.dumps escapes every control and non-ASCII character (C1,
        # U+2028, bidi overrides) as \uXXXX, and a token's characters need no
        # escaping, so masking the encoded line finds it in any string or key.
        print(scrub(json.dumps(obj, sort_keys=True), self.secrets), file=self.out, flush=True)

    def warn(self, text: str) -> None:
        print(clean(f"Warning: {text}", self.secrets), file=self.err, flush=True)

    def bundle(self, bundle: Any, verbose: bool = False) -> None:
        self._emit({"bundle": {"sha256": bundle.sha256, "size": bundle.size,
                               "file_count": bundle.file_count, "manifest": bundle.manifest}})

    def deploying(self, bundle: Any, project: str, deployment: str) -> None:
        pass  # the report carries the bundle's facts

    def progress(self, sent: int, total: int | None) -> None:
        pass

    def event(self, event: str, data: dict[str, Any], report: DeployReport) -> None:
        self._emit({"event": event, "data": data})

    def finish(self, report: DeployReport) -> None:
        self._emit({"report": report.to_dict()})

    def error(self, message: str, exit_code: int) -> None:
        """The error the command ends with: a line on stderr and a JSON object."""
        print(clean(f"spiro-deploy: error: {message}", self.secrets), file=self.err, flush=True)
        self._emit({"error": {"message": message, "exit_code": exit_code}})


def _isatty(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
