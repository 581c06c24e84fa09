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
      # root: /srv/checkouts/myproject   # the project directory, when not given

Settings are taken from explicit arguments first, then this configuration,
then the environment variables ``SPIRO_URL``, ``SPIRO_TOKEN_FILE`` and
``SPIRO_TOKEN``.

.. warning::

    Keep the token in pillar (or a token file), not on the command line:
    the arguments of every job are stored in the master's job cache and
    shown by ``salt-run jobs.lookup_jid``.  The returns of this module never
    contain the token.
"""

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
    from spirodeploy import tokens as spirotokens
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
    return saltface.virtual(__virtualname__)


@_salt_terms
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
    rollback_on_failure=False,
    compress=False,
    junit=None,
    html=None,
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
        The project directory, holding ``_salt/``, as an absolute path.
        Default: ``spirodeploy:root`` (configuration, grains or pillar); one
        of them is required, as ``salt-minion`` runs in ``/``.

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
        URL of the SpiroFS server.  Default: ``spirodeploy:servers``, then
        ``spirodeploy:server``, then ``SPIRO_URL``, then ``https://salt:4510/``.
        Several masters (a list or a comma-separated string): every one gets
        the bundle, the first highstates once the others accepted it; the
        return then has ``servers``, ``failed_servers`` and ``holders``.

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

    rollback_on_failure : False
        When the highstate fails, deploy the previous successful bundle from
        this minion's history again (see ``spirodeploy.rollback``); the
        return then has ``rollback`` and ``comment``, and still fails.  The
        history must be writable, or nothing is deployed.

    compress : False
        Upload the bundle gzip-compressed (``gzip`` or ``True``), compressed as
        it is built: less to send and less memory on the master.  ``output``
        then gets the gzip, and the reported size and sha256 are the gzip's.

    junit
        After the deploy, also a failed one, write a JUnit XML report to this
        file on the minion (as the CLI's ``--junit``); the return names it in
        ``report_files``.  A path that cannot be written fails the call before
        anything is uploaded.

    html
        Likewise, a self-contained HTML report (the CLI's ``--html``).

    Every deploy is recorded in this minion's history (``spirodeploy:history_dir``,
    default ``<cachedir>/spirodeploy-history``); ``history_entry`` is its number.

    CLI Example:

    .. code-block:: bash

        salt-call spirodeploy.deploy myproject prod root=/srv/checkouts/myproject
        salt-call spirodeploy.deploy myproject prod root=/build rollback_on_failure=True
        salt-call spirodeploy.deploy myproject staging root=/build highstate=False
        salt-call spirodeploy.deploy myproject prod root=/build artifacts=dist/app.whl,dist/lib
        salt-call spirodeploy.deploy myproject prod root=/build compress=gzip
        salt-call spirodeploy.deploy myproject prod root=/build \
            junit=/build/deploy-junit.xml html=/build/deploy.html
    """
    from spirodeploy.reportfiles import check_report_paths, write_for_salt

    warnings = []
    settings = None
    do_highstate = True
    report_files = (None, None)
    try:
        from spirodeploy.deploy import deploy as deploy_project

        check_report_paths(junit, html)
        report_files = (junit, html)

        do_highstate = saltsupport.to_bool(highstate, "highstate", default=True)
        empty_ok = saltsupport.to_bool(allow_empty, "allow_empty")
        events_on = saltsupport.to_bool(fire_events, "fire_events", default=True)
        project_dir = saltsupport.project_root(root, __salt__["config.get"])
        settings = _settings(server, token, token_file, ssl_cert, insecure, timeout,
                             connect_timeout)
        on_event = _event_callback(project, deployment, settings, events_on)
        report, recorded = _recorded(
            project, deployment, settings, lambda recording: deploy_project(
                project, deployment, settings, root=project_dir,
                artifacts=saltsupport.to_list(artifacts),
            include_source=saltsupport.to_source(include_source),
                highstate=do_highstate, allow_empty=empty_ok,
                exclude=_exclude(exclude, token_file), output=output, compress=compress,
                on_warning=warnings.append, on_event=on_event, history=recording,
            ), rollback_on_failure, do_highstate, warnings, on_event)
    except errors.SpiroDeployError as exc:
        report = saltsupport.error_report(project, deployment, exc, highstate=do_highstate)
        recorded = {}
    ret = _with_history(_finish(report, token, settings, warnings), recorded, token, settings)
    return write_for_salt(ret, report, *report_files,
                          secrets=saltface.secrets_of(token, settings))


