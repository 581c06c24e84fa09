"""The history store: every deployed bundle kept, every deploy logged.

SpiroFS keeps no history (a deploy replaces the saltenv's tree and deletes
the old one), so the way back to a known-good bundle is kept here, on the
deploying side.  A store is one directory::

    <dir>/bundles/<sha256>.tar   the bundles, named by their sha256
    <dir>/log.jsonl              one JSON object per deploy, append-only
    <dir>/.lock                  taken (fcntl, exclusive) to append and prune

Concurrent deploys never corrupt it: a bundle is written to a temporary
file in ``bundles/``, synced and renamed into place (the same sha256 is the
same bytes, so two writers of one bundle agree), and a log line is appended
with one ``write`` under the lock.  Retention runs under the same lock.  A
bundle read back is checked against its sha256 before it is deployed again.

A log line that is cut (a crash, a full disk) or not an entry is skipped
with a warning.  No Salt, no HTTP: the flows that deploy a recorded bundle
again are in :mod:`spirodeploy.rollback`.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import hashlib
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from .errors import UsageError

__all__ = [
    "DEFAULT_KEEP",
    "HistoryError",
    "HistoryStore",
    "Recording",
    "ci_job",
    "default_dir",
    "outcome_label",
]

#: Bundles kept per saltenv unless told otherwise.
DEFAULT_KEEP = 10
LOG_NAME = "log.jsonl"
LOCK_NAME = ".lock"
BUNDLES = "bundles"
ENTRY_FORMAT = 1
_SHA = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20
#: Temporary bundle files older than this are from a crashed deploy.
_STALE_TMP = 24 * 3600


class HistoryError(UsageError):
    """The history store cannot do what was asked; nothing was deployed."""


Warn = Callable[[str], None]


def default_dir(environ: Mapping[str, str] | None = None) -> str:
    """``SPIRO_HISTORY_DIR``, else ``$XDG_STATE_HOME/spiro-deploy``, else
    ``~/.local/state/spiro-deploy``.

    State, not cache: the bundles are the only way back to what was
    deployed, so they must not be wiped with caches (XDG base directory
    spec: "state data that should persist between restarts").
    """
    environ = os.environ if environ is None else environ
    if environ.get("SPIRO_HISTORY_DIR"):
        return environ["SPIRO_HISTORY_DIR"]
    state = environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                           "state")
    return os.path.join(state, "spiro-deploy")


def ci_job(environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """The CI system, job id and URL from the usual CI variables, or None."""
    env = os.environ if environ is None else environ
    get = env.get
    if get("GITHUB_ACTIONS") == "true" and get("GITHUB_RUN_ID"):
        server = get("GITHUB_SERVER_URL", "https://github.com")
        url = f"{server}/{get('GITHUB_REPOSITORY', '')}/actions/runs/{get('GITHUB_RUN_ID')}"
        if get("GITHUB_RUN_ATTEMPT"):
            url += f"/attempts/{get('GITHUB_RUN_ATTEMPT')}"
        return _ci("GitHub Actions", get("GITHUB_RUN_ID"), url)
    if get("GITLAB_CI") and get("CI_JOB_ID"):
        return _ci("GitLab CI", get("CI_JOB_ID"), get("CI_JOB_URL"))
    if get("BUILDKITE") == "true" and get("BUILDKITE_JOB_ID"):
        url = get("BUILDKITE_BUILD_URL")
        return _ci("Buildkite", get("BUILDKITE_JOB_ID"),
                   f"{url}#{get('BUILDKITE_JOB_ID')}" if url else None)
    if get("CIRCLECI") == "true":
        return _ci("CircleCI", get("CIRCLE_WORKFLOW_JOB_ID") or get("CIRCLE_BUILD_NUM"),
                   get("CIRCLE_BUILD_URL"))
    if get("JENKINS_URL") and (get("BUILD_TAG") or get("BUILD_NUMBER")):
        return _ci("Jenkins", get("BUILD_TAG") or get("BUILD_NUMBER"), get("BUILD_URL"))
    if get("TRAVIS") == "true" and get("TRAVIS_JOB_ID"):
        return _ci("Travis CI", get("TRAVIS_JOB_ID"), get("TRAVIS_JOB_WEB_URL"))
    if get("TF_BUILD") and get("BUILD_BUILDID"):
        base = get("SYSTEM_COLLECTIONURI", "")
        url = (f"{base}{get('SYSTEM_TEAMPROJECT', '')}/_build/results?buildId="
               f"{get('BUILD_BUILDID')}") if base else None
        return _ci("Azure Pipelines", get("BUILD_BUILDID"), url)
    if get("BITBUCKET_BUILD_NUMBER"):
        return _ci("Bitbucket Pipelines", get("BITBUCKET_BUILD_NUMBER"), None)
    if get("DRONE") == "true" and get("DRONE_BUILD_NUMBER"):
        return _ci("Drone", get("DRONE_BUILD_NUMBER"), get("DRONE_BUILD_LINK"))
    if get("CI") and get("CI_JOB_ID"):
        return _ci("CI", get("CI_JOB_ID"), get("CI_JOB_URL"))
    return None


def _ci(system: str, job_id: str | None, url: str | None) -> dict[str, str]:
    return {"system": system, "job_id": job_id or "", "job_url": url or ""}


def clean_server(url: str | None) -> str | None:
    """The server URL without credentials, query or fragment."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "(unparsable URL)"


