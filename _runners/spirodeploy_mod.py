"""
Deploy Salt state trees to a SpiroFS server from the master
===========================================================

The runner twin of the ``spirodeploy`` execution module: it bundles a
project directory on the master and deploys it, printing the server's
progress as it arrives.

:depends: spiro-deploy (``pip install spiro-deploy``)

Settings come from arguments, then the master configuration, then the
environment (``SPIRO_URL``, ``SPIRO_TOKEN_FILE``, ``SPIRO_TOKEN``).  The
configuration is read with the ``config.get`` runner, as the execution
module reads its own: a value may be an ``sdb://<profile>/<key>`` URI, looked
up in the master's SDB profile (``token: sdb://vault/spirofs-token``):

.. code-block:: yaml

    # /etc/salt/master.d/spirodeploy.conf
    spirodeploy:
      server: https://localhost:4510/
      token_file: /etc/salt/spirodeploy.token
      ssl_cert: /etc/pki/spirofs-ca.pem

A token given as an argument is stored in the master's job cache with the
other arguments; use the configuration or ``SPIRO_TOKEN_FILE``.
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
    from spirodeploy import rollout as spirorollout
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
    batch=None,
    canary=None,
    on_batch_failure=None,
    rollback_on_failure=None,
    compress=False,
    junit=None,
    html=None,
):
    """
    Bundle the project at ``root`` (on the master) and deploy it as saltenv
    ``<project>/<deployment>``.

    Progress lines (the deploy's stages and each minion's highstate) are
    sent as the job's progress events, so ``salt-run`` prints them as they
    arrive; each server event is also fired on the master's event bus as
    ``spirodeploy/<project>/<deployment>/<event>``.

    Returns the deploy report (see the execution module's ``deploy``) with
    ``retcode``: 0 when every highstated minion succeeded, otherwise the
    ``spiro-deploy`` CLI's exit status, which ``salt-run`` exits with.

    project
        The project to deploy to.

    deployment
        The deployment of the project, for example ``prod``.

    root
        The project directory on the master, holding ``_salt/``, as an
        absolute path.  Default: ``spirodeploy:root`` in the master
        configuration; one of them is required.

    artifacts, include_source, highstate, allow_empty, exclude, output, compress
        As for the execution module's ``spirodeploy.deploy`` (``compress``
        also compresses a staged rollout's upload).

    junit, html
        After the deploy, also a failed one, write a JUnit XML or a
        self-contained HTML report to this file on the master (as the CLI's
        ``--junit`` and ``--html``; ``report_files`` in the return names
        them).  A path that cannot be written fails before anything is
        uploaded.  Not for a staged rollout.

    server, token, token_file, ssl_cert, insecure, timeout, connect_timeout
        Connection settings; default: ``spirodeploy:*`` in the master
        configuration, then the environment.  ``server`` may name several
        masters (a list or a comma-separated string; or configure
        ``spirodeploy:servers``): every one gets the bundle, the first
        highstates once the others accepted it; the return then has
        ``servers``, ``failed_servers`` and ``holders``.

    fire_events : True
        Fire each event on the master's event bus.

    rollback_on_failure : False
        When the highstate fails, deploy the previous successful bundle from
        the master's history again; the return then has ``rollback`` and
        ``comment`` and still fails.  Every deploy is recorded in the
        master's history (``spirodeploy:history_dir``, default
        ``<cachedir>/spirodeploy-history``); ``history_entry`` is its number.
        With ``batch`` or ``canary`` it means ``on_batch_failure=rollback``;
        given with ``on_batch_failure=stop`` (or ``False`` with ``rollback``)
        it is an error before anything is uploaded.

    batch, canary, on_batch_failure
        A staged rollout (see ``spirodeploy.rollout``): upload with the
        highstate off, then highstate the canaries, then the other
        affected minions ``batch`` at a time (``10``, ``10%``), stopping
        at the first batch with a failure.  The return then has a
        ``rollout`` key: each minion ``done``, ``failed`` or
        ``never_started``.  Bad values are refused before anything is
        uploaded.  Without them the server highstates every affected
        minion at once, as always.

    CLI Example:

    .. code-block:: bash

        salt-run spirodeploy.deploy myproject prod root=/srv/checkouts/myproject
        salt-run spirodeploy.deploy myproject prod root=/srv/checkouts/myproject batch=10% canary=2
        salt-run spirodeploy.deploy myproject prod root=/srv/checkouts/myproject rollback_on_failure=True
        salt-run spirodeploy.deploy myproject prod root=/srv/checkouts/myproject compress=gzip
        salt-run spirodeploy.deploy myproject prod root=/srv/checkouts/myproject \
            junit=/srv/ci/deploy-junit.xml
    """
    if batch is not None or canary is not None or on_batch_failure is not None:
        return _staged_deploy(dict(locals()))
    from spirodeploy.output import HumanPrinter

    sink = saltsupport.LineSink(_progress)
    # Progress lines carry server text: the printer masks the token in them and
    # escapes control characters.
    printer = HumanPrinter(out=sink, err=sink, colour=False, progress=False, secrets=(token,))
    settings = None
    warnings = []
    def warn(text):
        warnings.append(text)
        printer.warn(text)

    do_highstate = True
    report_files = (None, None)
    try:
        from spirodeploy.deploy import deploy as deploy_project
        from spirodeploy.reportfiles import check_report_paths

        check_report_paths(junit, html)
        report_files = (junit, html)
        do_highstate = saltsupport.to_bool(highstate, "highstate", default=True)
        empty_ok = saltsupport.to_bool(allow_empty, "allow_empty")
        events_on = saltsupport.to_bool(fire_events, "fire_events", default=True)
        project_dir = saltsupport.project_root(root, _config_get)
        settings = _settings(server, token, token_file, ssl_cert, insecure, timeout,
                             connect_timeout)
        printer.hide(*saltsupport.tokens_of(settings))
        if settings.insecure:
            printer.warn("insecure: the server is not authenticated; do not use this in "
                         "production")
        on_event = _event_callback(project, deployment, settings, printer, events_on)
        report, recorded = _recorded(
            project, deployment, settings, lambda recording: deploy_project(
                project, deployment, settings, root=project_dir,
                artifacts=saltsupport.to_list(artifacts),
                include_source=saltsupport.to_source(include_source),
                highstate=do_highstate, allow_empty=empty_ok,
                # Every token file named anywhere, not only the one the settings use.
                exclude=[*saltsupport.to_list(exclude, "exclude"),
                         *saltsupport.token_files(_config_get, token_file)],
                output=output, compress=compress, on_warning=warn,
                on_bundle=lambda bundle: printer.deploying(bundle, project, deployment),
                on_event=on_event, history=recording,
            ), rollback_on_failure, do_highstate, warn, printer, on_event)
    except errors.SpiroDeployError as exc:
        report = saltsupport.error_report(project, deployment, exc, highstate=do_highstate)
        recorded = {}
    printer.finish(report)
    if recorded.get("comment"):
        printer.warn(recorded["comment"])
    from spirodeploy.reportfiles import write_for_salt

    secrets = saltface.secrets_of(token, settings)
    ret = saltface.finish(report, __context__, secrets=secrets, warnings=warnings,
                          extra=recorded, retcode=True)
    # Scrubbed again: the report files' paths and errors are added after.
    return saltsupport.scrub(write_for_salt(ret, report, *report_files, secrets=secrets), secrets)


@_salt_terms
def check_token(server=None, token=None, token_file=None, ssl_cert=None, insecure=None,
                project=None, connect_timeout=None):
    """
    Check that the server is reachable from the master and accepts the token.

    Returns ``result``, the ``server``, the ``projects`` the token may
    deploy (``None``: any) and when it ``expires``, and ``retcode``.  With
    several servers every one is asked, each with its own token and CA;
    ``servers`` and ``failed_servers`` are as for the execution module's
    ``spirodeploy.check_token``.

    server, token, token_file, ssl_cert, insecure, connect_timeout
        Connection settings; default: the master configuration, then the
        environment.

    project
        Also check that the token may deploy this project.

    CLI Example:

    .. code-block:: bash

        salt-run spirodeploy.check_token
        salt-run spirodeploy.check_token project=myproject
    """
    settings = None
    try:
        settings = _settings(server, token, token_file, ssl_cert, insecure, None,
                             connect_timeout)
        ret = saltsupport.check_token(settings, project=project)
        ret["retcode"] = 0
    except errors.SpiroDeployError as exc:
        ret = saltface.failure(exc, __context__, retcode=True,
                               server=saltsupport.shown_server(settings, server),
                               **saltsupport.token_check_details(exc))
    return saltsupport.scrub(ret, saltface.secrets_of(token, settings))


# --- helpers -------------------------------------------------------------------

def _config_get(key, default=None):
    # The config runner, as config.get in the execution module: the master's
    # options, with sdb:// values looked up.  A runner loader always has it;
    # a bare harness without it gets the plain options.
    config_get = __salt__.get("config.get") if "__salt__" in globals() else None
    if config_get is None:
        value = saltsupport.config_getter(__opts__)(key)
        return default if value is None else value
    return config_get(key, default)


def _settings(server, token, token_file, ssl_cert, insecure, timeout, connect_timeout):
    return saltsupport.resolve_settings(
        _config_get, server=server, token=token, token_file=token_file, ssl_cert=ssl_cert,
        insecure=insecure, timeout=timeout, connect_timeout=connect_timeout,
    )



#: The outputter salt-run prints our progress events with (``_output/``): one
#: plain line each, instead of nested's eight-line dump of the event.
PROGRESS_OUTPUTTER = "spirodeploy_progress"


def _progress(line):
    try:
        __jid_event__.fire_event({"message": line, "outputter": PROGRESS_OUTPUTTER},
                                 "progress")
    except (NameError, ReferenceError):
        # Called outside a runner job (no __jid_event__): log it instead.
        log.info("%s", line)


def _event_callback(project, deployment, settings, printer, fire_events):
    return saltface.event_callback(project, deployment, settings, __opts__,
                                   __salt__.get("event.send"), fire=fire_events,
                                   printer=printer)


# --- tokens (issue 12) -----------------------------------------------------------

@_salt_terms
def narrow_token(projects, lifetime, not_before=None, output=None, token=None, token_file=None):
    """
    Make a token that may deploy only ``projects`` and expires after
    ``lifetime``, from the master's token, offline (nothing is sent): an
    orchestration can hand a build host a ten-minute token for one project.

    SpiroFS 0.3 cannot revoke tokens: keep the broad token on the master and
    hand each job a narrowed, short-lived one.  Returns ``result``,
    ``projects``, ``not_before``, ``not_after`` (epoch seconds),
    ``expires``, ``warnings``, ``retcode`` and the new ``token``, or, with
    ``output``, the file it was written to instead.  A returned token is
    stored in the job cache like any return, so keep lifetimes short.

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
        Write the token to this file on the master (mode 0600) instead.

    token, token_file
        The source token; default: the master configuration
        (``spirodeploy:token`` / ``spirodeploy:token_file``), then the
        environment.

    CLI Example:

    .. code-block:: bash

        salt-run spirodeploy.narrow_token myproject 10m
        salt-run spirodeploy.narrow_token projects=[shop,blog] lifetime=1h output=/srv/ci/job.token
    """
    settings = None
    try:
        settings = _settings(None, token, token_file, None, None, None, None)
        ret = spirotokens.narrow_result(
            settings.token, projects, lifetime, not_before=not_before, output=output)
        ret["retcode"] = 0
    except errors.SpiroDeployError as exc:
        ret = saltface.failure(exc, __context__, retcode=True)
    return saltface.scrub_narrowed(ret, saltface.secrets_of(token, settings))


@_salt_terms
def inspect_token(token=None, token_file=None):
    """
    Show what the master's token allows, offline: its ``projects``
    (``None``: any), ``denied`` projects, ``valid_from`` and ``expires``,
    whether it is ``valid`` now, its ``caveats`` and ``warnings`` (caveats
    the client cannot judge).  Never returns the token.

    token, token_file
        The token to inspect; default: the master configuration, then the
        environment.

    CLI Example:

    .. code-block:: bash

        salt-run spirodeploy.inspect_token
        salt-run spirodeploy.inspect_token token_file=/srv/ci/job.token
    """
    settings = None
    try:
        settings = _settings(None, token, token_file, None, None, None, None)
        ret = {"result": True, "retcode": 0,
               **spirotokens.inspect(settings.token)}
    except errors.SpiroDeployError as exc:
        ret = saltface.failure(exc, __context__, retcode=True)
    return saltsupport.scrub(ret, saltface.secrets_of(token, settings))


# --- staged rollouts -------------------------------------------------------------

@_salt_terms
def rollout(
    project,
    deployment,
    batch=None,
    canary=None,
    on_batch_failure=None,
    test=False,
    fire_events=True,
    server=None,
    token=None,
    token_file=None,
    ssl_cert=None,
    insecure=None,
    connect_timeout=None,
):
    """
    Highstate the minions of an already deployed saltenv
    ``<project>/<deployment>``: the canaries first, then the others
    ``batch`` at a time, and stop at the first batch with a failure.

    For CI: ``spiro-deploy --no-highstate myproj prod`` uploads, then
    ``salt-run spirodeploy.rollout myproj prod batch=10%`` (over ssh or
    salt-api) highstates.  The minions are those whose ``state.show_top``
    includes the saltenv, as SpiroFS picks them (its ``spiro.query_highstate``
    runner is used when the master has it).  Each batch is highstated with
    ``saltenv=<project>/<deployment>`` and ``queue=True`` through Salt's
    batch machinery (``LocalClient.cmd_batch``, the whole batch at once).
    A batch fails when any of its minions has a failed state, a retcode
    other than 0, or does not answer; no later batch starts.

    Progress (each batch and each minion) is printed as the job's progress
    and fired on the event bus as ``spirodeploy/<project>/<deployment>/``
    ``rollout-start``, ``rollout-batch``, ``rollout-minion`` and
    ``rollout-finish``.

    Returns ``result``, ``summary``, the ``batches``, ``minions`` (``done``,
    ``failed``, ``no_response``, ``never_started``), per-minion
    ``results``, the highstate job ids (``jids``, for ``jobs.lookup_jid``)
    and ``retcode`` (0, or 1 when a batch failed).

    .. note::

        The new files are served as soon as they are deployed: a minion
        that is not highstated yet picks them up from its own scheduled
        highstate (or any ``state.apply`` of that saltenv) before its
        batch comes.

    project, deployment
        The saltenv ``<project>/<deployment>`` to roll out.

    batch
        Minions per batch: a count (``5``) or a share of the affected
        minions (``10%``, at least one minion).  Default: all the
        minions that are not canaries, at once.

    canary
        Highstated first, as a batch of their own: a count (``2``: the
        first two affected minions by id) or minion ids and globs
        (``web1,web2`` or ``web-canary*``) that must match an affected
        minion.

    on_batch_failure : stop
        ``stop``, or ``rollback``: when a batch fails, also call the
        ``spirodeploy.rollback`` runner for this saltenv (when it is
        installed; asking for it otherwise is an error before anything
        runs).

    test : False
        Highstate nobody: return the plan (the batches), or, when no minion
        uses the saltenv yet, check only that a named canary is a minion
        that answers.

    fire_events : True
        Fire progress on the master's event bus.

    server, token, token_file, ssl_cert, insecure, connect_timeout
        Connection settings, passed on to the rollback.

    CLI Example:

    .. code-block:: bash

        salt-run spirodeploy.rollout myproject prod batch=10%
        salt-run spirodeploy.rollout myproject prod batch=1 canary=web1
        salt-run spirodeploy.rollout myproject prod batch=25% canary=2 test=True
    """
    printer = _printer()
    connection = {"server": server, "token": token, "token_file": token_file,
                  "ssl_cert": ssl_cert, "insecure": insecure,
                  "connect_timeout": connect_timeout}
    try:
        from spirodeploy.checks import check_name

        check_name("project", project)
        check_name("deployment", deployment)
        options, hook = _rollout_options(batch, canary, on_batch_failure)
        events_on = saltsupport.to_bool(fire_events, "fire_events")
        dry = saltsupport.to_bool(test, "test")
        saltenv = f"{project}/{deployment}"
        affected = _affected_minions(saltenv)
        if dry and not affected:
            # Checked before a first deploy (the state does): nobody uses the
            # saltenv yet, so a named canary must at least be a live minion.
            _check_canary_now(saltenv, options)
            comment = f"no minion uses {saltenv} now: nobody would be highstated"
            printer.line(comment)
            return {"result": True, "test": True, "project": project,
                    "deployment": deployment, "batches": [], "comment": comment, "retcode": 0}
        batches = spirorollout.plan(affected, options)
    except errors.SpiroDeployError as exc:
        printer.line(f"Error: {exc.message}")
        ret = {"result": False, "error": exc.message, "exit_code": int(exc.exit_code),
               "retcode": int(exc.exit_code), "project": project, "deployment": deployment}
        __context__["retcode"] = ret["retcode"]
        return ret
    if dry:
        lines = [f"{_batch_label(options, i, len(batches))}: {', '.join(b)}"
                 for i, b in enumerate(batches)]
        for line in lines:
            printer.line(line)
        return {"result": True, "test": True, "project": project, "deployment": deployment,
                "batches": batches, "comment": "; ".join(lines), "retcode": 0}
    ret = _run_rollout(project, deployment, options, batches, printer, events_on,
                       hook, connection).to_dict()
    ret["retcode"] = ret["exit_code"]
    if ret["retcode"]:
        __context__["retcode"] = ret["retcode"]
    return saltsupport.scrub(ret, [token])


def _printer():
    from spirodeploy.output import HumanPrinter

    sink = saltsupport.LineSink(_progress)
    return HumanPrinter(out=sink, err=sink, colour=False, progress=False)


def _rollout_options(batch, canary, on_batch_failure):
    """The parsed options and the rollback hook choice; raises on bad input."""
    options = spirorollout.parse_options(batch, canary)
    hook = spirorollout.failure_action(on_batch_failure)
    if hook == "rollback" and "spirodeploy.rollback" not in __salt__:
        raise spirorollout.RolloutError(
            "on_batch_failure=rollback needs the spirodeploy.rollback runner, which this "
            "installation does not have")
    return options, hook


def _staged_deploy(args):
    """``deploy`` with ``batch``/``canary``: check, upload without highstate, roll out."""
    project, deployment = args["project"], args["deployment"]
    printer = _printer()
    try:
        from spirodeploy.deploy import check_before_bundling

        if args["batch"] is None and args["canary"] is None:
            raise spirorollout.RolloutError("on_batch_failure needs batch or canary")
        if args.get("junit") is not None or args.get("html") is not None:
            raise spirorollout.RolloutError("junit and html report one deploy's highstate: "
                                            "they cannot be used with batch or canary")
        if args["highstate"] is not None and not saltsupport.to_bool(args["highstate"],
                                                                     "highstate"):
            raise spirorollout.RolloutError("batch and canary highstate the minions: they "
                                            "cannot be used with highstate=False")
        # The history's own switch means the same here: roll back when a batch
        # fails; given against on_batch_failure, it is refused.
        on_failure = spirorollout.failure_action(args["on_batch_failure"],
                                                 args.get("rollback_on_failure"))
        options, hook = _rollout_options(args["batch"], args["canary"], on_failure)
        settings = _settings(args["server"], args["token"], args["token_file"],
                             args["ssl_cert"], args["insecure"], args["timeout"],
                             args["connect_timeout"])
        check_before_bundling(project, deployment, settings)
        _check_canary_now(f"{project}/{deployment}", options)
    except errors.SpiroDeployError as exc:
        report = saltsupport.error_report(project, deployment, exc, highstate=True)
        printer.finish(report)
        ret = report.to_dict()
        ret.update(warnings=[], retcode=int(report.exit_code))
        __context__["retcode"] = ret["retcode"]
        return saltsupport.scrub(ret, [args["token"]])

    upload = {key: value for key, value in args.items()
              if key not in ("batch", "canary", "on_batch_failure")}
    upload["highstate"] = False
    if "rollback_on_failure" in upload:
        upload["rollback_on_failure"] = False  # nothing is highstated by the upload
    ret = deploy(**upload)
    if ret.get("retcode"):
        return ret
    __context__.pop("retcode", None)
    try:
        batches = spirorollout.plan(_affected_minions(f"{project}/{deployment}"), options)
    except errors.SpiroDeployError as exc:
        printer.line(f"Error: {exc.message}")
        ret.update(result=False, error=exc.message, exit_code=int(exc.exit_code),
                   retcode=int(exc.exit_code), rollout=None)
        __context__["retcode"] = ret["retcode"]
        return ret
    connection = {key: args[key] for key in ("server", "token", "token_file", "ssl_cert",
                                             "insecure", "connect_timeout")}
    events_on = args["fire_events"] is None or saltsupport.to_bool(args["fire_events"],
                                                                    "fire_events")
    report = _run_rollout(project, deployment, options, batches, printer, events_on, hook,
                          connection)
    ret["rollout"] = report.to_dict()
    ret["result"] = bool(ret.get("result")) and report.succeeded
    ret["summary"] = f"{ret.get('summary')}. {report.summary()}"
    ret["exit_code"] = ret["retcode"] = report.exit_code
    if ret["retcode"]:
        __context__["retcode"] = ret["retcode"]
    return saltsupport.scrub(ret, [args["token"]])


def _show_top():
    """Every minion's ``state.show_top`` (what SpiroFS asks to pick minions)."""
    return __salt__["salt.execute"]("*", "state.show_top", kwarg={"concurrent": True}) or {}