@_salt_terms
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
    paths, no ``..``, no name twice, no links leading out), and what is sent
    is the plain tar that was checked (the tar may be gzip, bzip2 or xz
    compressed; it is read once, so rewriting it meanwhile changes nothing;
    the report's bundle sha256 and size are those of that plain tar).
    Returns the same report as
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
    do_highstate = True
    warnings = []
    try:
        from spirodeploy.deploy import deploy_file

        do_highstate = saltsupport.to_bool(highstate, "highstate", default=True)
        events_on = saltsupport.to_bool(fire_events, "fire_events", default=True)
        settings = _settings(server, token, token_file, ssl_cert, insecure, timeout,
                             connect_timeout)
        report = deploy_file(
            bundle, project, deployment, settings, highstate=do_highstate,
            on_event=_event_callback(project, deployment, settings, events_on),
            on_warning=warnings.append,
        )
    except errors.SpiroDeployError as exc:
        report = saltsupport.error_report(project, deployment, exc, highstate=do_highstate)
    return _finish(report, token, settings, warnings)


@_salt_terms
def bundle(root, output, artifacts=None, include_source=None, allow_empty=False, exclude=None,
           gitcommit=True, files=False, token_file=None):
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

    token_file
        A token file never to bundle.  The configured one
        (``spirodeploy:token_file``) and ``SPIRO_TOKEN_FILE`` are never
        bundled either, as with ``deploy``; no token is needed to build.

    CLI Example:

    .. code-block:: bash

        salt-call spirodeploy.bundle /srv/checkouts/myproject /tmp/myproject.tar
        salt-call spirodeploy.bundle /srv/checkouts/myproject /tmp/myproject.tar files=True
    """
    from spirodeploy.builder import build_bundle
    from spirodeploy.deploy import bundle_info

    try:
        list_files = saltsupport.to_bool(files, "files")
        with build_bundle(root, artifacts=saltsupport.to_list(artifacts),
                          include_source=saltsupport.to_source(include_source), output=output,
                          allow_empty=saltsupport.to_bool(allow_empty, "allow_empty"),
                          gitcommit=saltsupport.to_bool(gitcommit, "gitcommit", default=True),
                          exclude=_exclude(exclude, token_file)) as built:
            ret = {"result": True, "output": os.path.abspath(output)}
            ret.update(bundle_info(built))
            ret["warnings"] = list(built.warnings)
            if list_files:
                ret["files"] = list(built.manifest.get("files", []))
            return ret
    except errors.SpiroDeployError as exc:
        return saltface.failure(exc, __context__, output=output)


@_salt_terms
def check_token(server=None, token=None, token_file=None, ssl_cert=None, insecure=None,
                project=None, connect_timeout=None):
    """
    Check that the server is reachable and accepts the token.

    Returns ``result``, the ``server`` asked, and what the token itself
    says: the ``projects`` it may deploy (``None``: any) and when it
    ``expires`` (``None``: never).  With ``project``, also checks that the
    token may deploy that project.  On failure ``result`` is False, ``error``
    says why and the job's retcode is set.

    With several servers (``spirodeploy:servers``, multi-master) every one
    is asked, each with its own token and CA: ``servers`` has one such
    result per server (a failed one: ``error``, ``exit_code``) and
    ``failed_servers`` names those that refused; the top-level keys are the
    first named server's, and any refusal fails the check.

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
        ret = saltface.failure(exc, __context__,
                               server=saltsupport.shown_server(settings, server),
                               **saltsupport.token_check_details(exc))
    return saltsupport.scrub(ret, saltface.secrets_of(token, settings))


@_salt_terms
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
        manifest = saltsupport.to_bool(manifest, "manifest")
    except errors.SpiroDeployError as exc:
        __context__["retcode"] = int(exc.exit_code)
        return {"result": False, "project": project, "deployment": deployment,
                "error": exc.message}
    ret = spirostate.what_is_served(
        project, deployment, __salt__["cp.list_master"](saltenv=saltenv),
        lambda path: __salt__["cp.get_file_str"](f"salt://{path}", saltenv=saltenv),
        manifest=manifest)
    ret["local_record"] = spirostate.record_summary(spirostate.read_record(
        spirostate.record_path(__opts__["cachedir"], project, deployment)))
    return ret


# --- helpers -------------------------------------------------------------------

def _settings(server, token, token_file, ssl_cert, insecure, timeout, connect_timeout,
              need_token=True):
    return saltsupport.resolve_settings(
        __salt__["config.get"], server=server, token=token, token_file=token_file,
        ssl_cert=ssl_cert, insecure=insecure, timeout=timeout,
        connect_timeout=connect_timeout, need_token=need_token,
    )



def _exclude(exclude, token_file):
    # Every token file named anywhere, not only the one the settings use.
    return [*saltsupport.to_list(exclude, "exclude"),
            *saltsupport.token_files(__salt__["config.get"], token_file)]


def _event_callback(project, deployment, settings, fire_events):
    # event.send: to the master's bus (spirodeploy/ itself never imports Salt).
    return saltface.event_callback(project, deployment, settings, __opts__,
                                   __salt__.get("event.send"), fire=fire_events)


def _finish(report, token, settings, warnings):
    return saltface.finish(report, __context__, secrets=saltface.secrets_of(token, settings),
                           warnings=warnings)


# --- tokens (issue 12) -----------------------------------------------------------

@_salt_terms
def narrow_token(projects, lifetime, not_before=None, output=None, token=None, token_file=None):
    """
    Make a token that may deploy only ``projects`` and expires after
    ``lifetime``, from the configured token, offline (nothing is sent).

    SpiroFS 0.3 cannot revoke tokens: keep the broad token in pillar and hand
    each build job a narrowed, short-lived one.  Returns ``result``,
    ``projects``, ``not_before``, ``not_after`` (epoch seconds), ``expires``,
    ``warnings`` and the new ``token``, or, with ``output``, the file it was
    written to instead.  A returned token is stored in the master's job
    cache like any return: prefer ``output``.  On bad input ``result`` is
    False, ``error`` says why and the job's retcode is 2.

    projects
        A project name, a comma-separated list or a list; each must be
        allowed by the source token (a token cannot be widened).

    lifetime
        How long the new token is valid: ``30s``, ``15m``, ``2h``, ``1d`` or
        seconds.

    not_before
        Valid only from this time (ISO 8601, UTC when no zone is given, or
        epoch seconds); the lifetime counts from then.

    output
        Write the token to this file on the minion (mode 0600) instead of
        returning it.

    token, token_file
        The source token; default: ``spirodeploy:token`` /
        ``spirodeploy:token_file`` (config, grains, pillar), then the
        environment, as for :py:func:`deploy <salt.modules.spirodeploy.deploy>`.

    CLI Example:

    .. code-block:: bash

        salt-call spirodeploy.narrow_token myproject 15m output=/run/ci/job.token
        salt-call spirodeploy.narrow_token projects=[shop,blog] lifetime=2h
    """
    settings = None
    try:
        settings = _settings(None, token, token_file, None, None, None, None)
        ret = spirotokens.narrow_result(
            settings.token, projects, lifetime, not_before=not_before, output=output)
    except errors.SpiroDeployError as exc:
        ret = saltface.failure(exc, __context__)
    return saltface.scrub_narrowed(ret, saltface.secrets_of(token, settings))


@_salt_terms
def inspect_token(token=None, token_file=None):
    """
    Show what the configured token allows, offline: its ``projects``
    (``None``: any), ``denied`` projects, ``valid_from`` and ``expires``,
    whether it is ``valid`` now, its ``caveats`` and ``warnings`` (caveats
    the client cannot judge).  Never returns the token.

    token, token_file
        The token to inspect; default: the configured one, as for
        :py:func:`narrow_token <salt.modules.spirodeploy.narrow_token>`.

    CLI Example:

    .. code-block:: bash

        salt-call spirodeploy.inspect_token
        salt-call spirodeploy.inspect_token token_file=/run/ci/job.token
    """
    settings = None
    try:
        settings = _settings(None, token, token_file, None, None, None, None)
        ret = {"result": True,
               **spirotokens.inspect(settings.token)}
    except errors.SpiroDeployError as exc:
        ret = saltface.failure(exc, __context__)
    return saltsupport.scrub(ret, saltface.secrets_of(token, settings))


# --- history, rollback, promotion (issue 15) ---------------------------------------

@_salt_terms
def history(project, deployment, limit=None, history_dir=None):
    """
    List the deploys of saltenv ``<project>/<deployment>`` recorded on this
    minion, newest first.

    The entry marked ``served`` is the newest one whose content digest is
    what the saltenv serves now (its ``.spirodeploy.json``, read through the
    master); when the saltenv is not visible from here, the last one
    recorded as deployed (``served_from`` says which).  Each entry has its
    number ``id``, ``time``, the bundle's ``sha256``, ``digest`` and
    ``gitcommit``, ``user``, ``host``, ``ci``, ``exit_code``, ``minions``,
    ``rollback_of`` / ``promoted_from`` and ``bundle_kept``.

    project
        The project.

    deployment
        The deployment of the project.

    limit
        Return only this many entries.

    history_dir
        The history directory.  Default: ``spirodeploy:history_dir``, then
        ``<cachedir>/spirodeploy-history``.

    CLI Example:

    .. code-block:: bash

        salt-call spirodeploy.history myproject prod
    """
    from spirodeploy.checks import check_name
    from spirodeploy.rollback import listing

    warnings = []
    try:
        check_name("project", project)
        check_name("deployment", deployment)
        store = _store(history_dir, None, warnings)
        ret = listing(store, project, deployment,
                      served_digest=_served_digest(project, deployment),
                      limit=int(limit) if limit else None)
        ret.update(result=True, warnings=warnings)
        return ret
    except errors.SpiroDeployError as exc:
        return dict(saltface.failure(exc, __context__, project=project, deployment=deployment),
                    warnings=warnings)


@_salt_terms
def rollback(project, deployment, to=None, force=False, highstate=True, history_dir=None,
             server=None, token=None, token_file=None, ssl_cert=None, insecure=None,
             timeout=None, connect_timeout=None, fire_events=True):
    """
    Deploy a bundle recorded in this minion's history again, after checking
    its sha256, and record it with ``rollback_of``.

    By default the bundle is the newest successful one before the last
    deployed.  First the saltenv must still serve what the history says was
    deployed last (its ``.spirodeploy.json`` digest): if someone else
    deployed in between, nothing is done unless ``force=True``.  Returns the
    deploy report (as ``deploy``) plus ``rolled_back_to``; a refusal is
    ``result: False`` with ``error``, and nothing is deployed.

    project
        The project.

    deployment
        The deployment of the project.

    to
        The entry to deploy: its number (``spirodeploy.history``), or at
        least 6 hex digits of its sha256 or digest.

    force : False
        Roll back even when the saltenv serves something else than the
        last recorded deploy, or to the bundle it serves already.

    highstate : True
        Highstate the minions afterwards.

    history_dir
        As for ``spirodeploy.history``.

    server, token, token_file, ssl_cert, insecure, timeout, connect_timeout, fire_events
        As for :py:func:`deploy <salt.modules.spirodeploy.deploy>`.

    CLI Example:

    .. code-block:: bash

        salt-call spirodeploy.rollback myproject prod
        salt-call spirodeploy.rollback myproject prod to=3
        salt-call spirodeploy.rollback myproject prod to=1a2b3c4d force=True
    """
    from spirodeploy.rollback import entry_ref
    from spirodeploy.rollback import rollback as roll_back

    return _replay(project, deployment, highstate, history_dir, fire_events, token,
                   (server, token, token_file, ssl_cert, insecure, timeout, connect_timeout),
                   lambda store, settings, do_highstate, on_event: roll_back(
                       store, project, deployment, settings, to=to,
                       force=saltsupport.to_bool(force, "force"),
                       served_digest=_served_digest(project, deployment),
                       highstate=do_highstate, on_event=on_event),
                   lambda outcome: {"rolled_back_to": entry_ref(outcome.source)})


@_salt_terms
def promote(project, source, deployment, to=None, force=False, highstate=True,
            history_dir=None, server=None, token=None, token_file=None, ssl_cert=None,
            insecure=None, timeout=None, connect_timeout=None, fire_events=True):
    """
    Deploy the exact bundle recorded for ``<project>/<source>`` to
    ``<project>/<deployment>`` (staging to prod), and record it with
    ``promoted_from``.

    By default the bundle is the one ``source`` serves now: its digest must
    match the last deploy of ``source`` recorded here (else ``force=True``).
    Refused when the bundle has no ``top.sls`` and its ``spirotop.sls`` has
    no key for ``deployment``: SpiroFS would highstate nothing.

    project
        The project.

    source
        The deployment to promote from, for example ``staging``.

    deployment
        The deployment to promote to, for example ``prod``.

    to
        Promote this entry of ``source``'s history instead (number or
        sha256/digest prefix).

    force : False
        Promote despite the checks above.

    highstate, history_dir, server, token, token_file, ssl_cert, insecure, timeout, connect_timeout,
    fire_events
        As for :py:func:`rollback <salt.modules.spirodeploy.rollback>`.

    CLI Example:

    .. code-block:: bash

        salt-call spirodeploy.promote myproject staging prod
    """
    from spirodeploy.rollback import entry_ref
    from spirodeploy.rollback import promote as promote_bundle

    return _replay(project, deployment, highstate, history_dir, fire_events, token,
                   (server, token, token_file, ssl_cert, insecure, timeout, connect_timeout),
                   lambda store, settings, do_highstate, on_event: promote_bundle(
                       store, project, source, deployment, settings, to=to,
                       force=saltsupport.to_bool(force, "force"),
                       source_digest=_served_digest(project, source),
                       highstate=do_highstate, on_event=on_event),
                   lambda outcome: {"promoted": entry_ref(outcome.source)})


def _replay(project, deployment, highstate, history_dir, fire_events, token, connection,
            flow, describe):
    warnings = []
    settings = None
    do_highstate = True
    extra = {}
    try:
        do_highstate = saltsupport.to_bool(highstate, "highstate", default=True)
        events_on = saltsupport.to_bool(fire_events, "fire_events", default=True)
        settings = _settings(*connection)
        store = _store(history_dir, None, warnings)
        outcome = flow(store, settings, do_highstate,
                       _event_callback(project, deployment, settings, events_on))
        report = outcome.report
        extra = describe(outcome)
        extra["history_entry"] = outcome.entry["id"] if outcome.entry else None
    except errors.SpiroDeployError as exc:
        report = saltsupport.error_report(project, deployment, exc, highstate=do_highstate)
    return _with_history(_finish(report, token, settings, warnings), extra, token, settings)


def _store(history_dir, keep, warnings):
    from spirodeploy.history import DEFAULT_KEEP, HistoryStore

    config_get = __salt__["config.get"]
    directory = (history_dir or config_get("spirodeploy:history_dir")
                 or os.path.join(__opts__["cachedir"], "spirodeploy-history"))
    keep = keep if keep is not None else config_get("spirodeploy:history_keep", DEFAULT_KEEP)
    return HistoryStore(directory, keep=int(keep),
                        max_bytes=config_get("spirodeploy:history_max_bytes", None) or None,
                        on_warning=warnings.append)


def _recorded(project, deployment, settings, run, rollback_on_failure, highstate, warnings,
              on_event):
    from spirodeploy.rollback import recorded_deploy

    return recorded_deploy(
        _store(None, None, warnings), project, deployment, settings, run,
        rollback_on_failure=saltsupport.to_bool(rollback_on_failure, "rollback_on_failure"),
        highstate=highstate, on_warning=warnings.append, on_event=on_event)


def _with_history(ret, extra, token, settings):
    ret.update(saltsupport.scrub(extra, saltface.secrets_of(token, settings)))
    return ret


def _served_digest(project, deployment):
    """The digest of the manifest saltenv ``project/deployment`` serves, or None."""
    saltenv = f"{project}/{deployment}"
    files = __salt__["cp.list_master"](saltenv=saltenv) or []
    if spirostate.MANIFEST_NAME not in files:
        return None
    served = spirostate.parse_manifest(
        __salt__["cp.get_file_str"](f"salt://{spirostate.MANIFEST_NAME}", saltenv=saltenv))
    return served["digest"] if served else None
