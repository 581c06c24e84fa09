"""
Keep a SpiroFS saltenv serving a project's state tree
=====================================================

``spirodeploy.deployed`` says "saltenv ``<project>/<deployment>`` serves
what this checkout bundles".  It builds the bundle, compares its content
with what is deployed, and uploads it only when something differs; the
SpiroFS server then highstates the minions using that saltenv.

:depends: spiro-deploy (``pip install spiro-deploy``), and the
    ``spirodeploy`` execution module that comes with it

Connection settings are read like the execution module's: arguments, then
``spirodeploy:server``, ``spirodeploy:token`` (in pillar), ... then the
environment.  See :py:mod:`salt.modules.spirodeploy`.

.. code-block:: yaml

    myproject-prod:
      spirodeploy.deployed:
        - name: myproject/prod
        - root: /srv/checkouts/myproject

``watch`` works: when a watched state changes something (a ``git.latest``
that pulled) and the content digest is what is deployed already, the bundle
is deployed again anyway, so the server highstates its minions again
(:py:func:`mod_watch`).  ``require`` only orders the states, as usual.

.. note::

    Do not run this state, with ``highstate: True``, on a minion that the
    deployed top file targets: the server queues that minion's highstate
    behind the state run that is waiting for it.  When that minion is the
    last one still to report, the state stops waiting, says so, and the
    queued highstate runs once the state run is over.  Build hosts, or an
    orchestration on the master (``salt-run state.orchestrate``), avoid it.
"""

import contextvars
import inspect
import logging
import os

log = logging.getLogger(__name__)

__virtualname__ = "spirodeploy"

INSTALL_HINT = (
    'install spiro-deploy 1.0 or newer: pip install "spiro-deploy>=1.0" '
    '(onedir Salt packages: salt-pip install "spiro-deploy>=1.0")'
)


try:
    from spirodeploy import errors, saltface, saltsupport
    from spirodeploy import state as spirostate
    from spirodeploy.saltface import in_salt_terms as _salt_terms

    LIBRARY_ERROR = None
except ImportError as exc:  # pragma: no cover - exercised through __virtual__
    LIBRARY_ERROR = str(exc)
    log.debug("spirodeploy library not importable: %s", LIBRARY_ERROR)

    def _salt_terms(func):  # the file still loads, so that __virtual__ can say why not
        return func


def __virtual__():
    if LIBRARY_ERROR is not None:
        return False, INSTALL_HINT
    return saltface.virtual(__virtualname__, needs="spirodeploy.status", functions=__salt__)


