"""Make text from the server safe to show: no secret, no terminal control.

Two jobs, both about text the client does not control (server messages,
minion and state ids, state comments, error bodies):

* :func:`scrub` removes a secret (the token), also when only a piece of it
  is left (an error body cut at 500 characters can end half way through an
  echoed ``Authorization`` header).
* :func:`escape` turns characters a terminal acts on (ESC and the rest of
  C0 and C1, DEL, bidirectional overrides, line separators) into a visible
  ``\\x1b`` or ``\\u202e``, so server text cannot move the cursor, repaint a
  line, set the window title or write the clipboard (OSC 52).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any

#: What replaces a secret (or a piece of one) in anything shown.
MASK = "***"
#: A run of at least this many characters of a secret counts as a leak of it.
#: Tokens are long (a SpiroFS macaroon is ~200 characters); 12 characters of
#: base64 are 72 bits, too many to turn up by chance in a message.
MIN_PIECE = 12

# Characters of a token (base64, base64url, hex): a leaked piece is a run of them.
_TOKEN_RUN = re.compile(rf"[A-Za-z0-9+/_\-]{{{MIN_PIECE},}}")

# Tab stays (harmless, and state comments use it); newline and carriage
# return are escaped too: the printers split multi-line text themselves, so a
# raw one in a message could only start a forged line.
_CONTROL = re.compile(
    "[\x00-\x08\x0a-\x1f\x7f-\x9f"  # C0 (not tab), DEL, C1 (0x9b is an 8-bit CSI)
    "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"  # bidirectional marks and overrides
    "\u2028\u2029\ufeff]"  # line/paragraph separators, zero-width no-break space
)


def escape(text: str) -> str:
    """``text`` with every terminal control character shown as an escape."""
    return _CONTROL.sub(_visible, text)


_NAMED = {"\n": "\\n", "\r": "\\r"}


def _visible(match: re.Match) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


#: Shorter "secrets" (a test's "x") would mask ordinary words; real tokens
#: are far longer.
MIN_SECRET = 8


def secrets_of(values: Iterable[str | None]) -> list[str]:
    """The secrets worth hiding, longest first: long enough to be told apart."""
    return sorted({value for value in values if value and len(value) >= MIN_SECRET},
                  key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each secret (8+ characters), and any run of 12+ characters of one,
    masked."""
    secrets = secrets_of(secrets)
    if not secrets or not text:
        return text
    # The search for pieces is most of the cost, and ``--json`` passes the
    # whole event stream through here: any piece it masks (12+ characters of
    # a secret) holds one of the secret's 6-character slices that start at a
    # multiple of 7, so a text with none of them comes back unchanged.
    if not _slices(tuple(secrets)).search(text):
        return text
    return _scrub_all(text, secrets)


def may_hold_secret(data: bytes, secrets: Iterable[str]) -> bool:
    """False when ``data`` (UTF-8) holds no secret and no 12+ characters of one,
    so :func:`scrub` would give its text back unchanged."""
    secrets = secrets_of(secrets)
    return bool(secrets) and _byte_slices(tuple(secrets)).search(data) is not None


def _scrub_all(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)

    pieces = _pieces(tuple(secrets))
    if not pieces:
        return text

    def piece(match: re.Match) -> str:
        run = match.group()
        if any(run[i:i + MIN_PIECE] in pieces for i in range(len(run) - MIN_PIECE + 1)):
            return MASK
        return run

    return _TOKEN_RUN.sub(piece, text)


@functools.lru_cache(maxsize=8)
def _slices(secrets: tuple[str, ...]) -> re.Pattern[str]:
    # ``secrets`` as secrets_of gives them: all 8+ characters long.  One
    # pattern for every slice scans 2.5-3x faster than a search per slice.
    found: set[str] = set()
    for secret in secrets:
        if len(secret) < MIN_PIECE:
            found.add(secret)  # masked only whole
        else:
            found.update(secret[start:start + 6] for start in _slice_starts(secret))
    return re.compile("|".join(re.escape(piece) for piece in sorted(found)))


def _slice_starts(secret: str) -> list[int]:
    """Where the 6-character slices start: any 12-character piece holds one.

    A piece that starts at ``a`` holds the slices that start at ``a`` to
    ``a + 6``, so the starts are at most 7 apart, the first at most 6 and
    the last at least ``len - 12``.  Within that, a slice starts at an
    upper-case letter where one can: JSON and Salt's messages have few, and
    the pattern search only stops where a slice's first character is.
    """
    starts: list[int] = []
    last = len(secret) - 6
    while not starts or starts[-1] < len(secret) - MIN_PIECE:
        low = starts[-1] + 1 if starts else 0
        window = range(min(low + 6, last), low - 1, -1)
        starts.append(next((i for i in window if secret[i].isupper()), window[0]))
    return starts


@functools.lru_cache(maxsize=8)
def _byte_slices(secrets: tuple[str, ...]) -> re.Pattern[bytes]:
    return re.compile(_slices(secrets).pattern.encode())


@functools.lru_cache(maxsize=8)
def _pieces(secrets: tuple[str, ...]) -> frozenset[str]:
    # Every MIN_PIECE-long piece of every secret, to spot a run that holds
    # one: a truncated header, or a piece glued to other token characters.
    return frozenset(secret[i:i + MIN_PIECE] for secret in secrets
                     for i in range(len(secret) - MIN_PIECE + 1))


def clean(text: Any, secrets: Iterable[str] = ()) -> str:
    """Server text ready for a terminal line: secrets masked, controls escaped."""
    return escape(scrub(str(text), secrets))
