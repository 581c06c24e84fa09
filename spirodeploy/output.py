"""Presenting a deploy to people (lines as events arrive) or machines (JSON).

Both printers take the same callbacks from :mod:`spirodeploy.deploy` and
the same :class:`~spirodeploy.report.DeployReport` at the end.  Colour is
used only on a terminal and never with ``NO_COLOR`` set.

During the highstate the human printer's output scales with the failures,
not with the fleet.  On a terminal it keeps one live line (minions done out
of expected, failed, elapsed) and prints only failed minions, and every
minion only for a small fleet (:data:`SMALL_FLEET`) or with ``verbose``.
Elsewhere (CI logs) each minion gets one compact line, failed ones their
details.  Long server messages are shortened
(``Highstating 2000 minions: web00000, web00001, … (+1998)``).

Everything they print passes through :mod:`spirodeploy.sanitize`: the
secrets they were given (:meth:`HumanPrinter.hide`) are masked, and the
human printer shows terminal control characters as escapes, since server
messages, minion ids and state comments are not ours to trust.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import IO, TYPE_CHECKING, Any

from .sanitize import clean, scrub

if TYPE_CHECKING:  # a build-only run (--dry-run) never needs the report module
    from .report import DeployReport, MinionResult

_CODES = {"red": "31", "green": "32", "yellow": "33", "cyan": "36", "bold": "1", "dim": "2"}

#: Up to this many minions, every minion's changed states are listed.
SMALL_FLEET = 10
#: Server messages longer than this are shortened.
MESSAGE_LIMIT = 160
#: The live line is redrawn at most this often (seconds).
LIVE_EVERY = 0.2


def use_colour(stream: IO[str], environ=os.environ) -> bool:
    """Colour only for a terminal, and never when NO_COLOR is set (no-color.org)."""
    if "NO_COLOR" in environ and environ["NO_COLOR"] != "":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and environ.get("TERM") != "dumb"


class HumanPrinter:
    """Readable lines: one per stage, a line or block per minion, a closing summary.

    See the module's notes for what a big fleet gets (live line, compact lines).
    """

    def __init__(self, out: IO[str] | None = None, err: IO[str] | None = None,
                 colour: bool | None = None, progress: bool | None = None,
                 secrets: tuple[str | None, ...] = (), verbose: int = 0,
                 live: bool | None = None):
        """``verbose``: list every minion's changed states, however big the fleet.

        ``live``: keep one live line during the highstate (default: when
        ``out`` is a terminal); otherwise one compact line per minion.
        """
        # Looked up now, not at import: the streams may have been replaced.
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.colour = use_colour(self.out) if colour is None else colour
        self.show_progress = _isatty(self.err) if progress is None else progress
        self.verbose = verbose
        self.live = _isatty(self.out) if live is None else live
        self.secrets: list[str] = []
        self.hide(*secrets)
        self._bar = None
        self._live_shown = False
        self._live_since: float | None = None
        self._live_drawn_at = 0.0
        #: Failed minions seen so far (a failure sticks), for the live line.
        self._failed_minions: set[str] = set()

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
        self._clear_live()
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
        data = data if isinstance(data, dict) else {"msg": str(data)}
        if event == "highstate-update":
            minion = report.minions.get(str(data.get("minion")))
            if minion is not None:
                if not minion.succeeded:
                    self._failed_minions.add(minion.minion)
                small = len(report.minions_expected) <= SMALL_FLEET
                if self.live and minion.succeeded and not (small or self.verbose):
                    pass  # counted on the live line
                elif minion.succeeded and not (small or self.verbose):
                    # The compact line: counts and duration.
                    self.line(f"== {_minion_head(minion, duration=True)} ==", "green", "bold")
                else:
                    self.minion(minion, changed=small or bool(self.verbose))
            self._draw_live(report)
            return
        from .report import KNOWN_EVENTS

        # Masked before it is shortened: a cut must not leave part of a token.
        message = scrub(str(data.get("msg", "")), self.secrets)
        if event == "exception":
            # A formatted traceback: its lines are shown as lines, each escaped.
            first, *rest = message.strip().splitlines() or [""]
            self.line(f"Server error: {first}", "red", "bold")
            for text in rest:
                self.line(text, "red")
        elif event in KNOWN_EVENTS:
            self.line(shorten_message(message) or event, "cyan")
        else:
            # Unknown to this client, perhaps from a newer server: show it.
            shown = message or scrub(json.dumps(data, sort_keys=True), self.secrets)
            self.line(f"[{event}] {shorten_message(shown)}")
        if event == "highstate-start" and self._live_since is None:
            self._live_since = time.monotonic()
        if event in ("highstate-finish", "exception"):
            self._live_since = None
        self._draw_live(report, force=True)

    def minion(self, minion: MinionResult, changed: bool = True) -> None:
        """A minion's block: its head line, errors, failed and (if ``changed``) changed states."""
        style = "green" if minion.succeeded else "red"
        self.line(f"== {_minion_head(minion)} ==", style, "bold")
        for error in minion.errors:
            for text in error.strip().splitlines() or [""]:
                self.line(f"  {text}", "red")
        if minion.errors_omitted:
            self.line(f"  … and {minion.errors_omitted} more errors", "red")
        for state in minion.failed_states:
            self.line(f"  FAILED   {state.function or '?'} {state.id}", "red")
            self._comment(state.comment, "red")
        if minion.failed_omitted:
            self.line(f"  … and {minion.failed_omitted} more failed states", "red")
        if changed:
            for state in minion.changed_states:
                self.line(f"  changed  {state.function or '?'} {state.id}", "green")
                self._comment(state.comment, "dim")
            if minion.changed_omitted:
                self.line(f"  … and {minion.changed_omitted} more changed states", "dim")
        if minion.duration_ms is not None and not minion.succeeded:
            # Its own line: the head line stays as it always was.
            self.line(f"  took {_duration(minion.duration_ms)}", "dim")

    def _comment(self, comment: str, style: str) -> None:
        for text in comment.strip().splitlines()[:20]:
            self.line(f"           {text}", style)

    def close(self) -> None:
        """Nothing is left to print (the JSON printer may still be printing)."""

    def finish(self, report: DeployReport) -> None:
        """The end: the counts, failed minions with their failed states, the silent ones."""
        self._close_bar()
        self._live_since = None
        self._clear_live()
        # A small deploy that went well ends as it always did: the summary says it all.
        if report.highstate and (len(report.minions_expected) > SMALL_FLEET
                                 or report.failed or report.unreported):
            self._totals(report)
        style = "green" if report.succeeded else "red"
        self.line(report.summary(), style, "bold")

    def _totals(self, report: DeployReport) -> None:
        from .report import shorten_names

        states = {"ok": 0, "changed": 0, "failed": 0}
        for minion in report.minions.values():
            for key in states:
                states[key] += minion.counts[key]
        failed = report.failed
        unreported = report.unreported
        self.line(f"Minions: {len(report.minions_expected)} expected, {len(report.minions)} "
                  f"reported, {len(report.minions) - len(failed)} succeeded, {len(failed)} "
                  f"failed, {len(unreported)} never reported; states: {states['ok']} ok, "
                  f"{states['changed']} changed, {states['failed']} failed",
                  "red" if failed or unreported else "green")
        if failed:
            self.line("Failed minions:", "red", "bold")
        for name in failed:
            self.line(f"  {name}: {_failure(report.minions[name])}", "red")
        if unreported:
            self.line(f"Never reported: {shorten_names(unreported, 100)}", "red")

    def _draw_live(self, report: DeployReport, force: bool = False) -> None:
        # One line, redrawn in place (at most every LIVE_EVERY seconds).
        if not self.live or self._live_since is None:
            return
        now = time.monotonic()
        if not force and self._live_shown and now - self._live_drawn_at < LIVE_EVERY \
                and len(report.minions) < len(report.minions_expected):
            return
        self._live_drawn_at = now
        failed = len(self._failed_minions)
        elapsed = int(now - self._live_since)
        text = (f"Highstate: {len(report.minions)}/{len(report.minions_expected)} minions done, "
                f"{failed} failed, {elapsed // 60}:{elapsed % 60:02d} elapsed")
        self.out.write("\r\033[K" + self.paint(clean(text, self.secrets),
                                               "red" if failed else "cyan"))
        self.out.flush()
        self._live_shown = True

    def _clear_live(self) -> None:
        if self._live_shown:
            self.out.write("\r\033[K")
            self._live_shown = False

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class JsonPrinter:
    """One JSON object per line: each event, then ``{"report": ...}``."""

    #: Printed bytes after which the masking moves to another process
    #: (:mod:`spirodeploy.maskpipe`): a fleet's stream, not a small deploy.
    MASK_ELSEWHERE_AFTER = 1 << 20

    def __init__(self, out: IO[str] | None = None, err: IO[str] | None = None,
                 secrets: tuple[str | None, ...] = ()):
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.secrets: list[str] = []
        self._printed = 0
        self._pipe: Any = None  # a maskpipe.MaskingPipe, once the output is big
        self._pipe_tried = False
        self.hide(*secrets)

    def hide(self, *secrets: str | None) -> None:
        """Mask these (the token) in everything printed from now on."""
        new = [secret for secret in secrets if secret]
        self.secrets.extend(new)
        if self._pipe is not None:
            self._pipe.hide(*new)

    def close(self) -> None:
        """Wait until every line is printed (the masking process has finished)."""
        if self._pipe is not None:
            self._pipe.close()

    def _print(self, line: str) -> None:
        """Print one line (no newline in it), the token masked."""
        if self._masking_elsewhere():
            self._pipe.write(line + "\n")
            return
        print(scrub(line, self.secrets), file=self.out, flush=True)
        self._printed += len(line)
        if self._printed > self.MASK_ELSEWHERE_AFTER and not self._pipe_tried:
            from . import maskpipe

            self._pipe_tried = True
            self._pipe = maskpipe.start(self.out, self.secrets)

    def _masking_elsewhere(self) -> bool:
        # Lines go to the masking process once it says it is ready; one that
        # never will (it could not start) leaves the printing here.
        if self._pipe is None:
            return False
        ready = self._pipe.ready()
        if ready is False:
            self._pipe = None
        return bool(ready)

    def _emit(self, obj: dict[str, Any]) -> None:
        # json.dumps escapes every control and non-ASCII character (C1,
        # U+2028, bidi overrides) as \uXXXX, and a token's characters need no
        # escaping, so masking the encoded line finds it in any string or key.
        self._print(json.dumps(obj, sort_keys=True))

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
        source = getattr(data, "source", None)
        if source is not None and _passes_through(source):
            # The server's JSON as it came: decoding it proved it valid, and
            # printable ASCII on one line is what json.dumps would give too.
            self._print(f'{{"data": {source}, "event": {json.dumps(event)}}}')
        else:
            self._emit({"event": event, "data": data})

    def finish(self, report: DeployReport) -> None:
        """The report, on one line: written a minion at a time, so a big fleet's
        report is never held whole as one string."""
        data = report.to_dict(results=False)
        marker = "\x00results\x00"  # json.dumps escapes it: it cannot occur in the data
        data["results"] = marker
        head, tail = json.dumps({"report": data}, sort_keys=True).split(json.dumps(marker))
        # Each piece is masked alone (a token cannot span two, as pieces are
        # cut between JSON values); the masking process masks the whole line.
        pipe = self._pipe if self._masking_elsewhere() else None
        write, mask = (pipe.write, _as_is) if pipe is not None else (self.out.write, scrub)
        write(mask(head, self.secrets) + "{")
        for index, (name, minion) in enumerate(sorted(report.minions.items())):
            write((", " if index else "") + mask(
                f"{json.dumps(name)}: {json.dumps(minion.to_dict(), sort_keys=True)}",
                self.secrets))
        write("}" + mask(tail, self.secrets) + "\n")
        (pipe or self.out).flush()

    def error(self, message: str, exit_code: int) -> None:
        """The error the command ends with: a line on stderr and a JSON object."""
        print(clean(f"spiro-deploy: error: {message}", self.secrets), file=self.err, flush=True)
        self._emit({"error": {"message": message, "exit_code": exit_code}})