@_salt_terms
def deployed(
    name,
    project=None,
    deployment=None,
    root=None,
    artifacts=None,
    include_source=None,
    highstate=True,
    allow_empty=False,
    exclude=None,
    server=None,
    token=None,
    token_file=None,
    ssl_cert=None,
    insecure=None,
    timeout=None,
    connect_timeout=None,
    rollback_on_failure=None,
    batch=None,
    canary=None,
    on_batch_failure=None,
    compress=False,
):
    """
    Ensure saltenv ``<project>/<deployment>`` serves the bundle of the project at ``root``.

    The bundle is built (it is cheap to compare: its manifest holds a
    digest of the content) and compared with what is deployed, known from
    the ``.spirodeploy.json`` the server serves in that saltenv, read
    through this minion's master, or, when this minion cannot see the
    saltenv, from a local record of its own last deploy; the comment says
    which.  Nothing is uploaded when the content is the same, unless the
    last deploy of that content from here failed.

    With ``test=True`` nothing is uploaded: ``changes`` lists the files
    that would be ``added``, ``removed`` or ``modified``.

    After a deploy, ``changes`` holds the old and new bundle (``sha256``,
    content ``digest``), the ``files`` that changed and the outcome per
    minion.  If any minion fails its highstate, the state fails and the
    comment names the minions and their failed states.

    name
        The state ID, or ``<project>/<deployment>`` when ``project`` and
        ``deployment`` are not given.

    project
        The project to deploy to.

    deployment
        The deployment of the project, for example ``prod``.

    root
        The project directory, holding ``_salt/``, as an absolute path.
        Default: ``spirodeploy:root`` (configuration, grains or pillar); one
        of them is required, as ``salt-minion`` runs in ``/``.

    artifacts
        Files or directories under ``root`` to add as ``_artifacts/<path>``.

    include_source
        ``git``, ``fs`` or ``auto`` to add the source under ``_source/``.

    highstate : True
        Highstate the minions whose top file uses the saltenv.

    allow_empty : False
        Deploy even when ``_salt/`` has no files (this empties the saltenv).

    exclude
        Paths never to bundle.

    server, token, token_file, ssl_cert, insecure, timeout, connect_timeout
        Connection settings, as for the execution module.  Keep the token
        in pillar (``spirodeploy:token``), not in the SLS.

    rollback_on_failure : False
        When the highstate fails, deploy the previous successful bundle
        from this minion's history again (``spirodeploy:history_dir``,
        default ``<cachedir>/spirodeploy-history``, where every deploy of
        the state is recorded).  The state still fails; the comment and
        ``changes["rollback"]`` say what the rollback did.

    batch, canary, on_batch_failure
        A staged rollout, as for the runner's ``spirodeploy.deploy``
        (``batch: 10%``, ``canary: 2``; ``rollback_on_failure: True`` means
        ``on_batch_failure: rollback``, and the two given against each other,
        ``stop`` with ``True``, fail the state before anything is uploaded;
        ``compress`` compresses the upload): upload with the highstate off, then
        run the ``spirodeploy.rollout`` runner, which highstates the canaries
        and then the other minions a batch at a time and stops at the first
        failing batch.  ``changes["rollout"]`` lists the minions ``done``,
        ``failed`` and ``never_started``.  Only in an orchestration (the
        state must run on the master); bad values, or a canary that matches
        no minion, fail the state before anything is uploaded.

    compress : False
        Upload the bundle gzip-compressed (``gzip`` or ``True``); the
        ``sha256`` in ``changes`` is then the gzip's.

    .. code-block:: yaml

        deploy-myproject:
          spirodeploy.deployed:
            - project: myproject
            - deployment: prod
            - root: /srv/checkouts/myproject
            - artifacts:
              - dist/myproject.whl
    """
    ret = {"name": name, "result": True, "comment": "", "changes": {}}
    secrets = [token]
    try:
        project, deployment = _target(name, project, deployment)
        project_dir = saltsupport.project_root(root, __salt__["config.get"])
        do_highstate = saltsupport.to_bool(highstate, "highstate", default=True)
        empty_ok = saltsupport.to_bool(allow_empty, "allow_empty")
        test = saltsupport.to_bool(__opts__.get("test"), "test")
        settings = saltsupport.resolve_settings(
            __salt__["config.get"], server=server, token=token, token_file=token_file,
            ssl_cert=ssl_cert, insecure=insecure, timeout=timeout,
            connect_timeout=connect_timeout,
        )
        secrets.extend(saltsupport.tokens_of(settings))
        # No token for the runner: its arguments go to the master's job cache.
        staged = _staged(project, deployment, batch, canary, on_batch_failure,
                         rollback_on_failure, do_highstate, server=server,
                         token_file=token_file, ssl_cert=ssl_cert, insecure=insecure,
                         connect_timeout=connect_timeout)
        if staged is not None:
            do_highstate, rollback_on_failure = False, False
        ret = _deployed(ret, project, deployment, settings, root=project_dir, artifacts=artifacts,
                        include_source=saltsupport.to_source(include_source),
                        highstate=do_highstate,
                        allow_empty=empty_ok, test=test, compress=compress,
                        rollback_on_failure=saltsupport.to_bool(rollback_on_failure,
                                                                "rollback_on_failure"),
                        # Every token file named anywhere, not only the one in use.
                        exclude=[*saltsupport.to_list(exclude, "exclude"),
                                 *saltsupport.token_files(__salt__["config.get"], token_file)])
        if staged is not None:
            ret = _roll_out(ret, project, deployment, staged)
    except errors.SpiroDeployError as exc:
        ret.update(result=False, comment=exc.message, changes={})
    return saltsupport.scrub(ret, secrets)


