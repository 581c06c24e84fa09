"""Check a bundle that spiro-deploy did not build before it is uploaded.

SpiroFS 0.3 extracts bundles without checking member names: a ``../`` or
absolute member is written outside the deployment directory, and a symlink
member lets later members land anywhere.  The server opens the bundle with
``tarfile``'s auto-detection: gzip, bzip2 and xz (``.lzma`` too, which has no
magic number) are tried before plain tar, and each decompressor reads every
concatenated stream.  This module reads a tar the same way, as a stream with
bounded memory, and refuses with a :class:`~spirodeploy.errors.BundleError`
naming the member:

* a file that is not a tar at all, or a zstd-compressed one;
* absolute member names and names with a ``..`` component;
* a name that appears twice (``./a``, ``a/`` and ``a`` are the same name):
  the server extracts both, so a file could be written through an earlier
  symlink of the same name that a later one hides;
* symlinks whose target is absolute or resolves outside the bundle, judged
  when they appear and again once every member is known (a later symlink can
  change where an earlier one leads), symlink loops, and members stored
  *through* a symlink (``link/file`` where ``link`` is a symlink);
* hard links that do not name an earlier regular file of the bundle (a hard
  link to a symlink, or through a symlinked directory, links whatever the
  symlink points at, such as the master's key);
* device files, fifos and any other member that is not a regular file,
  directory, symlink or hard link.

:func:`check_tarball` only checks.  :func:`checked_copy` also writes the
plain tar it checked to a temporary file, ending with the end-of-archive
blocks, and that copy is what gets uploaded: the user's file is read once,
so what the server gets is what was checked, even if the file changes
afterwards, is compressed, or is a pipe.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    import tarfile

from .errors import BundleError
from .manifest import MANIFEST_NAME, TOP_FILES

__all__ = ["CheckedCopy", "TarSummary", "check_tarball", "checked_copy"]

_CHUNK = 1 << 20
_MAX_MANIFEST = 256 * 1024 * 1024
_BLOCK = 512
#: Zero bytes after the last member kept in the checked copy (a tar's
#: end-of-archive blocks and record padding); at least two blocks are written.
_MAX_TRAILING_ZEROS = 1 << 20

# Compressed formats, by their first bytes (the ``.lzma`` signature is the one
# tarfile's stream mode knows; other ``.lzma`` headers are read as plain tar,
# and the copy's final check catches a tar the server would decompress).
_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x5d\x00\x00\x80\x00", "lzma"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)


@dataclass(frozen=True)
class TarSummary:
    """What :func:`check_tarball` or :func:`checked_copy` found.

    ``size`` and ``sha256`` are those of the file as given (compressed or
    not) for :func:`check_tarball`, and of the plain tar that is uploaded for
    :func:`checked_copy`; ``file_count`` and ``content_size`` count
    regular-file members; ``has_top`` is true when ``top.sls`` or
    ``spirotop.sls`` is at the root; ``manifest`` is the parsed
    ``.spirodeploy.json`` if the bundle has one; ``compression`` is how the
    input was compressed (``gzip``, ``bzip2``, ``xz``, ``lzma``) or None.
    """

    file_count: int
    size: int
    sha256: str
    has_top: bool
    content_size: int = 0
    manifest: dict | None = None
    compression: str | None = None


class _ReadThrough(io.RawIOBase):
    """A readable raw stream whose subclasses define only ``read``."""

    def readable(self):
        return True

    def readinto(self, b):
        data = self.read(len(b))
        n = len(data)
        b[:n] = data
        return n


class _HashingReader(_ReadThrough):
    """Reads through ``raw`` while hashing and counting what was read."""

    def __init__(self, raw, hashing: bool = True):
        self._raw = raw
        self.sha = hashlib.sha256() if hashing else None
        self.size = 0

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
            if self.sha is not None:
                self.sha.update(data)
            self.size += len(data)
        return data


class _Prefixed(_ReadThrough):
    """``head`` (bytes already read to sniff the format), then the rest of ``raw``."""

    def __init__(self, head: bytes, raw):
        self._head = head
        self._raw = raw

    def read(self, n=-1):
        if self._head:
            if n is None or n < 0:
                data, self._head = self._head + self._raw.read(), b""
                return data
            data, self._head = self._head[:n], self._head[n:]
            return data
        return self._raw.read(n)


class _Tee(_ReadThrough):
    """Reads the plain tar through, writing what was read to ``copy``."""

    def __init__(self, plain, copy):
        self._plain = plain
        self._copy = copy

    def read(self, n=-1):
        data = self._plain.read(n)
        if data and self._copy is not None:
            try:
                self._copy.write(data)
            except OSError as e:  # a full disk: say so, not "not a valid tar"
                import tempfile

                raise BundleError(f"cannot write the checked copy of the bundle in "
                                  f"{tempfile.gettempdir()}: {e.strerror or e}") from None
        return data


class PathEscapes(Exception):
    pass


class LinkLoop(Exception):
    pass


def _norm(name: str) -> str:
    """The path a name is extracted to: ``./a``, ``a/``, ``a//b/.`` and ``a`` alike."""
    return "/".join(p for p in name.split("/") if p not in ("", "."))


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


