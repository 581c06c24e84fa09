"""Replace a file whole or not at all: a temporary file beside it, then a rename.

A reader (a CI job reading a report, Salt reading the deploy record, a
deploy reading a narrowed token) sees the old file or the new one, never
half of one, and a failed write leaves no temporary file behind.
"""

from __future__ import annotations

import os
import tempfile


def replace_file(path: str, data: bytes, *, prefix: str, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` atomically; raises :class:`OSError` as the OS does.

    The temporary file is made by :func:`tempfile.mkstemp`, readable by its
    owner only, and keeps that mode unless ``mode`` says otherwise (a token
    stays private from its first byte).
    """
    fd, temp = tempfile.mkstemp(prefix=prefix, dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        if mode is not None:
            os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
