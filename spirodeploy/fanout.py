"""One bundle to several SpiroFS servers: the masters of a multi-master Salt.

Every master keeps its own SpiroFS cache and nothing replicates between
them, so each must be sent the bundle.  The minions must be highstated once,
and only when every master serves the new content (a minion may fetch its
files from any of its masters), so the flow is:

1. the bundle is one file (built once, or the checked ``--bundle`` copy),
   read by every upload through its own positioned reader (``os.pread``):
   memory stays flat however many servers there are;
2. every server but the first named gets it with the highstate off, in
   parallel threads; each must announce ``deploy-bundle`` and end its
   stream cleanly ("accepted");
3. only then the first named server gets it, with the highstate as asked.

If any other server fails, the first is sent nothing: nothing is
highstated, and the report names the servers that hold the new bundle (the
masters now serve different content for that saltenv until the deploy is
run again).  The result is a :class:`FanoutReport`: the first server's
report (events, minions) plus one :class:`ServerOutcome` per server.
"""

from __future__ import annotations

import contextvars
import dataclasses
import os
import queue
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Any

from .client import safe_url
from .errors import ExitCode, Interrupted, SpiroDeployError
from .report import DeployReport
from .settings import Settings

#: Roles: the first server highstates, the others only take the bundle.
HIGHSTATE, UPLOAD = "highstate", "upload"
#: Client-side events given to ``on_event`` as each other server finishes.
ACCEPTED_EVENT, FAILED_EVENT = "server-accepted", "server-failed"
_BLOCK = 1 << 20


@dataclass
class ServerOutcome:
    """How the deploy went on one server."""

    server: str  #: the URL, without credentials
    role: str  #: :data:`HIGHSTATE` (the first named) or :data:`UPLOAD`
    #: ``accepted`` (took the bundle, no highstate), ``deployed`` (the
    #: highstating server finished), ``failed``, or ``skipped`` (not sent).
    status: str
    exit_code: int
    message: str
    #: True: it serves the new bundle; None: it may; False: it cannot.
    has_bundle: bool | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class FanoutReport(DeployReport):
    """The highstating server's report, plus how every server fared.

    ``exit_code`` is the highstating server's when every other server
    accepted the bundle, else the first failed server's (in the order
    named); ``error`` then names the failed servers and those holding the
    new bundle.
    """

    servers: list[ServerOutcome] = field(default_factory=list)

    @classmethod
    def of(cls, report: DeployReport, servers: list[ServerOutcome]) -> FanoutReport:
        values = {f.name: getattr(report, f.name) for f in dataclasses.fields(DeployReport)}
        return cls(**values, servers=servers)

    @property
    def holders(self) -> list[str]:
        """The servers known to serve the new bundle."""
        return [s.server for s in self.servers if s.has_bundle]

    @property
    def failed_servers(self) -> list[str]:
        return [s.server for s in self.servers if s.status == "failed"]

    def summary(self, *args: Any, **kwargs: Any) -> str:
        base = super().summary(*args, **kwargs)
        if self.failed_servers and not self.events:
            # The error (printed after the summary) says which servers hold the bundle.
            return (f"Deploy of {self.project}/{self.deployment} to {len(self.servers)} "
                    f"servers failed on {', '.join(self.failed_servers)}: nothing was "
                    "highstated")
        if self.failed_servers:
            return base
        return f"{base} (on {len(self.servers)} servers; highstated by {self.servers[0].server})"

    def to_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """:meth:`DeployReport.to_dict` plus ``servers``, ``failed_servers``, ``holders``."""
        data = super().to_dict(*args, **kwargs)
        data.update(servers=[s.to_dict() for s in self.servers],
                    failed_servers=self.failed_servers, holders=self.holders,
                    highstate_server=self.servers[0].server if self.servers else None)
        return data


EventCallback = Callable[[str, "dict[str, Any]", DeployReport], None]


