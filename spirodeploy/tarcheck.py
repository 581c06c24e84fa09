"""Check a bundle that spiro-deploy did not build before it is uploaded.

SpiroFS 0.3 extracts bundles without checking member names: a ``../`` or
absolute member is written outside the deployment directory, and a symlink
member lets later members land anywhere.  :func:`check_tarball` reads a tar
(plain, gzip, bzip2 or xz; auto-detected) as a stream, with bounded memory,
and refuses with a :class:`~spirodeploy.errors.BundleError` naming the member:

* a file that is not a tar at all;
* absolute member names and names with a ``..`` component;
* symlinks whose target is absolute or resolves outside the bundle (resolved
  through the other symlinks of the archive), symlink loops, and members
  stored *through* a symlink (``link/file`` where ``link`` is a symlink);
* hard links whose target is absolute, has ``..`` or resolves outside;
* device files, fifos and any other member that is not a regular file,
  directory, symlink or hard link.

It returns a :class:`TarSummary` and rewinds the file to where it started.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Optional, Union

if TYPE_CHECKING:
    import tarfile

from .errors import BundleError
from .manifest import MANIFEST_NAME, TOP_FILES

__all__ = ["TarSummary", "check_tarball"]

_CHUNK = 1 << 20
_MAX_MANIFEST = 256 * 1024 * 1024


@dataclass(frozen=True)
class TarSummary:
    """What :func:`check_tarball` found.

    ``size`` and ``sha256`` are those of the file as given (compressed or
    not); ``file_count`` and ``content_size`` count regular-file members;
    ``has_top`` is true when ``top.sls`` or ``spirotop.sls`` is at the root;
    ``manifest`` is the parsed ``.spirodeploy.json`` if the bundle has one.
    """

    file_count: int
    size: int
    sha256: str
    has_top: bool
    content_size: int = 0
    manifest: Optional[dict] = None


class _HashingReader(io.RawIOBase):
    """Reads through ``raw`` while hashing and counting what was read."""

    def __init__(self, raw):
        self._raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def readable(self):
        return True

    def readinto(self, b):
        data = self._raw.read(len(b))
        if not data:
            return 0
        n = len(data)
        b[:n] = data
        self.sha.update(data)
        self.size += n
        return n

    def read(self, n=-1):
        if n is None or n < 0:
            chunks = []
            while True:
                data = self.read(_CHUNK)
                if not data:
                    return b"".join(chunks)
                chunks.append(data)
        data = self._raw.read(n)
        if data:
            self.sha.update(data)
            self.size += len(data)
        return data


class PathEscapes(Exception):
    pass


class LinkLoop(Exception):
    pass


def _norm(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


def resolve_in_archive(links: dict, parts: list) -> str:
    """Resolve a path inside an archive, following its symlinks (``links``: name -> target).

    Raises :class:`PathEscapes` for a path that leaves the archive and
    :class:`LinkLoop` for a chain of more than 40 links.
    """
    out: list = []
    todo = list(reversed(parts))
    hops = 0
    while todo:
        c = todo.pop()
        if c in ("", "."):
            continue
        if c == "..":
            if not out:
                raise PathEscapes()
            out.pop()
            continue
        out.append(c)
        target = links.get("/".join(out))
        if target is not None:
            hops += 1
            if hops > 40:
                raise LinkLoop()
            if target.startswith("/"):
                raise PathEscapes()
            out.pop()
            todo.extend(reversed(target.split("/")))
    return "/".join(out)


def _kind(m: "tarfile.TarInfo") -> str:
    if m.ischr() or m.isblk():
        return "a device file"
    if m.isfifo():
        return "a fifo"
    return "an unsupported member type (%r)" % m.type.decode("ascii", "replace")


def check_tarball(fileobj: Union[BinaryIO, str, "os.PathLike[str]"]) -> TarSummary:
    """Check a tar bundle built elsewhere; see the module docstring.

    ``fileobj`` is a binary file object (read from its start when seekable,
    and rewound there afterwards) or a path.
    """
    import tarfile  # here, so that the builder can share this module's resolver cheaply

    if isinstance(fileobj, (str, bytes, os.PathLike)):
        try:
            fh = open(fileobj, "rb")
        except OSError as e:
            raise BundleError("cannot read bundle %s: %s" % (os.fsdecode(fileobj),
                                                             e.strerror or e)) from None
        with fh:
            return check_tarball(fh)

    start = None
    try:
        if fileobj.seekable():
            fileobj.seek(0)
            start = 0
    except (AttributeError, OSError):
        start = None
    reader = _HashingReader(fileobj)
    links: dict = {}
    hardlinks: list = []
    parents: dict = {}
    file_count = 0
    content_size = 0
    has_top = False
    manifest = None
    try:
        try:
            tf = tarfile.open(fileobj=reader, mode="r|*", bufsize=_CHUNK)
        except BundleError:
            raise
        except Exception as e:  # TarError, and the decompressors' own errors
            raise BundleError("bundle is not a tar archive (%s)" % (e or type(e).__name__)) \
                from None
        with tf:
            while True:
                try:
                    m = tf.next()
                except BundleError:
                    raise
                except Exception as e:  # truncated, corrupt compressed data, I/O errors
                    raise BundleError("bundle is not a valid tar archive (%s)"
                                      % (e or type(e).__name__)) from None
                if m is None:
                    break
                if isinstance(getattr(tf, "members", None), list):
                    tf.members.clear()  # streaming: keep memory flat
                raw_name = m.name
                shown = repr(raw_name)
                if not raw_name or raw_name.startswith("/") or raw_name.startswith("\\"):
                    raise BundleError("bundle member %s has an absolute or empty name" % shown)
                name = _norm(raw_name)
                parts = name.split("/")
                if ".." in parts:
                    raise BundleError("bundle member %s has a '..' component" % shown)
                if m.isfile():
                    file_count += 1
                    content_size += m.size
                    if name in TOP_FILES:
                        has_top = True
                    if name == MANIFEST_NAME and m.size <= _MAX_MANIFEST:
                        try:
                            manifest = json.loads(tf.extractfile(m).read().decode("utf-8"))
                        except (ValueError, UnicodeDecodeError):
                            manifest = None
                        except BundleError:
                            raise
                        except Exception as e:
                            raise BundleError("bundle is not a valid tar archive (%s)"
                                              % (e or type(e).__name__)) from None
                elif m.isdir():
                    pass
                elif m.issym():
                    target = m.linkname
                    if not target or target.startswith("/"):
                        raise BundleError("bundle member %s is a symlink to an absolute path "
                                          "(%r)" % (shown, target))
                    links[name] = target
                elif m.islnk():
                    target = _norm(m.linkname)
                    if not target or m.linkname.startswith("/"):
                        raise BundleError("bundle member %s is a hard link to an absolute path "
                                          "(%r)" % (shown, m.linkname))
                    if ".." in target.split("/"):
                        raise BundleError("bundle member %s is a hard link whose target %r has "
                                          "a '..' component" % (shown, m.linkname))
                    hardlinks.append((name, target, shown))
                else:
                    raise BundleError("bundle member %s is %s; only files, directories and "
                                      "links are allowed" % (shown, _kind(m)))
                parent = name.rpartition("/")[0]
                if parent and parent not in parents:
                    parents[parent] = shown
        # Read what tarfile left (end-of-archive padding) so the hash covers the file.
        try:
            while reader.read(_CHUNK):
                pass
        except OSError as e:
            raise BundleError("cannot read bundle: %s" % (e.strerror or e)) from None
    finally:
        if start is not None:
            try:
                fileobj.seek(start)
            except (OSError, ValueError):
                pass

    # Links are judged once every member is known (a later symlink can change
    # where an earlier one leads).
    for name, target in links.items():
        try:
            resolve_in_archive(links, name.split("/")[:-1] + target.split("/"))
        except PathEscapes:
            raise BundleError("bundle member %r is a symlink that points outside the bundle "
                              "(%r)" % (name, target)) from None
        except LinkLoop:
            raise BundleError("bundle member %r is part of a symlink loop" % name) from None
    for name, target, shown in hardlinks:
        try:
            resolve_in_archive(links, target.split("/"))
        except PathEscapes:
            raise BundleError("bundle member %s is a hard link that points outside the bundle "
                              "(%r)" % (shown, target)) from None
        except LinkLoop:
            raise BundleError("bundle member %s is a hard link through a symlink loop" % shown) \
                from None
    if links:
        # No member may be written through a symlink (``link/file``).
        seen = set()
        for parent, shown in parents.items():
            p = parent
            while p and p not in seen:
                seen.add(p)
                if p in links:
                    raise BundleError("bundle member %s is stored inside %r, which is a symlink"
                                      % (shown, p))
                p = p.rpartition("/")[0]
    return TarSummary(file_count=file_count, size=reader.size, sha256=reader.sha.hexdigest(),
                      has_top=has_top, content_size=content_size, manifest=manifest)
