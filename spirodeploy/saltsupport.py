"""Plain-Python helpers behind the Salt modules (``_modules``, ``_runners``, ``_states``).

The Salt files stay thin: they read Salt's dunders and hand plain values
and callables to these helpers, which need no Salt at all (so they are unit
tested without a loader):

* :func:`resolve_settings` - connection settings from explicit arguments,
  then Salt configuration (``spirodeploy:server`` ...), then the environment;
  :func:`project_root` - the ``root`` argument or ``spirodeploy:root``;
* :data:`SALT_NAMES` / :func:`salt_terms` - errors worded with the Salt
  faces' arguments and settings instead of the CLI's flags;
* :func:`bus_event` - the tag and the trimmed, token-free data of one
  deploy event for Salt's event bus, fired by :func:`fire_event` through
  the ``send`` the face hands in;
* :func:`scrub` - remove a secret from anything about to be returned;
* :func:`error_report` - a failed deploy's return when it stopped before the
  upload, in the same shape as :meth:`DeployReport.to_dict`;
* :class:`LineSink` - collect the CLI's human-readable lines one by one (the
  runner turns each into a progress event);
* :class:`StopWaiting` / :func:`watch_own_highstate` - stop waiting for a
  highstate that is queued behind the state run waiting for it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .errors import ConfigError, ExitCode, SpiroDeployError
from .report import DeployReport, MinionResult
from .settings import Settings

#: The Salt configuration keys, all under ``spirodeploy:`` (minion config,
#: grains or pillar for the execution module and the state; master config
#: for the runner).
CONFIG_KEYS = ("server", "servers", "token", "token_file", "ssl_cert", "insecure", "timeout",
               "connect_timeout", "deadline")

#: Event tags are ``spirodeploy/<project>/<deployment>/<event>``.
TAG_PREFIX = "spirodeploy"

#: Bus events stay small: strings, lists and the per-minion summary are cut.
MAX_TEXT = 4000
MAX_ITEMS = 20
MAX_EVENT_BYTES = 64 * 1024

ConfigGetter = Callable[[str], Any]

#: How the Salt faces name each setting in an error's fix (the command line's
#: names are :data:`spirodeploy.errors.CLI_NAMES`): the argument, and the
#: ``spirodeploy:`` key in the configuration or pillar where there is one.
SALT_NAMES: dict[str, str] = {
    "token": (f"{TAG_PREFIX}:token_file or {TAG_PREFIX}:token (pillar or configuration), "
              "or the token_file argument"),
    "server": f"the server argument (or {TAG_PREFIX}:server)",
    "insecure": "insecure",
    "insecure_on": f"insecure=True (or {TAG_PREFIX}:insecure: true)",
    "ssl_cert": "ssl_cert",
    "ssl_cert_file": f"ssl_cert=<CA file> (or {TAG_PREFIX}:ssl_cert)",
    "timeout": f"timeout (or {TAG_PREFIX}:timeout)",
    "connect_timeout": f"connect_timeout (or {TAG_PREFIX}:connect_timeout)",
    "deadline": f"{TAG_PREFIX}:deadline",
    "allow_empty": "allow_empty=True",
    "include_source": "include_source",
    "include_source_git": "include_source=git",
    "root": f"root=<project directory> (or {TAG_PREFIX}:root)",
    "server_each": f"{TAG_PREFIX}:servers",
    "token_each": "token",
    "token_file_each": "token_file",
    "ssl_cert_each": "ssl_cert",
    "rollback_to": "to=<entry>",
    "force": "force=True",
    "junit": "junit",
    "html": "html",
}


def salt_terms():
    """A ``with`` block in which every error names the Salt faces' settings."""
    from .errors import naming

    return naming(SALT_NAMES)


# --- settings ------------------------------------------------------------------

def config_getter(mapping: Mapping[str, Any] | None) -> ConfigGetter:
    """A ``config.get``-like getter over a plain nested mapping (no ``sdb://``).

    ``getter("spirodeploy:server")`` walks the ``:``-separated keys; a
    missing key gives ``None``.
    """
    def get(key: str) -> Any:
        value: Any = mapping or {}
        for part in key.split(":"):
            if not isinstance(value, Mapping) or part not in value:
                return None
            value = value[part]
        return value
    return get