def _as_is(text: str, secrets: Any) -> str:
    return text


def _passes_through(source: str) -> bool:
    # json.dumps escapes controls and every non-ASCII character.  Strict JSON
    # decoding already refused raw controls inside strings; what is left to
    # rule out is line ends between values, DEL and non-ASCII (bidi overrides).
    return (source.isascii() and "\n" not in source and "\r" not in source
            and "\x7f" not in source)


def shorten_message(message: str, limit: int = MESSAGE_LIMIT) -> str:
    """A server message cut to about ``limit`` characters.

    A list after a colon keeps its first items and counts the rest
    (``Highstating 2000 minions: web00000, web00001, … (+1998)``); other
    text is cut and says how much was left out.
    """
    if len(message) <= limit:
        return message
    head, colon, rest = message.partition(": ")
    items = rest.split(", ") if colon else []
    if len(items) > 1 and len(head) < limit // 2:
        shown: list[str] = []
        room = limit - len(head) - 2
        for item in items:
            if shown and sum(len(i) + 2 for i in shown) + len(item) > room:
                break
            shown.append(item)
        if len(shown) < len(items):
            return f"{head}: {', '.join(shown)}, … (+{len(items) - len(shown)})"
    return message[:limit] + f"… (+{len(message) - limit} chars)"


