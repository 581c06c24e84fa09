"""``spiro-token``: narrow and inspect SpiroFS tokens, offline.

A separate command from ``spiro-deploy`` so that ``spiro-deploy <project>
<deployment>`` keeps working for any project name.  The source token comes
from the same settings as ``spiro-deploy``'s (``--token-file``,
``SPIRO_TOKEN_FILE``, ``--token``, ``SPIRO_TOKEN``); nothing is sent
anywhere.  Like ``spiro-deploy``, only :func:`main` prints and returns an
exit status.
"""

from __future__ import annotations

import argparse
import json
import sys

from .errors import ExitCode, SpiroDeployError
from .sanitize import escape

PROG = "spiro-token"

EPILOG = """\
examples:
  spiro-token narrow --project shop --lifetime 15m --output job.token
  SPIRO_TOKEN_FILE=job.token spiro-deploy shop prod
  spiro-token --token-file job.token inspect

lifetime: 30s, 15m, 2h, 1d or plain seconds.  time: ISO 8601
(2026-01-31T12:00:00Z; UTC when no zone is given) or epoch seconds.

A narrowed token allows only the projects named, for the lifetime given
(and never more than the source token allows).  SpiroFS 0.3 cannot revoke
tokens: hand each CI job its own short-lived one.

exit codes: 0 done, 2 bad input (token, lifetime, time, project, output file)

environment:
  SPIRO_TOKEN_FILE  file holding the source token
  SPIRO_TOKEN       the source token itself
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: token options, then ``narrow`` or ``inspect``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Narrow a SpiroFS token to some projects and a short lifetime, or show "
                    "what a token allows. Works offline: anyone holding a token can narrow it.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_argument_group("source token (as for spiro-deploy)")
    source.add_argument("--token-file", metavar="FILE",
                        help="read the token from FILE; overrides SPIRO_TOKEN_FILE")
    source.add_argument("--token", help="the token; overrides SPIRO_TOKEN (visible in ps)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    narrow = commands.add_parser(
        "narrow", help="make a token for fewer projects and a short lifetime",
        description="Print (or write to --output) a token that allows only the projects "
                    "given, for --lifetime. It cannot allow more than the source token.")
    narrow.add_argument("--project", action="append", required=True, metavar="NAME",
                        help="a project the new token may deploy (repeatable)")
    narrow.add_argument("--lifetime", required=True, metavar="DURATION",
                        help="how long the new token is valid: 30s, 15m, 2h, 1d or seconds")
    narrow.add_argument("--not-before", metavar="TIME",
                        help="valid only from TIME (the lifetime counts from then)")
    narrow.add_argument("--output", metavar="FILE",
                        help="write the token to FILE (mode 0600) instead of printing it")
    narrow.add_argument("--json", action="store_true",
                        help="print one JSON object (with the token unless --output is given)")
    # The token options are also accepted after the command (the usual habit).
    for sub in (narrow,):
        sub.add_argument("--token-file", dest="sub_token_file", metavar="FILE",
                         help=argparse.SUPPRESS)
        sub.add_argument("--token", dest="sub_token", help=argparse.SUPPRESS)

    inspect = commands.add_parser(
        "inspect", help="show a token's projects, validity and caveats (never the token)",
        description="Show the projects a token allows, when it is valid and its caveats; "
                    "never the token itself.")
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.add_argument("--token-file", dest="sub_token_file", metavar="FILE",
                         help=argparse.SUPPRESS)
    inspect.add_argument("--token", dest="sub_token", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``spiro-token``; return the exit status (0, or 2 for bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    try:
        return _run(args)
    except SpiroDeployError as exc:
        print(f"{PROG}: error: {escape(exc.message)}", file=sys.stderr, flush=True)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)


def _run(args: argparse.Namespace) -> int:
    from . import tokens

    token = _source_token(args)
    if args.command == "inspect":
        info = tokens.inspect(token)
        if args.json:
            print(json.dumps(info))
        else:
            # A token handed over by someone else is untrusted text: its
            # caveats must not reach the terminal as control sequences.
            print("\n".join(escape(line) for line in tokens.describe(info)))
        return ExitCode.OK

    ret = tokens.narrow_result(token, args.project, args.lifetime,
                               not_before=args.not_before, output=args.output)
    for warning in ret["warnings"]:
        print(f"{PROG}: warning: {escape(warning)}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(ret))
    elif args.output:
        print(f"{PROG}: wrote a token for {', '.join(ret['projects'])}, valid until "
              f"{tokens.utc(ret['not_after'])}, to {args.output}", file=sys.stderr, flush=True)
    else:
        print(ret["token"])
    return ExitCode.OK


def _source_token(args: argparse.Namespace) -> str:
    from .client import DEFAULT_URL
    from .settings import Settings

    token = args.sub_token if args.sub_token is not None else args.token
    token_file = args.sub_token_file if args.sub_token_file is not None else args.token_file
    # The same precedence and checks as spiro-deploy's.  The server URL is
    # given only so that a SPIRO_URL meant for deploys (say plain http:// with
    # --insecure) cannot make this offline command fail.
    return Settings.resolve(server=DEFAULT_URL, token=token, token_file=token_file).token


def run() -> None:
    """Console-script entry point (``spiro-token``)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
