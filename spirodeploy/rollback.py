"""Deploying a recorded bundle again: rollback, promotion, rollback on failure.

The flows over :mod:`spirodeploy.deploy` and the store of
:mod:`spirodeploy.history`, shared by the CLI and the Salt modules.  Each
checks everything it can before a byte is sent (the reference, the
bundle's sha256, what the saltenv serves when the caller can see it) and
raises :class:`~spirodeploy.history.HistoryError` with a one-line reason
when it refuses; nothing is deployed then.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import ExitCode, SpiroDeployError
from .history import HistoryError, HistoryStore
from .report import DeployReport
from .settings import Settings

__all__ = [
    "Outcome",
    "check_served",
    "deploy_with_rollback",
    "entry_ref",
    "plan_promotion",
    "plan_rollback",
    "promote",
    "rollback",
]


@dataclass
class Outcome:
    """What a flow did: the deploy's report, and the rollback's when one ran."""

    report: DeployReport
    entry: dict | None = None
    #: The entry whose bundle was deployed again (rollback, promotion).
    source: dict | None = None
    rollback: DeployReport | None = None
    rollback_entry: dict | None = None
    #: Why an automatic rollback did not run (or None).
    no_rollback: str | None = None
    messages: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        # A deploy rolled back still failed: the pipeline must say so.
        return int(self.report.exit_code)


def entry_ref(entry: dict) -> str:
    """``myproj/prod#3 (sha256 0123456789ab)``."""
    return f"{entry['project']}/{entry['deployment']}#{entry['id']} (sha256 {entry['sha256'][:12]})"


def check_served(store: HistoryStore, project: str, deployment: str,
                 served_digest: str | None, *, force: bool = False,
                 entries: list[dict] | None = None) -> None:
    """Refuse when the saltenv serves something else than the log's last deploy.

    ``served_digest`` is the content digest of the served manifest (the
    caller reads it through Salt); None when the saltenv serves no manifest
    or cannot be seen (then nothing is checked).
    """
    if served_digest is None or force:
        return
    served = store.served(project, deployment, entries)
    if served is None:
        raise HistoryError(f"{project}/{deployment} serves digest {served_digest[:12]}, but "
                           "no deploy of it is recorded in this history; use force to go ahead")
    if served.get("digest") != served_digest:
        raise HistoryError(
            f"{project}/{deployment} serves digest {served_digest[:12]}, not the last deploy "
            f"recorded here ({entry_ref(served)}, digest {str(served.get('digest'))[:12]}): "
            "someone else deployed in between; use force to roll back anyway")


def plan_rollback(store: HistoryStore, project: str, deployment: str, *,
                  to: str | int | None = None, force: bool = False,
                  served_digest: str | None = None) -> tuple[dict, dict | None]:
    """Pick the entry to deploy again and check it; return ``(target, current)``."""
    entries = store.entries(project, deployment)
    if not entries:
        raise HistoryError(f"no deploys of {project}/{deployment} are recorded in "
                           f"{store.directory}")
    check_served(store, project, deployment, served_digest, force=force, entries=entries)
    current = store.served(project, deployment, entries)
    if to is not None:
        target = store.resolve(project, deployment, to, entries)
    else:
        target = store.previous_success(project, deployment, entries=entries,
                                        not_sha256=current["sha256"] if current else None)
        if target is None:
            raise HistoryError(f"no earlier successful deploy of {project}/{deployment} with a "
                               "kept bundle to roll back to", setting="rollback_to",
                               fix="{what}; name one with {rollback_to}")
    if current is not None and not force and (
            target["sha256"] == current["sha256"]
            or (target.get("digest") and target.get("digest") == current.get("digest"))):
        raise HistoryError(f"{entry_ref(target)} is what {project}/{deployment} serves "
                           f"already (last deploy {entry_ref(current)}); nothing to do",
                           setting="force", fix="{what} ({force} deploys it again)")
    store.verified_bundle(target)
    return target, current


def rollback(store: HistoryStore, project: str, deployment: str, settings: Settings, *,
             to: str | int | None = None, force: bool = False,
             served_digest: str | None = None, highstate: bool = True,
             **callbacks: Any) -> Outcome:
    """Deploy a recorded bundle of ``project``/``deployment`` again and record it.

    By default the newest successful bundle before the one deployed last;
    ``to`` names another (entry number, or a sha256 / digest prefix).
    """
    target, current = plan_rollback(store, project, deployment, to=to, force=force,
                                    served_digest=served_digest)
    report, entry = _deploy_entry(store, target, project, deployment, settings,
                                  highstate=highstate,
                                  fields={"rollback_of": current["id"] if current else None,
                                          "restored": target["id"]},
                                  **callbacks)
    return Outcome(report, entry=entry, source=target)


