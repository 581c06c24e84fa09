"""Error types and the exit codes they map to.

Every failure spiro-deploy knows about is one of these, so a caller can catch
:class:`SpiroDeployError` broadly or a subclass narrowly.  Only the CLI's
``main`` turns them into a message and an exit status; nothing deeper prints
or exits.  Messages are one line, name the thing at fault and never contain
the token.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """The CLI's documented exit statuses (README, "Exit codes")."""

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
    """Base of every error spiro-deploy raises on purpose."""

    exit_code: ExitCode = ExitCode.DEPLOY_FAILED

    #: What is known about the deploy when this error happened: ``False`` when
    #: the server cannot have received the bundle, ``True`` when it has it (and
    #: may be deploying or have deployed it), ``None`` when it cannot be known.
    server_has_bundle: bool | None = False

    def __init__(self, message: str, *, server_has_bundle: bool | None = None):
        super().__init__(message)
        if server_has_bundle is not None:
            self.server_has_bundle = server_has_bundle

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


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
                 server_has_bundle: bool | None = None):
        super().__init__(message, server_has_bundle=server_has_bundle)
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