def _kind(m: tarfile.TarInfo) -> str:
    if m.ischr() or m.isblk():
        return "a device file"
    if m.isfifo():
        return "a fifo"
    return f"an unsupported member type ({m.type.decode('ascii', 'replace')!r})"


def _symlink_above(links: dict, name: str) -> str | None:
    """The nearest proper ancestor of ``name`` that is a symlink, if any."""
    parent = name.rpartition("/")[0]
    while parent:
        if parent in links:
            return parent
        parent = parent.rpartition("/")[0]
    return None


def _check_symlink(links: dict, name: str, target: str, shown: str) -> None:
    try:
        resolve_in_archive(links, name.split("/")[:-1] + target.split("/"))
    except PathEscapes:
        raise BundleError(f"bundle member {shown} is a symlink that points outside the bundle "
                          f"({target!r})") from None
    except LinkLoop:
        raise BundleError(f"bundle member {shown} is part of a symlink loop") from None


class _Members:
    """The checks made on each member as it appears, and on the whole archive."""

    def __init__(self):
        self.kinds: dict = {}      # normalised name -> "file", "dir", "sym" or "lnk"
        self.links: dict = {}      # symlinks: normalised name -> target
        self.parents: dict = {}    # implied directories -> the first member inside
        self.file_count = 0
        self.content_size = 0
        self.has_top = False

    def add(self, m: tarfile.TarInfo) -> str:
        """Check member ``m`` against the members before it; return its normalised name."""
        raw_name = m.name
        shown = repr(raw_name)
        if not raw_name or raw_name.startswith(("/", "\\")):
            raise BundleError(f"bundle member {shown} has an absolute or empty name")
        name = _norm(raw_name)
        if ".." in name.split("/"):
            raise BundleError(f"bundle member {shown} has a '..' component")
        if not name and not m.isdir():
            raise BundleError(f"bundle member {shown} names the bundle's root and is not a "
                              "directory")
        if name in self.kinds:
            raise BundleError(f"bundle member {shown} appears twice in the bundle; the server would "
                              "extract both, the later over the earlier")
        above = _symlink_above(self.links, name)
        if above is not None:
            raise BundleError(f"bundle member {shown} is stored inside {above!r}, which is a symlink")
        if m.isfile():
            kind = "file"
            self.file_count += 1
            self.content_size += m.size
            if name in TOP_FILES:
                self.has_top = True
        elif m.isdir():
            kind = "dir"
        elif m.issym():
            kind = "sym"
            target = m.linkname
            if not target or target.startswith("/"):
                raise BundleError(f"bundle member {shown} is a symlink to an absolute path "
                                  f"({target!r})")
            self.links[name] = target
            _check_symlink(self.links, name, target, shown)
        elif m.islnk():
            kind = "lnk"
            self._check_hardlink(m, shown)
        else:
            raise BundleError(f"bundle member {shown} is {_kind(m)}; only files, directories and "
                              "links are allowed")
        self.kinds[name] = kind
        parent = name.rpartition("/")[0]
        if parent and parent not in self.parents:
            self.parents[parent] = shown
        return name

    def _check_hardlink(self, m: tarfile.TarInfo, shown: str) -> None:
        # The server links whatever the target path leads to when the link is
        # extracted (following symlinks), so the target must be, exactly, an
        # earlier regular file (or hard link to one) of the bundle.
        raw = m.linkname
        target = _norm(raw)
        if not target or raw.startswith("/"):
            raise BundleError(f"bundle member {shown} is a hard link to an absolute path ({raw!r})")
        if ".." in target.split("/"):
            raise BundleError(f"bundle member {shown} is a hard link whose target {raw!r} has a '..' "
                              "component")
        kind = self.kinds.get(target)
        if kind in ("file", "lnk"):
            return
        if kind == "sym":
            raise BundleError(f"bundle member {shown} is a hard link to {raw!r}, which is a symlink")
        above = _symlink_above(self.links, target)
        if above is not None:
            raise BundleError(f"bundle member {shown} is a hard link through {above!r}, which is a symlink")
        raise BundleError(f"bundle member {shown} is a hard link to {raw!r}, which is not a file "
                          "earlier in the bundle")

    def finish(self) -> None:
        """The checks that need every member: a later symlink can change where an
        earlier link leads, or turn an earlier member's directory into a link."""
        links = self.links
        for name, target in links.items():
            _check_symlink(links, name, target, repr(name))
        if links:
            seen = set()
            for parent, shown in self.parents.items():
                p = parent
                while p and p not in seen:
                    seen.add(p)
                    if p in links:
                        raise BundleError(f"bundle member {shown} is stored inside {p!r}, which is a "
                                          "symlink")
                    p = p.rpartition("/")[0]