def plan_promotion(store: HistoryStore, project: str, source: str, deployment: str, *,
                   to: str | int | None = None, force: bool = False,
                   source_digest: str | None = None) -> dict:
    """Pick the bundle of ``project``/``source`` to deploy to ``deployment``, and check it."""
    if source == deployment:
        raise HistoryError(f"cannot promote {project}/{source} to itself")
    entries = store.entries(project, source)
    if not entries:
        raise HistoryError(f"no deploys of {project}/{source} are recorded in "
                           f"{store.directory}")
    if to is not None:
        entry = store.resolve(project, source, to, entries)
    else:
        check_served(store, project, source, source_digest, force=force, entries=entries)
        entry = store.served(project, source, entries)
        if entry is None:
            raise HistoryError(f"nothing recorded as deployed to {project}/{source}")
    path = store.verified_bundle(entry)
    facts = bundle_facts(path)
    if entry.get("digest") and facts["digest"] != entry["digest"]:
        raise HistoryError(f"stored bundle {path} carries digest {str(facts['digest'])[:12]}, "
                           f"not {entry['digest'][:12]} as logged; refusing to promote it")
    if not force and not facts["has_top"] and deployment not in facts["spirotop_keys"]:
        what = ("its spirotop.sls has no key for " + repr(deployment)
                if facts["has_spirotop"] else "it has no spirotop.sls either")
        raise HistoryError(f"{entry_ref(entry)} has no top.sls and {what}: SpiroFS would "
                           f"highstate nothing in {project}/{deployment} without saying so",
                           setting="force", fix="{what} ({force} promotes it anyway)")
    return entry


def promote(store: HistoryStore, project: str, source: str, deployment: str,
            settings: Settings, *, to: str | int | None = None, force: bool = False,
            source_digest: str | None = None, highstate: bool = True,
            **callbacks: Any) -> Outcome:
    """Deploy the bundle last deployed to ``project``/``source`` to ``deployment``."""
    entry = plan_promotion(store, project, source, deployment, to=to, force=force,
                           source_digest=source_digest)
    report, new = _deploy_entry(store, entry, project, deployment, settings, highstate=highstate,
                                fields={"promoted_from": f"{project}/{source}#{entry['id']}"},
                                **callbacks)
    return Outcome(report, entry=new, source=entry)


def deploy_with_rollback(store: HistoryStore, project: str, deployment: str,
                         settings: Settings, run: Callable[[Any], DeployReport], *,
                         highstate: bool = True, on_warning: Callable[[str], None] | None = None,
                         on_rollback: Callable[[DeployReport, dict], None] | None = None,
                         **callbacks: Any) -> Outcome:
    """Run a deploy (``run(recording)``); if its highstate fails, deploy the
    previous successful bundle again.

    The store must be writable (:class:`HistoryError` before anything is
    uploaded otherwise).  The outcome's exit code is the failed deploy's.
    """
    store.ensure()
    previous = store.previous_success(project, deployment)
    if previous is None and on_warning is not None:
        on_warning(f"no successful deploy of {project}/{deployment} is recorded in "
                   f"{store.directory}: there is nothing to roll back to if this one fails")
    recording = store.recording(server=settings.server, required=True)
    report = run(recording)
    outcome = Outcome(report, entry=recording.entry)
    if report.exit_code != ExitCode.DEPLOY_FAILED or not report.deployed:
        return outcome
    new_sha = (report.bundle or {}).get("sha256")
    if previous is None:
        outcome.no_rollback = "no earlier successful deploy is recorded"
        return outcome
    if previous["sha256"] == new_sha:
        outcome.no_rollback = (f"the last successful deploy {entry_ref(previous)} is this "
                               "very bundle")
        return outcome
    try:
        store.verified_bundle(previous)
    except HistoryError as exc:
        outcome.no_rollback = exc.message
        return outcome
    failed_id = recording.entry["id"] if recording.entry else None
    if on_rollback is not None:
        on_rollback(report, previous)
    try:
        outcome.rollback, outcome.rollback_entry = _deploy_entry(
            store, previous, project, deployment, settings, highstate=highstate,
            fields={"rollback_of": failed_id, "restored": previous["id"], "automatic": True},
            **callbacks)
    except SpiroDeployError as exc:
        # The failed deploy stays the outcome; say why the rollback did not happen.
        outcome.no_rollback = f"the rollback to {entry_ref(previous)} failed: {exc.message}"
        return outcome
    outcome.source = previous
    return outcome


def _deploy_entry(store: HistoryStore, entry: dict, project: str, deployment: str,
                  settings: Settings, *, highstate: bool, fields: dict,
                  **callbacks: Any) -> tuple[DeployReport, dict | None]:
    from .deploy import deploy_file

    path = store.verified_bundle(entry)
    recording = store.recording(server=settings.server, stored_sha256=entry["sha256"],
                                **fields)
    report = deploy_file(path, project, deployment, settings, highstate=highstate,
                         history=recording, **callbacks)
    return report, recording.entry


