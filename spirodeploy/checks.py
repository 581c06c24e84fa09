"""Checks made before any byte of a bundle is sent.

SpiroFS 0.3 does not check names and deploys even after answering 403
(README, "Server-side caveats"), so the client is the last line of
defence: a bad name or a token that cannot deploy this project must stop
the upload here.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, InvalidNameError

if TYPE_CHECKING:
    from .tokens import TokenScope


class CheckedName(str):
    """A name :func:`check_name` accepted: checking it again costs nothing.

    The CLI checks its names where they enter, before anything else; the
    deploy flow's own check (the boundary for the Salt faces and library
    callers) then lets them through without judging them twice.
    """

    __slots__ = ()


def check_name(kind: str, name: str) -> CheckedName:
    """Refuse a project or deployment name the server would mishandle.

    ``kind`` is ``"project"`` or ``"deployment"``; returns ``name`` as a
    :class:`CheckedName` (the same rules hold for both kinds).

    SpiroFS 0.3 joins the names, URL-quoted, into
    ``<cachedir>/spirofs/<project>/<deployment>`` and stages a deploy in a
    directory named after the deployment plus random letters, next to it.
    So a name must be one plain directory name of its own: no ``/``, ``\\``
    or ``..``; not ``.`` nor only dots (``.`` is the project's or the spirofs
    directory itself); no leading dot (the server's staging directories for
    such names, and any stray ones a failed deploy leaves, start with a dot);
    no trailing dot (file systems that drop it, such as Windows' and SMB
    shares, would map ``prod.`` onto ``prod``); no white space at either end
    (the server strips it); no control characters; valid UTF-8.
    """
    if type(name) is CheckedName:
        return name
    if name is None or isinstance(name, str) and not name.strip():
        raise InvalidNameError(f"{kind} name is empty")
    if not isinstance(name, str):
        raise InvalidNameError(f"{kind} name must be text, not {type(name).__name__} {name!r}")
    if name != name.strip():
        raise InvalidNameError(f"{kind} name {name!r} has leading or trailing white space")
    for bad, why in (("/", "a '/'"), ("\\", "a backslash"), ("..", "'..'"), ("\0", "a NUL byte")):
        if bad in name:
            raise InvalidNameError(
                f"{kind} name {name!r} contains {why}; the server would write outside "
                f"the {kind}'s directory"
            )
    if not name.strip("."):
        raise InvalidNameError(
            f"{kind} name {name!r} is only dots; the server would deploy onto the directory "
            "above the deployment's, replacing everything in it"
        )
    if name.startswith("."):
        raise InvalidNameError(
            f"{kind} name {name!r} starts with a dot; the server would deploy onto another "
            "directory or one of its own staging directories"
        )
    if name.endswith("."):
        raise InvalidNameError(
            f"{kind} name {name!r} ends with a dot; some file systems drop it and would "
            f"map it onto another {kind}"
        )
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        raise InvalidNameError(f"{kind} name {name!r} contains a control character")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidNameError(f"{kind} name {name!r} is not valid UTF-8") from None
    return CheckedName(name)


def clean_token(token: str | None) -> str:
    """Strip a token read from the environment or a file, and refuse a bad one.

    A trailing newline is normal (``echo tok > file``); anything else that
    is white space, or an empty token, is an error.  The message never
    includes the token.
    """
    if token is None or not token.strip():
        raise ConfigError("no token given", setting="token", fix=": use {token}")
    token = token.strip()
    if any(ch.isspace() for ch in token):
        raise ConfigError("the token contains white space or a line break inside it; "
                          "check the token file or variable")
    return token


def token_files(*named: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """Every file a token may be read from here: none of them may be bundled.

    ``named`` are the token files the user named (each may be a comma list,
    one per server), then ``SPIRO_TOKEN_FILE`` (likewise), whether or not
    the settings read them.  Needs no token and reads no file, so a build
    alone (``--dry-run``, ``spirodeploy.bundle``) leaves out the same files
    as a deploy.
    """
    environ = os.environ if environ is None else environ
    values = [str(value) for value in (*named, environ.get("SPIRO_TOKEN_FILE")) if value]
    # Each whole value too: a single file's name may hold a comma.
    return list(dict.fromkeys(
        path for value in values for path in (value, *value.split(",")) if path.strip()))


def token_caveats(token: str) -> dict[str, Any] | None:
    """The effective first-party caveats of a SpiroFS macaroon, or None if unreadable.

    Every caveat must hold on the server, so they are folded, not merged:
    ``project_allow`` is the intersection of all of them, ``project_deny``
    the union, ``not_after`` the earliest and ``not_before`` the latest
    (:func:`spirodeploy.tokens.scope_of`).  Caveats the client does not
    understand are left out here; :func:`check_token_scope` warns about them.
    """
    from .tokens import NotAMacaroon, read_scope

    try:
        caveats = read_scope(token).effective_caveats()
    except NotAMacaroon:
        return None
    return caveats or None


def check_token_scope(token: str, project: str, now: float | None = None) -> TokenScope:
    """Refuse a token whose own caveats say it cannot deploy ``project``.

    Returns the token's :class:`~spirodeploy.tokens.TokenScope`; its
    ``warnings`` say when the client cannot judge the token (a caveat it
    does not understand, or a token it cannot read at all): the server
    then decides, and the caller should pass the warning on.
    """
    from .tokens import NotAMacaroon, TokenScope, cannot_judge, read_scope

    try:
        scope = read_scope(token)
    except NotAMacaroon as exc:
        return TokenScope(warnings=[f"cannot judge the token: {exc.message}; the server decides"])
    scope.check(project, now)
    message = cannot_judge(scope)
    scope.warnings = [message] if message else []
    return scope
