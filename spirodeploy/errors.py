"""Error types and the exit codes they map to.

Every failure spiro-deploy knows about is one of these, so a caller can catch
:class:`SpiroDeployError` broadly or a subclass narrowly.  Only the CLI's
``main`` turns them into a message and an exit status; nothing deeper prints
or exits.  Messages are one line, name the thing at fault and never contain
the token.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from enum import IntEnum

#: How the ``spiro-deploy`` command names each setting an error's fix
#: mentions.  A message names settings this way unless a face renders it in
#: its own terms (:func:`naming`; the Salt faces' names are in
#: :data:`spirodeploy.saltsupport.SALT_NAMES`).  ``token`` is how to give a
#: token at all; ``insecure_on`` how to turn verification off; ``ssl_cert_file``
#: how to name a CA file.
CLI_NAMES: dict[str, str] = {
    "token": "--token-file, SPIRO_TOKEN_FILE, --token or SPIRO_TOKEN",
    "server": "--server",
    "insecure": "--insecure",
    "insecure_on": "--insecure",
    "ssl_cert": "--ssl-cert",
    "ssl_cert_file": "--ssl-cert FILE",
    "timeout": "--timeout",
    "connect_timeout": "--connect-timeout",
    "deadline": "--deadline",
    "allow_empty": "--allow-empty",
    "include_source": "--include-source",
    "include_source_git": "--include-source git",
    "root": "--directory",
    "server_each": "--server",
    "token_each": "--token",
    "token_file_each": "--token-file",
    "ssl_cert_each": "--ssl-cert",
    "rollback_to": "--to",
    "force": "--force",
    "junit": "--junit",
    "html": "--html",
}

_NAMES: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "spirodeploy_setting_names", default=CLI_NAMES)


@contextlib.contextmanager
def naming(names: Mapping[str, str]) -> Iterator[None]:
    """Errors raised inside the block name settings as ``names`` does.

    A face (the Salt modules) wraps its call in this, so that the messages
    the flow records as text (a report's ``error``, a server's outcome)
    name the face's settings, not the command line's.
    """
    token = _NAMES.set(names)
    try:
        yield
    finally:
        _NAMES.reset(token)


class ExitCode(IntEnum):
    """The CLI's documented exit statuses (README, "Exit codes")."""

    def __str__(self) -> str:
        # The number, as IntEnum prints on Python 3.11+ (3.10 printed the name).
        return str(self.value)

    OK = 0
    #: The server raised, or a minion failed its highstate.
    DEPLOY_FAILED = 1
    #: Bad command line or bad input (names, paths, bundle contents, settings).
    USAGE = 2
    #: The deploy finished but some minions never reported.
    UNREPORTED = 3
    #: Could not connect: refused, DNS, TLS verification, timeout on connect.
    CONNECTION = 4
    #: Token missing, rejected (401) or not allowed for the project (403).
    AUTH = 5
    #: The event stream was cut, stalled or was not a valid event stream.
    STREAM = 6
    #: The server refused the upload with some other HTTP status (400, 5xx).
    SERVER = 7
    #: Interrupted by SIGINT or SIGTERM.
    INTERRUPTED = 130