def _affected_minions(saltenv):
    """The minions SpiroFS would highstate for ``saltenv``; its own runner when loaded."""
    query = __salt__.get("spiro.query_highstate")
    if query is not None:
        return sorted(str(minion) for minion in query(saltenv) or [])
    return spirorollout.affected_minions(_show_top(), saltenv)


def _check_canary_now(saltenv, options):
    """Before the upload: canary ids/globs must match a minion that uses the saltenv now,
    or, when none does yet (a first deploy), a minion that answered at all."""
    canary = options.canary
    if canary is None or canary.count is not None:
        return
    tops = _show_top()
    affected = spirorollout.affected_minions(tops, saltenv)
    if affected:
        spirorollout.check_canary(options, affected, f"minions that use {saltenv} now")
    else:
        spirorollout.check_canary(options, list(tops), "minions that answered")


def _batch_label(options, index, total):
    if options.canary is not None and index == 0:
        return f"Canary batch (1 of {total})"
    return f"Batch {index + 1} of {total}"


def _run_batch(saltenv):
    """Highstate one batch through Salt's batch machinery; yield ``(minion, return)``.

    The whole batch is one window of ``cmd_batch`` (``batch`` = its size),
    so Salt publishes it, collects the returns and times out silent
    minions; failhard stays off so every return of the batch is seen (Salt's
    failhard stops reading at the first failure and does not stop on a
    minion that never answers).  ``raw=True`` keeps each return's retcode
    and job id.
    """
    import salt.client

    def run(minions):
        local = salt.client.get_local_client(__opts__["conf_file"])
        try:
            for envelope in local.cmd_batch(
                    minions, "state.highstate", tgt_type="list",
                    kwarg={"saltenv": saltenv, "queue": True},
                    batch=str(len(minions)), raw=True, failhard=False):
                data = envelope.get("data") if isinstance(envelope, dict) else None
                if isinstance(data, dict) and data.get("id") is not None:
                    yield str(data["id"]), envelope
        finally:
            local.destroy()

    return run