class _NoUpload(Exception):
    """Raised once the bundle is built to stop before the upload: ``ret`` says why."""

    def __init__(self, ret):
        super().__init__(ret.get("comment"))
        self.ret = ret


def _deployed(ret, project, deployment, settings, *, root, artifacts, include_source, highstate,
              allow_empty, exclude, test=False, rollback_on_failure=False, compress=False):
    from spirodeploy.deploy import deploy

    saltenv = f"{project}/{deployment}"
    record_file = spirostate.record_path(__opts__["cachedir"], project, deployment)
    redeploy = _REDEPLOY.get()
    warnings = []
    seen = {}

    def compare(bundle):
        # The bundle is built, nothing is sent yet: deploy only when it changes something.
        new = seen["manifest"] = bundle.manifest
        served = __salt__["spirodeploy.status"](project, deployment, manifest=True)
        known = seen["known"] = spirostate.what_is_deployed(
            served.get("manifest"), spirostate.read_record(record_file),
            saltenv=saltenv, visible=served.get("visible"))
        if not redeploy and not spirostate.needs_deploy(known, new):
            raise _NoUpload(dict(ret, comment=(f"{saltenv} already serves this content (digest "
                                               f"{bundle.digest[:12]}); {known.detail}")))
        files = seen["files"] = spirostate.file_changes(known.manifest, new)
        if redeploy and not files:
            why = "a watched state changed, so it is deployed again"
        elif known.last_deploy_failed and not files:
            why = "the last deploy of this content from here failed, so it is deployed again"
        else:
            why = _describe(files, bundle.file_count)
        seen["why"] = why
        if test:
            raise _NoUpload(dict(ret, result=None, changes=files or {"redeploy": bundle.digest},
                                 comment=_with_warnings(f"Would deploy {saltenv}: {why}; "
                                                        f"{known.detail}", warnings)))

    queued = None
    own_id = None if __opts__.get("__role") == "master" else __opts__.get("id")
    on_event = saltsupport.watch_own_highstate(
        own_id if highstate else None, _fire_callback(project, deployment, settings))
    recorded = {}

    def run(recording):
        # One flow with the execution module and the CLI: build, check, upload.
        return deploy(project, deployment, settings, root=root,
                      artifacts=saltsupport.to_list(artifacts),
                      include_source=include_source or None, highstate=highstate,
                      allow_empty=allow_empty, exclude=exclude, compress=compress,
                      stream=False, on_bundle=compare, on_warning=warnings.append,
                      on_event=on_event, history=recording)

    try:
        if test:
            run(None)  # compare() stops it before the upload, and nothing is recorded
        report, recorded = _recorded_deploy(project, deployment, settings, run,
                                            rollback_on_failure, highstate, on_event)
    except _NoUpload as stop:
        return stop.ret
    except saltsupport.StopWaiting as stop:
        report, queued = stop.report, stop.minion

    known, new, files, why = seen["known"], seen["manifest"], seen["files"], seen["why"]
    bundle = report.bundle or {}
    if queued is not None:
        # Every other minion reported; judge by them.
        succeeded = not report.failed and report.exception is None
    else:
        succeeded = report.succeeded
    if report.deployed or report.server_has_bundle:
        spirostate.write_record(record_file, project=project, deployment=deployment,
                                manifest=new, sha256=bundle.get("sha256"), succeeded=succeeded)
        ret["changes"] = {
            "old": {"sha256": known.sha256, "digest": known.digest},
            "new": {"sha256": bundle.get("sha256"), "digest": bundle.get("digest")},
            "files": files,
            "minions": spirostate.minions_outcome(report),
        }
        if queued is not None:
            ret["changes"]["minions"]["queued"] = [queued]
    if not succeeded:
        ret["result"] = False
        ret["comment"] = spirostate.failure_comment(report)
        if recorded.get("comment"):
            ret["comment"] += f". Then {recorded['comment']}"
            rollback = dict(recorded.get("rollback") or {})
            rollback.pop("report", None)
            ret.setdefault("changes", {})["rollback"] = rollback
        ret["comment"] = _with_warnings(ret["comment"], warnings)
        return ret
    ret["comment"] = f"Deployed {saltenv} ({why}); {known.detail}. {report.summary()}"
    if queued is not None:
        ret["comment"] += (f". This minion ({queued}) is highstated by this deploy too: its "
                           "highstate is queued behind this state run and runs after it, so "
                           "its result is not part of this one")
    ret["comment"] = _with_warnings(ret["comment"], warnings)
    return ret


