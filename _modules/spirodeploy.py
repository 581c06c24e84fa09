"""
Deploy Salt state trees to a SpiroFS server
===========================================

Bundle a project's ``_salt/`` directory (plus artifacts and, optionally, its
source) and upload it to a SpiroFS server, which serves it as the saltenv
``<project>/<deployment>`` and highstates the minions whose top file uses
that saltenv.  The events the server streams back are returned, and each is
also fired on the Salt event bus as it arrives.

:depends: spiro-deploy (``pip install spiro-deploy``; Salt's onedir
    packages: ``salt-pip install spiro-deploy``)

Configuration
-------------
Every function takes the connection settings as arguments, but they are
best configured once, under ``spirodeploy`` in the minion configuration,
its grains or **pillar** (read with ``config.get``):

.. code-block:: yaml

    spirodeploy:
      server: https://salt.example.com:4510/
      token: <token from salt-run spiro.issue_token myproject>
      ssl_cert: /etc/pki/spirofs-ca.pem     # CA of the server certificate
      # token_file: /etc/salt/spirodeploy.token   (instead of token)
      # insecure: false      # true disables TLS checks and allows http://
      # timeout: 3600        # seconds the event stream may stay silent
      # connect_timeout: 20

Settings are taken from explicit arguments first, then this configuration,
then the environment variables ``SPIRO_URL``, ``SPIRO_TOKEN_FILE`` and
``SPIRO_TOKEN``.

.. warning::

    Keep the token in pillar (or a token file), not on the command line:
    the arguments of every job are stored in the master's job cache and
    shown by ``salt-run jobs.lookup_jid``.  The returns of this module never
    contain the token.
"""

import importlib
import logging
import os
import sys

log = logging.getLogger(__name__)

__virtualname__ = "spirodeploy"

INSTALL_HINT = "install spiro-deploy: pip install spiro-deploy"


def _import_library():
    """Import the spirodeploy library, never this very file.

    While it loads a module, Salt appends the module's directory to
    ``sys.path``.  This file is named ``spirodeploy.py``, so where the
    library is only importable through a meta-path finder (an editable
    install), a plain ``import spirodeploy`` would find this file instead.
    """
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
    return __virtualname__


def deploy(
    project,
    deployment,
    root=None,
    artifacts=None,
    include_source=None,
    highstate=True,
    allow_empty=False,
    exclude=None,
    output=None,
    server=None,
    token=None,
    token_file=None,
    ssl_cert=None,
    insecure=None,
    timeout=None,
    connect_timeout=None,
    fire_events=True,
):
    """
    Bundle the project at ``root`` and deploy it as saltenv ``<project>/<deployment>``.

    Returns the deploy report: ``result``, ``exit_code`` (the ``spiro-deploy``
    CLI's exit status), ``summary``, the ``bundle`` (sha256, size, file
    count, content digest), the server's ``events`` in order, the
    ``minions`` expected / reported / failed / unreported, per-minion
    ``results`` (state counts, failed and changed states), the server's
    ``exception`` and any client ``error``.  On failure the job's retcode
    is set to ``exit_code``, so ``salt-call`` exits non-zero.

    Each event is also fired on the event bus as it arrives, with the tag
    ``spirodeploy/<project>/<deployment>/<event>`` (``highstate-update``
    results reduced to a summary).

    project
        The project to deploy to (a token must allow it).

    deployment
        The deployment of the project, for example ``prod``.

    root
        The project directory, holding ``_salt/``.  Default: the current
        directory of the process.

    artifacts
        Files or directories under ``root`` to add as
        ``_artifacts/<path>``: a list, or a comma-separated string.

    include_source
        Add the project's source under ``_source/``: ``git`` (``git
        archive`` of HEAD), ``fs`` (files on disk, honouring
        ``.spiroignore``) or ``auto``.  Default: no source.

    highstate : True
        Highstate the minions whose top file uses the saltenv.

    allow_empty : False
        Deploy even when ``_salt/`` has no files (this empties the saltenv).

    exclude
        Paths never to bundle (a list or a comma-separated string).  The
        token file is always excluded.

    output
        Also write the bundle to this file.

    server
        URL of the SpiroFS server.  Default: ``spirodeploy:server``, then
        ``SPIRO_URL``, then ``https://salt:4510/``.

    token
        The token.  Prefer ``spirodeploy:token`` in pillar: arguments are
        stored in the job cache.

    token_file
        File holding the token (instead of ``token``).

    ssl_cert
        CA or certificate (PEM) to verify the server with.

    insecure : False
        Do not verify the server's certificate, and allow ``http://``.

    timeout
        Seconds the event stream may stay silent (default 3600; 0: forever).

    connect_timeout
        Seconds to wait for the connection (default 20).

    fire_events : True
        Fire each event on the event bus.

    CLI Example:

    .. code-block:: bash

        salt-call spirodeploy.deploy myproject prod root=/srv/checkouts/myproject
        salt-call spirodeploy.deploy myproject staging root=/build highstate=False
        salt-call spirodeploy.deploy myproject prod root=/build artifacts=dist/app.whl,dist/lib
    """
    warnings = []
    settings = None
    try:
        from spirodeploy.deploy import deploy as deploy_project

        settings = _settings(server, token, token_file, ssl_cert, insecure, timeout,
                             connect_timeout)
        report = deploy_project(
            project, deployment, settings, root=root or os.getcwd(),
            artifacts=saltsupport.to_list(artifacts), include_source=include_source or None,
            highstate=bool(highstate), allow_empty=bool(allow_empty),
            exclude=saltsupport.to_list(exclude, "exclude"), output=output,
            on_warning=warnings.append,
            on_event=_event_callback(project, deployment, settings, fire_events),
        )
    except errors.SpiroDeployError as exc:
        report = saltsupport.error_report(project, deployment, exc, highstate=bool(highstate))
    return _finish(report, token, settings, warnings)