TRUE_WORDS = frozenset(("true", "yes", "on", "y", "1"))
FALSE_WORDS = frozenset(("false", "no", "off", "n", "0"))


def to_bool(value: Any, what: str = "insecure", default: bool = False) -> bool:
    """Read a yes/no argument or setting the way Salt users write it.

    ``True``/``False``, ``1``/``0``, or text (any case, white space
    ignored): ``true``/``false``, ``yes``/``no``, ``on``/``off``,
    ``y``/``n``, ``1``/``0``.  None or empty text means "not given" and
    gives ``default``.  Anything else raises :class:`ConfigError` naming
    ``what``: ``bool()`` would read the text ``"false"`` or ``"no"`` (from
    pillar, an orchestration, a quoted CLI argument) as true.
    """
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if not text:
            return default
        if text in TRUE_WORDS:
            return True
        if text in FALSE_WORDS:
            return False
    raise ConfigError(f"{what} must be true or false (yes/no, on/off, 1/0), not {value!r}")


def to_source(value: Any) -> Any:
    """``include_source`` as Salt users write it: a method, or yes/no.

    ``git``, ``fs``, ``auto`` ... pass through; a yes (``True``, ``"yes"``)
    means ``auto`` and a no (``False``, ``"false"``, ``"no"``) means no source.
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool) or isinstance(value, str) and \
            value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
        return "auto" if to_bool(value, "include_source") else None
    return value


def token_files(config_get: ConfigGetter | None = None, token_file: Any = None,
                environ: Mapping[str, str] | None = None) -> list[str]:
    """Every file a token may be read from here: never bundle any of them.

    The explicit ``token_file``, ``spirodeploy:token_file`` and
    ``SPIRO_TOKEN_FILE``, whichever of them the settings use (a ``token``
    argument hides the configured file, but that file still holds a token).
    Needs no token and reads no file, so building a bundle alone never fails
    over the connection settings.
    """
    from .checks import token_files as named_token_files

    found = [token_file, config_get(f"{TAG_PREFIX}:token_file") if config_get else None]
    return named_token_files(*(str(path) for path in found if path not in (None, "", {})),
                             environ=environ)


def project_root(root: Any, config_get: ConfigGetter | None = None) -> str:
    """The project directory: the ``root`` argument, else ``spirodeploy:root``.

    One of them must be given, as an absolute path: a Salt daemon's working
    directory is ``/``, never the project.
    """
    import os

    if root in (None, "") and config_get is not None:
        root = config_get(f"{TAG_PREFIX}:root")
    with salt_terms():
        if root in (None, "", {}):
            raise ConfigError("no project directory given (a Salt daemon works in /, not in "
                              "the project)", setting="root", fix="; give {root}")
        if not isinstance(root, str) or not os.path.isabs(root):
            raise ConfigError(f"the project directory {root!r} is not an absolute path (a Salt "
                              "daemon works in /, not in the project)", setting="root",
                              fix="; give {root}")
    return root


def to_list(value: Any, what: str = "artifacts") -> list[str]:
    """A list of strings from a list, a comma-separated string or None."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, (list, tuple)):
        return [str(item) for item in value]
    raise ConfigError(f"{what} must be a list of paths, not {value!r}")


def resolve_settings(
    config_get: ConfigGetter | None = None,
    *,
    server: str | None = None,
    token: str | None = None,
    token_file: str | None = None,
    ssl_cert: str | None = None,
    insecure: Any = None,
    timeout: Any = None,
    connect_timeout: Any = None,
    environ: Mapping[str, str] | None = None,
    need_token: bool = True,
    deadline: Any = None,
) -> Settings:
    """Connection settings: explicit values, then Salt config, then the environment.

    ``config_get`` is ``__salt__["config.get"]`` (minion: options, grains,
    pillar; runner: the master's options; ``sdb://`` values looked up in
    both) or :func:`config_getter` over a plain mapping; it is asked
    for ``spirodeploy:<key>`` for each key in :data:`CONFIG_KEYS`.  The
    environment (``SPIRO_URL``, ``SPIRO_TOKEN_FILE``, ``SPIRO_TOKEN``) is
    read by :meth:`Settings.resolve` last.

    The token and the token file are one choice: an explicit ``token`` or
    ``token_file`` hides both configured ones; likewise ``ssl_cert`` and
    ``insecure`` for how the server is verified.  Errors name the Salt
    settings (:data:`SALT_NAMES`).
    """
    with salt_terms():
        return _resolve_settings(config_get, server=server, token=token, token_file=token_file,
                                 ssl_cert=ssl_cert, insecure=insecure, timeout=timeout,
                                 connect_timeout=connect_timeout, environ=environ,
                                 need_token=need_token, deadline=deadline)