def _with_warnings(comment, warnings):
    """The bundle's warnings (no top file, ...) belong in the state's comment."""
    if not warnings:
        return comment
    return f"{comment}. Warnings: " + "; ".join(dict.fromkeys(warnings))


#: Set by mod_watch: deploy even when the content is what is deployed already.
_REDEPLOY = contextvars.ContextVar("spirodeploy_redeploy", default=False)


def mod_watch(name, sfun=None, **kwargs):
    """
    Deploy again because a watched state changed something.

    Salt calls this when a state that ``spirodeploy.deployed`` watches
    reports changes (a ``git.latest`` that pulled) and ``deployed`` itself
    changed nothing: the bundle is uploaded again, and the server highstates
    its minions again, even though the content digest is the same.  With
    ``test=True`` it says it would.  Takes the arguments of ``deployed``.

    .. code-block:: yaml

        myproject-prod:
          spirodeploy.deployed:
            - name: myproject/prod
            - root: /srv/checkouts/myproject
            - watch:
              - git: /srv/checkouts/myproject
    """
    if sfun != "deployed":
        return {"name": name, "result": False, "changes": {},
                "comment": f"spirodeploy.{sfun} does not support watch"}
    # Salt passes the whole low chunk (__id__, fun, watch ...): keep deployed's arguments.
    accepted = inspect.signature(deployed).parameters
    arguments = {key: value for key, value in kwargs.items()
                 if key in accepted and key != "name"}
    token = _REDEPLOY.set(True)
    try:
        return deployed(name, **arguments)
    finally:
        _REDEPLOY.reset(token)


def _target(name, project, deployment):
    if project is None and deployment is None:
        if name.count("/") != 1:
            raise errors.UsageError(
                f"name {name!r} is not <project>/<deployment>: give project and deployment")
        project, deployment = name.split("/")
    elif project is None or deployment is None:
        raise errors.UsageError("give both project and deployment, or neither "
                                "(name is then <project>/<deployment>)")
    from spirodeploy.checks import check_name

    return check_name("project", str(project)), check_name("deployment", str(deployment))


def _describe(files, total):
    if not files:
        return f"{total} files in the bundle, content differs from what is deployed"
    parts = [f"{len(files[key])} {key}" for key in ("added", "removed", "modified") if key in files]
    return f"{total} files in the bundle, " + ", ".join(parts)



def _fire_callback(project, deployment, settings):
    return saltface.event_callback(project, deployment, settings, __opts__, _event_sender())


def _event_sender():
    """How this state reaches the event bus: ``send(tag, data)``.

    In an orchestration the state runs on the master, where ``event.send``
    would look for a master of its own: fire on the master's bus directly.
    On a minion, ``event.send`` sends to its master's bus.
    """
    if __opts__.get("__role") != "master":
        return __salt__.get("event.send")
    import salt.utils.event  # pylint: disable=import-outside-toplevel

    def send(tag, data):
        with salt.utils.event.get_master_event(__opts__, __opts__["sock_dir"],
                                               listen=False) as bus:
            return bus.fire_event(data, tag)

    return send


