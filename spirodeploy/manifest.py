"""The bundle manifest, ``.spirodeploy.json``.

Every bundle spiro-deploy builds carries, as its last member, a JSON document
that says what the bundle holds::

    {
      "format": 1,
      "tool": "spiro-deploy 1.0.0",
      "gitcommit": "<contents of .gitcommit>" | null,
      "digest": "<sha256 hex>",
      "files": [{"path": "top.sls", "size": 12, "sha256": "...", "mode": 420}, ...]
    }

``files`` lists every member of the bundle except the manifest itself, sorted
by path; ``mode`` is the integer permission (``0o644`` = 420 or ``0o755`` =
493).  ``digest`` is the content digest of the bundle, independent of the tar
bytes: the sha256 of, for each entry in path order, the UTF-8 bytes of
``"<path>\\0<sha256 hex>\\0<mode in octal>\\n"``.  Two bundles with the same
digest deploy the same saltenv.

The document is serialised as ``json.dumps(manifest, sort_keys=True,
separators=(",", ":"))`` plus a newline, so the same content always gives the
same bytes.  The builder writes it in slices (:func:`manifest_parts`,
:func:`manifest_chunks`) rather than through :mod:`json`, and makes the dict
only when asked (:class:`Contents`): for tens of thousands of files the
per-file dicts cost more than the tar does.

Reading it back: :func:`read_manifest` (from a bundle file: the history reads
its stored bundles with it) and :func:`diff_manifests` (what a deploy would
change, for the Salt state).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, BinaryIO

from .errors import BundleError

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_FORMAT",
    "manifest_parts",
    "manifest_chunks",
    "manifest_dict",
    "count_by_top",
    "Contents",
    "read_manifest",
    "diff_manifests",
]

#: Name of the manifest member at the bundle root.
MANIFEST_NAME = ".spirodeploy.json"
#: Version of the manifest layout described above.
MANIFEST_FORMAT = 1

#: A manifest larger than this is not a manifest we wrote (refuse to load it).
_MAX_MANIFEST_BYTES = 512 * 1024 * 1024


def manifest_parts(records: Sequence[tuple[str, int, str, int]],
                   lines: Callable[[bytes], Any]) -> list[bytes]:
    """Format ``(path, size, sha256, mode)`` records for the manifest, in slices.

    Each slice's content-digest input goes to ``lines`` (``sha.update``, or
    a file's ``write``) as soon as it is made; the slices' JSON file objects
    are returned, one bytes per slice, for :func:`manifest_chunks`.  The
    records of consecutive segments can be formatted separately (the
    builder does one in each of its two processes).  Nothing here joins the
    whole manifest: at 50,000 files every fresh megabyte costs page faults.
    """
    from json.encoder import encode_basestring_ascii as enc

    body = []
    step = 4096
    for i in range(0, len(records), step):
        part = records[i:i + step]
        lines("".join([f"{p}\0{d}\0{m:o}\n" for p, _s, d, m in part]).encode("utf-8"))
        body.append(",".join([f'{{"mode":{m},"path":{enc(p)},"sha256":"{d}","size":{s}}}'
                              for p, s, d, m in part]).encode("ascii"))
    return body


def manifest_chunks(digest: str, body: Iterable[Any], *, gitcommit: str | None = None,
                    tool: str | None = None) -> list:
    """The serialised manifest as a list of chunks, around ``body``.

    ``digest``: the content digest (sha256 of every segment's ``lines``, in
    order); ``body``: the JSON file objects (from :func:`manifest_parts`, or
    any bytes-like pieces of them, each a whole number of objects).  Joined,
    the chunks are exactly the stable serialisation (module docstring) of
    :func:`manifest_dict`.
    """
    from json.encoder import encode_basestring_ascii as enc

    chunks: list = [f'{{"digest":"{digest}","files":['.encode("ascii")]
    for piece in body:
        if len(piece):
            if len(chunks) > 1:
                chunks.append(b",")
            chunks.append(piece)
    commit = "null" if gitcommit is None else enc(gitcommit)
    chunks.append(f'],"format":{MANIFEST_FORMAT},"gitcommit":{commit},"tool":{enc(_tool(tool))}}}\n'
                  .encode("ascii"))
    return chunks


def manifest_dict(records: Iterable[tuple[str, int, str, int]], *, digest: str,
                  gitcommit: str | None = None, tool: str | None = None) -> dict:
    """The manifest dict for ``(path, size, sha256, mode)`` records sorted by path."""
    files = [{"path": p, "size": s, "sha256": d, "mode": m} for p, s, d, m in records]
    return {"format": MANIFEST_FORMAT, "tool": _tool(tool), "gitcommit": gitcommit,
            "digest": digest, "files": files}


def _tool(tool: str | None) -> str:
    if tool is None:
        from . import __version__
        tool = f"spiro-deploy {__version__}"
    return tool


#: Files at the bundle root that make a highstate apply something.
TOP_FILES = ("top.sls", "spirotop.sls")


def count_by_top(paths: Sequence[str]) -> dict[str, int]:
    """How many of ``paths`` are in each top-level directory ("" for the root).

    Paths under one directory are neighbours once sorted (they usually are
    already), so each directory is counted with one bisection rather than a
    look at each of its files.
    """
    from bisect import bisect_left

    paths = sorted(paths)
    tops: dict[str, int] = {}
    i, n = 0, len(paths)
    while i < n:
        head, sep, _ = paths[i].partition("/")
        if sep:
            end = bisect_left(paths, head + "0", i)  # "0" is the character after "/"
        else:
            head, end = "", i + 1
        tops[head] = tops.get(head, 0) + end - i
        i = end
    return tops


class Contents:
    """What a built bundle holds, and its manifest, made only when read.

    ``segments``: the ``(path, size, sha256, mode)`` records of the members
    in path order, as consecutive lists (or :mod:`marshal` dumps of lists,
    as the builder's forked child hands them back).  The facts every caller
    needs (``count``, ``has_top``, ``top_counts``, ``digest``, ``gitcommit``)
    are plain attributes; :attr:`manifest` turns the records into one small
    dict per file, which for 50,000 files costs more than writing the
    manifest did, so it waits until someone asks.
    """

    def __init__(self, segments: Sequence[Any], *, digest: str, gitcommit: str | None,
                 tool: str | None = None, summaries: Sequence[tuple[int, bool, dict]] = ()):
        self._segments = list(segments)
        self.digest = digest
        self.gitcommit = gitcommit
        self.tool = _tool(tool)
        self.count = 0
        self.has_top = False
        self.top_counts: dict[str, int] = {}
        for count, has_top, tops in summaries:
            self.count += count
            self.has_top = self.has_top or has_top
            for head, n in tops.items():
                self.top_counts[head] = self.top_counts.get(head, 0) + n
        self._manifest: dict | None = None

    @staticmethod
    def summarise(records: Sequence[tuple[str, int, str, int]]) -> tuple[int, bool, dict]:
        """``(count, has_top, top_counts)`` of one segment, for ``summaries``."""
        from bisect import bisect_left

        paths = sorted([r[0] for r in records])
        has_top = False
        for name in TOP_FILES:
            i = bisect_left(paths, name)
            has_top = has_top or (i < len(paths) and paths[i] == name)
        return len(paths), has_top, count_by_top(paths)

    @property
    def manifest(self) -> dict:
        """The manifest dict (made on first use, then kept)."""
        if self._manifest is None:
            import marshal

            records: list = []
            for segment in self._segments:
                records.extend(marshal.loads(segment) if isinstance(segment, bytes) else segment)
            self._manifest = manifest_dict(records, digest=self.digest,
                                           gitcommit=self.gitcommit, tool=self.tool)
            self._segments = []
        return self._manifest


def read_manifest(bundle: str | os.PathLike[str] | BinaryIO) -> dict | None:
    """Return the manifest dict stored in a bundle, or ``None`` if it has none.

    ``bundle`` is a path or a binary file object (plain or compressed tar).  A
    file object is read from its current position and, when seekable, put
    back there afterwards.  The tar is read as a stream, so memory stays
    bounded whatever its size.  Raises :class:`BundleError` if the file is not
    a tar or the manifest is not valid JSON.
    """
    import tarfile

    if isinstance(bundle, (str, bytes, os.PathLike)):
        with open(bundle, "rb") as fh:
            return read_manifest(fh)
    start = None
    try:
        if bundle.seekable():
            start = bundle.tell()
    except (AttributeError, OSError):
        start = None
    found = None
    try:
        try:
            with tarfile.open(fileobj=bundle, mode="r|*", bufsize=1 << 20) as tf:
                while True:
                    member = tf.next()
                    if member is None:
                        break
                    if isinstance(getattr(tf, "members", None), list):
                        tf.members.clear()  # streaming: keep memory flat
                    name = member.name
                    while name.startswith("./"):
                        name = name[2:]
                    if name != MANIFEST_NAME or not member.isfile():
                        continue
                    if member.size > _MAX_MANIFEST_BYTES:
                        raise BundleError(f"{MANIFEST_NAME} in the bundle is too large to be a manifest")
                    data = tf.extractfile(member).read()
                    try:
                        found = json.loads(data.decode("utf-8"))
                    except ValueError as e:
                        raise BundleError(f"{MANIFEST_NAME} in the bundle is not valid JSON: {e}") from None
                    if not isinstance(found, dict):
                        raise BundleError(f"{MANIFEST_NAME} in the bundle is not a JSON object")
        except BundleError:
            raise
        except Exception as e:  # TarError and the decompressors' errors
            raise BundleError("bundle is not a tar archive (%s)" % (e or type(e).__name__)) \
                from None
    finally:
        if start is not None:
            bundle.seek(start)
    return found


def diff_manifests(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> dict:
    """Compare two manifests by path.

    Returns ``{"added": [...], "removed": [...], "modified": [...]}``, each a
    sorted list of paths.  A file is modified when its sha256 or its mode
    differs.  ``None`` stands for an empty manifest (nothing deployed yet).
    """
    def index(m):
        if not m:
            return {}
        return {f["path"]: (f.get("sha256"), f.get("mode")) for f in m.get("files", ())}

    a, b = index(old), index(new)
    return {
        "added": sorted(set(b) - set(a)),
        "removed": sorted(set(a) - set(b)),
        "modified": sorted(p for p in set(a) & set(b) if a[p] != b[p]),
    }