def _run_rollout(project, deployment, options, batches, printer, fire_events, hook,
                 connection):
    saltenv = f"{project}/{deployment}"

    def fire(event, data):
        if fire_events:
            tag, payload = saltsupport.bus_event(project, deployment, event, data,
                                                 [connection.get("token")])
            saltsupport.fire_event(__opts__, __salt__.get("event.send"), tag, payload)

    start = (f"Rollout of {saltenv}: {sum(map(len, batches))} minions in {len(batches)} "
             f"batches" + (f", canary {options.canary}" if options.canary else "")
             + (f", batch {options.batch}" if options.batch else ""))
    printer.line(start)
    fire("rollout-start", {"msg": start, "minions": [m for b in batches for m in b],
                           "batches": batches})
    current = {"batch": 0}

    def on_batch(index, minions, report):
        current["batch"] = index + 1
        line = f"{_batch_label(options, index, len(batches))}: {', '.join(minions)}"
        printer.line(line)
        fire("rollout-batch", {"msg": line, "batch": index + 1, "of": len(batches),
                               "canary": options.canary is not None and index == 0,
                               "minions": minions})

    def on_minion(result):
        printer.minion(result)
        fire("rollout-minion", {
            "msg": f"{result.minion}: {'done' if result.succeeded else 'failed'}",
            "minion": result.minion, "batch": current["batch"],
            "outcome": "done" if result.succeeded else "failed",
            "no_response": result.no_response, "retcode": result.retcode,
            "counts": result.counts, "errors": result.errors[:5],
            "failed": [state.id for state in result.failed_states][:20]})

    def roll_back(report):  # pylint: disable=unused-argument
        printer.line(f"Batch failed: rolling {saltenv} back (spirodeploy.rollback)")
        try:
            kwargs = {key: value for key, value in connection.items() if value is not None}
            return __salt__["spirodeploy.rollback"](project, deployment, **kwargs)
        except Exception as exc:  # pylint: disable=broad-except
            # The rollout's own outcome must still be reported.
            printer.line(f"Rollback failed: {exc}")
            return {"result": False, "error": str(exc)}

    report = spirorollout.run_rollout(project, deployment, batches, _run_batch(saltenv),
                                      canary=options.canary is not None, on_batch=on_batch,
                                      on_minion=on_minion,
                                      on_failure=roll_back if hook == "rollback" else None)
    printer.line(report.summary())
    fire("rollout-finish", {"msg": report.summary(), "result": report.succeeded,
                            "done": report.done, "failed": report.failed,
                            "no_response": report.no_response,
                            "never_started": report.never_started,
                            "stopped_at_batch": None if report.stopped_at is None
                            else report.stopped_at + 1,
                            "jids": report.jids})
    return report