def _sniff(reader) -> tuple[str | None, io.RawIOBase]:
    """``(compression, plain reader)``: decompress as the server's tarfile does
    (every concatenated stream, not just the first)."""
    head = b""
    while len(head) < 6:
        data = reader.read(6 - len(head))
        if not data:
            break
        head += data
    raw = _Prefixed(head, reader)
    kind = next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)
    if kind is None:
        return None, raw
    if kind == "zstd":
        raise BundleError("bundle is zstd-compressed, which spiro-deploy cannot check; "
                          "decompress it first (zstd -d)")
    if kind == "gzip":
        import gzip

        return kind, gzip.GzipFile(fileobj=raw, mode="rb")
    if kind == "bzip2":
        import bz2

        return kind, bz2.BZ2File(raw, "rb")
    import lzma

    return kind, lzma.LZMAFile(raw, "rb")


def _not_valid(e: BaseException) -> BundleError:
    return BundleError("bundle is not a valid tar archive (%s)" % (e or type(e).__name__))


def _scan(fileobj, copy=None, hashing: bool = True):
    """Read and check the bundle; with ``copy``, write the plain tar read to it.

    Returns ``(members, reader, manifest, compression, end)``: ``end`` is the
    offset in the plain tar just after the last member.
    """
    import tarfile

    reader = _HashingReader(fileobj, hashing)
    try:
        compression, plain = _sniff(reader)
    except OSError as e:
        raise BundleError("cannot read bundle: %s" % (e.strerror or e)) from None
    tee = _Tee(plain, copy)
    members = _Members()
    manifest = None
    try:
        tf = tarfile.open(fileobj=tee, mode="r|", bufsize=_CHUNK)
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
                raise _not_valid(e) from None
            if m is None:
                break
            if isinstance(getattr(tf, "members", None), list):
                tf.members.clear()  # streaming: keep memory flat
            name = members.add(m)
            if name == MANIFEST_NAME and m.isfile() and m.size <= _MAX_MANIFEST:
                try:
                    manifest = json.loads(tf.extractfile(m).read().decode("utf-8"))
                except (ValueError, UnicodeDecodeError):
                    manifest = None
                except Exception as e:
                    raise _not_valid(e) from None
        end = tf.offset
    members.finish()
    return members, reader, plain, manifest, compression, end


def _server_decompresses(fh) -> str | None:
    """How the server's ``tarfile.open`` would read the plain tar in ``fh``
    if not as plain tar (a crafted first header can be a valid ``.lzma``
    stream holding another tar); None when it reads it as checked."""
    import tarfile

    fh.seek(0)
    if fh.read(4) == b"\x28\xb5\x2f\xfd":
        return "zstd"  # what a server on Python 3.14 would try first
    fh.seek(0)
    try:
        tf = tarfile.open(fileobj=fh, mode="r:*")
    except Exception:  # the server would refuse it: not the tar that was checked
        return "something other than a tar"
    with tf:
        if tf.fileobj is fh:
            return None
        return {"GzipFile": "gzip", "BZ2File": "bzip2", "LZMAFile": "xz or lzma"}.get(
            type(tf.fileobj).__name__, type(tf.fileobj).__name__)


def _refuse_polyglot(fh) -> None:
    how = _server_decompresses(fh)
    if how is not None:
        raise BundleError(f"bundle would be read by the server as {how} data, not as the tar that "
                          "was checked")


