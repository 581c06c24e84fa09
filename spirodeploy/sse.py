"""A Server-Sent Events parser that follows the WHATWG event-stream rules.

It works on raw byte chunks as they come off the socket, because line ends
may be CR, LF or CRLF and a CRLF can be split across two chunks (a parser
built on ``requests``' ``iter_lines`` sees a spurious blank line there and
dispatches half an event).  Reference:
https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

_BOM = "\ufeff"
# Alternation order matters: CRLF is one line end, not two.
_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class ServerSentEvent:
    """One dispatched event: its type (``message`` by default) and data."""

    event: str
    data: str
    id: str = ""


class EventStreamParser:
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

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Parse ``chunk`` and return the events it completed, in order."""
        return list(self._lines_to_events(self._split_lines(self._decoder.decode(chunk))))

    def close(self) -> list[ServerSentEvent]:
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

    def _lines_to_events(self, lines: Iterable[str]) -> Iterator[ServerSentEvent]:
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

    def _dispatch(self) -> ServerSentEvent | None:
        event_type, self._event = self._event, ""
        if not self._data:
            return None
        data, self._data = "\n".join(self._data), []
        self._activity += 1
        return ServerSentEvent(event=event_type or "message", data=data, id=self._last_id)


def iter_events(chunks: Iterable[bytes]) -> Iterator[ServerSentEvent]:
    """Yield the events of a stream given as an iterable of byte chunks."""
    parser = EventStreamParser()
    for chunk in chunks:
        yield from parser.feed(chunk)
    yield from parser.close()