# --- history, rollback, promotion (issue 15) ---------------------------------------

@_salt_terms
def history(project, deployment, limit=None, history_dir=None):
    """
    List the deploys of saltenv ``<project>/<deployment>`` recorded on the
    master (every deploy made with this runner), newest first.

    The entry marked ``served`` is the newest one whose digest is what the
    master's fileserver serves in that saltenv now (``.spirodeploy.json``);
    if it serves none, the last one recorded as deployed.  Entries are as
    for the execution module's ``spirodeploy.history``.

    project
        The project.

    deployment
        The deployment of the project.

    limit
        Return only this many entries.

    history_dir
        The history directory.  Default: ``spirodeploy:history_dir`` in the
        master config, then ``<cachedir>/spirodeploy-history``.

    CLI Example:

    .. code-block:: bash

        salt-run spirodeploy.history myproject prod
    """
    from spirodeploy.checks import check_name
    from spirodeploy.rollback import listing

    warnings = []
    try:
        check_name("project", project)
        check_name("deployment", deployment)
        ret = listing(_store(history_dir, warnings), project, deployment,
                      served_digest=_served_digest(project, deployment),
                      limit=int(limit) if limit else None)
        ret.update(result=True, warnings=warnings, retcode=0)
        return ret
    except errors.SpiroDeployError as exc:
        __context__["retcode"] = int(exc.exit_code)
        return {"result": False, "project": project, "deployment": deployment,
                "error": exc.message, "retcode": int(exc.exit_code), "warnings": warnings}


