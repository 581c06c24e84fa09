"""The text-based event-stream parser that spirodeploy.sse replaced.

It split decoded text with a regular expression: simple, and too slow for a
fleet's stream.  Kept as the reference the byte parser is checked against, on
any bytes and any chunking.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Iterator

_BOM = "\ufeff"
# Alternation order matters: CRLF is one line end, not two.
_LINE_END = re.compile(r"\r\n|\r|\n")


class ReferenceParser:
    """Incremental parser: :meth:`feed` bytes, get the events they complete.

    Bytes are decoded as UTF-8 with replacement, as the spec requires, so
    arbitrary input never raises.  Work is linear in the input: a line that
    arrives in many chunks (a large highstate result) is collected in pieces
    and joined once.
    """

    def __init__(self) -> None:
        self._pieces: list[str] = []  # the current, unfinished line
        self._pending_cr = False
        self._started = False
        self._event = ""
        self._data: list[str] = []
        self._last_id = ""
        self._activity = 0
        # Incremental decoding keeps a multi-byte character split across
        # chunks intact.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, chunk: bytes) -> list[tuple[str, str, str]]:
        """Parse ``chunk`` and return the events it completed, in order."""
        return list(self._lines_to_events(self._split_lines(self._decoder.decode(chunk))))

    def close(self) -> list[tuple[str, str, str]]:
        """Signal the end of the stream; returns events completed by the rest.

        By the spec an event without its closing blank line is discarded;
        :attr:`incomplete` tells whether that happened.
        """
        return list(self._lines_to_events(self._split_lines(self._decoder.decode(b"", final=True))))

    @property
    def activity(self) -> int:
        """A counter that moves when the server sends part of an event.

        It grows with each dispatched event, each ``data`` line and each
        chunk that extends an unfinished line that is not a comment.
        Comment lines (``: keep-alive``), blank lines that dispatch nothing
        and data-less fields do not move it: a client can tell keep-alives
        from progress.
        """
        return self._activity

    @property
    def incomplete(self) -> bool:
        """True when part of an unfinished event has been seen."""
        return any(self._pieces) or bool(self._data) or bool(self._event)

    def _split_lines(self, text: str) -> list[str]:
        if not text:
            return []
        if not self._started:
            self._started = True
            if text.startswith(_BOM):
                text = text[1:]
        if self._pending_cr and text.startswith("\n"):
            text = text[1:]  # the LF of a CRLF whose CR ended the last chunk
        self._pending_cr = text.endswith("\r")
        parts = _LINE_END.split(text)
        if len(parts) == 1:
            self._pieces.append(text)
            self._count_partial()
            return []
        self._pieces.append(parts[0])
        lines = ["".join(self._pieces)]
        lines.extend(parts[1:-1])
        self._pieces = [parts[-1]] if parts[-1] else []
        self._count_partial()
        return lines

    def _count_partial(self) -> None:
        # An unfinished line is progress unless it is a comment.
        first = next((piece for piece in self._pieces if piece), "")
        if first and not first.startswith(":"):
            self._activity += 1

    def _lines_to_events(self, lines: Iterable[str]) -> Iterator[tuple[str, str, str]]:
        for line in lines:
            if not line:
                event = self._dispatch()
                if event is not None:
                    yield event
                continue
            if line.startswith(":"):
                continue  # comment
            field, sep, value = line.partition(":")
            if sep and value.startswith(" "):
                value = value[1:]
            if field == "event":
                self._event = value
            elif field == "data":
                self._data.append(value)
                self._activity += 1
            elif field == "id":
                if "\0" not in value:
                    self._last_id = value
            # "retry" only matters for reconnection, which the deploy
            # protocol does not allow; other fields are ignored by the spec.

    def _dispatch(self) -> tuple[str, str, str] | None:
        event_type, self._event = self._event, ""
        if not self._data:
            return None
        data, self._data = "\n".join(self._data), []
        self._activity += 1
        return (event_type or "message", data, self._last_id)


