"""Where the connection settings come from: arguments, then the environment.

The CLI and the Salt modules resolve settings here, each passing what its
own users gave explicitly; a behaviour (precedence, token files, the
default URL) lives in this one place.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

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
    #: More masters (multi-master Salt), each with its own settings: they get
    #: the bundle with the highstate off before this server, which highstates
    #: (see :mod:`spirodeploy.fanout`).  Empty: just this server.
    other_servers: list[Settings] = field(default_factory=list, repr=False)

    @property
    def all_servers(self) -> list[Settings]:
        """This server first (the one that highstates), then the others."""
        return [self, *self.other_servers]

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
    ) -> Settings:
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
            raise ConfigError("contradict each other", setting="insecure",
                              fix="{ssl_cert} and {insecure} {what}; give one")
        settings = cls(
            server=(server or environ.get("SPIRO_URL") or DEFAULT_URL).strip(),
            ssl_cert=ssl_cert or None,
            insecure=bool(insecure),
        )
        # The one place a face's timeouts are read (the CLI's argparse types
        # check its own options first, for their usage message).
        if connect_timeout is not None:
            settings.connect_timeout = check_timeout("connect timeout", connect_timeout,
                                                     setting="connect_timeout")
        if read_timeout is not None:
            settings.read_timeout = check_timeout("read timeout", read_timeout, unlimited=True,
                                                  setting="timeout")
        if deadline is not None:
            settings.deadline = check_timeout("deadline", deadline, unlimited=True,
                                              setting="deadline")
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


def resolve_servers(
    servers: str | Sequence[str] | None = None,
    *,
    tokens: Sequence[str] = (),
    token_files: Sequence[str] = (),
    ssl_certs: Sequence[str] = (),
    insecure: bool = False,
    connect_timeout: float | None = None,
    read_timeout: float | None = None,
    deadline: float | None = None,
    environ: Mapping[str, str] | None = None,
    need_token: bool = True,
) -> Settings:
    """Settings for one or several servers (multi-master Salt).

    ``servers`` are URLs (each may be a comma-separated list), else
    ``SPIRO_URL`` (also a comma list).  One server resolves exactly as
    :meth:`Settings.resolve`.  With several, the first named is the one that
    highstates and the others come back in :attr:`Settings.other_servers`.
    ``tokens``, ``token_files`` and ``ssl_certs`` are given once (for every
    server) or once per server, in the servers' order (None: not given for
    that server); a server with neither a token nor a token file reads
    ``SPIRO_TOKEN_FILE``, else ``SPIRO_TOKEN``, paired the same way (comma
    lists).  Raises :class:`ConfigError` for a count that
    pairs with nothing, a server named twice, or https:// and http:// servers
    mixed without ``insecure``.
    """
    environ = os.environ if environ is None else environ
    if isinstance(servers, str):
        servers = [servers]
    urls = _split([*(servers or ())]) or _split([environ.get("SPIRO_URL") or ""])
    common = {"insecure": insecure, "connect_timeout": connect_timeout,
              "read_timeout": read_timeout, "deadline": deadline, "need_token": need_token}
    if len(urls) <= 1:
        for what, values in (("token_each", tokens), ("token_file_each", token_files),
                             ("ssl_cert_each", ssl_certs)):
            if len(values) > 1:
                raise ConfigError(f"given {len(values)} times for one server",
                                  setting=what, fix=f"{{{what}}} is {{what}}; give it once per "
                                                    "{server_each}")
        return Settings.resolve(server=urls[0] if urls else None,
                                token=tokens[0] if tokens else None,
                                token_file=token_files[0] if token_files else None,
                                ssl_cert=ssl_certs[0] if ssl_certs else None,
                                environ=environ, **common)
    per_server = {
        "token": _pair("{token_each}", tokens, urls) or [None] * len(urls),
        "token_file": _pair("{token_file_each}", token_files, urls) or [None] * len(urls),
        "ssl_cert": _pair("{ssl_cert_each}", ssl_certs, urls) or [None] * len(urls),
    }
    # A server given neither a token nor a token file (None in the lists)
    # reads the environment: SPIRO_TOKEN_FILE, else SPIRO_TOKEN.
    bare = [i for i in range(len(urls))
            if per_server["token"][i] is None and per_server["token_file"][i] is None]
    env_token_file = env_token = []
    if bare:
        env_token_file = _pair("SPIRO_TOKEN_FILE",
                               _split([environ.get("SPIRO_TOKEN_FILE") or ""]), urls)
        env_token = [] if env_token_file else _pair(
            "SPIRO_TOKEN", _split([environ.get("SPIRO_TOKEN") or ""]), urls)
    for i in bare:
        if env_token_file:
            per_server["token_file"][i] = env_token_file[i]
        elif env_token:
            per_server["token"][i] = env_token[i]
    seen: dict[str, str] = {}
    for url in urls:
        key = url.lower().rstrip("/")
        if key in seen:
            raise ConfigError(f"server {url} is named twice")
        seen[key] = url
    schemes = {url.split(":", 1)[0].lower() for url in urls}
    if not insecure and "http" in schemes and len(schemes) > 1:
        plain = ", ".join(url for url in urls if url.lower().startswith("http:"))
        raise ConfigError(f"the servers mix https:// and plain http:// ({plain}): plain HTTP "
                          "sends the token and the bundle unprotected", setting="insecure",
                          fix="; use https:// for every server, or {insecure_on}")
    resolved = [
        Settings.resolve(server=url, environ={}, **common,
                         **{key: values[i] for key, values in per_server.items()})
        for i, url in enumerate(urls)
    ]
    first = resolved[0]
    first.other_servers = resolved[1:]
    return first


def _split(values: Sequence[str]) -> list[str]:
    return [part.strip() for value in values for part in str(value).split(",") if part.strip()]


def _pair(what: str, values: Sequence[str], urls: list[str]) -> list[str]:
    """One value per server: a single value is shared, otherwise one each.

    ``what`` names the setting: an environment variable, or a ``{token_each}``
    field each face fills with its own name.
    """
    if not values:
        return []
    if len(values) == 1:
        return list(values) * len(urls)
    if len(values) != len(urls):
        raise ConfigError(f"given {len(values)} times for {len(urls)} servers",
                          fix=what + " is {what}; give it once (for every server) or once "
                          "per server, in the same order")
    return list(values)


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
