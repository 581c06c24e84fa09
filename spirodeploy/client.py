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
* Only a failure to connect, before any byte went out, is retried.  A POST
  that reached the server is never sent again, as the server may already be
  deploying it.
* The event stream is parsed from raw bytes (:mod:`spirodeploy.sse`).
"""

from __future__ import annotations

import json
import socket
import time
import warnings
from typing import IO, Any, Callable, Iterator, Union
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

__all__ = ("upload", "check_token", "stream_events", "DEFAULT_URL")

DEFAULT_URL = "https://salt:4510/"
#: How long the stream may stay silent.  A highstate can run for a long time
#: with no event in between, so the default is generous; TCP keepalive still
#: notices a server that has gone away.
DEFAULT_READ_TIMEOUT = 3600.0
#: SpiroFS 0.3 over plain HTTP keeps Tornado's default body limit.
PLAIN_HTTP_BODY_LIMIT = 100 * 1024 * 1024
CONNECT_RETRIES = 2
_CHUNK = 1024 * 1024

SSLVerify = Union[bool, str]
ProgressCallback = Callable[[int, "int | None"], None]


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

    Names and the token's own caveats are checked before anything is sent,
    since SpiroFS 0.3 deploys even after refusing a token with 403.
    """
    check_name("project", project)
    check_name("deployment", deployment)
    token = clean_token(token)
    check_token_scope(token, project)
    url = check_url(url, sslverify)
    return _upload(url, token, tarball, project, deployment, highstate, sslverify,
                   connect_timeout, read_timeout, progress, connect_retries)


def _upload(url, token, tarball, project, deployment, highstate, sslverify,
            connect_timeout, read_timeout, progress, connect_retries):
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
            response = _send(session, url, token, body, sslverify, connect_timeout, read_timeout)
            break
        except _Retryable as retry:
            attempt += 1
            if attempt > connect_retries:
                session.close()
                raise retry.error from None
            time.sleep(min(2 ** attempt, 10))
        except SourceFailed as failed:
            session.close()
            raise _stopped(failed.error) from None
        except _UploadCut as cut:
            session.close()
            raise _explain_cut(url, body.sent, body.complete,
                               None if streamed else len(body)) from cut.__cause__
    try:
        # A streamed body's length is only known as far as it was sent.
        _check_response(response, url, body.sent if streamed else len(body), exact=not streamed)
        yield from stream_events(response)
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
    token = clean_token(token)
    url = check_url(url, sslverify)
    with _session() as session:
        response = _request(session, "GET", url, token, sslverify, connect_timeout, connect_timeout)
        with response:
            if response.status_code == 401:
                raise TokenRejected(f"the server at {safe_url(url)} rejected the token (HTTP 401)")
            if response.status_code != 200:
                raise _status_error(response, url)
    return True


def stream_events(response: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(event, data)`` from a streaming ``requests`` response.

    Raises :class:`StreamCut` if the connection closes in the middle of an
    event or mid-transfer, :class:`StreamTimeout` if the server stays silent
    past the read timeout, :class:`MalformedEvent` for data that is not a
    JSON object.
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
    try:
        for chunk in chunks:
            for sse in parser.feed(chunk):
                yield sse.event, _decode(sse.event, sse.data)
    except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError,
            requests.exceptions.Timeout, _urllib3_errors()) as exc:
        if _is_timeout(exc):
            raise StreamTimeout(
                "the server sent nothing for longer than the read timeout; the deploy "
                "may still be running on the server (raise it with --timeout)"
            ) from None
        raise StreamCut("the connection closed before the deploy finished; the server has "
                        "the bundle and may have deployed it") from None
    for sse in parser.close():
        yield sse.event, _decode(sse.event, sse.data)
    if parser.incomplete:
        raise StreamCut("the event stream ended in the middle of an event; the server has "
                        "the bundle and may have deployed it")


def check_url(url: str, sslverify: SSLVerify) -> str:
    """Refuse a malformed URL, and plain HTTP unless verification is off."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigError("no server URL given (--server or SPIRO_URL)")
    url = url.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigError(f"malformed server URL {safe_url(url)!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"malformed server URL {safe_url(url)!r}: expected "
                          "https://HOST[:PORT]/")
    if parts.scheme == "http" and sslverify is not False:
        raise ConfigError(f"refusing plain HTTP to {safe_url(url)}: the token and bundle would "
                          "travel unencrypted; use https:// or, for testing, --insecure")
    if isinstance(sslverify, str):
        _check_pem(sslverify)
    return url if parts.path else url + "/"


def safe_url(url: str) -> str:
    """``url`` without any user:password part, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


# --- internals ---------------------------------------------------------------

class _Retryable(Exception):
    def __init__(self, error: SpiroDeployError):
        super().__init__(str(error))
        self.error = error


class _UploadCut(Exception):
    pass


def _send(session, url, token, body, sslverify, connect_timeout, read_timeout):
    import requests

    sent_before = body.sent
    try:
        return _request(session, "POST", url, token, sslverify, connect_timeout, read_timeout,
                        data=body, content_type=body.content_type)
    except ConnectError as exc:
        if body.sent == sent_before and not isinstance(exc, TLSError):
            raise _Retryable(exc) from None
        raise
    except requests.exceptions.Timeout as exc:
        raise StreamTimeout(
            "the server accepted the upload but did not answer within the read timeout; "
            "the deploy may still be running on the server"
        ) from exc
    except requests.exceptions.RequestException as exc:
        raise _UploadCut() from exc


def _request(session, method, url, token, sslverify, connect_timeout, read_timeout,
             data=None, content_type=None):
    import requests

    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "text/event-stream",
        "Cache-Control": "no-cache",
        "User-Agent": f"spiro-deploy/{__version__}",
    }
    if content_type:
        headers["Content-Type"] = content_type
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
            )
    except requests.exceptions.SSLError as exc:
        raise TLSError(f"TLS verification of {safe_url(url)} failed ({_reason(exc)}); "
                       "use --ssl-cert FILE for a private CA") from None
    except requests.exceptions.ConnectTimeout:
        raise ConnectError(f"timed out connecting to {safe_url(url)} "
                           f"after {connect_timeout:g}s") from None
    except requests.exceptions.ConnectionError as exc:
        if data is not None and getattr(data, "sent", 0):
            raise  # the upload had started: the caller explains the cut
        raise ConnectError(f"cannot connect to {safe_url(url)}: {_reason(exc)}") from None


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
                           "the token (use that URL as --server)", status=status, body=body)
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
        error.args = (f"{error.message}; the upload was stopped unfinished, so the server "
                      "deploys nothing",)
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


def _decode(event: str, data: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        raise MalformedEvent(f"the server sent a {event!r} event whose data is not JSON: "
                             f"{data[:200]!r}") from None
    if not isinstance(value, dict):
        raise MalformedEvent(f"the server sent a {event!r} event whose data is not a JSON "
                             f"object: {data[:200]!r}")
    return value


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
        raise ConfigError(f"cannot read --ssl-cert file {path!r}: {exc.strerror}") from None
    if b"-----BEGIN CERTIFICATE-----" not in head:
        raise ConfigError(f"--ssl-cert file {path!r} is not a PEM certificate")


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
            kwargs["blocksize"] = _CHUNK
            super().init_poolmanager(*args, **kwargs)

    session = requests.Session()
    adapter = _Adapter(max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
