"""A Server-Sent Events parser that follows the WHATWG event-stream rules.

It works on raw byte chunks as they come off the socket, because line ends
may be CR, LF or CRLF and a CRLF can be split across two chunks (a parser
built on ``requests``' ``iter_lines`` sees a spurious blank line there and
dispatches half an event).  Reference:
https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation

Lines are split as bytes (``bytes.splitlines`` breaks at exactly CR, LF
and CRLF, the stream's three line ends) and decoded afterwards: a fleet's
stream is hundreds of MiB, and splitting decoded text with a regular
expression cost as much as parsing its JSON.  Splitting first is safe
because UTF-8 never uses an ASCII byte inside a multi-byte character.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

_BOM = b"\xef\xbb\xbf"
_CR, _LF, _COLON = 13, 10, 58


@dataclass(frozen=True)
class ServerSentEvent:
    """One dispatched event: its type (``message`` by default) and data."""

    event: str
    data: str
    id: str = ""


def _text(raw: bytes) -> str:
    # The spec decodes the stream as UTF-8 with replacement: any input parses.
    return raw.decode("utf-8", "replace")


class EventStreamParser:
    """Incremental parser: :meth:`feed` bytes, get the events they complete.

    Bytes are decoded as UTF-8 with replacement, as the spec requires, so
    arbitrary input never raises.  Work is linear in the input: a line that
    arrives in many chunks (a large highstate result) is collected in pieces
    and joined once.
    """

    def __init__(self) -> None:
        self._partial: list[bytes] = []  # the current, unfinished line
        self._pending_cr = False
        self._head: bytes | None = b""  # the first bytes, until a BOM is ruled in or out
        self._event = ""
        self._data: list[bytes] = []
        self._last_id = ""
        self._activity = 0

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Parse ``chunk`` and return the events it completed, in order."""
        if self._head is not None:
            chunk = self._after_bom(chunk)
        if self._pending_cr and chunk[:1] == b"\n":
            chunk = chunk[1:]  # the LF of a CRLF whose CR ended the last chunk
        if not chunk:
            return []
        last = chunk[-1]
        self._pending_cr = last == _CR
        lines = chunk.splitlines()
        if last != _CR and last != _LF:
            tail = lines.pop()
            if not lines:  # no line end here: the unfinished line grows
                self._partial.append(tail)
                self._count_partial()
                return []
        else:
            tail = None
        if self._partial:
            self._partial.append(lines[0])
            lines[0] = b"".join(self._partial)
        self._partial = [tail] if tail else []
        self._count_partial()
        return self._lines_to_events(lines)

    def close(self) -> list[ServerSentEvent]:
        """Signal the end of the stream; returns events completed by the rest.

        By the spec an event without its closing blank line is discarded;
        :attr:`incomplete` tells whether that happened.
        """
        if self._head:  # fewer bytes than a BOM: an unfinished line
            self._partial.append(self._head)
        self._head = None
        return []

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
        return bool(self._partial) or bool(self._data) or bool(self._event)

    def _after_bom(self, chunk: bytes) -> bytes:
        # A leading BOM is skipped once, even when it comes in pieces.
        head = self._head + chunk
        if len(head) < len(_BOM) and _BOM.startswith(head):
            self._head = head
            return b""
        self._head = None
        return head[len(_BOM):] if head.startswith(_BOM) else head

    def _count_partial(self) -> None:
        # An unfinished line is progress unless it is a comment.
        if self._partial and self._partial[0][0] != _COLON:
            self._activity += 1

    def _lines_to_events(self, lines: list[bytes]) -> list[ServerSentEvent]:
        events = []
        for line in lines:
            if not line:
                event = self._dispatch()
                if event is not None:
                    events.append(event)
                continue
            if line[0] == _COLON:
                continue  # comment
            field, sep, value = line.partition(b":")
            if sep and value[:1] == b" ":
                value = value[1:]
            if field == b"data":
                self._data.append(value)
                self._activity += 1
            elif field == b"event":
                self._event = _text(value)
            elif field == b"id":
                if b"\0" not in value:
                    self._last_id = _text(value)
            # "retry" only matters for reconnection, which the deploy
            # protocol does not allow; other fields are ignored by the spec.
        return events

    def _dispatch(self) -> ServerSentEvent | None:
        event_type, self._event = self._event, ""
        if not self._data:
            return None
        data, self._data = _text(b"\n".join(self._data)), []
        self._activity += 1
        return ServerSentEvent(event=event_type or "message", data=data, id=self._last_id)


def iter_events(chunks: Iterable[bytes]) -> Iterator[ServerSentEvent]:
    """Yield the events of a stream given as an iterable of byte chunks."""
    parser = EventStreamParser()
    for chunk in chunks:
        yield from parser.feed(chunk)
    yield from parser.close()