def check_tarball(fileobj: BinaryIO | str | os.PathLike[str]) -> TarSummary:
    """Check a tar bundle built elsewhere; see the module docstring.

    ``fileobj`` is a binary file object (read from its start when seekable,
    and rewound there afterwards) or a path.  To upload a bundle, use
    :func:`checked_copy`, which hands over exactly the bytes it checked
    (here, a plain tar read from a pipe is not checked for being readable as
    compressed data too; the copy always is).
    """
    if isinstance(fileobj, (str, bytes, os.PathLike)):
        try:
            fh = open(fileobj, "rb")
        except OSError as e:
            raise BundleError(f"cannot read bundle {os.fsdecode(fileobj)}: {e.strerror or e}") from None
        with fh:
            return check_tarball(fh)

    start = None
    try:
        if fileobj.seekable():
            fileobj.seek(0)
            start = 0
    except (AttributeError, OSError):
        start = None
    try:
        members, reader, _, manifest, compression, _ = _scan(fileobj)
        # Read what tarfile left (end-of-archive padding) so the hash covers the file.
        try:
            while reader.read(_CHUNK):
                pass
        except OSError as e:
            raise BundleError("cannot read bundle: %s" % (e.strerror or e)) from None
        if compression is None and start is not None:
            _refuse_polyglot(fileobj)
    finally:
        if start is not None:
            try:
                fileobj.seek(start)
            except (OSError, ValueError):
                pass
    return TarSummary(file_count=members.file_count, size=reader.size,
                      sha256=reader.sha.hexdigest(), has_top=members.has_top,
                      content_size=members.content_size, manifest=manifest,
                      compression=compression)


class CheckedCopy:
    """The plain tar that :func:`checked_copy` checked, in a temporary file.

    ``file`` is open for reading at its start; ``summary`` describes it
    (``size`` and ``sha256`` are those of this copy).  Close it (or use it as
    a context manager) to remove the file.
    """

    def __init__(self, file: BinaryIO, summary: TarSummary):
        self.file = file
        self.summary = summary

    def close(self) -> None:
        """Remove the temporary file."""
        self.file.close()

    def __enter__(self) -> CheckedCopy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def checked_copy(source: BinaryIO | str | os.PathLike[str]) -> CheckedCopy:
    """Check a bundle built elsewhere and return the plain tar it checked.

    ``source`` (a path or a binary file object, read once from where it is,
    so a pipe or ``/dev/stdin`` works) may be compressed; the copy is its
    plain tar up to the end-of-archive blocks and their zero padding, and
    nothing after them.  Upload ``copy.file``: never the source again, which
    may have changed since.  Raises :class:`~spirodeploy.errors.BundleError`
    for anything :func:`check_tarball` refuses, and when the temporary file
    (in the same place as the builder's, ``TMPDIR``) cannot be written.
    """
    import tempfile

    if isinstance(source, (str, bytes, os.PathLike)):
        try:
            fh = open(source, "rb")
        except OSError as e:
            raise BundleError(f"cannot read bundle {os.fsdecode(source)}: {e.strerror or e}") from None
        with fh:
            return checked_copy(fh)

    try:
        copy = tempfile.TemporaryFile(prefix="spirodeploy-checked-")
    except OSError as e:
        raise BundleError(f"cannot make a temporary file for the checked bundle in "
                          f"{tempfile.gettempdir()}: {e.strerror or e}") from None
    try:
        try:
            members, _, plain, manifest, compression, end = _scan(source, copy, hashing=False)
            _keep_end(copy, plain, end)
        except OSError as e:  # writing the copy: a full disk
            raise BundleError(f"cannot write the checked copy of the bundle in "
                              f"{tempfile.gettempdir()}: {e.strerror or e}") from None
        _refuse_polyglot(copy)
        copy.seek(0)
        sha, size = hashlib.sha256(), 0
        while True:
            data = copy.read(_CHUNK)
            if not data:
                break
            sha.update(data)
            size += len(data)
        copy.seek(0)
    except BaseException:
        copy.close()
        raise
    return CheckedCopy(copy, TarSummary(
        file_count=members.file_count, size=size, sha256=sha.hexdigest(),
        has_top=members.has_top, content_size=members.content_size, manifest=manifest,
        compression=compression))


def _keep_end(copy, plain, end: int) -> None:
    """Cut the copy just after its end-of-archive zeros (at least two blocks).

    What follows the first zero block is never read by the server's tarfile;
    keeping the zeros up to there keeps a plain tar's copy byte-identical.
    """
    copy.flush()
    written = copy.seek(0, io.SEEK_END)
    copy.seek(end)
    zeros = 0
    tail = copy.read(_MAX_TRAILING_ZEROS)
    stripped = tail.lstrip(b"\0")
    zeros = len(tail) - len(stripped)
    if not stripped and written - end < _MAX_TRAILING_ZEROS:
        # All that tarfile read ahead was zeros: see how many more follow.
        try:
            while zeros < _MAX_TRAILING_ZEROS:
                data = plain.read(min(_CHUNK, _MAX_TRAILING_ZEROS - zeros))
                if not data:
                    break
                more = data.lstrip(b"\0")
                zeros += len(data) - len(more)
                if more:
                    break
        except Exception:  # corrupt data after the end: never read by the server either
            pass
    zeros = max(zeros, 2 * _BLOCK)
    copy.truncate(end)
    copy.seek(end)
    copy.write(b"\0" * zeros)
    copy.flush()
