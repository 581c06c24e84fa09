"""Checks made before any byte of a bundle is sent.

SpiroFS 0.3 does not check names and deploys even after answering 403
(../shared/notes/spirofs-server.md), so the client is the last line of
defence: a bad name or a token that cannot deploy this project must stop
the upload here.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Any

from .errors import ConfigError, InvalidNameError, TokenExpired, TokenNotAllowed


def check_name(kind: str, name: str) -> str:
    """Refuse a project or deployment name the server would mishandle.

    ``kind`` is ``"project"`` or ``"deployment"``; returns ``name``.
    """
    if not isinstance(name, str) or not name.strip():
        raise InvalidNameError(f"{kind} name is empty")
    if name != name.strip():
        raise InvalidNameError(f"{kind} name {name!r} has leading or trailing white space")
    for bad, why in (("/", "a '/'"), ("\\", "a backslash"), ("..", "'..'"), ("\0", "a NUL byte")):
        if bad in name:
            raise InvalidNameError(
                f"{kind} name {name!r} contains {why}; the server would write outside "
                f"the {kind}'s directory"
            )
    if any(ord(ch) < 32 for ch in name):
        raise InvalidNameError(f"{kind} name {name!r} contains a control character")
    return name


def clean_token(token: str | None) -> str:
    """Strip a token read from the environment or a file, and refuse a bad one.

    A trailing newline is normal (``echo tok > file``); anything else that
    is white space, or an empty token, is an error.  The message never
    includes the token.
    """
    if token is None or not token.strip():
        raise ConfigError("no token given: use --token-file, SPIRO_TOKEN_FILE, --token or SPIRO_TOKEN")
    token = token.strip()
    if any(ch.isspace() for ch in token):
        raise ConfigError("the token contains white space or a line break inside it; "
                          "check the token file or variable")
    return token


def token_caveats(token: str) -> dict[str, Any] | None:
    """The first-party caveats of a SpiroFS macaroon, or None if unreadable.

    SpiroFS tokens are pymacaroons v1 macaroons: base64url of packets
    ``<4 hex digits length><key> <value>\\n``.  Caveats (``cid`` packets)
    are readable without the key; SpiroFS puts one JSON object there with
    ``not_before``, optional ``not_after`` and ``project_allow``.
    """
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    caveats: dict[str, Any] = {}
    pos = 0
    try:
        while pos < len(raw):
            size = int(raw[pos:pos + 4], 16)
            if size < 5 or pos + size > len(raw):
                return None
            packet = raw[pos + 4:pos + size - 1]  # without the trailing newline
            pos += size
            key, _, value = packet.partition(b" ")
            if key == b"cid":
                parsed = json.loads(value.decode("utf-8"))
                if isinstance(parsed, dict):
                    caveats.update(parsed)
    except (ValueError, UnicodeDecodeError):
        return None
    return caveats or None


def check_token_scope(token: str, project: str, now: float | None = None) -> None:
    """Refuse a token whose own caveats say it cannot deploy ``project``.

    Tokens whose caveats cannot be read are left to the server to judge.
    """
    caveats = token_caveats(token)
    if not caveats:
        return
    now = time.time() if now is None else now
    not_after = caveats.get("not_after")
    if isinstance(not_after, (int, float)) and now >= not_after:
        expired = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(not_after))
        raise TokenExpired(f"the token expired at {expired}; issue a new one "
                           "(salt-run spiro.issue_token)")
    not_before = caveats.get("not_before")
    if isinstance(not_before, (int, float)) and now < not_before - 300:
        raise TokenExpired("the token is not valid yet (its not_before is in the future); "
                           "check the clocks")
    allowed = caveats.get("project_allow")
    if isinstance(allowed, list) and project not in allowed:
        raise TokenNotAllowed(
            f"the token may not deploy project {project!r} (it allows: "
            f"{', '.join(map(str, allowed)) or 'no project'}); nothing was sent"
        )
    denied = caveats.get("project_deny")
    if isinstance(denied, list) and project in denied:
        raise TokenNotAllowed(f"the token may not deploy project {project!r}; nothing was sent")