def bundle_facts(path: str) -> dict[str, Any]:
    """From a stored bundle: its manifest digest, whether it has ``top.sls``,
    and the top-level keys of its ``spirotop.sls``."""
    from .manifest import MANIFEST_NAME

    facts: dict[str, Any] = {"digest": None, "has_top": False, "has_spirotop": False,
                             "spirotop_keys": set()}
    import json

    try:
        with tarfile.open(path, mode="r|*") as tf:
            for member in tf:
                name = member.name.removeprefix("./")
                if not member.isfile() or name not in ("top.sls", "spirotop.sls", MANIFEST_NAME):
                    continue
                data = tf.extractfile(member).read()
                if name == "top.sls":
                    facts["has_top"] = True
                elif name == "spirotop.sls":
                    facts["has_spirotop"] = True
                    facts["spirotop_keys"] = top_level_keys(data.decode("utf-8", "replace"))
                else:
                    try:
                        facts["digest"] = json.loads(data).get("digest")
                    except (ValueError, AttributeError):
                        pass
    except (tarfile.TarError, OSError) as exc:
        raise HistoryError(f"cannot read stored bundle {path}: {exc}") from None
    return facts


def top_level_keys(text: str) -> set[str]:
    """The top-level mapping keys of a YAML document (spirotop.sls is plain YAML).

    PyYAML when installed (Salt has it); otherwise the keys of unindented
    ``key:`` lines, which is what a spirotop file holds.
    """
    try:
        import yaml  # type: ignore[import-untyped]

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            return set()
        return {str(key) for key in data} if isinstance(data, dict) else set()
    except ImportError:
        keys = set()
        for line in text.splitlines():
            match = re.match(r"""^(?:'([^']*)'|"([^"]*)"|([^\s#'"][^:#]*?))\s*:(\s|$)""", line)
            if match:
                keys.add(next(group for group in match.groups() if group is not None))
        return keys


def recorded_deploy(store: HistoryStore, project: str, deployment: str, settings: Settings,
                    run: Callable[[Any], DeployReport], *, rollback_on_failure: bool = False,
                    highstate: bool = True, on_warning: Callable[[str], None] | None = None,
                    on_rollback: Callable[[DeployReport, dict], None] | None = None,
                    **callbacks: Any) -> tuple[DeployReport, dict[str, Any]]:
    """A deploy recorded in ``store`` (``run(recording)`` deploys), for the Salt faces.

    Returns the deploy's report and what to add to their return:
    ``history_entry`` (the entry's number) and, with ``rollback_on_failure``
    after a failed highstate, ``rollback`` (its report, or why none ran) and
    a ``comment``.
    """
    if not rollback_on_failure:
        recording = store.recording(server=settings.server)
        report = run(recording)
        return report, {"history_entry": recording.entry["id"] if recording.entry else None}
    outcome = deploy_with_rollback(store, project, deployment, settings, run,
                                   highstate=highstate, on_warning=on_warning,
                                   on_rollback=on_rollback, **callbacks)
    return outcome.report, outcome_fields(outcome)


def outcome_fields(outcome: Outcome) -> dict[str, Any]:
    """What a rollback-on-failure run adds to a Salt return."""
    fields: dict[str, Any] = {"history_entry": outcome.entry["id"] if outcome.entry else None}
    report = outcome.report
    target = f"{report.project}/{report.deployment}"
    if outcome.rollback is not None:
        state = ("succeeded" if outcome.rollback.succeeded
                 else f"also failed (exit {int(outcome.rollback.exit_code)})")
        fields["rollback"] = {
            "to": entry_ref(outcome.source), "entry": (outcome.rollback_entry or {}).get("id"),
            "result": outcome.rollback.succeeded, "report": outcome.rollback.to_dict()}
        fields["comment"] = (f"the highstate of {target} failed; rolled back to "
                             f"{entry_ref(outcome.source)}, and the rollback {state}")
    elif outcome.no_rollback is not None:
        fields["rollback"] = {"result": False, "skipped": outcome.no_rollback}
        fields["comment"] = (f"the highstate of {target} failed and it was not rolled back: "
                             f"{outcome.no_rollback}")
    return fields


def listing(store: HistoryStore, project: str, deployment: str, *,
            served_digest: str | None = None, limit: int | None = None) -> dict[str, Any]:
    """The history of a saltenv, newest first, each entry marked ``served`` or not.

    With ``served_digest`` (what the saltenv serves, seen through Salt) the
    served entry is the newest one with that digest; otherwise the last one
    recorded as deployed.
    """
    entries = store.entries(project, deployment)
    if not entries:
        raise HistoryError(f"no deploys of {project}/{deployment} are recorded in "
                           f"{store.directory}")
    if served_digest is not None:
        served = next((e for e in reversed(entries) if e.get("digest") == served_digest
                       and e.get("deployed")), None)
        basis = "the served .spirodeploy.json"
    else:
        served = store.served(project, deployment, entries)
        basis = "the last deploy recorded here (the served saltenv is not visible)"
    rows = [dict(e, served=served is not None and e["id"] == served["id"],
                 bundle_kept=store.has_bundle(e["sha256"])) for e in reversed(entries)]
    return {"project": project, "deployment": deployment, "directory": store.directory,
            "served": served["id"] if served else None, "served_from": basis,
            "served_digest": served_digest,
            "entries": rows[:limit] if limit else rows}
