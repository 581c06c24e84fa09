"""What is deployed, and what a deploy would change: the logic of ``spirodeploy.deployed``.

The Salt state (``_states/spirodeploy_mod.py``) reads the deployed manifest
through Salt's fileserver and passes the text here; everything else, the
local record of past deploys, the comparison and the words of the state's
return, is plain Python and needs no Salt.

What is deployed is known, in order of trust, from:

1. **the server**: the ``.spirodeploy.json`` manifest served in saltenv
   ``<project>/<deployment>``, read through the minion's master.  Every
   bundle spiro-deploy builds carries it, so it describes exactly what the
   saltenv holds, whoever deployed it;
2. **the local record**: what this host last deployed there, kept under its
   cachedir, for when the saltenv is not visible from here (a build host
   whose master is not the SpiroFS server, ``salt-call --local``).

A deploy is needed when the new bundle's content digest differs from the
deployed one, when nothing is known, or when the local record says the last
deploy of this very content failed (so a failed highstate is retried, as a
failed state would be).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from .atomicfile import replace_file
from .manifest import MANIFEST_NAME, diff_manifests
from .report import DeployReport

__all__ = [
    "MANIFEST_NAME",
    "Deployed",
    "parse_manifest",
    "record_path",
    "read_record",
    "write_record",
    "what_is_deployed",
    "what_is_served",
    "record_summary",
    "needs_deploy",
    "file_changes",
    "minions_outcome",
    "failure_comment",
]

RECORD_FORMAT = 1


@dataclass
class Deployed:
    """What is known about the content of a saltenv."""

    #: ``"server"``, ``"local record"`` or ``"nothing"``.
    source: str
    manifest: dict | None = None
    #: sha256 of the bundle (known from the local record only).
    sha256: str | None = None
    #: The local record for the same content says its last deploy failed.
    last_deploy_failed: bool = False
    #: One sentence for the state's comment.
    detail: str = ""

    @property
    def digest(self) -> str | None:
        return self.manifest.get("digest") if self.manifest else None


def parse_manifest(text: Any) -> dict | None:
    """The manifest in ``text`` (what ``cp.get_file_str`` returned), or None.

    ``text`` may also be an already parsed dict.  None when it is missing
    (``False``/empty) or is not a manifest.
    """
    if isinstance(text, dict):
        manifest = text
    elif not text or not isinstance(text, (str, bytes)):
        return None
    else:
        try:
            manifest = json.loads(text)
        except ValueError:
            return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("digest"), str) \
            or not isinstance(manifest.get("files"), list):
        return None
    return manifest


def record_path(cachedir: str, project: str, deployment: str) -> str:
    """Where this host records its last deploy of ``project``/``deployment``.

    The names are checked first: ``.`` or ``..`` would put the record
    somewhere else under (or above) the cachedir.
    """
    from .checks import check_name

    check_name("project", project)
    check_name("deployment", deployment)
    return os.path.join(cachedir, "spirodeploy", "deployed", quote(project, safe=""),
                        quote(deployment, safe="") + ".json")


def read_record(path: str) -> dict | None:
    """The local record at ``path``, or None if there is none (or it is unreadable)."""
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or parse_manifest(record.get("manifest")) is None:
        return None
    return record


def write_record(path: str, *, project: str, deployment: str, manifest: Mapping[str, Any],
                 sha256: str | None, succeeded: bool, now: float | None = None) -> dict:
    """Record a deploy that reached the server (atomically); return the record."""
    record = {
        "format": RECORD_FORMAT,
        "project": project,
        "deployment": deployment,
        "sha256": sha256,
        "digest": manifest.get("digest"),
        "succeeded": bool(succeeded),
        "time": time.time() if now is None else now,
        "manifest": dict(manifest),
    }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    replace_file(path, json.dumps(record, sort_keys=True).encode(), prefix=".record.")
    return record


def what_is_deployed(served_text: Any, record: Mapping[str, Any] | None, *,
                     saltenv: str, visible: bool | None = None) -> Deployed:
    """Decide what is deployed from the served manifest text and the local record.

    ``served_text`` is the content of ``salt://.spirodeploy.json`` in
    ``saltenv`` (False or empty when the fileserver has no such file), as
    text or parsed.
    ``visible`` says whether the saltenv has any file at all through the
    fileserver (None: unknown); a visible saltenv without a manifest was
    deployed by something else, so its content is unknown and the local
    record does not describe it.
    """
    same_record = None
    served = parse_manifest(served_text)
    if record is not None and served is not None and record.get("digest") == served["digest"]:
        same_record = record
    if served is not None:
        return Deployed(
            "server", served,
            sha256=same_record.get("sha256") if same_record else None,
            last_deploy_failed=bool(same_record and not same_record.get("succeeded", True)),
            detail=f"the server serves {MANIFEST_NAME} in saltenv {saltenv}",
        )
    if visible:
        why = ("is not a valid manifest" if served_text else "is missing")
        return Deployed("nothing", detail=f"saltenv {saltenv} is served but its {MANIFEST_NAME} "
                                          f"{why}, so its content is unknown")
    if record is not None:
        return Deployed(
            "local record", dict(record["manifest"]), sha256=record.get("sha256"),
            last_deploy_failed=not record.get("succeeded", True),
            detail=(f"saltenv {saltenv} is not visible through this host's fileserver; "
                    "using the local record of the last deploy from this host"),
        )
    return Deployed("nothing", detail=(f"saltenv {saltenv} is not visible through this host's "
                                       "fileserver and there is no local record of a deploy"))


def what_is_served(project: str, deployment: str, files: list[str] | None,
                   read: Callable[[str], Any], *, manifest: bool = False) -> dict[str, Any]:
    """What saltenv ``<project>/<deployment>`` serves, as seen through a fileserver.

    ``files`` is the saltenv's file list (``cp.list_master``; empty when it is
    not visible from here) and ``read(path)`` a file's text (``cp.get_file_str``
    of ``salt://<path>``; False when missing).  Returns ``visible``,
    ``source`` (``manifest``, ``gitcommit``, ``files`` or None), ``digest``,
    ``gitcommit``, ``tool``, ``file_count`` and a ``comment``; with
    ``manifest`` also the whole served ``manifest`` when there is one.
    """
    saltenv = f"{project}/{deployment}"
    files = list(files or [])
    ret: dict[str, Any] = {
        "result": True, "project": project, "deployment": deployment, "saltenv": saltenv,
        "visible": bool(files), "source": None, "digest": None, "gitcommit": None,
        "tool": None, "file_count": None,
    }
    served = parse_manifest(read(MANIFEST_NAME)) if MANIFEST_NAME in files else None
    if served is not None:
        ret.update(source="manifest", digest=served["digest"], gitcommit=served.get("gitcommit"),
                   tool=served.get("tool"), file_count=len(served["files"]))
        if manifest:
            ret["manifest"] = served
        ret["comment"] = (f"saltenv {saltenv} serves a bundle of {len(served['files'])} files "
                          f"(digest {served['digest']})")
    elif files:
        ret["file_count"] = len(files)
        commit = read(".gitcommit") if ".gitcommit" in files else None
        if commit:
            ret.update(source="gitcommit", gitcommit=str(commit).strip())
        else:
            ret["source"] = "files"
        ret["comment"] = (f"saltenv {saltenv} serves {len(files)} files but no "
                          f"{MANIFEST_NAME}: it was not deployed by spiro-deploy 1.x")
    else:
        ret["comment"] = (f"saltenv {saltenv} is not visible from this minion: nothing is "
                          "deployed there, or this minion's master is not the SpiroFS server")
    return ret


def record_summary(record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The part of a local record a status shows (None without a record)."""
    if record is None:
        return None
    return {key: record.get(key) for key in ("digest", "sha256", "succeeded", "time")}


