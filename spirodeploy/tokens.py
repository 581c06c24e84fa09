"""SpiroFS tokens: read, judge and narrow them offline.

SpiroFS 0.3 issues macaroons in the version 1 binary format (the format of
libmacaroons and pymacaroons): base64 of length-prefixed packets
``<4 hex digits: packet length><key> <value>\\n`` in the order ``location``,
``identifier``, then per caveat ``cid`` (and ``vid``, ``cl`` for a
third-party caveat), then ``signature`` (32 raw bytes).  The signature is an
HMAC-SHA256 chain: adding a first-party caveat replaces it with
``HMAC(key=signature, msg=caveat_id)``, so anyone holding a token can add a
caveat without the server's key, and the server enforces it.

The server reads each first-party caveat as a JSON object and every key in
it must hold: ``not_before`` and ``not_after`` (epoch seconds, strict
comparisons), ``project_allow`` (the project is in the list) and
``project_deny`` (it is not).  Any other key, a caveat that is not a JSON
object and a third-party caveat make it refuse the token.  The client folds
the caveats the same way (:class:`TokenScope`): allowed projects are the
intersection of every ``project_allow``, denied ones the union of every
``project_deny``, the earliest ``not_after`` and the latest ``not_before``;
what it cannot read becomes a warning that it cannot judge the token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .atomicfile import replace_file
from .errors import ConfigError, TokenExpired, TokenNotAllowed, UsageError

#: The caveat keys SpiroFS 0.3 understands; any other makes it refuse a token.
KNOWN_KEYS = ("not_before", "not_after", "project_allow", "project_deny")
#: How far in the future a ``not_before`` may be before the client refuses
#: the token: clocks of the CI host and the master disagree a little.
CLOCK_SKEW = 300
SIGNATURE_SIZE = 32
_MAX_PACKET = 0xFFFF
_B64 = re.compile(r"[A-Za-z0-9_\-+/]*={0,2}")
_LIFETIME = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)", re.IGNORECASE)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class NotAMacaroon(ConfigError):
    """The token is not a version 1 macaroon (the message never shows it)."""


# --- the binary format ----------------------------------------------------------

@dataclass(frozen=True)
class Caveat:
    """One caveat as stored: ``vid`` and ``location`` only for a third-party one."""

    cid: bytes
    vid: bytes | None = None
    location: bytes | None = None

    @property
    def first_party(self) -> bool:
        return self.vid is None

    @property
    def text(self) -> str:
        """The caveat id as text (undecodable bytes replaced)."""
        return self.cid.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Macaroon:
    """A version 1 macaroon; ``repr`` never shows the signature."""

    location: bytes
    identifier: bytes
    caveats: tuple[Caveat, ...]
    signature: bytes = field(repr=False)

    @classmethod
    def parse(cls, token: str) -> Macaroon:
        """Read a serialised token; raise :class:`NotAMacaroon` if it is not one."""
        return cls.from_bytes(_b64decode(token))

    @classmethod
    def from_bytes(cls, raw: bytes) -> Macaroon:
        """Read the binary form (what the base64 text decodes to)."""
        if raw[:1] == b"\x02":
            raise NotAMacaroon("the token is a version 2 macaroon; only version 1, what "
                               "SpiroFS issues, is supported")
        packets = list(_packets(raw))
        keys = [key for key, _ in packets]
        if keys[:2] != [b"location", b"identifier"] or keys[-1:] != [b"signature"]:
            raise NotAMacaroon("the token is not a macaroon (it lacks a location, identifier "
                               "or signature, or they are out of order)")
        caveats: list[Caveat] = []
        body = packets[2:-1]
        index = 0
        while index < len(body):
            key, value = body[index]
            if key != b"cid":
                raise NotAMacaroon(f"the token is not a macaroon (unexpected "
                                   f"{key.decode('ascii', 'replace')!r} packet)")
            following = [k for k, _ in body[index + 1:index + 3]]
            if following[:1] == [b"vid"]:
                if following != [b"vid", b"cl"]:
                    raise NotAMacaroon("the token is not a macaroon (a third-party caveat "
                                       "without its location)")
                caveats.append(Caveat(value, body[index + 1][1], body[index + 2][1]))
                index += 3
            else:
                caveats.append(Caveat(value))
                index += 1
        signature = packets[-1][1]
        if len(signature) != SIGNATURE_SIZE:
            raise NotAMacaroon("the token is not a macaroon (its signature is not 32 bytes)")
        return cls(packets[0][1], packets[1][1], tuple(caveats), signature)

    def to_bytes(self) -> bytes:
        """The binary form, packets in the canonical order."""
        out = [_packet(b"location", self.location), _packet(b"identifier", self.identifier)]
        for caveat in self.caveats:
            out.append(_packet(b"cid", caveat.cid))
            if not caveat.first_party:
                out += [_packet(b"vid", caveat.vid or b""), _packet(b"cl", caveat.location or b"")]
        out.append(_packet(b"signature", self.signature))
        return b"".join(out)

    def serialize(self) -> str:
        """URL-safe base64 without padding, as pymacaroons writes it."""
        return base64.urlsafe_b64encode(self.to_bytes()).decode("ascii").rstrip("=")

    def add_first_party_caveat(self, predicate: str | bytes) -> Macaroon:
        """A new macaroon with one more caveat; its signature chains from this one."""
        cid = predicate.encode("utf-8") if isinstance(predicate, str) else bytes(predicate)
        signature = hmac.new(self.signature, cid, hashlib.sha256).digest()
        return Macaroon(self.location, self.identifier, (*self.caveats, Caveat(cid)), signature)


def _b64decode(token: str) -> bytes:
    if not isinstance(token, str):
        raise NotAMacaroon("the token is not a macaroon (not text)")
    token = token.strip()
    # SpiroFS (through pymacaroons) accepts both base64 alphabets, with or
    # without padding; anything else is not a token it would accept either.
    if not token or not _B64.fullmatch(token) or len(token.rstrip("=")) % 4 == 1:
        raise NotAMacaroon("the token is not a macaroon (not base64 text)")
    body = token.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise NotAMacaroon("the token is not a macaroon (not base64 text)") from None


def _packets(raw: bytes) -> Iterable[tuple[bytes, bytes]]:
    pos = 0
    if not raw:
        raise NotAMacaroon("the token is not a macaroon (it is empty)")
    while pos < len(raw):
        header = raw[pos:pos + 4]
        if len(header) < 4 or not all(chr(c) in "0123456789abcdefABCDEF" for c in header):
            raise NotAMacaroon("the token is not a macaroon (bad packet header)")
        size = int(header, 16)
        packet = raw[pos + 4:pos + size]
        if size < 7 or pos + size > len(raw) or not packet.endswith(b"\n") or b" " not in packet:
            raise NotAMacaroon("the token is not a macaroon (bad packet)")
        key, _, value = packet[:-1].partition(b" ")
        if key not in (b"location", b"identifier", b"cid", b"vid", b"cl", b"signature"):
            raise NotAMacaroon("the token is not a macaroon (unknown packet "
                               f"{key.decode('ascii', 'replace')!r})")
        yield key, value
        pos += size


def _packet(key: bytes, value: bytes) -> bytes:
    size = 4 + len(key) + 1 + len(value) + 1
    if size > _MAX_PACKET:
        raise UsageError(f"a macaroon {key.decode()} may be at most {_MAX_PACKET - 7 - len(key)} "
                         "bytes long")
    return b"%04x%s %s\n" % (size, key, value)


# --- what the caveats mean --------------------------------------------------------

@dataclass
class TokenScope:
    """What a token's caveats allow, folded the way the server checks them.

    ``projects`` is None when no caveat limits the projects; ``not_before``
    and ``not_after`` are None when no caveat sets them.  ``warnings`` say
    what the client could not read: when there are any, the client cannot
    judge the token and the server decides.
    """

    projects: frozenset[str] | None = None
    denied: frozenset[str] = frozenset()
    not_before: float | None = None
    not_after: float | None = None
    caveats: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def judged(self) -> bool:
        """True when the client understood every caveat."""
        return not self.warnings

    def allows(self, project: str, now: float | None = None) -> bool:
        """Whether the understood caveats all hold for ``project`` at ``now``
        (the server's strict comparisons, no allowance for clock skew)."""
        now = time.time() if now is None else now
        return (self.allows_project(project)
                and (self.not_before is None or now > self.not_before)
                and (self.not_after is None or now < self.not_after))

    def allows_project(self, project: str) -> bool:
        return ((self.projects is None or project in self.projects)
                and project not in self.denied)

    def check(self, project: str, now: float | None = None) -> None:
        """Raise :class:`TokenExpired` or :class:`TokenNotAllowed` when the
        caveats say the server will refuse ``project``; a ``not_before`` up
        to :data:`CLOCK_SKEW` seconds ahead is let through."""
        now = time.time() if now is None else now
        if self.not_after is not None and now >= self.not_after:
            raise TokenExpired(f"the token expired at {utc(self.not_after)}; issue a new one "
                               "(salt-run spiro.issue_token)")
        if self.not_before is not None and now <= self.not_before - CLOCK_SKEW:
            raise TokenExpired(f"the token is not valid before {utc(self.not_before)}; "
                               "check the clocks")
        if not self.allows_project(project):
            raise TokenNotAllowed(f"the token may not deploy project {project!r} (it allows: "
                                  f"{self.describe_projects()}); nothing was sent")

    def describe_projects(self) -> str:
        """``a, b``, ``no project``, or ``any project`` (``except c``)."""
        if self.projects is not None:
            return ", ".join(sorted(self.projects - self.denied)) or "no project"
        if self.denied:
            return f"any project except {', '.join(sorted(self.denied))}"
        return "any project"

    def effective_caveats(self) -> dict[str, Any]:
        """The folded caveats as one dict with the server's keys (only those set)."""
        out: dict[str, Any] = {}
        if self.not_before is not None:
            out["not_before"] = self.not_before
        if self.not_after is not None:
            out["not_after"] = self.not_after
        if self.projects is not None:
            out["project_allow"] = sorted(self.projects)
        if self.denied:
            out["project_deny"] = sorted(self.denied)
        return out


def scope_of(macaroon: Macaroon) -> TokenScope:
    """Fold every caveat of ``macaroon`` into one :class:`TokenScope`."""
    scope = TokenScope()
    for number, caveat in enumerate(macaroon.caveats, 1):
        scope.caveats.append(caveat.text if caveat.first_party else
                             f"third-party caveat at {caveat.location.decode('utf-8', 'replace')}"
                             if caveat.location else "third-party caveat")
        if not caveat.first_party:
            scope.warnings.append(f"caveat {number} is a third-party caveat, which needs a "
                                  "discharge macaroon")
            continue
        try:
            conditions = json.loads(caveat.cid.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            scope.warnings.append(f"caveat {number} is not JSON")
            continue
        if not isinstance(conditions, dict):
            scope.warnings.append(f"caveat {number} is not a JSON object")
            continue
        for key, value in conditions.items():
            if not _fold(scope, key, value):
                scope.warnings.append(f"caveat {number} has a condition the client does not "
                                      f"understand: {key!r}")
    return scope


def _fold(scope: TokenScope, key: str, value: Any) -> bool:
    if key in ("not_before", "not_after"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return False
        if key == "not_before":
            scope.not_before = value if scope.not_before is None else max(scope.not_before, value)
        else:
            scope.not_after = value if scope.not_after is None else min(scope.not_after, value)
        return True
    if key in ("project_allow", "project_deny"):
        if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
            return False
        if key == "project_allow":
            scope.projects = (frozenset(value) if scope.projects is None
                              else scope.projects & frozenset(value))
        else:
            scope.denied = scope.denied | frozenset(value)
        return True
    return False


def read_scope(token: str) -> TokenScope:
    """The scope of a serialised token; raise :class:`NotAMacaroon` if unreadable."""
    return scope_of(Macaroon.parse(token))


def cannot_judge(scope: TokenScope) -> str | None:
    """The one-line warning for a token the client cannot judge, or None."""
    if scope.judged:
        return None
    return ("cannot judge the token: " + "; ".join(scope.warnings)
            + " (SpiroFS 0.3 refuses caveats it does not understand; the server decides)")


# --- narrowing ------------------------------------------------------------------

@dataclass
class Narrowed:
    """A narrowed token and what it allows; ``repr`` never shows the token."""

    token: str = field(repr=False)
    projects: list[str]
    not_before: float | None
    not_after: float
    warnings: list[str] = field(default_factory=list)


def narrow(token: str, projects: Iterable[str], lifetime: float | str,
           not_before: float | str | None = None, now: float | None = None) -> Narrowed:
    """A token allowing only ``projects``, valid ``lifetime`` from ``not_before`` (or now).

    Raises :class:`UsageError` for no project, a bad lifetime or time, a
    project the token does not allow ("you cannot widen a token"), or a
    token that has expired or would never be valid; :class:`NotAMacaroon`
    for a token that is not one.
    """
    from .checks import check_name

    macaroon = Macaroon.parse(token)
    scope = scope_of(macaroon)
    wanted = list(dict.fromkeys(check_name("project", p) for p in projects))
    if not wanted:
        raise UsageError("name at least one project to narrow the token to")
    seconds = parse_lifetime(lifetime)
    now = time.time() if now is None else now
    start = parse_time(not_before) if not_before is not None else None
    end = (now if start is None else start) + seconds
    outside = [p for p in wanted if not scope.allows_project(p)]
    if outside:
        raise UsageError(f"the token does not allow project {', '.join(map(repr, outside))} "
                         f"(it allows: {scope.describe_projects()}); you cannot widen a token, "
                         "only narrow it")
    if scope.not_after is not None and now >= scope.not_after:
        raise UsageError(f"the token expired at {utc(scope.not_after)}; narrowing cannot "
                         "extend it")
    warnings = []
    if scope.not_after is not None and end > scope.not_after:
        if start is not None and start >= scope.not_after:
            raise UsageError(f"not before {utc(start)} is after the token expires "
                             f"({utc(scope.not_after)}): the new token would never be valid")
        warnings.append(f"the token expires at {utc(scope.not_after)}, before the lifetime "
                        "asked for; the new token expires then too")
    if (message := cannot_judge(scope)) is not None:
        warnings.append(message)
    # Whole seconds: the caveat is shown to people (inspect) and a fraction
    # of a second of lifetime is not worth the noise.
    end = round(end)
    if start is not None and start == int(start):
        start = int(start)
    caveat: dict[str, Any] = {} if start is None else {"not_before": start}
    caveat.update(not_after=end, project_allow=wanted)
    narrowed = macaroon.add_first_party_caveat(json.dumps(caveat, separators=(",", ":")))
    expires = end if scope.not_after is None else min(end, scope.not_after)
    return Narrowed(narrowed.serialize(), wanted, start, expires, warnings)


def parse_lifetime(value: float | str) -> float:
    """Seconds from ``30s``, ``15m``, ``2h``, ``1d`` or plain seconds; must be > 0."""
    if isinstance(value, bool):
        raise UsageError(f"cannot read lifetime {value!r}: use e.g. 30s, 15m, 2h, 1d or seconds")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip()
        match = _LIFETIME.fullmatch(text)
        if match is None:
            if text.startswith("-"):
                raise UsageError(f"lifetime {text!r} is negative; it must be more than 0")
            raise UsageError(f"cannot read lifetime {text!r}: use e.g. 30s, 15m, 2h, 1d "
                             "or seconds")
        seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not math.isfinite(seconds) or seconds <= 0:
        raise UsageError(f"lifetime {value!r} must be more than 0")
    return seconds


def parse_time(value: float | str) -> float:
    """Epoch seconds from epoch seconds or an ISO 8601 time (UTC when no zone is given)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise UsageError(f"cannot read time {value!r}")
        return float(value)
    text = str(value).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UsageError(f"cannot read time {text!r}: use ISO 8601 (2026-01-31T12:00:00Z) "
                         "or epoch seconds") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def utc(epoch: float) -> str:
    """``2026-01-31 12:00:00 UTC``."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))
    except (OverflowError, OSError, ValueError):
        return f"epoch {epoch}"


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    except (OverflowError, OSError, ValueError):
        return None


# --- inspection -----------------------------------------------------------------

def inspect(token: str, now: float | None = None) -> dict[str, Any]:
    """What a token allows, as data; never the token, its identifier or signature.

    Keys: ``projects`` (None: any), ``denied``, ``not_before``/``not_after``
    (epoch seconds or None) and their ISO forms ``valid_from``/``expires``,
    ``valid`` (now, by the caveats alone), ``caveats`` (their text, in
    order) and ``warnings``.
    """
    scope = read_scope(token)
    now = time.time() if now is None else now
    expired = scope.not_after is not None and now >= scope.not_after
    early = scope.not_before is not None and now <= scope.not_before
    return {
        "projects": sorted(scope.projects) if scope.projects is not None else None,
        "denied": sorted(scope.denied),
        "not_before": scope.not_before,
        "not_after": scope.not_after,
        "valid_from": _iso(scope.not_before),
        "expires": _iso(scope.not_after),
        "valid": not expired and not early and (scope.projects is None or bool(scope.projects)),
        "expired": expired,
        "caveats": list(scope.caveats),
        "warnings": [w for w in [cannot_judge(scope)] if w],
    }


def describe(info: dict[str, Any], now: float | None = None) -> list[str]:
    """:func:`inspect`'s result as lines for a person."""
    now = time.time() if now is None else now
    projects = info["projects"]
    shown = ("any project" if projects is None else ", ".join(projects) or "no project")
    lines = [f"projects:    {shown}"]
    if info["denied"]:
        lines.append(f"denied:      {', '.join(info['denied'])}")
    lines.append("valid from:  " + (utc(info["not_before"]) if info["not_before"] is not None
                                    else "(no start)"))
    if info["not_after"] is None:
        lines.append("valid until: (no expiry)")
    else:
        left = info["not_after"] - now
        state = f"expired {_span(-left)} ago" if left <= 0 else f"in {_span(left)}"
        lines.append(f"valid until: {utc(info['not_after'])} ({state})")
    lines.append(f"caveats:     {len(info['caveats'])}")
    lines += [f"  {n}. {text}" for n, text in enumerate(info["caveats"], 1)]
    lines += [f"warning: {w}" for w in info["warnings"]]
    return lines


def _span(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d" if days else "", f"{hours}h" if hours else "",
             f"{minutes}m" if minutes else "", f"{secs}s" if secs or not seconds else ""]
    return " ".join(p for p in parts if p)


# --- writing a token -------------------------------------------------------------

def write_private(path: str, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only, never briefly more.

    A temporary file made with mode 0600 in the same directory is renamed
    over ``path``; raises :class:`UsageError` naming the file if it cannot.
    """
    try:
        replace_file(path, text.encode("utf-8"), prefix=".spiro-token-")
    except OSError as exc:
        raise UsageError(f"cannot write {path!r}: {exc.strerror}") from None


# --- what the Salt functions return ------------------------------------------------

def narrow_result(token: str, projects: Any, lifetime: Any, not_before: Any = None,
                  output: str | None = None, now: float | None = None) -> dict[str, Any]:
    """:func:`narrow` as data: ``result``, ``projects``, ``not_before``,
    ``not_after``, ``expires``, ``warnings``, and the new ``token``, or with
    ``output`` the file it was written to (mode 0600) instead.

    ``projects`` is a list or a comma-separated string (Salt's CLI gives
    either); a number is taken as a project name.
    """
    if isinstance(projects, (str, int, float)) and not isinstance(projects, bool):
        projects = [p.strip() for p in str(projects).split(",") if p.strip()]
    elif isinstance(projects, (list, tuple)):
        projects = [str(p) for p in projects]
    elif projects is not None:
        raise UsageError(f"projects must be a list or comma-separated names, not {projects!r}")
    narrowed = narrow(token, projects or [], lifetime, not_before=not_before, now=now)
    ret: dict[str, Any] = {
        "result": True,
        "projects": narrowed.projects,
        "not_before": narrowed.not_before,
        "not_after": narrowed.not_after,
        "expires": _iso(narrowed.not_after),
        "warnings": narrowed.warnings,
    }
    if output:
        write_private(output, narrowed.token + "\n")
        ret["output"] = output
    else:
        ret["token"] = narrowed.token
    return ret
