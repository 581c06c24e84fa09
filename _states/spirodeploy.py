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

.. note::

    Do not run this state, with ``highstate: True``, on a minion that the
    deployed top file targets: the server queues that minion's highstate
    behind the state run that is waiting for it.  When that minion is the
    last one still to report, the state stops waiting, says so, and the
    queued highstate runs once the state run is over.  Build hosts, or an
    orchestration on the master (``salt-run state.orchestrate``), avoid it.
"""

import importlib
import logging
import os
import sys

log = logging.getLogger(__name__)

__virtualname__ = "spirodeploy"

INSTALL_HINT = "install spiro-deploy: pip install spiro-deploy"


def _import_library():
    """Import the spirodeploy library, never this very file (see the module's twin)."""
    here = os.path.dirname(os.path.abspath(__file__))
    hidden = [(i, p) for i, p in enumerate(sys.path) if os.path.abspath(p or os.curdir) == here]
    for index, _ in reversed(hidden):
        del sys.path[index]
    try:
        names = ("errors", "saltsupport", "state")
        return [importlib.import_module(f"spirodeploy.{name}") for name in names]
    finally:
        for index, path in hidden:
            sys.path.insert(index, path)


try:
    errors, saltsupport, spirostate = _import_library()
    LIBRARY_ERROR = None
except ImportError as exc:  # pragma: no cover - exercised through __virtual__
    LIBRARY_ERROR = str(exc)


def __virtual__():
    if LIBRARY_ERROR is not None:
        log.debug("spirodeploy library not importable: %s", LIBRARY_ERROR)
        return False, INSTALL_HINT
    if "spirodeploy.status" not in __salt__:
        return False, "the spirodeploy execution module is not available (saltutil.sync_modules)"
    return __virtualname__


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
        The project directory, holding ``_salt/`` (an absolute path is
        best; default: the current directory of the minion process).

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
        settings = saltsupport.resolve_settings(
            __salt__["config.get"], server=server, token=token, token_file=token_file,
            ssl_cert=ssl_cert, insecure=insecure, timeout=timeout,
            connect_timeout=connect_timeout,
        )
        secrets.append(settings.token)
        ret = _deployed(ret, project, deployment, settings, root=root, artifacts=artifacts,
                        include_source=include_source, highstate=bool(highstate),
                        allow_empty=bool(allow_empty),
                        exclude=saltsupport.to_list(exclude, "exclude"))
    except errors.SpiroDeployError as exc:
        ret.update(result=False, comment=exc.message, changes={})
    return saltsupport.scrub(ret, secrets)


def _deployed(ret, project, deployment, settings, *, root, artifacts, include_source, highstate,
              allow_empty, exclude):
    from spirodeploy.builder import build_bundle
    from spirodeploy.deploy import bundle_info, deploy_bundle

    saltenv = f"{project}/{deployment}"
    record_file = spirostate.record_path(__opts__["cachedir"], project, deployment)
    with build_bundle(root or os.getcwd(), artifacts=saltsupport.to_list(artifacts),
                      include_source=include_source or None, allow_empty=allow_empty,
                      exclude=[*exclude, *filter(None, [settings.token_file])]) as bundle:
        new = bundle.manifest
        served = __salt__["spirodeploy.status"](project, deployment, manifest=True)
        known = spirostate.what_is_deployed(
            served.get("manifest"), spirostate.read_record(record_file),
            saltenv=saltenv, visible=served.get("visible"))
        if not spirostate.needs_deploy(known, new):
            ret["comment"] = (f"{saltenv} already serves this content (digest "
                              f"{bundle.digest[:12]}); {known.detail}")
            return ret

        files = spirostate.file_changes(known.manifest, new)
        if known.last_deploy_failed and not files:
            why = "the last deploy of this content from here failed, so it is deployed again"
        else:
            why = _describe(files, bundle.file_count)
        if __opts__["test"]:
            ret["result"] = None
            ret["changes"] = files or {"redeploy": bundle.digest}
            ret["comment"] = f"Would deploy {saltenv}: {why}; {known.detail}"
            return ret

        queued = None
        own_id = None if __opts__.get("__role") == "master" else __opts__.get("id")
        on_event = saltsupport.watch_own_highstate(
            own_id if highstate else None, _fire_callback(project, deployment, settings))
        try:
            report = deploy_bundle(bundle.file, project, deployment, settings,
                                   highstate=highstate,
                                   bundle_info=bundle_info(bundle),
                                   on_event=on_event)
        except saltsupport.StopWaiting as stop:
            report, queued = stop.report, stop.minion

    if queued is not None:
        # Every other minion reported; judge by them.
        succeeded = not report.failed and report.exception is None
    else:
        succeeded = report.succeeded
    if report.deployed or report.server_has_bundle:
        spirostate.write_record(record_file, project=project, deployment=deployment,
                                manifest=new, sha256=bundle.sha256, succeeded=succeeded)
        ret["changes"] = {
            "old": {"sha256": known.sha256, "digest": known.digest},
            "new": {"sha256": bundle.sha256, "digest": bundle.digest},
            "files": files,
            "minions": spirostate.minions_outcome(report),
        }
        if queued is not None:
            ret["changes"]["minions"]["queued"] = [queued]
    if not succeeded:
        ret["result"] = False
        ret["comment"] = spirostate.failure_comment(report)
        return ret
    ret["comment"] = f"Deployed {saltenv} ({why}); {known.detail}. {report.summary()}"
    if queued is not None:
        ret["comment"] += (f". This minion ({queued}) is highstated by this deploy too: its "
                           "highstate is queued behind this state run and runs after it, so "
                           "its result is not part of this one")
    return ret


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
    def on_event(event, data, report):  # pylint: disable=unused-argument
        tag, payload = saltsupport.bus_event(project, deployment, event, data, [settings.token])
        saltsupport.fire_event(__opts__, __salt__.get("event.send"), tag, payload)

    return on_event
