"""Talking to a SpiroFS server: upload a bundle, stream the deploy's events.

The public calls are :func:`upload` (the seed's API: a generator of
``(event, data)`` pairs) and :func:`check_token`.  Every failure is raised
as one of the types in :mod:`spirodeploy.errors`, with a message that never
includes the token.

Choices worth knowing:

* The bundle is streamed from its file with a ``Content-Length``
  (:mod:`spirodeploy.multipart`), so the body is never copied into
  memory; a progress callback sees the bytes as they go.
* Redirects are not followed: the token would go with them.
* The token is sent through a ``requests`` auth object, so neither
  ``~/.netrc`` nor a ``user:pass@`` in the URL can replace it (requests
  applies both only to a request without one); a URL with user info is
  refused outright.
* ``read_timeout`` is the longest time between *events*: SSE comment lines
  (keep-alives) and other bytes that make no event do not reset it, bytes
  of an event still arriving do.  ``deadline`` bounds the whole call.  Both
  are enforced by a timer that shuts the connection down, so a server that
  dribbles bytes cannot hold a read open past them.
* Only a failure to connect, before any byte went out, is retried.  A POST
  that reached the server is never sent again, as the server may already be
  deploying it.
* The event stream is parsed from raw bytes (:mod:`spirodeploy.sse`).
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from . import __version__
from .checks import check_name, check_token_scope, clean_token
from .errors import (
    BundleRejected,
    ConfigError,
    ConnectError,
    MalformedEvent,
    NotAnEventStream,
    ServerError,
    SpiroDeployError,
    StreamCut,
    StreamTimeout,
    TLSError,
    TokenNotAllowed,
    TokenRejected,
)
from .sse import EventStreamParser

if TYPE_CHECKING:
    from .settings import Settings

__all__ = ("DEFAULT_URL", "check_timeout", "check_token", "check_token_text", "check_url",
           "stream_events", "upload")

DEFAULT_URL = "https://salt:4510/"
#: How long the stream may stay silent.  A highstate can run for a long time
#: with no event in between, so the default is generous; TCP keepalive still
#: notices a server that has gone away.
DEFAULT_READ_TIMEOUT = 3600.0
#: SpiroFS 0.3 over plain HTTP keeps Tornado's default body limit.
PLAIN_HTTP_BODY_LIMIT = 100 * 1024 * 1024
CONNECT_RETRIES = 2
#: Longer limits than this are refused (the socket layer overflows on huge
#: values); "no limit" is said with 0 or inf where there is one.
MAX_SECONDS = 1e8
_CHUNK = 1024 * 1024

SSLVerify = bool | str
ProgressCallback = Callable[[int, "int | None"], None]


@dataclass(frozen=True)
class Connection:
    """Where and how to talk to one server: what every request carries.

    Built from values already checked (by :func:`upload`, :func:`check_token`
    or :meth:`spirodeploy.settings.Settings.resolve`), once per call, and
    passed whole through the internals.  ``repr`` never shows the token.
    """

    url: str
    token: str = field(repr=False)
    #: True (system CAs), False (no verification) or a CA/certificate PEM path.
    sslverify: SSLVerify = True
    connect_timeout: float = 20
    #: The longest the server may go without sending an event; None: no limit.
    read_timeout: float | None = DEFAULT_READ_TIMEOUT
    #: The :func:`time.monotonic` time the whole call must end by; None: no limit.
    until: float | None = None
    connect_retries: int = CONNECT_RETRIES

    @classmethod
    def from_settings(cls, settings: Settings) -> Connection:
        """The connection for resolved ``settings``; their deadline starts now."""
        return cls(settings.server, settings.token, settings.sslverify,
                   settings.connect_timeout, settings.read_timeout,
                   _until(settings.deadline))


def upload(
    url: str,
    token: str,
    tarball: IO[bytes],
    project: str,
    deployment: str,
    highstate: bool = True,
    sslverify: SSLVerify = True,
    connect_timeout: float = 20,
    *,
    read_timeout: float | None = DEFAULT_READ_TIMEOUT,
    progress: ProgressCallback | None = None,
    connect_retries: int = CONNECT_RETRIES,
    deadline: float | None = None,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Upload ``tarball`` to deploy ``project``/``deployment``; yield its events.

    Yields ``(event, data)`` pairs as the server sends them: ``deploy-bundle``,
    then with ``highstate`` the ``highstate-*`` events, or ``exception``.
    ``data`` is always a dict with a human-readable ``msg``.

    ``tarball`` is a binary file object, read from its current position, or
    an iterable of ``bytes`` blocks (a bundle still being built, see
    :mod:`spirodeploy.stream`), sent with chunked transfer encoding as the
    blocks come; if the iterable raises, the upload is dropped unfinished (the
    server deploys nothing) and that error is raised.
    ``sslverify`` is True (system CAs), False (no verification; also the
    only way plain ``http://`` is allowed) or the path of a CA/certificate
    PEM.  ``progress(sent, total)`` is called as the body is sent (``total``
    is None for a streamed bundle until its last block).

    ``read_timeout`` is the longest the server may go without sending an
    event (keep-alive comments do not count; None: no limit), ``deadline``
    the most seconds the whole deploy may take from this call (None: no
    limit); either raises :class:`StreamTimeout`.

    Names and the token's own caveats are checked before anything is sent,
    since SpiroFS 0.3 deploys even after refusing a token with 403.
    """
    check_name("project", project)
    check_name("deployment", deployment)
    token = check_token_text(clean_token(token))
    check_token_scope(token, project)
    url = check_url(url, sslverify)
    connect_timeout = check_timeout("connect timeout", connect_timeout)
    read_timeout = None if read_timeout is None else check_timeout("read timeout", read_timeout,
                                                                   unlimited=True)
    deadline = None if deadline is None else check_timeout("deadline", deadline, unlimited=True)
    conn = Connection(url, token, sslverify, connect_timeout, read_timeout, _until(deadline),
                      connect_retries)
    return _upload(conn, tarball, project, deployment, highstate, progress)