@_salt_terms
def rollback(project, deployment, to=None, force=False, highstate=True, history_dir=None,
             server=None, token=None, token_file=None, ssl_cert=None, insecure=None,
             timeout=None, connect_timeout=None, fire_events=True):
    """
    Deploy a bundle recorded in the master's history again (sha256 checked),
    and record it with ``rollback_of``.

    By default the newest successful bundle before the last deployed.  The
    saltenv must still serve what the history says was deployed last (the
    digest of its ``.spirodeploy.json``): if someone else deployed in
    between, nothing is done unless ``force=True``.

    project
        The project.

    deployment
        The deployment of the project.

    to
        The entry to deploy: its number, or 6+ hex digits of its sha256 or
        digest.

    force : False
        Roll back even when someone else deployed in between, or to the
        bundle served already.

    highstate, history_dir, server, token, token_file, ssl_cert, insecure, timeout, connect_timeout,
    fire_events
        As for ``spirodeploy.deploy`` and ``spirodeploy.history``.

    CLI Example:

    .. code-block:: bash

        salt-run spirodeploy.rollback myproject prod
        salt-run spirodeploy.rollback myproject prod to=3 force=True
    """
    from spirodeploy.rollback import entry_ref
    from spirodeploy.rollback import rollback as roll_back

    return _replay(project, deployment, highstate, history_dir, fire_events, token,
                   (server, token, token_file, ssl_cert, insecure, timeout, connect_timeout),
                   lambda store, settings, do_highstate, callbacks: roll_back(
                       store, project, deployment, settings, to=to,
                       force=saltsupport.to_bool(force, "force"),
                       served_digest=_served_digest(project, deployment),
                       highstate=do_highstate, **callbacks),
                   lambda outcome: {"rolled_back_to": entry_ref(outcome.source)})