def _recorded_deploy(project, deployment, settings, run, rollback_on_failure, highstate,
                     on_event):
    """Deploy with ``run(recording)``, recorded in this minion's history (issue 15)."""
    from spirodeploy.history import DEFAULT_KEEP, HistoryStore
    from spirodeploy.rollback import recorded_deploy

    config_get = __salt__["config.get"]
    keep = config_get("spirodeploy:history_keep", DEFAULT_KEEP)
    store = HistoryStore(config_get("spirodeploy:history_dir")
                         or os.path.join(__opts__["cachedir"], "spirodeploy-history"),
                         keep=int(keep),
                         max_bytes=config_get("spirodeploy:history_max_bytes", None) or None,
                         on_warning=lambda text: log.warning("spirodeploy: %s", text))
    return recorded_deploy(store, project, deployment, settings, run,
                           rollback_on_failure=rollback_on_failure, highstate=highstate,
                           on_event=on_event)


# --- staged rollouts (the runner does the highstates) ------------------------------

def _staged(project, deployment, batch, canary, on_batch_failure, rollback_on_failure,
            highstate, **connection):
    """The ``spirodeploy.rollout`` runner's arguments, checked; None when not staged."""
    if batch is None and canary is None and on_batch_failure is None:
        return None
    if not highstate:
        raise errors.UsageError("batch and canary highstate the minions: they cannot be used "
                                "with highstate: False")
    if __opts__.get("__role") != "master":
        raise errors.UsageError("batch, canary and on_batch_failure need the master: run "
                                "spirodeploy.deployed in an orchestration "
                                "(salt-run state.orchestrate)")
    from spirodeploy.rollout import failure_action

    # rollback_on_failure means on_batch_failure: rollback here; against it, refused.
    action = failure_action(on_batch_failure, rollback_on_failure)
    if on_batch_failure is not None or action == "rollback":
        on_batch_failure = action
    kwarg = {"batch": batch, "canary": canary, "on_batch_failure": on_batch_failure,
             **{key: value for key, value in connection.items() if value is not None}}
    kwarg = {key: value for key, value in kwarg.items() if value is not None}
    if batch is None and canary is None:
        raise errors.UsageError("on_batch_failure needs batch or canary")
    # Before anything is built or uploaded: the runner checks the options and
    # the canary against the minions, and highstates nobody.
    check = _runner("spirodeploy.rollout", [project, deployment], {**kwarg, "test": True})
    if not check.get("result"):
        raise errors.UsageError(str(check.get("error") or check.get("comment")
                                    or "the rollout cannot start"))
    return kwarg


def _roll_out(ret, project, deployment, kwarg):
    """After an upload with the highstate off: the staged highstates, folded into ``ret``."""
    if ret.get("result") is not True or not ret.get("changes"):
        return ret  # unchanged (nothing uploaded), test mode, or the upload failed
    rolled = _runner("spirodeploy.rollout", [project, deployment], kwarg)
    minions = rolled.get("minions") or {}
    ret["changes"]["rollout"] = {
        "done": minions.get("done", []), "failed": minions.get("failed", []),
        "no_response": minions.get("no_response", []),
        "never_started": minions.get("never_started", []),
        "stopped_at_batch": rolled.get("stopped_at_batch"), "jids": rolled.get("jids", []),
    }
    if rolled.get("on_failure") is not None:
        ret["changes"]["rollout"]["on_failure"] = rolled["on_failure"]
    ret["result"] = rolled.get("result") is True
    ret["comment"] = f"{ret['comment']}. {rolled.get('summary') or rolled.get('error')}"
    if not ret["result"]:
        # The upload was recorded as a success; mark it failed so that the next
        # run deploys and rolls out again instead of saying "already serves".
        path = spirostate.record_path(__opts__["cachedir"], project, deployment)
        record = spirostate.read_record(path)
        if record is not None:
            spirostate.write_record(path, project=project, deployment=deployment,
                                    manifest=record["manifest"], sha256=record.get("sha256"),
                                    succeeded=False)
    return ret


def _runner(fun, arg, kwarg):
    ret = __salt__["saltutil.runner"](fun, arg=arg, kwarg=kwarg)
    return ret if isinstance(ret, dict) else {"result": False, "error": str(ret)}