def outcome_label(entry: Mapping[str, Any]) -> str:
    """One word for how a recorded deploy ended."""
    code = entry.get("exit_code")
    if code == 0:
        return "ok"
    if not entry.get("deployed"):
        return "not deployed"
    return {1: "failed", 3: "unreported"}.get(code, "incomplete")


def _who() -> tuple[str, str]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        user = str(os.getuid()) if hasattr(os, "getuid") else "?"
    return user, socket.gethostname()


class HistoryStore:
    """One history directory (see the module docstring).

    ``keep``: bundles kept per saltenv (the newest distinct ones);
    ``max_bytes``: an optional cap on all kept bundles together (the oldest
    go first; each saltenv's newest bundle is always kept).
    ``on_warning`` hears about skipped log lines and the like.
    """

    def __init__(self, directory: str, *, keep: int = DEFAULT_KEEP,
                 max_bytes: int | None = None, on_warning: Warn | None = None):
        if keep is None or int(keep) < 0:
            raise HistoryError(f"keep must be 0 or more, not {keep!r}")
        self.directory = os.path.abspath(os.path.expanduser(os.fspath(directory)))
        self.keep = int(keep)
        self.max_bytes = max_bytes
        self.on_warning = on_warning
        self._warned: set[str] = set()

    # --- paths, checks -------------------------------------------------------------

    @property
    def log_path(self) -> str:
        return os.path.join(self.directory, LOG_NAME)

    @property
    def bundles_dir(self) -> str:
        return os.path.join(self.directory, BUNDLES)

    def bundle_path(self, sha256: str) -> str:
        if not _SHA.match(str(sha256)):
            raise HistoryError(f"not a sha256: {sha256!r}")
        return os.path.join(self.bundles_dir, f"{sha256}.tar")

    def _warn(self, text: str) -> None:
        if text in self._warned:
            return
        self._warned.add(text)
        if self.on_warning is not None:
            self.on_warning(text)

    def _not_a_dir(self) -> str | None:
        for path in (self.directory, self.bundles_dir):
            if os.path.lexists(path) and not os.path.isdir(path):
                return f"history path {path} is not a directory"
        return None

    def ensure(self) -> None:
        """Create the store's directories; raise :class:`HistoryError` if it cannot be written."""
        problem = self._not_a_dir()
        if problem:
            raise HistoryError(problem)
        try:
            os.makedirs(self.bundles_dir, mode=0o700, exist_ok=True)
            with self._locked():
                pass
            if not os.access(self.bundles_dir, os.W_OK) or not os.access(self.directory, os.W_OK):
                raise PermissionError(errno.EACCES, "Permission denied")
        except HistoryError:
            raise
        except OSError as exc:
            raise HistoryError(f"cannot write the history store {self.directory}: "
                               f"{exc.strerror or exc}") from None

    def check_readable(self) -> None:
        problem = self._not_a_dir()
        if problem:
            raise HistoryError(problem)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl

        fd = os.open(os.path.join(self.directory, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    # --- reading -------------------------------------------------------------------

    def entries(self, project: str | None = None, deployment: str | None = None) -> list[dict]:
        """Logged entries, oldest first (of one saltenv when given); bad lines skipped."""
        self.check_readable()
        try:
            with open(self.log_path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise HistoryError(f"cannot read the history log {self.log_path}: "
                               f"{exc.strerror or exc}") from None
        found = []
        for number, line in enumerate(data.split(b"\n"), 1):
            if not line.strip():
                continue
            entry = _parse_line(line)
            if entry is None:
                self._warn(f"history log {self.log_path} line {number} is cut or corrupt; "
                           "skipped")
                continue
            if project is not None and entry["project"] != project:
                continue
            if deployment is not None and entry["deployment"] != deployment:
                continue
            found.append(entry)
        return found

    def has_bundle(self, sha256: str) -> bool:
        return os.path.isfile(self.bundle_path(sha256))

    def served(self, project: str, deployment: str,
               entries: list[dict] | None = None) -> dict | None:
        """The last entry recorded as deployed (the server got the bundle), or None."""
        entries = self.entries(project, deployment) if entries is None else entries
        for entry in reversed(entries):
            if entry.get("deployed"):
                return entry
        return None

    def previous_success(self, project: str, deployment: str, *,
                         not_sha256: str | None = None,
                         entries: list[dict] | None = None) -> dict | None:
        """The newest successful entry whose bundle is still kept (and is not ``not_sha256``)."""
        entries = self.entries(project, deployment) if entries is None else entries
        for entry in reversed(entries):
            if entry.get("exit_code") == 0 and entry["sha256"] != not_sha256 \
                    and self.has_bundle(entry["sha256"]):
                return entry
        return None

    def resolve(self, project: str, deployment: str, ref: str | int,
                entries: list[dict] | None = None) -> dict:
        """The entry ``ref`` names: its number (``3`` or ``#3``), or a prefix of its
        sha256 or content digest (at least 6 hex digits).  The newest entry wins
        when several entries hold the same bundle."""
        entries = self.entries(project, deployment) if entries is None else entries
        target = f"{project}/{deployment}"
        if not entries:
            raise HistoryError(f"no deploys of {target} are recorded in {self.directory}")
        text = str(ref).strip().lower().lstrip("#")
        if text.isdigit() and len(text) < 6:
            for entry in entries:
                if entry["id"] == int(text):
                    return entry
            raise HistoryError(f"no entry #{text} in the history of {target} "
                               f"(numbers {entries[0]['id']}-{entries[-1]['id']})")
        if len(text) < 6 or not re.fullmatch(r"[0-9a-f]+", text):
            raise HistoryError(f"unknown reference {ref!r}: give an entry number or at least "
                               "6 hex digits of a sha256 or digest")
        matches = [e for e in entries
                   if e["sha256"].startswith(text) or str(e.get("digest") or "").startswith(text)]
        bundles = {e["sha256"] for e in matches}
        if not matches:
            raise HistoryError(f"no bundle in the history of {target} has a sha256 or digest "
                               f"starting with {text}")
        if len(bundles) > 1:
            raise HistoryError(f"{text} is ambiguous in the history of {target}: it matches "
                               f"{len(bundles)} bundles; give more digits")
        return matches[-1]

    def verified_bundle(self, entry: Mapping[str, Any]) -> str:
        """The path of ``entry``'s bundle after checking its sha256; raise if gone or changed."""
        sha = entry["sha256"]
        path = self.bundle_path(sha)
        name = f"#{entry.get('id')} of {entry.get('project')}/{entry.get('deployment')}"
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(_CHUNK), b""):
                    digest.update(block)
        except FileNotFoundError:
            raise HistoryError(f"the bundle of {name} ({sha[:12]}) is no longer kept "
                               "(retention removed it)") from None
        except OSError as exc:
            raise HistoryError(f"cannot read stored bundle {path}: {exc.strerror or exc}") \
                from None
        if digest.hexdigest() != sha:
            raise HistoryError(f"stored bundle {path} ({name}) is corrupt: its sha256 is "
                               f"{digest.hexdigest()[:12]}..., not {sha[:12]}...; refusing "
                               "to deploy it")
        return path

    # --- writing -------------------------------------------------------------------

    def recording(self, *, server: str | None = None, required: bool = False,
                  stored_sha256: str | None = None, **fields: Any) -> Recording:
        """A :class:`Recording` for one deploy (``fields``: rollback_of, promoted_from, ...)."""
        return Recording(self, server=server, required=required, stored_sha256=stored_sha256,
                         fields=fields)

    def append(self, entry: dict, bundle_tmp: str | None = None) -> dict:
        """Store the bundle in ``bundle_tmp`` (if any) and log ``entry``; apply retention.

        Under the lock: the entry gets the next number of its saltenv.
        Returns the entry as logged.
        """
        self.ensure()
        with self._locked():
            if bundle_tmp is not None:
                final = self.bundle_path(entry["sha256"])
                if os.path.exists(final):
                    os.unlink(bundle_tmp)  # same sha256, same bytes
                else:
                    os.replace(bundle_tmp, final)
                    _fsync_dir(self.bundles_dir)
            existing = self.entries()
            same = [e["id"] for e in existing
                    if e["project"] == entry["project"] and e["deployment"] == entry["deployment"]]
            entry = dict(entry, id=max(same, default=0) + 1)
            line = (json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n").encode()
            fd = os.open(self.log_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                # A line cut by a crash or a full disk must not swallow this one.
                if os.fstat(fd).st_size and os.pread(fd, 1, os.fstat(fd).st_size - 1) != b"\n":
                    line = b"\n" + line
                written = os.write(fd, line)
                if written != len(line):
                    raise OSError(errno.ENOSPC, "short write to the history log")
                os.fsync(fd)
            finally:
                os.close(fd)
            self._prune([*existing, entry])
        return entry

    def _prune(self, entries: list[dict]) -> None:
        """Delete bundles no retained entry needs (called under the lock)."""
        newest_first: dict[tuple[str, str], list[str]] = {}
        for entry in reversed(entries):
            kept = newest_first.setdefault((entry["project"], entry["deployment"]), [])
            if entry["sha256"] not in kept and len(kept) < self.keep:
                kept.append(entry["sha256"])
        keep = {sha for shas in newest_first.values() for sha in shas}
        if self.max_bytes is not None:
            # Newest first across saltenvs; each saltenv's newest bundle always stays.
            firsts = {shas[0] for shas in newest_first.values() if shas}
            order: list[str] = []
            for entry in reversed(entries):
                if entry["sha256"] in keep and entry["sha256"] not in order:
                    order.append(entry["sha256"])
            total = 0
            for sha in order:
                try:
                    size = os.path.getsize(self.bundle_path(sha))
                except OSError:
                    continue
                if total + size > self.max_bytes and sha not in firsts:
                    keep.discard(sha)
                    continue
                total += size
        now = time.time()
        try:
            names = os.listdir(self.bundles_dir)
        except OSError:
            return
        for name in names:
            path = os.path.join(self.bundles_dir, name)
            if name.endswith(".tar") and _SHA.match(name[:-4]):
                if name[:-4] not in keep:
                    _unlink(path)
            elif name.startswith(".") and name.endswith(".tmp"):
                try:
                    if now - os.path.getmtime(path) > _STALE_TMP:
                        _unlink(path)
                except OSError:
                    pass


class Recording:
    """Records one deploy: keeps the bytes that are uploaded, then logs the outcome.

    :func:`spirodeploy.deploy.deploy_bundle` calls :meth:`capture` with what
    it is about to upload and :meth:`finish` with the report.  If the store
    cannot be written, a warning is given and the deploy goes ahead, unless
    ``required`` (rollback on failure needs the store): then :meth:`capture`
    raises :class:`HistoryError` before anything is sent.  A recording of a
    bundle that is already stored (``stored_sha256``: a rollback or a
    promotion) copies nothing.
    """

    def __init__(self, store: HistoryStore, *, server: str | None, required: bool = False,
                 stored_sha256: str | None = None, fields: Mapping[str, Any] | None = None):
        self.store = store
        self.server = server
        self.required = required
        self.stored_sha256 = stored_sha256
        self.fields = dict(fields or {})
        self.entry: dict | None = None
        self.error: str | None = None
        self._tmp: str | None = None
        self._file: IO[bytes] | None = None

    # --- the bytes -----------------------------------------------------------------

    def start(self) -> None:
        """Open the temporary bundle file (or fail as :meth:`capture` describes)."""
        try:
            self.store.ensure()
            if self.stored_sha256 is not None:
                return
            import tempfile

            fd, self._tmp = tempfile.mkstemp(prefix=".bundle.", suffix=".tmp",
                                             dir=self.store.bundles_dir)
            self._file = os.fdopen(fd, "wb")
        except (HistoryError, OSError) as exc:
            self._broken(exc)

    def _broken(self, exc: BaseException) -> None:
        message = getattr(exc, "message", None) or f"cannot write the history store " \
            f"{self.store.directory}: {getattr(exc, 'strerror', None) or exc}"
        self.discard()
        if self.required:
            raise HistoryError(f"{message}; rollback on failure needs it, so nothing was "
                               "deployed") from None
        self.error = message
        self.store._warn(f"{message}; this deploy is not recorded")

    def capture(self, bundle: Any) -> Any:
        """Return what to upload instead of ``bundle``: the same open file (after a
        copy into the store) or an iterator of its blocks that copies them as they go."""
        self.start()
        if self._file is None:
            return bundle
        if hasattr(bundle, "read"):
            start = bundle.tell()
            try:
                for block in iter(lambda: bundle.read(_CHUNK), b""):
                    self._write(block)
            finally:
                bundle.seek(start)
            return bundle
        whole = getattr(bundle, "whole_blocks", None)
        if whole is not None:
            # Keep the builder's whole blocks on offer to a sender that takes them.
            from .stream import Pieces

            return Pieces(self._tee(whole()))
        return self._tee(bundle)

    def _tee(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for block in chunks:
            self._write(block)
            yield block

    def _write(self, block: bytes) -> None:
        if self._file is None:
            return
        try:
            # Not hashed here: the uploader knows the sha256 already, and a copy
            # gone bad is caught when it is read back (verified_bundle).
            self._file.write(block)
        except OSError as exc:
            # A full disk must not stop the deploy (the bundle is already going out).
            self.required = False
            self._broken(exc)

    def discard(self) -> None:
        """Drop the temporary file (the upload failed, or the store broke)."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        if self._tmp is not None:
            _unlink(self._tmp)
            self._tmp = None

    # --- the entry -----------------------------------------------------------------

    def finish(self, report: Any, *, user: tuple[str, str] | None = None,
               environ: Mapping[str, str] | None = None) -> dict | None:
        """Log the deploy described by ``report`` (a DeployReport); return the entry.

        Nothing is logged when the server cannot have the bundle (the
        upload never completed).  Store errors become a warning.
        """
        try:
            if not (report.events or report.server_has_bundle):
                self.discard()
                return None
            if self.error is not None:
                return None
            info = dict(report.bundle or {})
            tmp = None
            if self.stored_sha256 is not None:
                sha = self.stored_sha256
            else:
                if self._file is None:
                    return None
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                self._file = None
                sha = info.get("sha256") or _file_sha256(self._tmp)
                tmp = self._tmp
            if not info.get("digest") or "gitcommit" not in info:
                info.update(_manifest_facts(tmp or self.store.bundle_path(sha)))
            who, host = user or _who()
            entry = {
                "format": ENTRY_FORMAT,
                "time": round(time.time(), 3),
                "project": report.project,
                "deployment": report.deployment,
                "server": clean_server(self.server),
                "sha256": sha,
                "size": info.get("size"),
                "file_count": info.get("file_count"),
                "digest": info.get("digest"),
                "gitcommit": info.get("gitcommit"),
                "user": who,
                "host": host,
                "ci": ci_job(environ),
                "highstate": bool(report.highstate),
                "deployed": bool(report.deployed or report.server_has_bundle),
                "exit_code": int(report.exit_code),
                "minions": _minion_summary(report),
                "error": report.error or (report.summary() if report.exception else None),
                "rollback_of": None,
                "promoted_from": None,
                **self.fields,
            }
            self._tmp = None
            self.entry = self.store.append(entry, tmp)
            return self.entry
        except (HistoryError, OSError) as exc:
            self.required = False
            self._broken(exc)
            return None


#: Names kept per outcome in a log entry.  Every deploy reads the whole log,
#: so an entry must not grow with the fleet: the counts say how many there were.
LOGGED_MINION_NAMES = 100


def _minion_summary(report: Any) -> dict[str, Any]:
    failed = set(report.failed)
    outcomes = {"ok": [m for m in report.reported if m not in failed],
                "failed": list(report.failed), "unreported": list(report.unreported)}
    summary: dict[str, Any] = {key: names[:LOGGED_MINION_NAMES]
                               for key, names in outcomes.items()}
    summary["counts"] = {key: len(names) for key, names in outcomes.items()}
    return summary


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest_facts(path: str) -> dict[str, Any]:
    """The digest and ``.gitcommit`` of a stored bundle, from its manifest."""
    from .errors import BundleError
    from .manifest import read_manifest

    try:
        manifest = read_manifest(path) or {}
    except BundleError:
        manifest = {}
    return {"digest": manifest.get("digest"), "gitcommit": manifest.get("gitcommit")}


def _parse_line(line: bytes) -> dict | None:
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), int):
        return None
    for key in ("project", "deployment", "sha256"):
        if not isinstance(entry.get(key), str):
            return None
    if not _SHA.match(entry["sha256"]):
        return None
    return entry


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)