def upload(
    project,
    deployment,
    bundle,
    highstate=True,
    server=None,
    token=None,
    token_file=None,
    ssl_cert=None,
    insecure=None,
    timeout=None,
    connect_timeout=None,
    fire_events=True,
):
    """
    Deploy an existing tar file (built by ``spirodeploy.bundle`` or elsewhere).

    Every member of the tar is checked before anything is sent (no absolute
    paths, no ``..``, no links leading out).  Returns the same report as
    :py:func:`deploy <salt.modules.spirodeploy.deploy>`, and fires the same
    events.

    project
        The project to deploy to.

    deployment
        The deployment of the project.

    bundle
        Path of the tar file on this minion.

    highstate : True
        Highstate the minions whose top file uses the saltenv.

    server, token, token_file, ssl_cert, insecure, timeout, connect_timeout, fire_events
        As for :py:func:`deploy <salt.modules.spirodeploy.deploy>`.

    CLI Example:

    .. code-block:: bash

        salt-call spirodeploy.upload myproject prod /tmp/myproject.tar
    """
    settings = None
    try:
        from spirodeploy.deploy import deploy_file

        settings = _settings(server, token, token_file, ssl_cert, insecure, timeout,
                             connect_timeout)
        report = deploy_file(
            bundle, project, deployment, settings, highstate=bool(highstate),
            on_event=_event_callback(project, deployment, settings, fire_events),
        )
    except errors.SpiroDeployError as exc:
        report = saltsupport.error_report(project, deployment, exc, highstate=bool(highstate))
    return _finish(report, token, settings, [])


def bundle(root, output, artifacts=None, include_source=None, allow_empty=False, exclude=None,
           gitcommit=True, files=False):
    """
    Build a bundle and write it to ``output``; upload nothing.

    Returns ``result``, ``output``, the bundle's ``sha256``, ``size``,
    ``file_count``, content ``digest`` and ``gitcommit``, and any
    ``warnings``; with ``files=True`` also the manifest's file list.

    root
        The project directory, holding ``_salt/``.

    output
        Where to write the tar (replaced atomically).

    artifacts, include_source, allow_empty, exclude
        As for :py:func:`deploy <salt.modules.spirodeploy.deploy>`.

    gitcommit : True
        Add ``.gitcommit`` (the commit of a git checkout).

    files : False
        Also return every file of the bundle with its size, sha256 and mode.

    CLI Example:

    .. code-block:: bash

        salt-call spirodeploy.bundle /srv/checkouts/myproject /tmp/myproject.tar
        salt-call spirodeploy.bundle /srv/checkouts/myproject /tmp/myproject.tar files=True
    """
    from spirodeploy.builder import build_bundle
    from spirodeploy.deploy import bundle_info

    try:
        with build_bundle(root, artifacts=saltsupport.to_list(artifacts),
                          include_source=include_source or None, output=output,
                          allow_empty=bool(allow_empty), gitcommit=bool(gitcommit),
                          exclude=saltsupport.to_list(exclude, "exclude")) as built:
            ret = {"result": True, "output": os.path.abspath(output)}
            ret.update(bundle_info(built))
            ret["warnings"] = list(built.warnings)
            if files:
                ret["files"] = list(built.manifest.get("files", []))
            return ret
    except errors.SpiroDeployError as exc:
        __context__["retcode"] = int(exc.exit_code)
        return {"result": False, "output": output, "error": exc.message,
                "exit_code": int(exc.exit_code)}


