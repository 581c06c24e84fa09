"""The deploy flow shared by the CLI and the Salt modules.

Build (or check) a bundle, upload it, fold the events into a
:class:`~spirodeploy.report.DeployReport`.  Presentation is left to the
caller through two callbacks: ``on_event(event, data, report)`` as each
event arrives and ``on_progress(sent, total)`` during the upload.

Errors before the server has the bundle (bad input, cannot connect, token
refused) are raised.  Once the server has it, whatever happens is recorded
in the report, so the events received so far are never lost; the report's
``exit_code`` and ``server_has_bundle`` say how it ended.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

from .client import upload_checked
from .errors import Interrupted, StreamError
from .report import DeployReport
from .settings import Settings

EventCallback = Callable[[str, "dict[str, Any]", DeployReport], None]
ProgressCallback = Callable[[int, "int | None"], None]


def deploy_bundle(
    bundle: IO[bytes] | Iterable[bytes],
    project: str,
    deployment: str,
    settings: Settings,
    *,
    highstate: bool = True,
    bundle_info: dict[str, Any] | None = None,
    on_event: EventCallback | None = None,
    on_progress: ProgressCallback | None = None,
    on_uploaded: Callable[[DeployReport], None] | None = None,
    history: Any = None,
) -> DeployReport:
    """Upload an open bundle (or a stream of its blocks) and return the report.

    The names must have passed :func:`check_before_bundling` and ``settings``
    come from :meth:`Settings.resolve` (:func:`deploy` and :func:`deploy_file`
    see to both); nothing here checks them again.

    ``on_uploaded(report)`` runs once the whole bundle went out and before
    the first event is handled (or at the end, if none came).  ``history``
    (a :class:`spirodeploy.history.Recording`) keeps what is uploaded and
    logs the outcome.
    """
    if settings.other_servers:
        from .fanout import deploy_to_all

        return deploy_to_all(bundle, project, deployment, settings, highstate=highstate,
                             bundle_info=bundle_info, on_event=on_event,
                             on_progress=on_progress, on_uploaded=on_uploaded,
                             history=history)
    report = DeployReport(project=project, deployment=deployment, highstate=highstate,
                          bundle=bundle_info)
    upload_state: dict[str, Any] = {"sent": 0, "total": None}

    def progress(sent: int, total: int | None) -> None:
        upload_state["sent"], upload_state["total"] = sent, total
        if on_progress is not None:
            on_progress(sent, total)

    if history is not None:
        bundle = history.capture(bundle)
    # Names and settings were checked where they entered (check_before_bundling,
    # Settings.resolve): the upload does not check them again.
    events = upload_checked(settings, bundle, project, deployment, highstate=highstate,
                            progress=progress)
    uploaded = on_uploaded
    try:
        for event, data in events:
            if uploaded is not None:
                uploaded(report)
                uploaded = None
            report.add(event, data)
            if on_event is not None:
                on_event(event, data, report)
        report.end_of_stream()
    except StreamError as exc:
        report.fail(exc, exc.exit_code, exc.server_has_bundle)
    except KeyboardInterrupt:
        exc = interrupted_error(report, upload_state["sent"], upload_state["total"])
        report.fail(exc, exc.exit_code, exc.server_has_bundle)
    except BaseException:
        if history is not None:
            history.discard()
        raise
    finally:
        events.close()
    if uploaded is not None and upload_state["total"] is not None:
        uploaded(report)
    if history is not None:
        history.finish(report)
    return report


def deploy(
    project: str,
    deployment: str,
    settings: Settings,
    *,
    root: str = ".",
    artifacts: Sequence[str] = (),
    include_source: str | None = None,
    highstate: bool = True,
    allow_empty: bool = False,
    exclude: Iterable[str] = (),
    output: str | None = None,
    stream: bool = True,
    compress: str | None = None,
    on_bundle: Callable[[Any], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
    on_event: EventCallback | None = None,
    on_progress: ProgressCallback | None = None,
    history: Any = None,
) -> DeployReport:
    """Bundle the project at ``root`` and deploy it; return the report.

    With ``stream`` (the default) the tar goes into the upload as it is
    built, so the deploy costs about the upload alone; a build that fails
    half way stops the upload unfinished, and the server deploys nothing.
    Without it the bundle is built first, then uploaded.

    ``on_warning(text)`` hears about the bundle (no top file, ...) and
    ``on_bundle(bundle)`` sees it once built: before the upload, or when
    streaming, once it has all gone out and before the first event.  The
    token file and ``output`` are never bundled.  ``history``: see
    :func:`deploy_bundle`.

    ``compress="gzip"`` uploads the bundle gzipped, compressed as it is
    built (:mod:`spirodeploy.compress`); ``output`` then gets the gzip, and
    the reported size and sha256 are the gzip's.
    """
    from .builder import build_bundle
    from .compress import build_compressed, check_format

    build = build_compressed if check_format(compress) else build_bundle

    for warning in check_before_bundling(project, deployment, settings):
        if on_warning is not None:
            on_warning(warning)  # a token the client cannot judge: the server decides
    options: dict[str, Any] = {
        "artifacts": list(artifacts), "include_source": include_source,
        "allow_empty": allow_empty, "output": output,
        "exclude": [*exclude, *(server.token_file for server in settings.all_servers
                                if server.token_file)],
    }
    if settings.other_servers:
        stream = False  # one bundle file, read once per server (spirodeploy.fanout)

    def announce(bundle: Any) -> None:
        for warning in bundle_warnings(bundle, highstate):
            if on_warning is not None:
                on_warning(warning)
        if on_bundle is not None:
            on_bundle(bundle)

    if not stream:
        with build(root, **options) as bundle:
            announce(bundle)
            return deploy_bundle(bundle.file, project, deployment, settings,
                                 highstate=highstate, bundle_info=bundle_info(bundle),
                                 on_event=on_event, on_progress=on_progress,
                                 history=history)

    from .stream import BundleStream

    def uploaded(report: DeployReport) -> None:
        report.bundle = bundle_info(streamed.bundle)
        announce(streamed.bundle)

    with BundleStream(lambda writer: build(root, stream=writer, **options)) as streamed:
        # Errors found while collecting the files (a missing artifact, an empty
        # _salt ...) are raised before anything is sent, as without streaming.
        streamed.wait_for_first_block()
        try:
            return deploy_bundle(streamed.chunks(), project, deployment, settings,
                                 highstate=highstate, on_event=on_event,
                                 on_progress=on_progress, on_uploaded=uploaded,
                                 history=history)
        finally:
            if streamed.bundle is not None:
                streamed.bundle.close()


def deploy_file(
    path: str,
    project: str,
    deployment: str,
    settings: Settings,
    *,
    highstate: bool = True,
    on_event: EventCallback | None = None,
    on_progress: ProgressCallback | None = None,
    on_warning: Callable[[str], None] | None = None,
    history: Any = None,
) -> DeployReport:
    """Deploy a tar built elsewhere, after checking every member is safe.

    ``path`` is read once (a pipe or ``/dev/stdin`` works; it may be
    compressed): what is uploaded is the plain tar that was checked, from a
    temporary copy, so a file rewritten after the check changes nothing.
    The report's ``bundle`` size and sha256 are those of that plain tar.
    ``history``: see :func:`deploy_bundle`; ``on_warning``: see :func:`deploy`.
    """
    from .errors import BundleError
    from .tarcheck import checked_copy

    for warning in check_before_bundling(project, deployment, settings):
        if on_warning is not None:
            on_warning(warning)  # a token the client cannot judge: the server decides
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise BundleError(f"cannot open bundle {path!r}: {exc.strerror}") from None
    with handle:
        copy = checked_copy(handle)
    with copy:
        summary = copy.summary
        info = {"sha256": summary.sha256, "size": summary.size, "file_count": summary.file_count}
        return deploy_bundle(copy.file, project, deployment, settings, highstate=highstate,
                             bundle_info=info, on_event=on_event, on_progress=on_progress,
                             history=history)


def check_before_bundling(project: str, deployment: str, settings: Settings) -> list[str]:
    """What ``upload`` would refuse, checked before spending time on a bundle.

    Returns warnings: a token whose caveats the client cannot judge.
    """
    from .checks import check_name, check_token_scope

    check_name("project", project)
    check_name("deployment", deployment)
    warnings = [warning for server in settings.all_servers if server.token
                for warning in check_token_scope(server.token, project).warnings]
    return list(dict.fromkeys(warnings))  # one token shared by several servers: say it once


def bundle_warnings(bundle: Any, highstate: bool) -> list[str]:
    """What the user should hear about a bundle before it is deployed."""
    warnings = list(bundle.warnings)
    if highstate and not bundle.has_top:
        warnings.append("no top.sls or spirotop.sls in _salt: the highstate will apply "
                        "nothing from this deployment")
    return warnings


def bundle_info(bundle: Any) -> dict[str, Any]:
    """The bundle facts a report carries (``bundle`` is a builder ``Bundle``)."""
    info = {"sha256": bundle.sha256, "size": bundle.size, "file_count": bundle.file_count,
            "digest": bundle.digest, "gitcommit": bundle.gitcommit}
    if getattr(bundle, "compression", None):
        # sha256 and size are what was uploaded; the plain tar's are kept beside.
        info.update(compression=bundle.compression, compressor=bundle.compressor,
                    tar_sha256=bundle.tar_sha256, tar_size=bundle.tar_size)
    return info


def interrupted_error(report: DeployReport | None, sent: int, total: int | None) -> Interrupted:
    """What an interruption means, from what the deploy had got to.

    ``report`` is None when no event came; ``sent``/``total`` are the upload's
    progress.  The CLI also asks this when a second signal cut the handling
    of the first one short.
    """
    if report is not None and report.finished:
        return Interrupted("interrupted after the deploy ended: the server has deployed the "
                           "new bundle", server_has_bundle=True)
    if (report is not None and report.events) or (total and sent >= total):
        return Interrupted("interrupted after the upload: the server has the new bundle and "
                           "may be deploying it", server_has_bundle=True)
    if sent:
        return Interrupted("interrupted during the upload: the server did not get the whole "
                           "bundle and deploys nothing", server_has_bundle=False)
    return Interrupted("interrupted before the upload: nothing was sent",
                       server_has_bundle=False)