def upload_checked(settings: Settings, tarball: IO[bytes], project: str, deployment: str, *,
                   highstate: bool, progress: ProgressCallback | None = None,
                   ) -> Iterator[tuple[str, dict[str, Any]]]:
    """:func:`upload` without its checks, for the deploy flow that made them already.

    Each check is made once, where its input enters: the names and the
    token's scope by :func:`spirodeploy.deploy.check_before_bundling`, the
    URL, token and timeouts by :meth:`spirodeploy.settings.Settings.resolve`
    (``settings`` is what it returned).  Anything else calls :func:`upload`.
    """
    return _upload(Connection.from_settings(settings), tarball, project, deployment,
                   highstate, progress)


def _upload(conn: Connection, tarball, project, deployment, highstate, progress):
    # A separate generator so that the checks above raise at the call, not at
    # the first next().
    from .multipart import MultipartBody, MultipartStream, SourceFailed

    fields: dict[str, Any] = {"project": project, "deployment": deployment}
    if highstate:
        # The server highstates on any non-empty value, so "off" means absent.
        fields["highstate"] = "1"
    streamed = not hasattr(tarball, "read")
    start = None if streamed else tarball.tell()
    body: Any = None
    session = _session()
    attempt = 0
    while True:
        if streamed:
            # One body for every attempt: a retry only happens before its
            # first byte was taken, so the blocks are all still to come.
            body = body or MultipartStream(fields, "bundle", "bundle.tar", tarball,
                                           "application/x-tar", progress=progress)
        else:
            tarball.seek(start)
            body = MultipartBody(fields, "bundle", "bundle.tar", tarball, "application/x-tar",
                                 progress=progress)
        try:
            response = _send(session, conn, body)
            break
        except _Retryable as retry:
            attempt += 1
            pause = min(2 ** attempt, 10)
            # Nothing was sent: past the deadline, say why it could not connect.
            if attempt > conn.connect_retries or (conn.until is not None
                                                  and time.monotonic() + pause >= conn.until):
                session.close()
                raise retry.error from None
            time.sleep(pause)
        except SourceFailed as failed:
            session.close()
            raise _stopped(failed.error) from None
        except _UploadCut as cut:
            session.close()
            raise _explain_cut(conn.url, body.sent, body.complete,
                               None if streamed else len(body)) from cut.__cause__
        except SpiroDeployError:
            session.close()
            raise
    try:
        # A streamed body's length is only known as far as it was sent.
        _check_response(response, conn.url, body.sent if streamed else len(body),
                        exact=not streamed)
        yield from stream_events(response, read_timeout=conn.read_timeout, until=conn.until)
    finally:
        response.close()
        session.close()