def needs_deploy(deployed: Deployed, new_manifest: Mapping[str, Any]) -> bool:
    """Whether deploying a bundle with ``new_manifest`` would change anything."""
    if deployed.digest is None or deployed.digest != new_manifest.get("digest"):
        return True
    return deployed.last_deploy_failed


def file_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> dict:
    """``{"added", "removed", "modified"}`` lists of paths, without the empty ones."""
    diff = diff_manifests(old, new)
    return {key: paths for key, paths in diff.items() if paths}


def minions_outcome(report: DeployReport) -> dict[str, list[str]]:
    """Which minions succeeded, failed and never reported."""
    failed = set(report.failed)
    return {
        "succeeded": sorted(m for m in report.reported if m not in failed),
        "failed": report.failed,
        "unreported": report.unreported,
    }


def failure_comment(report: DeployReport, limit: int = 10) -> str:
    """Why a deploy failed, naming the minions and their failed states."""
    target = f"{report.project}/{report.deployment}"
    if report.error is not None:
        return f"Deploy of {target} did not complete: {report.error}"
    if report.exception is not None:
        lines = [line for line in report.exception.strip().splitlines() if line.strip()]
        return f"Deploy of {target} failed on the server: {lines[-1] if lines else ''}"
    parts = []
    for name in report.failed:
        minion = report.minions[name]
        if minion.no_response:
            parts.append(f"{name} did not respond")
        elif minion.errors:
            parts.append(f"{name} could not run its highstate: "
                         + "; ".join(_first_line(e) for e in minion.errors[:limit]))
        elif minion.failed_states:
            states = minion.failed_states
            listed = ", ".join(
                f"{s.id} ({s.function})" + (f": {_first_line(s.comment)}" if s.comment else "")
                for s in states[:limit])
            more = f" and {len(states) - limit} more" if len(states) > limit else ""
            parts.append(f"{name} failed {len(states)} state{'s' if len(states) != 1 else ''}: "
                         f"{listed}{more}")
        else:
            parts.append(f"{name} returned retcode {minion.retcode}")
    if report.unreported:
        parts.append("never reported: " + ", ".join(report.unreported))
    if not parts:
        if not report.finished:
            return f"Deploy of {target} did not finish: the event stream ended early"
        return report.summary()
    return f"Deployed {target}, but the highstate failed: " + "; ".join(parts)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""