@_salt_terms
def promote(project, source, deployment, to=None, force=False, highstate=True,
            history_dir=None, server=None, token=None, token_file=None, ssl_cert=None,
            insecure=None, timeout=None, connect_timeout=None, fire_events=True):
    """
    Deploy the exact bundle recorded for ``<project>/<source>`` to
    ``<project>/<deployment>`` (staging to prod), recorded with
    ``promoted_from``.

    By default the bundle ``source`` serves now, checked by its digest.
    Refused when the bundle has no ``top.sls`` and its ``spirotop.sls`` has
    no key for ``deployment`` (SpiroFS would highstate nothing), unless
    ``force=True``.

    project
        The project.

    source
        The deployment to promote from.

    deployment
        The deployment to promote to.

    to, force, highstate, history_dir, server, token, token_file, ssl_cert, insecure, timeout,
    connect_timeout, fire_events
        As for ``spirodeploy.rollback``.

    CLI Example:

    .. code-block:: bash

        salt-run spirodeploy.promote myproject staging prod
    """
    from spirodeploy.rollback import entry_ref
    from spirodeploy.rollback import promote as promote_bundle

    return _replay(project, deployment, highstate, history_dir, fire_events, token,
                   (server, token, token_file, ssl_cert, insecure, timeout, connect_timeout),
                   lambda store, settings, do_highstate, callbacks: promote_bundle(
                       store, project, source, deployment, settings, to=to,
                       force=saltsupport.to_bool(force, "force"),
                       source_digest=_served_digest(project, source),
                       highstate=do_highstate, **callbacks),
                   lambda outcome: {"promoted": entry_ref(outcome.source)})