def check_token(server=None, token=None, token_file=None, ssl_cert=None, insecure=None,
                project=None, connect_timeout=None):
    """
    Check that the server is reachable and accepts the token.

    Returns ``result``, the ``server`` asked, and what the token itself
    says: the ``projects`` it may deploy (``None``: any) and when it
    ``expires`` (``None``: never).  With ``project``, also checks that the
    token may deploy that project.  On failure ``result`` is False, ``error``
    says why and the job's retcode is set.

    server, token, token_file, ssl_cert, insecure, connect_timeout
        As for :py:func:`deploy <salt.modules.spirodeploy.deploy>`.

    project
        Also check that the token may deploy this project.

    CLI Example:

    .. code-block:: bash

        salt-call spirodeploy.check_token
        salt-call spirodeploy.check_token project=myproject
    """
    settings = None
    try:
        settings = _settings(server, token, token_file, ssl_cert, insecure, None,
                             connect_timeout)
        ret = saltsupport.check_token(settings, project=project)
    except errors.SpiroDeployError as exc:
        __context__["retcode"] = int(exc.exit_code)
        ret = {"result": False, "server": saltsupport.shown_server(settings, server),
               "error": exc.message, "exit_code": int(exc.exit_code)}
    return saltsupport.scrub(ret, [token, settings.token if settings else None])


def status(project, deployment, manifest=False):
    """
    What the server serves now as saltenv ``<project>/<deployment>``, as this
    minion sees it through its master's fileserver.

    Reads ``salt://.spirodeploy.json`` (the manifest every bundle built by
    spiro-deploy carries), else ``salt://.gitcommit``, in that saltenv.
    Returns ``visible`` (whether the saltenv has any file here), ``source``
    (``manifest``, ``gitcommit``, ``files`` or None), the ``digest``,
    ``gitcommit``, ``tool`` and ``file_count`` when known, a ``comment``,
    and ``local_record``: what this minion itself last deployed there.

    A minion whose master is not the SpiroFS server (or ``salt-call
    --local``) cannot see the saltenv; ``visible`` is then False and the
    comment says so.

    project
        The project.

    deployment
        The deployment of the project.

    manifest : False
        Also return the whole manifest (every file with its sha256).

    CLI Example:

    .. code-block:: bash

        salt-call spirodeploy.status myproject prod
    """
    from spirodeploy.checks import check_name

    saltenv = f"{project}/{deployment}"
    try:
        check_name("project", project)
        check_name("deployment", deployment)
    except errors.SpiroDeployError as exc:
        __context__["retcode"] = int(exc.exit_code)
        return {"result": False, "project": project, "deployment": deployment,
                "error": exc.message}
    ret = {
        "result": True,
        "project": project,
        "deployment": deployment,
        "saltenv": saltenv,
        "visible": False,
        "source": None,
        "digest": None,
        "gitcommit": None,
        "tool": None,
        "file_count": None,
    }
    files = __salt__["cp.list_master"](saltenv=saltenv) or []
    ret["visible"] = bool(files)
    served = None
    if spirostate.MANIFEST_NAME in files:
        text = __salt__["cp.get_file_str"](f"salt://{spirostate.MANIFEST_NAME}", saltenv=saltenv)
        served = spirostate.parse_manifest(text)
    if served is not None:
        ret.update(source="manifest", digest=served["digest"], gitcommit=served.get("gitcommit"),
                   tool=served.get("tool"), file_count=len(served["files"]))
        ret["comment"] = (f"saltenv {saltenv} serves a bundle of {len(served['files'])} files "
                          f"(digest {served['digest']})")
        if manifest:
            ret["manifest"] = served
    elif files:
        ret["file_count"] = len(files)
        commit = None
        if ".gitcommit" in files:
            commit = __salt__["cp.get_file_str"]("salt://.gitcommit", saltenv=saltenv)
        if commit:
            ret.update(source="gitcommit", gitcommit=commit.strip())
        else:
            ret["source"] = "files"
        ret["comment"] = (f"saltenv {saltenv} serves {len(files)} files but no "
                          f"{spirostate.MANIFEST_NAME}: it was not deployed by spiro-deploy 1.x")
    else:
        ret["comment"] = (f"saltenv {saltenv} is not visible from this minion: nothing is "
                          "deployed there, or this minion's master is not the SpiroFS server")
    record = spirostate.read_record(
        spirostate.record_path(__opts__["cachedir"], project, deployment))
    ret["local_record"] = None if record is None else {
        key: record.get(key) for key in ("digest", "sha256", "succeeded", "time")
    }
    return ret


# --- helpers -------------------------------------------------------------------

def _settings(server, token, token_file, ssl_cert, insecure, timeout, connect_timeout,
              need_token=True):
    return saltsupport.resolve_settings(
        __salt__["config.get"], server=server, token=token, token_file=token_file,
        ssl_cert=ssl_cert, insecure=insecure, timeout=timeout,
        connect_timeout=connect_timeout, need_token=need_token,
    )



def _event_callback(project, deployment, settings, fire_events):
    if not fire_events:
        return None
    secrets = [settings.token]

    def on_event(event, data, report):  # pylint: disable=unused-argument
        tag, payload = saltsupport.bus_event(project, deployment, event, data, secrets)
        saltsupport.fire_event(__opts__, __salt__.get("event.send"), tag, payload)

    return on_event


def _finish(report, token, settings, warnings):
    ret = report.to_dict()
    ret["warnings"] = list(warnings)
    if not report.succeeded:
        __context__["retcode"] = int(report.exit_code)
    return saltsupport.scrub(ret, [token, settings.token if settings else None])