class SpiroDeployError(Exception):
    """Base of every error spiro-deploy raises on purpose.

    The message says what is wrong.  When a setting fixes it, :attr:`setting`
    names that setting (``"token"``, ``"allow_empty"``, ``"insecure"``,
    ``"ssl_cert"``, ``"timeout"``, ``"deadline"``, ``"include_source"``,
    ``"server"``, ``"root"``) and ``fix`` is the sentence that says how, with
    ``{token}``-style fields each face fills with its own names
    (:meth:`in_terms`; ``str()`` and :attr:`message` use the names of the
    :func:`naming` the error was raised in, by default :data:`CLI_NAMES`).
    """

    exit_code: ExitCode = ExitCode.DEPLOY_FAILED

    #: What is known about the deploy when this error happened: ``False`` when
    #: the server cannot have received the bundle, ``True`` when it has it (and
    #: may be deploying or have deployed it), ``None`` when it cannot be known.
    server_has_bundle: bool | None = False

    #: The setting that fixes this error, or None.
    setting: str | None = None

    def __init__(self, message: str, *, server_has_bundle: bool | None = None,
                 setting: str | None = None, fix: str = ""):
        self.what = message
        # The fix follows the message, or places it with a {what} field.
        self.fix = fix if "{what}" in fix else "{what}" + fix
        self.more = ""
        # The face in whose terms the error was raised (see naming()).
        self.names = _NAMES.get()
        super().__init__(self.in_terms(CLI_NAMES))
        if server_has_bundle is not None:
            self.server_has_bundle = server_has_bundle
        if setting is not None:
            self.setting = setting

    def in_terms(self, names: Mapping[str, str]) -> str:
        """The message, its fix naming each setting as ``names`` does."""
        if not hasattr(self, "what"):  # built without __init__ (copy, unpickle)
            return str(self.args[0]) if self.args else self.__class__.__name__
        # format_map fills {what} with the text as it is: braces in it stay.
        return self.fix.format_map({**names, "what": self.what}) + self.more

    def add(self, text: str) -> None:
        """Append ``text`` to the message (what became of the deploy)."""
        self.more += text
        self.args = (self.in_terms(CLI_NAMES),)

    @property
    def message(self) -> str:
        # A face's terms win: those the error was raised in, else those it is
        # shown in (an error raised in a builder thread, shown by a Salt face).
        names = getattr(self, "names", CLI_NAMES)
        return self.in_terms(names if names is not CLI_NAMES else _NAMES.get())

    def __str__(self) -> str:
        return self.message


# --- input and configuration -------------------------------------------------

class UsageError(SpiroDeployError):
    """The user asked for something that cannot work; nothing was sent."""

    exit_code = ExitCode.USAGE


class ConfigError(UsageError):
    """A setting is wrong: server URL, token, certificate file."""


class InvalidNameError(UsageError):
    """A project or deployment name the server would mishandle."""


class BundleError(UsageError):
    """A bundle cannot be built or is unsafe to upload (names the file)."""


# --- talking to the server ---------------------------------------------------

class ConnectError(SpiroDeployError):
    """The server could not be reached; it did not get the bundle."""

    exit_code = ExitCode.CONNECTION


class TLSError(ConnectError):
    """The server's certificate could not be verified."""


class AuthError(SpiroDeployError):
    """Authentication or authorisation failed."""

    exit_code = ExitCode.AUTH


class TokenRejected(AuthError):
    """The server did not accept the token (HTTP 401)."""


class TokenNotAllowed(AuthError):
    """The token may not deploy this project (HTTP 403, or its own caveats).

    SpiroFS 0.3 deploys the bundle even after answering 403, so when the
    server said it, :attr:`server_has_bundle` is ``True``.
    """


class TokenExpired(AuthError):
    """The token's own caveats say it has expired; nothing was sent."""


class ServerError(SpiroDeployError):
    """The server answered the upload with an error status."""

    exit_code = ExitCode.SERVER

    def __init__(self, message: str, *, status: int | None = None, body: str = "",
                 server_has_bundle: bool | None = None, setting: str | None = None,
                 fix: str = ""):
        super().__init__(message, server_has_bundle=server_has_bundle, setting=setting, fix=fix)
        self.status = status
        self.body = body


class BundleRejected(ServerError):
    """The server refused the bundle (HTTP 400)."""


class StreamError(SpiroDeployError):
    """The event stream went wrong after the server accepted the upload."""

    exit_code = ExitCode.STREAM
    server_has_bundle = True


class NotAnEventStream(StreamError):
    """A 200 answer that is not ``text/event-stream``."""

    server_has_bundle = None


class StreamCut(StreamError):
    """The connection closed before the deploy finished."""


class StreamTimeout(StreamError):
    """The server sent nothing for longer than the read timeout."""


class MalformedEvent(StreamError):
    """An event whose data is not a JSON object."""


class Interrupted(SpiroDeployError):
    """The user or the system stopped the deploy (SIGINT, SIGTERM)."""

    exit_code = ExitCode.INTERRUPTED
    server_has_bundle = None