def _replay(project, deployment, highstate, history_dir, fire_events, token, connection,
            flow, describe):
    from spirodeploy.output import HumanPrinter

    sink = saltsupport.LineSink(_progress)
    printer = HumanPrinter(out=sink, err=sink, colour=False, progress=False, secrets=(token,))
    warnings = []
    settings = None
    do_highstate = True
    extra = {}
    try:
        do_highstate = saltsupport.to_bool(highstate, "highstate", default=True)
        events_on = saltsupport.to_bool(fire_events, "fire_events", default=True)
        settings = _settings(*connection)
        outcome = flow(_store(history_dir, warnings), settings, do_highstate, {
            "on_event": _event_callback(project, deployment, settings, printer, events_on)})
        report = outcome.report
        extra = describe(outcome)
        extra["history_entry"] = outcome.entry["id"] if outcome.entry else None
    except errors.SpiroDeployError as exc:
        report = saltsupport.error_report(project, deployment, exc, highstate=do_highstate)
    printer.finish(report)
    return saltface.finish(report, __context__, secrets=saltface.secrets_of(token, settings),
                           warnings=warnings, extra=extra, retcode=True)


def _store(history_dir, warnings):
    from spirodeploy.history import DEFAULT_KEEP, HistoryStore

    directory = (history_dir or _config_get("spirodeploy:history_dir")
                 or os.path.join(__opts__["cachedir"], "spirodeploy-history"))
    keep = _config_get("spirodeploy:history_keep")
    return HistoryStore(directory, keep=DEFAULT_KEEP if keep is None else int(keep),
                        max_bytes=_config_get("spirodeploy:history_max_bytes") or None,
                        on_warning=warnings.append)