def check_token(url: str, token: str, sslverify: SSLVerify = True,
                connect_timeout: float = 20) -> bool:
    """Ask the server whether ``token`` is valid (``GET /``).

    Returns True, or raises :class:`~spirodeploy.errors.TokenRejected` (or a
    connection error).  It does not tell whether the token may deploy a
    given project; :func:`spirodeploy.checks.token_caveats` reads that.
    """
    token = check_token_text(clean_token(token))
    url = check_url(url, sslverify)
    connect_timeout = check_timeout("connect timeout", connect_timeout)
    # The answer to a GET comes at once: it gets the connect timeout, no more.
    conn = Connection(url, token, sslverify, connect_timeout, read_timeout=connect_timeout)
    with _session() as session:
        response = _request(session, "GET", conn, conn.read_timeout)
        with response:
            if response.status_code == 401:
                raise TokenRejected(f"the server at {safe_url(url)} rejected the token (HTTP 401)")
            if response.status_code != 200:
                raise _status_error(response, url)
    return True


def stream_events(response: Any, *, read_timeout: float | None = None,
                  until: float | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(event, data)`` from a streaming ``requests`` response.

    Raises :class:`StreamCut` if the connection closes in the middle of an
    event or mid-transfer, :class:`StreamTimeout` if the server stays silent
    past the read timeout (or sends only keep-alive comments for
    ``read_timeout`` seconds) or the :func:`time.monotonic` time ``until``
    passes, :class:`MalformedEvent` for data that is not a JSON object.
    """
    import requests

    parser = EventStreamParser()
    raw = response.raw
    if raw.chunked and raw.supports_chunked_reads():
        chunks = raw.read_chunked(_CHUNK, decode_content=True)
    else:
        # read1 returns what has arrived; read(amt) would wait for amt bytes
        # and hold events back.
        chunks = iter(lambda: raw.read1(_CHUNK, decode_content=True), b"")
    watchdog = _Watchdog(_socket_of(response), read_timeout, until)
    try:
        try:
            activity = parser.activity
            for chunk in chunks:
                found = parser.feed(chunk)
                if parser.activity != activity:
                    activity = parser.activity
                    watchdog.alive()
                for sse in found:
                    watchdog.hold()  # the caller's time with an event is not silence
                    yield sse.event, _decode(sse.event, sse.data)
                    watchdog.alive()
                watchdog.check()
        except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError,
                requests.exceptions.Timeout, _urllib3_errors(), OSError) as exc:
            watchdog.check()  # a read broken by the watchdog
            if _is_timeout(exc):
                raise _silence_error() from None
            raise StreamCut("the connection closed before the deploy finished; the server has "
                            "the bundle and may have deployed it") from None
        watchdog.check()  # a read that ended because the watchdog shut the connection
    finally:
        watchdog.stop()
    for sse in parser.close():
        yield sse.event, _decode(sse.event, sse.data)
    if parser.incomplete:
        raise StreamCut("the event stream ended in the middle of an event; the server has "
                        "the bundle and may have deployed it")


def check_url(url: str, sslverify: SSLVerify) -> str:
    """Refuse a malformed URL, and plain HTTP unless verification is off."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigError("no server URL given", setting="server", fix=" ({server} or SPIRO_URL)")
    url = url.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigError(f"malformed server URL {safe_url(url)!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"malformed server URL {safe_url(url)!r}: expected "
                          "https://HOST[:PORT]/")
    if "@" in parts.netloc:
        # requests would send it as Basic auth in place of the token.
        raise ConfigError(f"the server URL {safe_url(url)!r} carries a user name or password; "
                          "SpiroFS only takes the token: remove the 'user:password@' part")
    _check_host(url, parts.hostname)
    if parts.scheme == "http" and sslverify is not False:
        raise ConfigError(f"refusing plain HTTP to {safe_url(url)}: the token and bundle would "
                          "travel unencrypted", setting="insecure",
                          fix="; use https:// or, for testing, {insecure_on}")
    if isinstance(sslverify, str):
        _check_pem(sslverify)
    return url if parts.path else url + "/"


def check_timeout(what: str, value: Any, *, unlimited: bool = False,
                  setting: str | None = None) -> float | None:
    """A number of seconds from ``value`` (a number or its text), or a clear error.

    NaN, negative numbers and absurdly large ones are refused.  With
    ``unlimited`` (the read timeout, the deadline) 0 and ``inf`` mean "no
    limit" and give None; otherwise (the connect timeout) the value must be
    finite and above 0.  With ``setting`` (``"timeout"``, ``"connect_timeout"``,
    ``"deadline"``) the error names that setting in each face's terms instead
    of ``what``.
    """
    def error(problem: str) -> ConfigError:
        if setting is None:
            return ConfigError(f"{what} {problem}")
        return ConfigError(problem, setting=setting, fix=f"{{{setting}}} {{what}}")

    if isinstance(value, bool):
        raise error(f"must be a number of seconds, not {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise error(f"must be a number of seconds, not {value!r}") from None
    if math.isnan(number):
        raise error("must be a number of seconds, not NaN")
    if number < 0:
        raise error("must not be negative")
    if unlimited and (number == 0 or math.isinf(number)):
        return None
    if number == 0 or math.isinf(number):
        raise error("must be more than 0 and finite")
    if number > MAX_SECONDS:
        hint = " (0 or inf for no limit)" if unlimited else ""
        raise error(f"must be at most {MAX_SECONDS:.0f} seconds{hint}")
    return number


def check_token_text(token: str) -> str:
    """Refuse a token that is not printable ASCII; the message never shows it.

    SpiroFS tokens are base64url text.  Anything else (a byte-order mark, an
    accented letter from a bad copy, a control character) would be sent
    mangled or make the HTTP layer fail; returns ``token``.
    """
    for position, char in enumerate(token, 1):
        if not " " < char < "\x7f":
            kind = "a byte-order mark" if char == "\ufeff" else (
                "a control character" if char < " " or char == "\x7f" else "a non-ASCII character")
            raise ConfigError(f"the token is not printable ASCII: it has {kind} at position "
                              f"{position} of {len(token)}; SpiroFS tokens are base64 text, "
                              "check how the token was saved or copied")
    return token


def safe_url(url: str) -> str:
    """``url`` without any user:password part, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


# --- internals ---------------------------------------------------------------

class _Retryable(Exception):
    def __init__(self, error: SpiroDeployError):
        super().__init__(str(error))
        self.error = error


class _UploadCut(Exception):
    pass


def _until(deadline: float | None) -> float | None:
    """The :func:`time.monotonic` time ``deadline`` seconds from now (None: no limit)."""
    return None if deadline is None else time.monotonic() + deadline


def _send(session, conn: Connection, body):
    import requests

    sent_before = body.sent
    until = conn.until
    wait = conn.read_timeout
    if until is not None:
        # The wait for the answer is one socket timeout, so the deadline can
        # only shorten it; the caller checks the deadline again afterwards.
        left = max(until - time.monotonic(), 0.001)
        wait = left if wait is None else min(wait, left)
    try:
        response = _request(session, "POST", conn, wait, data=body,
                            content_type=body.content_type)
    except ConnectError as exc:
        if body.sent == sent_before and not isinstance(exc, TLSError):
            raise _Retryable(exc) from None
        raise
    except requests.exceptions.Timeout as exc:
        if until is not None and time.monotonic() >= until - 0.01:
            raise _deadline_error() from exc
        raise StreamTimeout(
            "the server accepted the upload but did not answer within the read timeout; "
            "the deploy may still be running on the server"
        ) from exc
    except requests.exceptions.RequestException as exc:
        raise _UploadCut() from exc
    if until is not None and time.monotonic() >= until:
        response.close()
        raise _deadline_error()
    return response


def _request(session, method, conn: Connection, read_timeout, data=None, content_type=None):
    """One request over ``conn``; ``read_timeout`` is this request's socket wait."""
    import requests
    from urllib3.exceptions import LocationValueError

    url, token, sslverify, connect_timeout = (conn.url, conn.token, conn.sslverify,
                                              conn.connect_timeout)
    headers = {
        "Accept": "text/event-stream",
        "Cache-Control": "no-cache",
        "User-Agent": f"spiro-deploy/{__version__}",
    }
    if content_type:
        headers["Content-Type"] = content_type
    proxy = _proxy_for(session, url)
    if proxy and any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in proxy):
        # Caught here because what urllib3 and http.client do with it differs
        # between Python versions (3.10 fails as a connection error).
        raise ConfigError(f"the proxy setting from the environment ({safe_url(proxy)}) is not "
                          "usable: it contains white space or a control character") from None
    try:
        with warnings.catch_warnings():
            if sslverify is False:
                # The caller chose insecure mode and has warned in its own
                # words; urllib3's warning would repeat it with a source line.
                from urllib3.exceptions import InsecureRequestWarning

                warnings.simplefilter("ignore", InsecureRequestWarning)
            return session.request(
                method, url, data=data, headers=headers, verify=sslverify, stream=True,
                timeout=(connect_timeout, read_timeout), allow_redirects=False,
                auth=_bearer(token),
            )
    except requests.exceptions.InvalidSchema as exc:
        # The only scheme left to fail after check_url is a proxy's.
        proxy = _proxy_for(session, url)
        if proxy and proxy.lower().startswith("socks"):
            raise ConfigError(
                f"the environment sets a SOCKS proxy ({safe_url(proxy)}) for {safe_url(url)}, "
                "but SOCKS support is not installed: pip install 'requests[socks]', or exempt "
                "the server with NO_PROXY") from None
        raise ConfigError(f"cannot send to {safe_url(url)}: {_scrub_userinfo(str(exc))}") from None
    except (requests.exceptions.InvalidURL, requests.exceptions.InvalidHeader,
            requests.exceptions.MissingSchema, LocationValueError, UnicodeError) as exc:
        # Anything requests or urllib3 refuses in the URL or a proxy setting
        # (check_url has vetted the server URL, so it is usually the proxy).
        proxy = _proxy_for(session, url)
        where = (f"the proxy setting from the environment ({safe_url(proxy)})" if proxy
                 else f"the server URL {safe_url(url)!r}")
        raise ConfigError(f"{where} is not usable: {_scrub_userinfo(_reason(exc))}") from None
    except requests.exceptions.ProxyError as exc:
        proxy = _proxy_for(session, url)
        raise ConnectError(f"cannot connect to {safe_url(url)} through the proxy "
                           f"{safe_url(proxy or '?')} (from the environment): "
                           f"{_scrub_userinfo(_reason(exc))}") from None
    except requests.exceptions.SSLError as exc:
        raise TLSError(f"TLS verification of {safe_url(url)} failed ({_reason(exc)})",
                       setting="ssl_cert", fix="; use {ssl_cert_file} for a private CA") from None
    except requests.exceptions.ConnectTimeout:
        raise ConnectError(f"timed out connecting to {safe_url(url)} "
                           f"after {connect_timeout:g}s") from None
    except requests.exceptions.ConnectionError as exc:
        if data is not None and getattr(data, "sent", 0):
            raise  # the upload had started: the caller explains the cut
        raise ConnectError(f"cannot connect to {safe_url(url)}: "
                           f"{_scrub_userinfo(_reason(exc))}") from None


def _bearer(token: str):
    """The token as a requests auth object.

    requests fills in ``~/.netrc`` or the URL's user info only when a request
    has no auth object, and an auth object is applied last, so this header
    is the one sent whatever the environment holds.
    """
    from requests.auth import AuthBase

    class BearerAuth(AuthBase):
        def __call__(self, request):
            request.headers["Authorization"] = f"Bearer {token}"
            return request

        def __repr__(self) -> str:
            return "BearerAuth(***)"

    return BearerAuth()


def _proxy_for(session, url: str) -> str | None:
    """The proxy requests takes from the environment for ``url``, if any."""
    from requests.utils import select_proxy

    try:
        settings = session.merge_environment_settings(url, {}, True, None, None)
        return select_proxy(url, settings.get("proxies") or {})
    except (ValueError, LookupError, OSError):  # only used to word a message
        return None


def _scrub_userinfo(text: str) -> str:
    """``text`` with the ``user:password@`` of any URL in it removed."""
    import re

    return re.sub(r"(//)[^/@\s]*@", r"\1", text)


def _check_host(url: str, host: str) -> None:
    """Refuse a host name the HTTP layer cannot encode (before anything is built)."""
    if host.startswith("[") or ":" in host:
        return  # an IPv6 literal; urlsplit has parsed it
    try:
        if host.isascii():
            ascii_host = host
        else:
            import idna  # what requests encodes names with (IDNA 2008)

            ascii_host = idna.encode(host, uts46=True).decode("ascii")
    except UnicodeError:  # idna.IDNAError is one
        raise ConfigError(f"malformed server URL {safe_url(url)!r}: the host name is not a "
                          "valid DNS name") from None
    labels = ascii_host.rstrip(".").split(".")
    if not all(label and len(label) <= 63 and label.replace("-", "").replace("_", "").isalnum()
               and not label.startswith("-") and not label.endswith("-") for label in labels):
        raise ConfigError(f"malformed server URL {safe_url(url)!r}: the host name is not a "
                          "valid DNS name")


class _Watchdog:
    """Shuts a stream's connection down when it has been silent too long or is out of time.

    A socket timeout cannot do this: it is reset by every byte, including
    keep-alive comments, and a server can dribble one HTTP chunk so slowly
    that no read returns.  Shutting the socket down makes any blocked read
    return at once; :meth:`check` then raises the right StreamTimeout.
    """

    def __init__(self, sock: socket.socket | None, silence: float | None,
                 until: float | None):
        self._sock = sock
        self._silence = silence
        self._until = until
        self._last = time.monotonic()
        self._held = False
        self._stopped = False
        self._idle = False  # the thread waits for alive() or stop(), with no timeout
        self.fired: str | None = None
        self._cond = threading.Condition()
        self._thread = None
        if silence is not None or until is not None:
            self._thread = threading.Thread(target=self._run, name="spirodeploy-watchdog",
                                            daemon=True)
            self._thread.start()

    def alive(self) -> None:
        """The server sent part of an event, or the caller is back: silence starts again."""
        with self._cond:
            self._last = time.monotonic()
            self._held = False
            # A timed wait finds the later silence when it wakes; waking the
            # thread at every event (20,000 for a big fleet) made the two
            # threads trade the GIL and cost a third of the client's time.
            if self._idle:
                self._cond.notify()

    def hold(self) -> None:
        """The caller has an event: no silence until :meth:`alive` (the deadline runs on)."""
        with self._cond:
            self._held = True

    def check(self) -> None:
        """Raise StreamTimeout if a limit has passed."""
        with self._cond:
            if self.fired is None:
                self.fired = self._due(time.monotonic())
            fired = self.fired
        if fired == "deadline":
            raise _deadline_error()
        if fired == "silence":
            raise _silence_error()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _due(self, now: float) -> str | None:
        if self._until is not None and now >= self._until:
            return "deadline"
        if self._silence is not None and not self._held and now - self._last >= self._silence:
            return "silence"
        return None

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                self.fired = self._due(now)
                if self.fired:
                    break
                silent = None if self._silence is None or self._held else self._last + self._silence
                times = [t for t in (self._until, silent) if t is not None]
                # With nothing due (held, no deadline) alive() or stop() wakes it.
                self._idle = not times
                self._cond.wait(max(min(times) - now, 0.001) if times else None)
            else:
                return
        if self._sock is not None:
            try:
                # The base class's shutdown: an SSLSocket's own would drop its
                # SSL object under the reading thread's feet.
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
            except OSError:
                pass


def _socket_of(response: Any) -> socket.socket | None:
    connection = getattr(getattr(response, "raw", None), "connection", None)
    sock = getattr(connection, "sock", None)
    return sock if isinstance(sock, socket.socket) else None


def _silence_error() -> StreamTimeout:
    return StreamTimeout("the server sent no event for longer than the read timeout (keep-alive "
                         "comments do not count); the deploy may still be running on the "
                         "server", setting="timeout", fix=" (raise it with {timeout})")


def _deadline_error() -> StreamTimeout:
    return StreamTimeout("the deadline passed before the deploy finished; the deploy may still "
                         "be running on the server", setting="deadline",
                         fix=" (raise it with {deadline})")


def _check_response(response, url: str, total: int, exact: bool = True) -> None:
    status = response.status_code
    if status == 200:
        content_type = response.headers.get("Content-Type", "")
        if content_type.split(";")[0].strip().lower() != "text/event-stream":
            raise NotAnEventStream(
                f"the server at {safe_url(url)} answered 200 with {content_type or 'no type'!r}, "
                "not an event stream; is this a SpiroFS server? It may have the bundle")
        return
    if status == 401:
        raise TokenRejected(f"the server at {safe_url(url)} rejected the token (HTTP 401); "
                            "nothing was deployed", server_has_bundle=False)
    if status == 403:
        raise TokenNotAllowed(
            "the token may not deploy this project (HTTP 403). Caution: SpiroFS 0.3 "
            "deploys the bundle even after refusing it; check the deployment",
            server_has_bundle=True)
    raise _status_error(response, url, total, exact)


def _status_error(response, url: str, total: int = 0, exact: bool = True) -> ServerError:
    status = response.status_code
    body = _body_text(response)
    if 300 <= status < 400:
        where = response.headers.get("Location", "?")
        return ServerError(f"the server redirected to {safe_url(where)}; not following it with "
                           "the token", status=status, body=body, setting="server",
                           fix=" (use that URL as {server})")
    detail = f": {body}" if body else ""
    if status in (400, 413):
        hint = ""
        if url.startswith("http://") and total > PLAIN_HTTP_BODY_LIMIT:
            size = "is" if exact else "went past"
            hint = (f"; over plain HTTP SpiroFS accepts at most 100 MB and this upload {size} "
                    f"{total / 1048576:.0f} MiB: use HTTPS (up to 10 GiB)")
        return BundleRejected(f"the server rejected the bundle (HTTP {status}){detail}{hint}",
                              status=status, body=body, server_has_bundle=False)
    return ServerError(f"the server answered HTTP {status}{detail}", status=status, body=body,
                       server_has_bundle=None)


def _stopped(error: BaseException) -> BaseException:
    """The build behind a streamed upload failed: say that nothing was deployed."""
    if isinstance(error, SpiroDeployError):
        error.add("; the upload was stopped unfinished, so the server deploys nothing")
        error.server_has_bundle = False
    return error


def _explain_cut(url: str, sent: int, whole: bool, total: int | None = None) -> SpiroDeployError:
    if not whole:
        of = f" of {total}" if total is not None else ""
        message = (f"the connection closed during the upload after {sent}{of} bytes; "
                   "the server did not get the whole bundle and deployed nothing")
        has_bundle: bool | None = False
    else:
        message = ("the server closed the connection after the upload without answering; "
                   "it may or may not deploy the bundle")
        has_bundle = None
    if url.startswith("http://") and sent > PLAIN_HTTP_BODY_LIMIT:
        message += ("; over plain HTTP SpiroFS accepts at most 100 MB: use HTTPS "
                    "(up to 10 GiB)")
    return ConnectError(message, server_has_bundle=has_bundle)


class EventData(dict):
    """An event's data: the JSON object, and the text it was decoded from.

    ``source`` lets a printer pass the server's JSON through as it came
    (``--json`` on a fleet would otherwise encode hundreds of MiB again).
    """

    __slots__ = ("source",)

    def __init__(self, value: dict[str, Any], source: str) -> None:
        super().__init__(value)
        self.source = source


def _decode(event: str, data: str) -> EventData:
    try:
        value = json.loads(data)
    except ValueError:
        raise MalformedEvent(f"the server sent a {event!r} event whose data is not JSON: "
                             f"{data[:200]!r}") from None
    if not isinstance(value, dict):
        raise MalformedEvent(f"the server sent a {event!r} event whose data is not a JSON "
                             f"object: {data[:200]!r}")
    return EventData(value, data)


def _body_text(response, limit: int = 500) -> str:
    """The start of an error body, as text (Tornado's error pages are HTML)."""
    import re

    try:
        raw = response.raw.read(64 * 1024, decode_content=True) or b""
    except Exception:  # the body is only a hint; never let it hide the status
        return ""
    text = raw.decode("utf-8", "replace")
    if "<" in text:
        title = re.search(r"<title>(.*?)</title>", text, re.S | re.I)
        text = title.group(1) if title else re.sub(r"<[^>]+>", " ", text)
    # A body can echo the request's headers (a proxy's 407 page, a debugging
    # server): mask the token before the cut, so no piece of it survives it.
    from .sanitize import scrub

    sent = getattr(getattr(response, "request", None), "headers", None) or {}
    auth = str(sent.get("Authorization", ""))
    text = scrub(text, [auth, auth.partition(" ")[2]])
    return " ".join(text.split())[:limit]


def _reason(exc: BaseException) -> str:
    """The innermost readable reason of a requests/urllib3 error."""
    seen = exc
    while True:
        inner = getattr(seen, "reason", None) or seen.__cause__ or seen.__context__
        if inner is None or inner is seen or not isinstance(inner, BaseException):
            break
        seen = inner
    if isinstance(seen, socket.gaierror) or "NameResolution" in type(seen).__name__ \
            or "Name or service not known" in str(seen):
        return "the host name could not be resolved"
    if isinstance(seen, ConnectionRefusedError) or "Connection refused" in str(seen):
        return "connection refused"
    text = str(seen)
    # urllib3 wraps reasons as "<object at 0x...>: message".
    return text.split(": ", 1)[-1] if ">: " in text else text


def _is_timeout(exc: BaseException) -> bool:
    import requests
    from urllib3.exceptions import ReadTimeoutError

    while exc is not None:
        if isinstance(exc, (requests.exceptions.Timeout, ReadTimeoutError, socket.timeout)):
            return True
        exc = exc.__cause__ or exc.__context__ or getattr(exc, "reason", None)
        if not isinstance(exc, BaseException):
            return False
    return False


def _urllib3_errors():
    from urllib3.exceptions import HTTPError

    return HTTPError


def _check_pem(path: str) -> None:
    try:
        with open(path, "rb") as handle:
            head = handle.read(1024 * 1024)
    except OSError as exc:
        raise ConfigError(f"{path!r}: {exc.strerror}", setting="ssl_cert",
                          fix="cannot read {ssl_cert} file {what}") from None
    if b"-----BEGIN CERTIFICATE-----" not in head:
        raise ConfigError(f"{path!r} is not a PEM certificate", setting="ssl_cert",
                          fix="{ssl_cert} file {what}")


def _urllib3_major() -> int:
    import urllib3

    try:
        return int(urllib3.__version__.split(".")[0])
    except (AttributeError, ValueError):
        return 0


class _SendsStreamsWhole:
    """Mixed into urllib3's connections: a streamed bundle frames its own chunks.

    For a body of unknown length urllib3 copies every chunk into a new object
    with its framing (2.x: ``b"%x\\r\\n%b\\r\\n" % ...``; 1.26 a bytearray):
    the whole bundle is copied once more, and in the 64 KiB pieces that keep
    those copies off fresh memory that is 16,384 chunks a GiB, each sent as
    four full TLS records and one of 7 bytes that the server reads on its
    own.  These connections hand a
    :class:`~spirodeploy.multipart.MultipartStream` their ``send`` instead
    (:meth:`~spirodeploy.multipart.MultipartStream.send_chunked`): the
    builder's 1 MiB buffers go out whole and uncopied.  urllib3 still
    sends the headers first and the final empty chunk last; any other body
    is sent as urllib3 sends it.

    While the body goes out the socket is corked (Linux ``TCP_CORK``): TLS
    writes each 16 KiB record on its own, and with ``TCP_NODELAY`` (urllib3
    sets it) each record's last partial segment went out alone; corked, only
    full segments go until the body is done.  On loopback (64 KiB segments)
    that wakes the server 4 times less often; with both cores busy (the
    benchmark VM) the sink server took a fifth less CPU a GiB (0.67-0.73 s
    instead of 0.80-0.88 s) and there were half as many context switches.
    """

    def request(self, method, url, body=None, headers=None, **kwargs):
        if kwargs.get("chunked"):
            body = self._zero_copy(body)
        return super().request(method, url, body, headers, **kwargs)

    def request_chunked(self, method, url, body=None, headers=None, **kwargs):
        # urllib3 1.26's chunked request (2.x's calls request(chunked=True)).
        return super().request_chunked(method, url, self._zero_copy(body), headers, **kwargs)

    def _zero_copy(self, body):
        from .multipart import MultipartStream

        return self._corked(body) if isinstance(body, MultipartStream) else body

    def _corked(self, body) -> Iterator[bytes]:
        # Runs inside urllib3's body loop: the headers are out, the socket open.
        sock = self.sock
        corked = _cork(sock, True)
        try:
            yield from body.send_chunked(self.send)
        finally:
            if corked:
                _cork(sock, False)  # sends what is held at once


def _cork(sock, on: bool) -> bool:
    """Set ``TCP_CORK`` on ``sock`` (True if it could be: Linux, TCP)."""
    option = getattr(socket, "TCP_CORK", None)
    setsockopt = getattr(sock, "setsockopt", None)  # pyOpenSSL's sockets have none
    if option is None or setsockopt is None:
        return False
    try:
        setsockopt(socket.IPPROTO_TCP, option, int(on))
    except OSError:  # not TCP, or closed already
        return False
    return True


def _whole_chunk_pools() -> dict[str, type]:
    """urllib3's pool classes by scheme, with :class:`_SendsStreamsWhole` connections."""
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class _HTTPConnection(_SendsStreamsWhole, HTTPConnectionPool.ConnectionCls):
        pass

    class _HTTPSConnection(_SendsStreamsWhole, HTTPSConnectionPool.ConnectionCls):
        pass

    class _HTTPPool(HTTPConnectionPool):
        ConnectionCls = _HTTPConnection

    class _HTTPSPool(HTTPSConnectionPool):
        ConnectionCls = _HTTPSConnection

    return {"http": _HTTPPool, "https": _HTTPSPool}


def _session():
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection

    class _Adapter(HTTPAdapter):
        # Keepalive lets a silent stream notice a dead server; a large
        # blocksize makes the upload send the file in big writes.
        def init_poolmanager(self, *args, **kwargs):
            options = list(HTTPConnection.default_socket_options)
            options.append((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1))
            for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 30), ("TCP_KEEPCNT", 5)):
                if hasattr(socket, name):
                    options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
            kwargs["socket_options"] = options
            if _urllib3_major() >= 2:
                # urllib3 1.26 (Debian 12's, the container image's) has no
                # blocksize and refuses the keyword.
                kwargs["blocksize"] = _CHUNK
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = _whole_chunk_pools()

    session = requests.Session()
    adapter = _Adapter(max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