def _resolve_settings(config_get: ConfigGetter | None, *, server: Any, token: Any,
                      token_file: Any, ssl_cert: Any, insecure: Any, timeout: Any,
                      connect_timeout: Any, environ: Mapping[str, str] | None,
                      need_token: bool, deadline: Any) -> Settings:
    def conf(key: str) -> Any:
        if config_get is None:
            return None
        value = config_get(f"{TAG_PREFIX}:{key}")
        return None if value is None or value == "" or value == {} else value

    if token is None and token_file is None:
        token, token_file = conf("token"), conf("token_file")
        if token is not None and token_file is not None:
            raise ConfigError("both spirodeploy:token and spirodeploy:token_file are "
                              "configured; keep one")
    insecure_what = "insecure"
    if ssl_cert is None and insecure is None:
        ssl_cert, insecure = conf("ssl_cert"), conf("insecure")
        insecure_what = f"{TAG_PREFIX}:insecure"
    timeout = conf("timeout") if timeout is None else timeout
    connect_timeout = conf("connect_timeout") if connect_timeout is None else connect_timeout
    deadline = conf("deadline") if deadline is None else deadline
    several = server_list(server if server else conf("servers"))
    if several is not None:
        from .settings import resolve_servers

        # Each server may name its own token, token file and CA; what it
        # leaves out is the one given for all.
        shared = {"token": _text_or_none(token), "token_file": _text_or_none(token_file),
                  "ssl_cert": _text_or_none(ssl_cert)}
        own = [_own_secrets(entry, shared) for entry in several]
        return resolve_servers(
            [entry["url"] for entry in several],
            tokens=[entry["token"] for entry in own],
            token_files=[entry["token_file"] for entry in own],
            ssl_certs=[entry["ssl_cert"] for entry in own],
            insecure=to_bool(insecure, insecure_what), read_timeout=timeout,
            connect_timeout=connect_timeout, deadline=deadline,
            environ=environ, need_token=need_token)
    return Settings.resolve(
        server=_text_or_none(server if server else conf("server")),
        token=_text_or_none(token),
        token_file=_text_or_none(token_file),
        ssl_cert=_text_or_none(ssl_cert),
        insecure=to_bool(insecure, insecure_what),
        # Timeouts as given: Settings.resolve reads the numbers (or their text).
        read_timeout=timeout,
        connect_timeout=connect_timeout,
        deadline=deadline,
        environ=environ,
        need_token=need_token,
    )


def server_list(value: Any) -> list[dict[str, Any]] | None:
    """Several servers from a ``server`` argument or ``spirodeploy:servers``, or None.

    A list (or a comma-separated string) of URLs, or of mappings with
    ``url`` and optionally ``token``, ``token_file``, ``ssl_cert``.  None
    when it names fewer than two servers as plain text (one URL keeps the
    single-server path exactly as before).
    """
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, str):
        items: list[Any] = [part.strip() for part in value.split(",") if part.strip()]
        if len(items) < 2:
            return None
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ConfigError(f"servers must be a list of URLs or of mappings with a url, "
                          f"not {type(value).__name__}")
    entries = []
    for item in items:
        if isinstance(item, str):
            entries.append({"url": item})
        elif isinstance(item, Mapping) and isinstance(item.get("url"), str):
            unknown = set(item) - {"url", "token", "token_file", "ssl_cert"}
            if unknown:
                raise ConfigError(f"servers: unknown key(s) {', '.join(sorted(map(str, unknown)))}"
                                  f" for {item['url']} (url, token, token_file, ssl_cert)")
            entries.append({key: _text_or_none(item.get(key)) for key in
                            ("url", "token", "token_file", "ssl_cert")})
        else:
            raise ConfigError("each of servers must be a URL or a mapping with a url")
    return entries or None