def _recorded(project, deployment, settings, run, rollback_on_failure, highstate, warn,
              printer, on_event):
    from spirodeploy.rollback import entry_ref, recorded_deploy

    def rolling_back(report, target):
        printer.finish(report)
        printer.line(f"The highstate failed: rolling back to {entry_ref(target)}")

    return recorded_deploy(
        _store(None, []), project, deployment, settings, run,
        rollback_on_failure=saltsupport.to_bool(rollback_on_failure, "rollback_on_failure"),
        highstate=highstate, on_warning=warn, on_rollback=rolling_back, on_event=on_event)


def _served_digest(project, deployment):
    """The digest of the manifest the master's fileserver serves in that saltenv, or None."""
    import json

    import salt.fileserver  # pylint: disable=import-outside-toplevel

    from spirodeploy.manifest import MANIFEST_NAME

    # Through the fileserver, as a minion would read it: a backend's find_file
    # does not always give a real path (spiro's gives the relative one).
    load = {"path": MANIFEST_NAME, "saltenv": f"{project}/{deployment}", "loc": 0}
    chunks = []
    try:
        fileserver = salt.fileserver.Fileserver(__opts__)
        while True:
            data = fileserver.serve_file(dict(load)).get("data")
            if not data:
                break
            chunks.append(data.encode() if isinstance(data, str) else data)
            load["loc"] += len(chunks[-1])
        manifest = json.loads(b"".join(chunks)) if chunks else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    digest = manifest.get("digest") if isinstance(manifest, dict) else None
    return digest if isinstance(digest, str) else None