def deploy_to_all(
    bundle: IO[bytes] | Iterable[bytes],
    project: str,
    deployment: str,
    settings: Settings,
    *,
    highstate: bool = True,
    bundle_info: dict[str, Any] | None = None,
    on_event: EventCallback | None = None,
    on_progress: Callable[[int, int | None], None] | None = None,
    on_uploaded: Callable[[DeployReport], None] | None = None,
    history: Any = None,
) -> FanoutReport:
    """Deploy ``bundle`` to ``settings.all_servers``; the first one highstates.

    Called by :func:`spirodeploy.deploy.deploy_bundle` when ``settings``
    names other servers; the arguments mean the same.  ``on_event`` gets
    the highstating server's events as they come and, before them, one
    ``server-accepted`` or ``server-failed`` event per other server
    (``data``: ``msg``, ``server``, ``exit_code``).  ``history`` records
    one entry for the whole deploy (``server``: the highstating one,
    ``servers``: all).
    """
    from .deploy import deploy_bundle
    from .history import clean_server

    servers = [dataclasses.replace(s, other_servers=[]) for s in settings.all_servers]
    first, others = servers[0], servers[1:]
    if history is not None:
        history.fields["servers"] = [clean_server(s.server) for s in servers]
    try:
        result = _deploy(bundle, project, deployment, first, others, highstate, bundle_info,
                         on_event, on_progress, on_uploaded, history, deploy_bundle)
    except BaseException:
        if history is not None:
            history.discard()
        raise
    if history is not None:
        history.finish(result)
    return result


def _deploy(bundle, project, deployment, first, others, highstate, bundle_info, on_event,
            on_progress, on_uploaded, history, deploy_bundle) -> FanoutReport:
    with _as_file(bundle) as source:
        if history is not None:
            history.capture(source)
        start = source.tell()
        size = source.seek(0, os.SEEK_END) - start
        source.seek(start)
        outcomes = _upload_to_others(source, start, size, project, deployment, others,
                                     bundle_info, on_event, on_progress)
        failed = [o for o in outcomes if o.status == "failed"]
        if failed:
            report = DeployReport(project=project, deployment=deployment,
                                  highstate=highstate, bundle=bundle_info)
            skipped = ServerOutcome(safe_url(first.server), HIGHSTATE, "skipped",
                                    failed[0].exit_code, "not sent: another server failed",
                                    False)
            result = FanoutReport.of(report, [skipped, *outcomes])
            result.fail(_split_message(result, project, deployment), failed[0].exit_code,
                        server_has_bundle=any(o.has_bundle for o in outcomes) or None)
        else:
            result = _highstate(source, start, project, deployment, first, outcomes,
                                highstate, bundle_info, on_event, on_progress, on_uploaded,
                                deploy_bundle)
    return result


def _highstate(source, start, project, deployment, first, outcomes, highstate, bundle_info,
               on_event, on_progress, on_uploaded, deploy_bundle) -> FanoutReport:
    url = safe_url(first.server)
    try:
        report = deploy_bundle(_Reader(source, start), project, deployment, first,
                               highstate=highstate, bundle_info=bundle_info, on_event=on_event,
                               on_progress=on_progress, on_uploaded=on_uploaded)
    except SpiroDeployError as exc:
        # Raised before the server had the bundle (cannot connect, token
        # refused): the others hold it, and nobody was highstated.
        report = DeployReport(project=project, deployment=deployment, highstate=highstate,
                              bundle=bundle_info)
        mine = ServerOutcome(url, HIGHSTATE, "failed", int(exc.exit_code), exc.message,
                             exc.server_has_bundle)
        result = FanoutReport.of(report, [mine, *outcomes])
        result.fail(_split_message(result, project, deployment), exc.exit_code,
                    server_has_bundle=True)
        return result
    code = int(report.exit_code)
    has_bundle = True if report.deployed else report.server_has_bundle
    status = "deployed" if report.finished and report.deployed else "failed"
    if code == ExitCode.DEPLOY_FAILED and report.finished:
        status = "deployed"  # it deployed; a minion failed its highstate
    mine = ServerOutcome(url, HIGHSTATE, status, code, report.summary(), has_bundle)
    return FanoutReport.of(report, [mine, *outcomes])


