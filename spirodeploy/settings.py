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
from .client import DEFAULT_READ_TIMEOUT, DEFAULT_URL, SSLVerify, check_url
from .errors import ConfigError


@dataclass
class Settings:
    """How to reach the server.  ``repr`` never shows the token."""

    server: str = DEFAULT_URL
    token: str | None = field(default=None, repr=False)
    ssl_cert: str | None = None
    insecure: bool = False
    connect_timeout: float = 20
    read_timeout: float | None = DEFAULT_READ_TIMEOUT
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
        environ: Mapping[str, str] | None = None,
        need_token: bool = True,
    ) -> "Settings":
        """Explicit values first, then ``SPIRO_URL``, ``SPIRO_TOKEN_FILE``, ``SPIRO_TOKEN``.

        Raises :class:`ConfigError` for a missing or malformed token, an
        unreadable token file, both a token and a token file, a malformed
        URL, plain HTTP without ``insecure``, or a bad certificate file.
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
            settings.connect_timeout = _positive("connect timeout", connect_timeout)
        if read_timeout is not None:
            settings.read_timeout = _positive("read timeout", read_timeout) or None
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
            settings.token = clean_token(token)
        return settings


def read_token_file(path: str) -> str:
    """Read a token from a file (the way CI should pass it: no ``ps`` leak)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read(64 * 1024)
    except OSError as exc:
        raise ConfigError(f"cannot read token file {path!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"token file {path!r} is not text") from None


def _positive(what: str, value: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number of seconds, not {value!r}") from None
    if number < 0:
        raise ConfigError(f"{what} must not be negative")
    return number