def _minion_head(minion: MinionResult, duration: bool = False) -> str:
    counts = minion.counts
    if minion.no_response:
        return f"{minion.minion}: no response"
    if minion.errors:
        return f"{minion.minion}: highstate did not run"
    head = (f"{minion.minion}: {counts['ok']} ok, {counts['changed']} changed, "
            f"{counts['failed']} failed")
    if minion.retcode and not counts["failed"]:
        head += f", retcode {minion.retcode}"
    if duration and minion.duration_ms is not None:
        head += f", {_duration(minion.duration_ms)}"
    return head


def _failure(minion: MinionResult) -> str:
    """Why a minion failed, on one line."""
    if minion.no_response:
        return "no response"
    if minion.errors:
        first = (minion.errors[0].strip().splitlines() or [""])[0]
        return f"highstate did not run: {shorten_message(first)}"
    states = ", ".join(f"{state.function or '?'} {state.id}" for state in minion.failed_states)
    more = minion.failed_omitted
    if states:
        return f"failed {states}" + (f" (+{more} more)" if more else "")
    return f"retcode {minion.retcode}"


def _duration(ms: float) -> str:
    seconds = ms / 1000
    if seconds < 1:
        return f"{ms:.0f} ms"
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {seconds % 60:.0f} s"


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