def _upload_to_others(source, start, size, project, deployment, others, bundle_info,
                      on_event, on_progress) -> list[ServerOutcome]:
    """Send the bundle to every other server at once (highstate off); wait for all."""
    from .deploy import deploy_bundle

    done: queue.Queue = queue.Queue()
    sent = [0] * len(others)
    lock = threading.Lock()

    def progress_of(index: int):
        def progress(count: int, total: int | None) -> None:
            if on_progress is None:
                return
            with lock:
                sent[index] = count
                on_progress(sum(sent), size * len(others))
        return progress

    def run(index: int, server: Settings) -> None:
        url = safe_url(server.server)
        try:
            report = deploy_bundle(_Reader(source, start), project, deployment, server,
                                   highstate=False, bundle_info=bundle_info,
                                   on_progress=progress_of(index))
            code = int(report.exit_code)
            ok = code == ExitCode.OK
            has = True if report.deployed else report.server_has_bundle
            outcome = ServerOutcome(url, UPLOAD, "accepted" if ok else "failed", code,
                                    "accepted the bundle" if ok else report.summary(),
                                    True if ok else has)
        except SpiroDeployError as exc:
            outcome = ServerOutcome(url, UPLOAD, "failed", int(exc.exit_code), exc.message,
                                    exc.server_has_bundle)
        except Exception as exc:  # noqa: BLE001 - reported as this server's failure
            outcome = ServerOutcome(url, UPLOAD, "failed", int(ExitCode.DEPLOY_FAILED),
                                    f"{type(exc).__name__}: {exc}", None)
        done.put((index, outcome))

    # Each thread runs in a copy of the caller's context, so that its
    # messages name settings in the caller's terms (a Salt face's naming()).
    threads = [threading.Thread(target=contextvars.copy_context().run, args=(run, i, s),
                                daemon=True, name=f"spiro-upload-{i}")
               for i, s in enumerate(others)]
    for thread in threads:
        thread.start()
    outcomes: list[ServerOutcome | None] = [None] * len(others)
    try:
        for _ in others:
            # Callbacks run here, on the caller's thread, as each server finishes.
            index, outcome = _get(done)
            outcomes[index] = outcome
            if on_event is not None:
                name = ACCEPTED_EVENT if outcome.status == "accepted" else FAILED_EVENT
                data = {"msg": f"{outcome.server}: {outcome.message}",
                        "server": outcome.server, "exit_code": outcome.exit_code}
                on_event(name, data, DeployReport(project=project, deployment=deployment,
                                                  highstate=False, bundle=bundle_info))
    except KeyboardInterrupt:
        maybe = [safe_url(s.server) for s, o in zip(others, outcomes, strict=True)
                 if o is None or o.has_bundle is not False]
        raise Interrupted("interrupted while uploading to the other servers: nothing was "
                          "highstated; these may hold the new bundle: "
                          + (", ".join(maybe) or "none"), server_has_bundle=None) from None
    return [o for o in outcomes if o is not None]


def _get(done: queue.Queue) -> Any:
    # A timeout keeps the wait interruptible by Ctrl-C and SIGTERM.
    while True:
        try:
            return done.get(timeout=0.5)
        except queue.Empty:
            continue


def _split_message(report: FanoutReport, project: str, deployment: str) -> str:
    """Why nothing was highstated, and which servers now hold the new bundle."""
    failed = [s for s in report.servers if s.status == "failed"]
    named = "; ".join(f"{s.server} ({s.message})" for s in failed)
    holders = report.holders
    maybe = [s.server for s in report.servers if s.has_bundle is None]
    first = report.servers[0]
    # SpiroFS 0.3 deploys and highstates even after answering 403.
    highstated = (f"{first.server} may have highstated it anyway" if first.has_bundle
                  else "Nothing was highstated")
    text = f"{len(failed)} of {len(report.servers)} servers failed: {named}. {highstated}. "
    if holders:
        text += (f"The new bundle of {project}/{deployment} is on {', '.join(holders)} only: "
                 "the masters serve different content until the deploy is run again")
    else:
        text += "No server holds the new bundle"
    if maybe:
        text += f" (and may be on {', '.join(maybe)})"
    return text


class _as_file:
    """The bundle as a real file: an open one as is, blocks spooled to a temp file."""

    def __init__(self, bundle: IO[bytes] | Iterable[bytes]):
        self.bundle = bundle
        self.spool: IO[bytes] | None = None

    def __enter__(self) -> IO[bytes]:
        fileno = getattr(self.bundle, "fileno", None)
        if hasattr(self.bundle, "read") and fileno is not None:
            try:
                fileno()
                return self.bundle  # type: ignore[return-value]
            except (OSError, ValueError):
                pass
        self.spool = tempfile.TemporaryFile(prefix="spiro-bundle-")
        if hasattr(self.bundle, "read"):
            blocks: Iterable[bytes] = iter(lambda: self.bundle.read(_BLOCK), b"")
        else:
            blocks = self.bundle  # type: ignore[assignment]
        for block in blocks:
            self.spool.write(block)
        self.spool.flush()
        self.spool.seek(0)
        return self.spool

    def __exit__(self, *exc: object) -> None:
        if self.spool is not None:
            self.spool.close()


class _Reader:
    """Reads one file from ``start`` with its own position (``os.pread``), so
    several uploads can read the same file at once."""

    def __init__(self, source: IO[bytes], start: int):
        self._fd = source.fileno()
        self._start = start
        self._end = os.fstat(self._fd).st_size
        self._pos = start

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._end}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = max(0, self._end - self._pos)
        data = os.pread(self._fd, size, self._pos)
        self._pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)