def _own_secrets(entry: Mapping[str, Any], shared: Mapping[str, Any]) -> dict[str, Any]:
    """A server's token (or token file) and CA: its own, else the shared ones."""
    own = entry.get("token") is not None or entry.get("token_file") is not None
    source = entry if own else shared
    return {"token": source.get("token"), "token_file": source.get("token_file"),
            "ssl_cert": entry.get("ssl_cert") or shared.get("ssl_cert")}


def tokens_of(settings: Settings | None) -> list[str | None]:
    """Every server's token (for scrubbing returns); none without settings."""
    return [server.token for server in settings.all_servers] if settings is not None else []


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


# --- returns -------------------------------------------------------------------

def scrub(value: Any, secrets: Iterable[str | None]) -> Any:
    """``value`` with every occurrence of each secret replaced by ``***``.

    Walks dicts (keys too), lists and tuples; other values are returned as
    they are.  The deploy never puts the token in its data, but the server's
    messages and errors are not ours to trust.
    """
    from .sanitize import scrub as scrub_text

    secrets = [s for s in secrets if s and len(s) >= 8]
    if not secrets:
        return value

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            # The same masking as the CLI's: a server body cut at a limit can
            # hold part of the token.
            return scrub_text(item, secrets)
        if isinstance(item, dict):
            return {walk(key): walk(val) for key, val in item.items()}
        if isinstance(item, (list, tuple)):
            return [walk(val) for val in item]
        return item

    return walk(value)


def error_report(project: str, deployment: str, error: SpiroDeployError, *,
                 highstate: bool = True, bundle: dict[str, Any] | None = None) -> DeployReport:
    """The report of a deploy that raised before the server sent any event."""
    report = DeployReport(project=project, deployment=deployment, highstate=highstate,
                          bundle=bundle)
    report.fail(error, error.exit_code, error.server_has_bundle)
    return report


class TokenCheckFailed(SpiroDeployError):
    """Some of several servers refused the token check (or could not be asked).

    The exit code is the first failed server's, in the order they are named,
    as for a deploy to several servers.
    """

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = ExitCode(exit_code)


def check_token(settings: Settings, project: str | None = None) -> dict[str, Any]:
    """Ask every configured server whether it accepts its token; say what each token allows.

    Each server is asked with its own token and CA (``settings.all_servers``:
    ``spirodeploy:servers``, multi-master), all at once.  Returns the first
    named server's ``result``, ``server``, ``message``, ``projects`` and
    ``expires`` (and ``project``, ``warnings``) as one server always did,
    plus ``servers`` (one such result per server, in order; a failed one has
    ``error`` and ``exit_code`` instead) and ``failed_servers``.

    Raises the library's error when one server is configured (token
    rejected, cannot connect, token not allowed for ``project`` or expired),
    and :class:`TokenCheckFailed` naming the servers that refused when
    several are; either way the error's ``token_check`` attribute holds
    ``servers`` and ``failed_servers`` (:func:`token_check_details`).
    """
    import contextvars
    from concurrent.futures import ThreadPoolExecutor

    from .checks import check_name

    if project is not None:
        check_name("project", project)
    servers = settings.all_servers
    with ThreadPoolExecutor(max_workers=min(len(servers), 8)) as pool:
        # Each thread raises in the caller's terms (the Salt faces' names).
        futures = [pool.submit(contextvars.copy_context().run, _check_one, server, project)
                   for server in servers]
        checked = [future.result() for future in futures]
    results = [result for result, _ in checked]
    failed = [(result, error) for result, error in checked if error is not None]
    details = {"servers": results, "failed_servers": [result["server"] for result, _ in failed]}
    if failed:
        if len(servers) == 1:
            error = failed[0][1]
        else:
            error = TokenCheckFailed(
                f"{len(failed)} of {len(servers)} servers refused the token check: "
                + "; ".join(f"{result['server']}: {result['error']}" for result, _ in failed),
                failed[0][0]["exit_code"])
        error.token_check = details  # type: ignore[attr-defined]
        raise error
    # The first named server's result at the top, as with one server.
    ret = {"result": True, **results[0]}
    if len(servers) > 1:
        ret["message"] = (f"all {len(servers)} servers accepted their tokens"
                          + (f" and may deploy project {project}" if project is not None
                             else "")
                          + (" as far as the client can judge" if any(
                              "warnings" in result for result in results) else ""))
        warnings = [f"{result['server']}: {text}" for result in results
                    for text in result.get("warnings", [])]
        ret.pop("warnings", None)
        if warnings:
            ret["warnings"] = warnings
    ret.update(details)
    return ret


