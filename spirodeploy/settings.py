"""Where the connection settings come from: arguments, then the environment.

The CLI and the Salt modules resolve settings here, each passing what its
own users gave explicitly; a behaviour (precedence, token files, the
default URL) lives in this one place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

from .checks import clean_token
from .client import (
    DEFAULT_READ_TIMEOUT,
    DEFAULT_URL,
    SSLVerify,
    check_timeout,
    check_token_text,
    check_url,
)
from .errors import ConfigError


@dataclass
class Settings:
    """How to reach the server.  ``repr`` never shows the token."""

    server: str = DEFAULT_URL
    token: str | None = field(default=None, repr=False)
    ssl_cert: str | None = None
    insecure: bool = False
    connect_timeout: float = 20
    #: The longest the server may go without sending an event; None: no limit.
    read_timeout: float | None = DEFAULT_READ_TIMEOUT
    #: The most seconds a deploy may take, upload and events; None: no limit.
    deadline: float | None = None
    #: Where the token was read from; the builder never bundles this file.
    token_file: str | None = None

    @property
    def sslverify(self) -> SSLVerify:
        """The value :func:`spirodeploy.client.upload` takes."""
        if self.insecure:
            return False
        return self.ssl_cert or True

    @classmethod
    def resolve(
        cls,
        *,
        server: str | None = None,
        token: str | None = None,
        token_file: str | None = None,
        ssl_cert: str | None = None,
        insecure: bool = False,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        deadline: float | None = None,
        environ: Mapping[str, str] | None = None,
        need_token: bool = True,
    ) -> "Settings":
        """Explicit values first, then ``SPIRO_URL``, ``SPIRO_TOKEN_FILE``, ``SPIRO_TOKEN``.

        Timeouts are seconds, as numbers or text: ``read_timeout`` and
        ``deadline`` take 0 or ``inf`` for "no limit" (None means "not
        given": the default read timeout, no deadline); ``connect_timeout``
        must be finite and above 0.

        Raises :class:`ConfigError` for a missing or malformed token, an
        unreadable token file, both a token and a token file, a malformed
        URL, plain HTTP without ``insecure``, a bad certificate file, or a
        timeout that is not a usable number of seconds.
        """
        environ = os.environ if environ is None else environ
        if ssl_cert and insecure:
            raise ConfigError("--ssl-cert and --insecure contradict each other; give one")
        settings = cls(
            server=(server or environ.get("SPIRO_URL") or DEFAULT_URL).strip(),
            ssl_cert=ssl_cert or None,
            insecure=bool(insecure),
        )
        if connect_timeout is not None:
            settings.connect_timeout = check_timeout("connect timeout", connect_timeout)
        if read_timeout is not None:
            settings.read_timeout = check_timeout("read timeout", read_timeout, unlimited=True)
        if deadline is not None:
            settings.deadline = check_timeout("deadline", deadline, unlimited=True)
        settings.server = check_url(settings.server, settings.sslverify)
        if token is not None and token_file is not None:
            raise ConfigError("give either a token or a token file, not both")
        if token is None and token_file is None:
            token_file = environ.get("SPIRO_TOKEN_FILE") or None
            if token_file is None:
                token = environ.get("SPIRO_TOKEN")
        if token_file is not None:
            token = read_token_file(token_file)
            settings.token_file = str(token_file)
        if need_token or token:
            settings.token = check_token_text(clean_token(token))
        return settings


def read_token_file(path: str) -> str:
    """Read a token from a file (the way CI should pass it: no ``ps`` leak).

    A leading UTF-8 byte-order mark (Windows editors write one) is dropped.
    A file that is not UTF-8 text is a :class:`ConfigError` that never shows
    its content; characters that cannot be in a token are refused by
    :func:`~spirodeploy.client.check_token_text` later.
    """
    try:
        with open(path, encoding="utf-8-sig") as handle:
            return handle.read(64 * 1024)
    except OSError as exc:
        raise ConfigError(f"cannot read token file {path!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"token file {path!r} is not UTF-8 text (SpiroFS tokens are base64 "
                          "text; check how the file was saved)") from None
