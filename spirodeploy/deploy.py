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

from typing import IO, Any, Callable, Iterable, Sequence

from .client import upload
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
) -> DeployReport:
    """Upload an open bundle (or a stream of its blocks) and return the report.

    ``on_uploaded(report)`` runs once the whole bundle went out and before
    the first event is handled (or at the end, if none came).
    """
    report = DeployReport(project=project, deployment=deployment, highstate=highstate,
                          bundle=bundle_info)
    upload_state: dict[str, Any] = {"sent": 0, "total": None}

    def progress(sent: int, total: int | None) -> None:
        upload_state["sent"], upload_state["total"] = sent, total
        if on_progress is not None:
            on_progress(sent, total)

    events = upload(
        settings.server, settings.token, bundle, project, deployment,
        highstate=highstate, sslverify=settings.sslverify,
        connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout,
        progress=progress,
    )
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
        exc = _interrupted(report, upload_state["sent"], upload_state["total"])
        report.fail(exc, exc.exit_code, exc.server_has_bundle)
    finally:
        events.close()
    if uploaded is not None and upload_state["total"] is not None:
        uploaded(report)
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
    on_bundle: Callable[[Any], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
    on_event: EventCallback | None = None,
    on_progress: ProgressCallback | None = None,
) -> DeployReport:
    """Bundle the project at ``root`` and deploy it; return the report.

    With ``stream`` (the default) the tar goes into the upload as it is
    built, so the deploy costs about the upload alone; a build that fails
    half way stops the upload unfinished, and the server deploys nothing.
    Without it the bundle is built first, then uploaded.

    ``on_warning(text)`` hears about the bundle (no top file, ...) and
    ``on_bundle(bundle)`` sees it once built: before the upload, or when
    streaming, once it has all gone out and before the first event.  The
    token file and ``output`` are never bundled.
    """
    from .builder import build_bundle

    check_before_bundling(project, deployment, settings)
    options: dict[str, Any] = {
        "artifacts": list(artifacts), "include_source": include_source,
        "allow_empty": allow_empty, "output": output,
        "exclude": [*exclude, *([settings.token_file] if settings.token_file else [])],
    }

    def announce(bundle: Any) -> None:
        for warning in bundle_warnings(bundle, highstate):
            if on_warning is not None:
                on_warning(warning)
        if on_bundle is not None:
            on_bundle(bundle)

    if not stream:
        with build_bundle(root, **options) as bundle:
            announce(bundle)
            return deploy_bundle(bundle.file, project, deployment, settings,
                                 highstate=highstate, bundle_info=bundle_info(bundle),
                                 on_event=on_event, on_progress=on_progress)

    from .stream import BundleStream

    def uploaded(report: DeployReport) -> None:
        report.bundle = bundle_info(streamed.bundle)
        announce(streamed.bundle)

    with BundleStream(lambda writer: build_bundle(root, stream=writer, **options)) as streamed:
        # Errors found while collecting the files (a missing artifact, an empty
        # _salt ...) are raised before anything is sent, as without streaming.
        streamed.wait_for_first_block()
        try:
            return deploy_bundle(streamed.chunks(), project, deployment, settings,
                                 highstate=highstate, on_event=on_event,
                                 on_progress=on_progress, on_uploaded=uploaded)
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
) -> DeployReport:
    """Deploy a tar built elsewhere, after checking every member is safe."""
    from .errors import BundleError
    from .tarcheck import check_tarball

    check_before_bundling(project, deployment, settings)
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise BundleError(f"cannot open bundle {path!r}: {exc.strerror}") from None
    with handle:
        summary = check_tarball(handle)
        info = {"sha256": summary.sha256, "size": summary.size, "file_count": summary.file_count}
        return deploy_bundle(handle, project, deployment, settings, highstate=highstate,
                             bundle_info=info, on_event=on_event, on_progress=on_progress)


def check_before_bundling(project: str, deployment: str, settings: Settings) -> None:
    """What ``upload`` would refuse, checked before spending time on a bundle."""
    from .checks import check_name, check_token_scope

    check_name("project", project)
    check_name("deployment", deployment)
    if settings.token:
        check_token_scope(settings.token, project)


def bundle_warnings(bundle: Any, highstate: bool) -> list[str]:
    """What the user should hear about a bundle before it is deployed."""
    warnings = list(bundle.warnings)
    if highstate and not bundle.has_top:
        warnings.append("no top.sls or spirotop.sls in _salt: the highstate will apply "
                        "nothing from this deployment")
    return warnings


def bundle_info(bundle: Any) -> dict[str, Any]:
    """The bundle facts a report carries (``bundle`` is a builder ``Bundle``)."""
    return {"sha256": bundle.sha256, "size": bundle.size, "file_count": bundle.file_count,
            "digest": bundle.digest, "gitcommit": bundle.gitcommit}


def _interrupted(report: DeployReport, sent: int, total: int | None) -> Interrupted:
    if report.events or (total and sent >= total):
        return Interrupted("interrupted after the upload: the server has the new bundle and "
                           "may be deploying it", server_has_bundle=True)
    if sent:
        return Interrupted("interrupted during the upload: the server did not get the whole "
                           "bundle and deploys nothing", server_has_bundle=False)
    return Interrupted("interrupted before the upload: nothing was sent",
                       server_has_bundle=False)