def _check_one(server: Settings, project: str | None,
               ) -> tuple[dict[str, Any], SpiroDeployError | None]:
    """One server's check: its result, and the error when it failed (else None)."""
    import time

    from .checks import check_token_scope, token_caveats
    from .client import check_token as ask_server
    from .client import safe_url

    shown = safe_url(server.server)
    try:
        ask_server(server.server, server.token, server.sslverify, server.connect_timeout)
        warnings = (check_token_scope(server.token, project).warnings
                    if project is not None else [])
    except SpiroDeployError as exc:
        return {"server": shown, "result": False, "error": exc.message,
                "exit_code": int(exc.exit_code)}, exc
    caveats = token_caveats(server.token) or {}
    not_after = caveats.get("not_after")
    allowed = caveats.get("project_allow")
    ret: dict[str, Any] = {
        "server": shown,
        "result": True,
        "message": "the server accepted the token",
        "projects": [str(p) for p in allowed] if isinstance(allowed, list) else None,
        "expires": (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(not_after))
                    if isinstance(not_after, (int, float)) else None),
    }
    if project is not None:
        ret["project"] = project
        ret["message"] += f" and it may deploy project {project}"
        if warnings:
            ret["message"] += " as far as the client can judge"
            ret["warnings"] = warnings
    return ret, None


def token_check_details(error: BaseException) -> dict[str, Any]:
    """``servers`` and ``failed_servers`` of a failed :func:`check_token`, for the
    faces' error return; empty for any other error."""
    details = getattr(error, "token_check", None)
    return dict(details) if isinstance(details, dict) else {}


def shown_server(settings: Settings | None, server: str | None) -> str | None:
    """The server URL to name in a return (never with credentials in it)."""
    from .client import safe_url

    url = settings.server if settings is not None else server
    return safe_url(url) if url else None


# --- the event bus -------------------------------------------------------------

def event_tag(project: str, deployment: str, event: str) -> str:
    """``spirodeploy/<project>/<deployment>/<event>``.

    The names are checked: a reactor matching ``spirodeploy/myproj/*`` must
    not be reached by a name holding ``/``.
    """
    from .checks import check_name

    check_name("project", project)
    check_name("deployment", deployment)
    return f"{TAG_PREFIX}/{project}/{deployment}/{event}"


def bus_event(project: str, deployment: str, event: str, data: Any,
              secrets: Iterable[str | None] = ()) -> tuple[str, dict[str, Any]]:
    """The tag and data to fire on Salt's event bus for one deploy event.

    The data is flat: ``project``, ``deployment``, ``event``, ``msg`` and
    the event's other fields.  A ``highstate-update``'s ``result`` (the
    minion's whole highstate return) is replaced by a summary: success,
    retcode, state counts and the first failed and changed states.  Long
    strings and lists are cut, and the token is scrubbed.
    """
    data = data if isinstance(data, dict) else {"msg": _cut(_repr(data))}
    payload: dict[str, Any] = {"project": project, "deployment": deployment, "event": event}
    for key, value in data.items():
        key = str(key)
        if key in payload:
            key = f"data_{key}"
        if key == "result" and event == "highstate-update":
            value = minion_summary(str(data.get("minion")), value)
        payload[key] = _trim(value)
    payload.setdefault("msg", "")
    payload = scrub(payload, secrets)
    if len(json.dumps(payload, default=str)) > MAX_EVENT_BYTES:
        payload = {key: payload[key] for key in ("project", "deployment", "event", "msg",
                                                 "minion", "minions") if key in payload}
        payload["msg"] = _cut(str(payload.get("msg", "")), 1000)
        payload["truncated"] = True
    return event_tag(project, deployment, event), payload


