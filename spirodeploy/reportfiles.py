"""Where the report files go: ``--junit FILE`` and ``--html FILE``.

:func:`check_writable` runs before anything is uploaded, so a typo in a path
fails the command before it deploys, not after.  :func:`write_reports` runs
once the deploy has ended, whatever the outcome (a failed deploy is what a
report is most needed for); each file is written to a temporary file beside
it and renamed, so a CI job never archives half a report.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from typing import Any

from .atomicfile import replace_file
from .errors import UsageError


def check_writable(setting: str, path: str) -> None:
    """Raise :class:`UsageError` unless ``path`` can be written (its directory exists
    and is writable, and it is not a directory).  Creates nothing.

    ``setting`` is ``"junit"`` or ``"html"``: each face names it its own way
    (``--junit`` on the command line, ``junit`` in Salt).
    """
    if not path or not path.strip():
        raise _path_error(setting, "", "the file name is empty")
    if os.path.isdir(path):
        raise _path_error(setting, path, "is a directory")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise _path_error(setting, path, f"directory {directory!r} does not exist")
    # os.access says yes to root for any mode; a real (and removed) temporary
    # file says whether this process can create files there.
    try:
        fd, probe = tempfile.mkstemp(prefix=".spiro-report-", dir=directory)
    except OSError as exc:
        raise _path_error(setting, path,
                          f"cannot write in {directory!r}: {exc.strerror}") from None
    os.close(fd)
    os.unlink(probe)
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise _path_error(setting, path, "the file is not writable")


def write_atomic(setting: str, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    try:
        replace_file(path, data, prefix=".spiro-report-", mode=0o644)
    except OSError as exc:
        raise _path_error(setting, path, f"cannot write: {exc.strerror}") from None


def _path_error(setting: str, path: str, problem: str) -> UsageError:
    # "--junit 'x.xml': is a directory" on the command line, "junit 'x.xml': ..." in Salt.
    what = f"{path!r}: {problem}" if path else problem
    return UsageError(what, setting=setting, fix=f"{{{setting}}}{' ' if path else ': '}{{what}}")


def write_reports(report: Any, *, junit: str | None = None, html: str | None = None,
                  secrets: Iterable[str] = ()) -> list[str]:
    """Write the asked-for report files for ``report``; return the paths written.

    ``secrets`` (the token) are masked in them.  Raises :class:`UsageError`
    if a file cannot be written, after trying the others.
    """
    secrets = [secret for secret in secrets if secret]
    written: list[str] = []
    problems: list[UsageError] = []
    for setting, path in (("junit", junit), ("html", html)):
        if not path:
            continue
        if setting == "junit":
            from .junit import render
        else:
            from .html_report import render
        try:
            data = render(report, secrets)
            write_atomic(setting, path, data if isinstance(data, bytes) else data.encode("utf-8"))
            written.append(path)
        except UsageError as exc:
            problems.append(exc)
    if problems:
        raise UsageError("; ".join(problem.message for problem in problems))
    return written


def check_report_paths(junit: str | None, html: str | None) -> None:
    """:func:`check_writable` for each report file asked for (``None``: not asked)."""
    for setting, path in (("junit", junit), ("html", html)):
        if path is not None:
            check_writable(setting, str(path))


def write_for_salt(ret: dict[str, Any], report: Any, junit: str | None, html: str | None,
                   secrets: Iterable[str | None]) -> dict[str, Any]:
    """The Salt functions' ``junit``/``html``: write the files after the deploy.

    The return gets ``report_files`` (the paths written); a file that cannot
    be written is named in ``warnings`` and ``report_files_error``, and does
    not change the deploy's own result.
    """
    if not junit and not html:
        return ret
    try:
        ret["report_files"] = write_reports(
            report, junit=junit and str(junit), html=html and str(html),
            secrets=[secret for secret in secrets if secret])
    except UsageError as exc:
        message = exc.message  # in the face's terms: it runs in its naming()
        ret["report_files_error"] = message
        ret.setdefault("warnings", []).append(message)
    return ret
