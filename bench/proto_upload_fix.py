"""Prototype of the client fix for the deploy's memory (not used by spiro-deploy).

Status: the same fix has since landed in ``spirodeploy/client.py``
(``_BundleReader``), so today this measures the same as spiro-deploy itself;
kept as the record of how the 1 GiB deploy went from 1063 MiB to 36 MiB peak
RSS (bench/prototypes.md, and tests/unit/test_memory.py guards it).

Runs the real ``spiro-deploy`` CLI in this process with one change, the one
proposed for ``spirodeploy/client.py``: the bundle goes to
``requests_toolbelt``'s ``MultipartEncoder`` wrapped in an object that has
``read``/``seek``/``tell`` and a ``len``, but no ``getvalue``.

Why: ``MultipartEncoder`` calls ``coerce_data()`` on every part, which checks
``hasattr(data, "getvalue")`` *first* and then does
``CustomBytesIO(data.getvalue())``: a full copy of the bundle in memory.  The
builder's default buffer (``_SpooledBuffer``) defines ``getvalue()`` for 0.x
compatibility, so every deploy built in memory-spooled mode (the CLI without
``--output``) held the whole bundle in RSS (1 GiB bundle -> ~1.05 GiB peak).

    python bench/proto_upload_fix.py <spiro-deploy arguments>
"""

from __future__ import annotations

import sys


class BundleBody:
    """The bundle as MultipartEncoder should see it: streamed, with a length."""

    def __init__(self, fileobj):
        self._f = fileobj
        start = fileobj.tell()
        fileobj.seek(0, 2)
        self._end = fileobj.tell()
        fileobj.seek(start)

    @property
    def len(self) -> int:  # what requests_toolbelt's total_len() reads
        return self._end - self._f.tell()

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n)

    def tell(self) -> int:
        return self._f.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)


def install() -> None:
    from spirodeploy import client, deploy

    original = client.upload

    def upload(url, token, tarball, *args, **kwargs):
        return original(url, token, BundleBody(tarball), *args, **kwargs)

    deploy.upload = upload


if __name__ == "__main__":
    install()
    from spirodeploy import cli

    sys.exit(cli.main(sys.argv[1:]))