def fire_event(opts: Mapping[str, Any], send: Callable[[str, dict], Any] | None,
               tag: str, data: dict[str, Any]) -> bool:
    """Fire one event through ``send(tag, data)``; never raise.

    ``send`` is the face's way onto Salt's bus, so that this library never
    imports Salt: ``event.send`` on a minion (to its master's bus) and in a
    runner (the master's bus), a sender built on ``salt.utils.event`` by the
    state in an orchestration.  A masterless minion (``--local``) has no bus
    to reach, so nothing is sent.  Returns whether the event was sent.
    """
    import logging

    log = logging.getLogger(__name__)
    try:
        if opts.get("__role") != "master" and (
                opts.get("local") or opts.get("file_client") == "local") \
                and not opts.get("use_master_when_local"):
            log.debug("masterless: event %s not sent", tag)
            return False
        if send is None:
            return False
        return bool(send(tag, data))
    except Exception as exc:  # pylint: disable=broad-except
        # The bus is a courtesy: it must never break or fail a deploy.
        log.warning("could not fire event %s: %s", tag, exc)
        return False


def minion_summary(minion: str, result: Any) -> dict[str, Any]:
    """A ``highstate-update`` result reduced to what a reactor needs.

    Bounded like the report's own summary: counts, durations, the job id and
    the first few failed and changed states (``truncated`` when some were
    left out; the full return is in the job cache under ``jid``).
    """
    parsed = MinionResult.from_event(minion, result)
    failed = parsed.failed_states
    changed = parsed.changed_states
    return {
        "succeeded": parsed.succeeded,
        "no_response": parsed.no_response,
        "retcode": parsed.retcode,
        "jid": parsed.jid,
        "counts": dict(parsed.counts),
        "duration_ms": parsed.duration_ms,
        "errors": [_cut(text, 1000) for text in parsed.errors[:MAX_ITEMS]],
        "failed": [{"id": s.id, "function": s.function, "name": s.name,
                    "comment": _cut(s.comment, 1000)} for s in failed[:MAX_ITEMS]],
        "changed": [{"id": s.id, "function": s.function, "name": s.name}
                    for s in changed[:MAX_ITEMS]],
        "truncated": bool(len(failed) > MAX_ITEMS or len(changed) > MAX_ITEMS
                          or len(parsed.errors) > MAX_ITEMS or parsed.failed_omitted
                          or parsed.changed_omitted or parsed.errors_omitted),
    }


def _trim(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return _cut(value)
    if depth > 6:
        return _cut(_repr(value), 200)
    if isinstance(value, dict):
        return {str(k): _trim(v, depth + 1) for k, v in list(value.items())[:200]}
    if isinstance(value, (list, tuple)):
        return [_trim(v, depth + 1) for v in list(value)[:1000]]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _cut(_repr(value), 200)


def _cut(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more]"


def _repr(value: Any) -> str:
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return repr(value)


# --- progress lines ------------------------------------------------------------

class LineSink:
    """A text stream that calls ``emit(line)`` for each complete line written.

    Give it to :class:`spirodeploy.output.HumanPrinter` as ``out`` to get the
    CLI's lines one at a time (the runner fires each as a progress event).
    """

    def __init__(self, emit: Callable[[str], None]):
        self.emit = emit
        self._buffer = ""

    def write(self, text: str) -> int:
        self._buffer += text
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            self.emit(line)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


# --- a highstate queued behind us ---------------------------------------------

class StopWaiting(Exception):
    """Raised from an event callback to stop reading the event stream.

    Used when the only minion still to report is the one running the deploy
    inside a state run: the server asks it to highstate with ``queue=True``,
    so that highstate waits for the running state run, which waits for the
    highstate.  The deploy itself is done; the highstate runs afterwards.
    """

    def __init__(self, report: DeployReport, minion: str):
        super().__init__(f"{minion} is highstated by this deploy; its highstate is queued "
                         "behind this state run")
        self.report = report
        self.minion = minion


def watch_own_highstate(minion_id: str | None,
                        on_event: Callable[[str, dict, DeployReport], None] | None = None):
    """Wrap ``on_event`` to raise :class:`StopWaiting` once only ``minion_id`` is left.

    With ``minion_id`` None this is ``on_event`` itself.
    """
    def callback(event: str, data: dict, report: DeployReport) -> None:
        if on_event is not None:
            on_event(event, data, report)
        if minion_id is None or report.finished or report.exception is not None:
            return
        if event in ("highstate-start", "highstate-update"):
            if len(report.minions_expected) - len(report.minions) > 1:
                return  # at least two still to report; cheap, once per event on big fleets
            pending = set(report.minions_expected) - set(report.minions)
            if pending == {minion_id}:
                raise StopWaiting(report, minion_id)

    return callback
