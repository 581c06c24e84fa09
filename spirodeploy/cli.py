"""The ``spiro-deploy`` command.

``main`` is the one place that turns an error into a one-line message and
an exit status; everything below it raises.  Heavy modules (requests, the
builder) are imported only once the arguments are parsed, so ``--help``
starts fast.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from . import __version__
from .errors import ExitCode, SpiroDeployError, UsageError

EXIT_CODES_HELP = """\
exit codes:
  0    deployed; every minion that was highstated succeeded
  1    deploy failed: the server raised, or a minion failed its highstate
  2    usage error or bad input (names, paths, token, URL, bundle contents)
  3    deployed, but some minions never reported
  4    cannot connect (refused, DNS, TLS verification failed, upload cut)
  5    token rejected (401), not allowed for the project (403), or expired
  6    the event stream was cut, stalled past --timeout, or was not valid
  7    the server refused the upload with another HTTP status (400, 5xx)
  130  interrupted (Ctrl-C or SIGTERM); the message says whether the
       server may already have the new bundle

environment:
  SPIRO_URL         server URL (default https://salt:4510/); a comma list names
                    several masters (see --server)
  SPIRO_TOKEN_FILE  file holding the token (preferred in CI: not visible in ps)
  SPIRO_TOKEN       the token itself
  SPIRO_HISTORY_DIR where deploys are recorded (default
                    $XDG_STATE_HOME/spiro-deploy or ~/.local/state/spiro-deploy)
  NO_COLOR          set to disable colour

tokens: spiro-token narrows a token to some projects and a short lifetime, and
inspects tokens (spiro-token --help)
"""

SOURCE_METHODS = ("git", "fs", "filesystem", "auto")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (options of the original spiro-deploy, plus more)."""
    parser = argparse.ArgumentParser(
        prog="spiro-deploy",
        description="Bundle _salt/ (plus artifacts and, optionally, the source) and deploy it\n"
                    "to a SpiroFS server as saltenv <project>/<deployment>, showing the\n"
                    "server's progress and each minion's highstate as they happen.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("project", help="project to deploy to")
    parser.add_argument("deployment", help="deployment of the project (e.g. prod)")

    bundle = parser.add_argument_group("bundle")
    bundle.add_argument("--artifact", action="append", default=[], metavar="PATH",
                        help="add a file or directory under _artifacts/PATH (repeatable)")
    bundle.add_argument("--include-source", nargs="?", const="auto", default=None,
                        choices=SOURCE_METHODS, metavar="METHOD",
                        help="add the source under _source: 'git' (git archive of HEAD), "
                             "'fs'/'filesystem' (files on disk, honouring .spiroignore); "
                             "bare: git in a git checkout, else fs")
    bundle.add_argument("-C", "--directory", default=".", metavar="DIR",
                        help="project directory (default: the current one)")
    bundle.add_argument("--allow-empty", action="store_true",
                        help="deploy even with no _salt content (this empties the saltenv)")
    bundle.add_argument("--dry-run", action="store_true",
                        help="build the bundle and show its manifest; upload nothing")
    bundle.add_argument("--output", metavar="FILE",
                        help="also write the bundle to FILE")
    bundle.add_argument("--manifest", action="store_true",
                        help="with --dry-run, list every file with its size and sha256")
    compress = bundle.add_mutually_exclusive_group()
    compress.add_argument("--compress", nargs="?", const="gzip", default=None,
                          choices=("gzip",), metavar="gzip",
                          help="upload (and --output) the bundle gzip-compressed, "
                               "compressed as it is built (default: off)")
    compress.add_argument("--no-compress", dest="compress", action="store_const", const=None,
                          help="upload the plain tar (the default)")

    deploy = parser.add_argument_group("deploy")
    highstate = deploy.add_mutually_exclusive_group()
    highstate.add_argument("--highstate", dest="highstate", action="store_true", default=True,
                           help="highstate the affected minions after deploying (default)")
    highstate.add_argument("--no-highstate", dest="highstate", action="store_false",
                           help="deploy without highstating")
    deploy.add_argument("--no-stream", dest="stream", action="store_false",
                        help="build the whole bundle before uploading it (by default it is "
                             "uploaded as it is built, chunked; for proxies that refuse that)")
    deploy.add_argument("--bundle", metavar="TAR",
                        help="upload this existing tar instead of building one "
                             "(every member is checked first)")

    server = parser.add_argument_group("server")
    server.add_argument("--server", metavar="URL", action="append",
                        help="server URL (overrides SPIRO_URL). Repeat it for several masters: "
                             "all get the bundle, the first named highstates once the others "
                             "accepted it")
    token = server.add_mutually_exclusive_group()
    token.add_argument("--token", metavar="TOKEN", action="append",
                       help="token (overrides SPIRO_TOKEN; visible in ps, prefer --token-file); "
                            "with several --server: once for all, or once per server")
    token.add_argument("--token-file", metavar="FILE", action="append",
                       help="read the token from FILE (overrides SPIRO_TOKEN_FILE); with "
                            "several --server: once for all, or once per server, in order")
    tls = server.add_mutually_exclusive_group()
    tls.add_argument("--ssl-cert", metavar="FILE", action="append",
                     help="verify the server with this CA or certificate (PEM); with several "
                          "--server: once for all, or once per server")
    tls.add_argument("--insecure", action="store_true",
                     help="do not verify the server, and allow plain http:// (dangerous)")
    server.add_argument("--timeout", type=_seconds_or_no_limit, metavar="SECONDS",
                        help="give up when the server sends no event this long; keep-alive "
                             "comments do not count (default 3600; 0 or inf: no limit)")
    server.add_argument("--connect-timeout", type=_seconds, default=20, metavar="SECONDS",
                        help="give up connecting after this long (default 20)")
    server.add_argument("--deadline", type=_seconds_or_no_limit, metavar="SECONDS",
                        help="give up this long after the upload started, whatever the server "
                             "sends (exit 6; the deploy may still run on the server). "
                             "Default: none")

    output = parser.add_argument_group("output")
    output.add_argument("--json", action="store_true",
                        help="print one JSON object per event, then the report")
    output.add_argument("--junit", metavar="FILE",
                        help="after the deploy, also a failed one, write a JUnit XML report "
                             "to FILE (for CI test pages)")
    output.add_argument("--html", metavar="FILE",
                        help="after the deploy, also a failed one, write a self-contained HTML "
                             "report to FILE")
    output.add_argument("--no-progress", action="store_true",
                        help="no upload progress bar (it is only drawn on a terminal)")
    output.add_argument("-v", "--verbose", action="count", default=0,
                        help="list every minion's changed states, however many minions "
                             "(by default only up to 10 minions; failed states are always "
                             "shown)")
    output.add_argument("--version", action="version", version=f"spiro-deploy {__version__}")
    from .historycli import add_options as add_history_options

    add_history_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit status."""
    args = build_parser().parse_args(_bare_compress(argv))
    from .output import HumanPrinter, JsonPrinter

    printer = JsonPrinter() if args.json else HumanPrinter(
        progress=False if args.no_progress else None, verbose=args.verbose)
    # The token is masked in everything printed; _run adds the one it reads
    # from a token file.
    printer.hide(*(args.token or ()), os.environ.get("SPIRO_TOKEN"),
                 *os.environ.get("SPIRO_TOKEN", "").split(","))
    watch = _Watch()
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _run(args, printer, watch)
    except SpiroDeployError as exc:
        return _fail(printer, exc.message, exc.exit_code)
    except KeyboardInterrupt:
        # Also reached by a second signal while the first one is being handled
        # (the report was lost): say what the deploy had got to, not a guess.
        return _fail(printer, watch.interrupted(), ExitCode.INTERRUPTED)
    finally:
        signal.signal(signal.SIGTERM, previous)
        printer.close()


def _run(args: argparse.Namespace, printer, watch: _Watch) -> int:
    from .checks import check_name

    # Checked once, here where they enter: the deploy flow passes checked names through.
    args.project = check_name("project", args.project)
    args.deployment = check_name("deployment", args.deployment)
    from .historycli import HistoryCLI

    history = HistoryCLI(args, printer)
    _check_report_files(args, history)  # before any upload (and before the token is read)
    if args.history:
        return history.list()  # no server needed
    settings = None
    if not args.dry_run:
        from .settings import resolve_servers

        # Settings before bundling: a bad token should not wait for a big build.
        settings = resolve_servers(
            args.server, tokens=args.token or (), token_files=args.token_file or (),
            ssl_certs=args.ssl_cert or (), insecure=args.insecure,
            connect_timeout=args.connect_timeout, read_timeout=args.timeout,
            deadline=args.deadline,
        )
        printer.hide(*(server.token for server in settings.all_servers))
        if settings.insecure:
            printer.warn("--insecure: the server is not authenticated; do not use this in "
                         "production")
    callbacks = {"on_event": watch.on_event(printer.event),
                 "on_progress": watch.on_progress(printer.progress)}

    if history.action:
        return history.run_action(settings, callbacks)

    if args.bundle:
        if args.dry_run:
            raise UsageError("--bundle cannot be combined with --dry-run")
        if args.compress:
            raise UsageError("--compress applies to bundles built here; --bundle uploads the "
                             "plain tar it checked")
        from .deploy import deploy_file

        report = _reporting(args, printer, history, lambda: history.deploy(
            settings, callbacks, lambda recording: deploy_file(
                args.bundle, args.project, args.deployment, settings, highstate=args.highstate,
                on_warning=printer.warn, history=recording, **callbacks)))
        _servers(printer, report, args.json)
        printer.finish(report)
        return _write_report_files(args, printer, history, report, history.exit_code(report))

    if args.dry_run:
        from .builder import build_bundle  # and nothing of the network side
        from .checks import token_files
        from .compress import build_compressed

        # The same files as a real deploy would send: the token file stays out.
        build = build_compressed if args.compress else build_bundle
        with build(args.directory, artifacts=args.artifact,
                   include_source=args.include_source, output=args.output,
                   allow_empty=args.allow_empty,
                   exclude=token_files(*(args.token_file or ()))) as bundle:
            for warning in bundle.warnings:
                printer.warn(warning)
            printer.bundle(bundle, verbose=args.manifest)
        return ExitCode.OK

    from .deploy import deploy

    report = _reporting(args, printer, history, lambda: history.deploy(
        settings, callbacks, lambda recording: deploy(
        args.project, args.deployment, settings, root=args.directory, artifacts=args.artifact,
        include_source=args.include_source, highstate=args.highstate,
        allow_empty=args.allow_empty, output=args.output, stream=args.stream,
        compress=args.compress,
        on_bundle=lambda bundle: printer.deploying(bundle, args.project, args.deployment),
        on_warning=printer.warn, history=recording, **callbacks,
    )))
    _servers(printer, report, args.json)
    printer.finish(report)
    if report.error and not args.json:
        printer.error(report.error)
    return _write_report_files(args, printer, history, report, history.exit_code(report))


def _servers(printer, report, json_output: bool) -> None:
    """With several servers, one line per server before the summary (--json: in the report)."""
    if json_output or not getattr(report, "servers", None):
        return
    for outcome in report.servers:
        printer.line(f"  {outcome.server} [{outcome.role}]: {outcome.status} "
                     f"(exit {outcome.exit_code}) {outcome.message}")


def _bare_compress(argv: Sequence[str] | None) -> list[str]:
    """Read a bare ``--compress`` as ``--compress=gzip``.

    Its value is optional, so argparse would otherwise take the next word,
    the project in ``--compress myproj prod``, as the format.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--compress":
            args[i] = "--compress=gzip"
    return args


def _check_report_files(args: argparse.Namespace, history) -> None:
    """``--junit``/``--html``: only with a deploy, and to a path that can be written."""
    if args.junit is None and args.html is None:
        return
    if args.dry_run or history.action:
        raise UsageError("--junit and --html report a deploy: they cannot go with --dry-run, "
                         "--history, --rollback or --promote-from")
    from .reportfiles import check_report_paths

    check_report_paths(args.junit, args.html)


def _reporting(args: argparse.Namespace, printer, history, run):
    """``run()`` the deploy; if it raises, still write the report files, then re-raise."""
    try:
        return run()
    except SpiroDeployError as exc:
        if args.junit or args.html:
            from .report import DeployReport

            report = DeployReport(project=args.project, deployment=args.deployment,
                                  highstate=args.highstate)
            report.fail(exc, exc.exit_code, exc.server_has_bundle)
            _write_report_files(args, printer, history, report, int(exc.exit_code))
        raise


def _write_report_files(args: argparse.Namespace, printer, history, report,
                        exit_code: int) -> int:
    """Write ``--junit``/``--html`` for the deploy; return the command's exit status.

    With ``--rollback-on-failure`` they describe the deploy that failed, not
    the rollback.  A file that cannot be written is an error (exit 2 if the
    deploy itself succeeded).
    """
    if not (args.junit or args.html):
        return exit_code
    from .reportfiles import write_reports

    outcome = history.outcome
    if outcome is not None and getattr(outcome, "report", None) is not None:
        report = outcome.report
    try:
        write_reports(report, junit=args.junit, html=args.html,
                      secrets=getattr(printer, "secrets", ()))
    except SpiroDeployError as exc:
        printer.error(exc.message, int(exc.exit_code))
        return exit_code or int(exc.exit_code)
    return exit_code


def _fail(printer, message: str, exit_code: int) -> int:
    # Through the printer: it masks the token and escapes control characters
    # (an error can quote a server's body).
    printer.error(message, int(exit_code))
    return int(exit_code)


class _Watch:
    """How far the deploy got, from the callbacks, for the interrupted message."""

    def __init__(self) -> None:
        self.sent = 0
        self.total: int | None = None
        self.report = None

    def on_progress(self, callback):
        def progress(sent: int, total: int | None) -> None:
            self.sent, self.total = sent, total
            callback(sent, total)
        return progress

    def on_event(self, callback):
        def event(name: str, data: dict, report) -> None:
            self.report = report
            callback(name, data, report)
        return event

    def interrupted(self) -> str:
        if self.report is None and not self.sent:
            return "interrupted before the upload: nothing was sent"
        from .deploy import interrupted_error

        return interrupted_error(self.report, self.sent, self.total).message


def _seconds(text: str, unlimited: bool = False) -> float:
    # argparse turns ArgumentTypeError into "argument --x: <message>", exit 2.
    from .client import check_timeout
    from .errors import ConfigError

    try:
        check_timeout("the value", text, unlimited=unlimited)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    return float(text)  # Settings maps 0 and inf to "no limit"


def _seconds_or_no_limit(text: str) -> float:
    return _seconds(text, unlimited=True)


def _terminate(signum, frame):  # noqa: ARG001 - signal handler signature
    # SIGTERM takes the same path as Ctrl-C, so the deploy flow can say what
    # the server may already have.
    raise KeyboardInterrupt


def run() -> None:
    """Console-script entry point."""
    code = main()
    # main has said how the deploy ended; a further SIGTERM (CI runners often
    # send more than one) must not turn that exit status into a kill while
    # the interpreter exits.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(code)
