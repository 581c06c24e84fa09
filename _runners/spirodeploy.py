"""
Deploy Salt state trees to a SpiroFS server from the master
===========================================================

The runner twin of the ``spirodeploy`` execution module: it bundles a
project directory on the master and deploys it, printing the server's
progress as it arrives.

:depends: spiro-deploy (``pip install spiro-deploy``)

Settings come from arguments, then the master configuration, then the
environment (``SPIRO_URL``, ``SPIRO_TOKEN_FILE``, ``SPIRO_TOKEN``):

.. code-block:: yaml

    # /etc/salt/master.d/spirodeploy.conf
    spirodeploy:
      server: https://localhost:4510/
      token_file: /etc/salt/spirodeploy.token
      ssl_cert: /etc/pki/spirofs-ca.pem

A token given as an argument is stored in the master's job cache with the
other arguments; use the configuration or ``SPIRO_TOKEN_FILE``.
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
        names = ("errors", "saltsupport")
        return [importlib.import_module(f"spirodeploy.{name}") for name in names]
    finally:
        for index, path in hidden:
            sys.path.insert(index, path)


try:
    errors, saltsupport = _import_library()
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
        The project directory on the master, holding ``_salt/``.  Default:
        the current directory of ``salt-run``.

    artifacts, include_source, highstate, allow_empty, exclude, output
        As for the execution module's ``spirodeploy.deploy``.

    server, token, token_file, ssl_cert, insecure, timeout, connect_timeout
        Connection settings; default: ``spirodeploy:*`` in the master
        configuration, then the environment.

    fire_events : True
        Fire each event on the master's event bus.

    CLI Example:

    .. code-block:: bash

        salt-run spirodeploy.deploy myproject prod root=/srv/checkouts/myproject
    """
    from spirodeploy.output import HumanPrinter

    sink = saltsupport.LineSink(_progress)
    printer = HumanPrinter(out=sink, err=sink, colour=False, progress=False)
    settings = None
    warnings = []
    def warn(text):
        warnings.append(text)
        printer.warn(text)

    try:
        from spirodeploy.deploy import deploy as deploy_project

        settings = _settings(server, token, token_file, ssl_cert, insecure, timeout,
                             connect_timeout)
        if settings.insecure:
            printer.warn("insecure: the server is not authenticated; do not use this in "
                         "production")
        report = deploy_project(
            project, deployment, settings, root=root or os.getcwd(),
            artifacts=saltsupport.to_list(artifacts), include_source=include_source or None,
            highstate=bool(highstate), allow_empty=bool(allow_empty),
            exclude=saltsupport.to_list(exclude, "exclude"), output=output,
            on_warning=warn,
            on_bundle=lambda bundle: printer.deploying(bundle, project, deployment),
            on_event=_event_callback(project, deployment, settings, printer, fire_events),
        )
    except errors.SpiroDeployError as exc:
        report = saltsupport.error_report(project, deployment, exc, highstate=bool(highstate))
    printer.finish(report)
    ret = report.to_dict()
    ret["warnings"] = warnings
    ret["retcode"] = int(report.exit_code)
    if ret["retcode"]:
        __context__["retcode"] = ret["retcode"]
    return saltsupport.scrub(ret, [token, settings.token if settings else None])


def check_token(server=None, token=None, token_file=None, ssl_cert=None, insecure=None,
                project=None, connect_timeout=None):
    """
    Check that the server is reachable from the master and accepts the token.

    Returns ``result``, the ``server``, the ``projects`` the token may
    deploy (``None``: any) and when it ``expires``, and ``retcode``.

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
        ret = {"result": False, "server": saltsupport.shown_server(settings, server),
               "error": exc.message, "exit_code": int(exc.exit_code),
               "retcode": int(exc.exit_code)}
        __context__["retcode"] = ret["retcode"]
    return saltsupport.scrub(ret, [token, settings.token if settings else None])


# --- helpers -------------------------------------------------------------------

def _config_get(key):
    return saltsupport.config_getter(__opts__)(key)


def _settings(server, token, token_file, ssl_cert, insecure, timeout, connect_timeout):
    return saltsupport.resolve_settings(
        _config_get, server=server, token=token, token_file=token_file, ssl_cert=ssl_cert,
        insecure=insecure, timeout=timeout, connect_timeout=connect_timeout,
    )



def _progress(line):
    try:
        __jid_event__.fire_event({"message": line}, "progress")
    except (NameError, ReferenceError):
        # Called outside a runner job (no __jid_event__): log it instead.
        log.info("%s", line)


def _event_callback(project, deployment, settings, printer, fire_events):
    secrets = [settings.token]

    def on_event(event, data, report):
        printer.event(event, data, report)
        if fire_events:
            tag, payload = saltsupport.bus_event(project, deployment, event, data, secrets)
            saltsupport.fire_event(__opts__, None, tag, payload)

    return on_event
