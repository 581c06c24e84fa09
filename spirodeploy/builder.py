"""Build deployment bundles: a tar of the Salt state tree, artifacts and source.

The seed API (``TarballBuilder``, ``git_scanner``, ``fs_scanner``) is kept as
documented, so code written against spiro-deploy 0.x runs unchanged::

    with TarballBuilder() as builder:
        builder.add_gitcommit()
        builder.add_saltdir('_salt')
        builder.add_artifact('build/eggs', 'build/eggs')
        builder.add_source(fs_scanner)
    upload(..., builder.buffer, ...)

Most callers want :func:`build_bundle`, which does the above for a project
directory, checks the result and returns a :class:`Bundle`.

How bundles are built
---------------------
* The ``add_*`` methods only *collect* entries (name -> where the bytes come
  from).  At the end of the ``with`` block the entries are written in one pass,
  sorted by name: each file is read once, in chunks, while its sha256, the
  bundle's sha256 and the tar are produced together.  Memory stays bounded:
  the bundle goes to a :class:`tempfile.SpooledTemporaryFile` that spills to
  disk past ``spool_threshold`` (or straight to the ``fileobj`` you give,
  which may be a pipe: it is never sought or read back).
* Trees of thousands of files are written by two processes when a spare core
  exists and the process has one thread: a forked child writes the second
  half of the sorted members to a temporary file, and the parent appends it
  (see :class:`_ForkedTail`).  The bytes are the same as a serial build's.
* Bundles are reproducible: entries sorted by name, one integer mtime
  (``SOURCE_DATE_EPOCH`` when set, else 1980-01-01), uid/gid 0 with empty
  owner names, mode 0o755 if any execute bit is set else 0o644.  Only regular
  files are stored: no directory entries (so empty directories are not
  carried; Salt's fileserver serves files only), no symlinks.  The format is
  POSIX ustar, with a pax extended header only for a name that does not fit
  ustar or is not ASCII, or a file of 8 GiB or more; pax headers never carry
  times.
* The last member is the manifest ``.spirodeploy.json`` (see
  :mod:`spirodeploy.manifest`).

Safety rules
------------
* Version-control metadata (:data:`VCS_DIRS`: ``.git``, ``.hg``, ``.svn``,
  ``.bzr``, ``_darcs``, ``CVS``, ``.pijul``) is never included, at any depth,
  whatever adds the entry.  It is recognised by name while walking, and by
  what a path resolves to where a path enters: an artifact or salt directory
  given by the caller, and every symlink followed.  An explicit path that
  resolves into VCS metadata (``--artifact .git``, ``--artifact .git/config``,
  a symlink to either) is a BundleError; a symlink met while walking that
  resolves into it is skipped, as the directory itself would be.  (Regular
  files are not resolved one by one: a walk never enters a VCS directory, so
  only symlinks can lead into one.)
* Member names are relative and never contain ``..``; a name that would is a
  :class:`~spirodeploy.errors.BundleError`.
* Symlinks are dereferenced: the bundle holds the target's content as a
  regular file (a symlink to a directory is walked like a directory).  A
  symlink whose target resolves outside the boundary is refused: the boundary
  is the builder's ``root`` (``build_bundle`` passes the project directory),
  else the directory being added; for ``fs_scanner``/``git_scanner`` it is
  the scanned root.  Broken symlinks and symlink loops are refused.
* Device files, fifos and sockets are refused.  File names that are not valid
  UTF-8 are refused.  A file that vanishes, cannot be read, or changes size
  while it is copied is a BundleError naming it.
* Files given in ``exclude`` and the output file itself are never included;
  they are recognised by identity (device and inode), so another path to the
  same file (a symlink, a hard link, a relative spelling) does not sneak it
  in.  Naming one as an artifact is a BundleError.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import io
import operator
import os
import posixpath
import queue
import stat
import tempfile
import threading
from functools import partial
from typing import Any, BinaryIO, Callable, Iterable, Iterator, NamedTuple, Optional, Tuple

from .errors import BundleError
from .manifest import (MANIFEST_NAME, Contents, diff_manifests, manifest_chunks, manifest_parts,
                       read_manifest)

__all__ = [
    "TarballBuilder",
    "Bundle",
    "build_bundle",
    "git_scanner",
    "fs_scanner",
    "read_manifest",
    "diff_manifests",
    "MANIFEST_NAME",
    "DEFAULT_MTIME",
    "DEFAULT_SPOOL_THRESHOLD",
    "VCS_DIRS",
    "SOURCE_METHODS",
]

MiB = 1 << 20
#: Bundles smaller than this stay in memory; bigger ones spill to a temp file.
DEFAULT_SPOOL_THRESHOLD = 8 * MiB
#: The mtime of every member when SOURCE_DATE_EPOCH is not set (1980-01-01 UTC).
DEFAULT_MTIME = 315532800
#: Version-control metadata directories that are never bundled.
VCS_DIRS = frozenset({".git", ".hg", ".svn", ".bzr", "_darcs", "CVS", ".pijul"})
#: The ignore file read by :func:`fs_scanner` at its root.
IGNORE_FILE = ".spiroignore"
#: Accepted values of ``build_bundle(include_source=...)``.
SOURCE_METHODS = ("git", "fs", "filesystem", "auto")

_CHUNK = MiB               # size of each output buffer and of each read
_NBUFFERS = 4              # output buffers in flight (bounds memory)
_SMALL = 256 * 1024        # files up to this size are read in one call
# Largest write() into a file.  Writing a 1 GiB bundle in 1 MiB calls made
# the kernel's copy into the page cache 2-5x slower in one run out of two on
# the benchmark VM (our guess: large page-cache folios on host memory not yet
# faulted in); 256 KiB calls were fast in every A/B run and cost nothing
# measurable elsewhere.
_WRITE_MAX = 256 * 1024
_BLOCK = 512
_RECORD = 20 * _BLOCK      # tar record size (what tarfile and GNU tar pad to)
_ZEROS = bytes(_RECORD)
_MAX_OCTAL11 = 8 ** 11     # largest value (exclusive) of a 12-byte octal field
# Trees of at least this many files are written by two processes (see _ForkedTail).
_PARALLEL_MIN = 4096
_PARENT_SHARE = 0.5
_CAN_FORK = hasattr(os, "fork") and hasattr(os, "preadv") and hasattr(os, "sched_getaffinity")
_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
               | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))


# --------------------------------------------------------------------------
# small helpers

def _show(path) -> str:
    """A path as it should appear in a one-line message."""
    if isinstance(path, bytes):
        return repr(path)
    path = os.fspath(path)
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return repr(os.fsencode(path))
    return path if path.isprintable() else repr(path)


def _join_show(base: str, rel: str) -> str:
    if base in ("", "."):
        return rel
    return base.rstrip("/") + "/" + rel


def _inside(path: str, base: str) -> bool:
    """True if ``path`` is ``base`` or below it (both absolute, normalised)."""
    if path == base:
        return True
    if not base.endswith(os.sep):
        base += os.sep
    return path.startswith(base)


def _vcs_part(real: str, base: Optional[str] = None) -> Optional[str]:
    """The VCS metadata directory (a :data:`VCS_DIRS` name) that ``real`` lies in, or None.

    ``real`` is a resolved absolute path.  Only the part below ``base`` (when
    ``real`` is inside it) is judged, so a project that itself lives under,
    say, a ``CVS`` directory is not refused as a whole.  Called where paths
    enter (explicit paths, symlink targets), never per regular file.
    """
    if base is not None and _inside(real, base):
        real = real[len(base):]
    for part in real.split(os.sep):
        if part in VCS_DIRS:
            return part
    return None


def _check_utf8(name: str, shown: str) -> None:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise BundleError("file name is not valid UTF-8: %s" % _show(shown)) from None


def _special_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a fifo"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    return "not a regular file"


def _shown(shown) -> str:
    """Messages name files by a string, or by a callable that makes it lazily."""
    return shown() if callable(shown) else shown


def _changed(shown, got: int, size: int) -> BundleError:
    if got > size:
        return BundleError("%s grew while the bundle was being built" % _show(_shown(shown)))
    return BundleError("%s shrank while the bundle was being built (%d of %d bytes)"
                       % (_show(_shown(shown)), got, size))


def _refuse_special(shown: str, mode: int) -> BundleError:
    return BundleError("%s is %s; only regular files, directories and symlinks to them "
                       "can be bundled" % (_show(shown), _special_kind(mode)))


def _os_error(shown: str, err: OSError, during: str = "") -> BundleError:
    """Map an OSError on a file being bundled to a one-line BundleError."""
    shown = _show(shown)
    if isinstance(err, FileNotFoundError):
        return BundleError("%s vanished while the bundle was being built" % shown)
    if isinstance(err, PermissionError):
        return BundleError("%s is not readable (permission denied)" % shown)
    if err.errno == errno.ELOOP:
        return BundleError("%s was replaced by a symlink while the bundle was being built" % shown)
    return BundleError("cannot read %s%s: %s" % (shown, during, err.strerror or err))


def _clean_name(name, what: str) -> str:
    """Normalise a member name; refuse absolute names and ``..``."""
    if isinstance(name, bytes):
        try:
            name = name.decode("utf-8")
        except UnicodeDecodeError:
            raise BundleError("%s is not valid UTF-8: %r" % (what, name)) from None
    name = os.fspath(name)
    if not isinstance(name, str):
        raise BundleError("%s must be a string, not %r" % (what, name))
    _check_utf8(name, name)
    if os.sep != "/":
        name = name.replace(os.sep, "/")
    parts = name.split("/")
    if "" in parts or "." in parts or ".." in parts:
        if name.startswith("/"):
            raise BundleError("%s %s is absolute; bundle members must be relative"
                              % (what, _show(name)))
        parts = [p for p in parts if p not in ("", ".")]
        if ".." in parts:
            raise BundleError("%s %s contains '..' and would escape the bundle"
                              % (what, _show(name)))
        name = "/".join(parts)
    if not name:
        raise BundleError("%s %r is empty" % (what, name))
    if "\0" in name:
        raise BundleError("%s %s contains a NUL byte" % (what, _show(name)))
    return name


def _default_should_skip(path: str) -> bool:
    """The ``should_skip`` that :meth:`TarballBuilder.add_source` passes to scanners.

    Skips VCS metadata and ``_salt`` (which is bundled at the root already),
    judged by the last path component, like spiro-deploy 0.x.
    """
    base = path.rstrip("/").rpartition("/")[2]
    return base in VCS_DIRS or base == "_salt"


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for the duration of a build.

    Collecting and writing a tree makes a few objects per file, none of them
    in a reference cycle; on a 50,000-file tree the collector's full passes
    over them cost about 5% of the build for nothing.  Reference counting
    still frees everything as usual.  Nested or concurrent builds only ever
    turn the collector back on if it was on when they started.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _resolve_mtime(mtime) -> int:
    if mtime is None:
        env = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
        if env:
            try:
                mtime = int(env)
            except ValueError:
                raise BundleError("SOURCE_DATE_EPOCH=%r is not a whole number of seconds"
                                  % env) from None
        else:
            mtime = DEFAULT_MTIME
    mtime = int(mtime)
    if not 0 <= mtime < _MAX_OCTAL11:
        raise BundleError("bundle mtime %d is out of range" % mtime)
    return mtime


# --------------------------------------------------------------------------
# entry sources: where the bytes of one member come from

class _FileOpener:
    """A file on disk; also the opener that :func:`fs_scanner` yields.

    Calling it opens the file (``rb``).  The builder recognises it and reads
    the file only once, when the tar is written.
    """

    __slots__ = ("path", "_base", "_rel")

    def __init__(self, path: str, base: str, rel: str = ""):
        self.path = path      # absolute; its last component is not a symlink
        self._base = base     # how messages name it: base + "/" + rel
        self._rel = rel

    @property
    def shown(self) -> str:
        return _join_show(self._base, self._rel) if self._rel else self._base

    def __call__(self) -> BinaryIO:
        try:
            fd = os.open(self.path, _OPEN_FLAGS)
        except OSError as e:
            raise _os_error(self.shown, e) from None
        return open(fd, "rb", closefd=True)

    def __repr__(self):
        return "<file opener %s>" % _show(self.shown)

    def _emit(self, w: "_TarWriter", name: str):
        return w.add_path(name, self.path, self._shown)

    def _shown(self) -> str:
        return self.shown


class _Dir:
    """A directory :func:`_walk` listed; the source of each of its plain files.

    The builder maps every such file's bundle name to the one object of its
    directory (the file is the name's last component) rather than to an
    opener of its own: at 50,000 files, per-file objects cost the scan their
    allocations and page faults, the forked writer its copy-on-write faults,
    and the build the time to free them.
    """

    __slots__ = ("path", "_base", "_rel")

    def __init__(self, path: str, base: str, rel: str):
        self.path = path      # absolute, ending with a separator
        self._base = base     # how messages name the walk's top
        self._rel = rel       # this directory under it: "" or ending with "/"

    def opener(self, name: str) -> _FileOpener:
        """The opener of file ``name`` of this directory."""
        return _FileOpener(self.path + name, self._base, self._rel + name)

    def _emit(self, w: "_TarWriter", key: str):
        return self.opener(key[key.rfind("/") + 1:])._emit(w, key)


def _shown_source(source, key: str) -> str:
    """How messages name the source of bundle member ``key``."""
    if type(source) is _Dir:
        source = source.opener(key[key.rfind("/") + 1:])
    return getattr(source, "shown", key)


class _BytesSource:
    __slots__ = ("data", "mode")

    def __init__(self, data: bytes, mode: int = 0o644):
        self.data = data
        self.mode = mode

    def _emit(self, w: "_TarWriter", name: str):
        return w.add_bytes(name, self.data, self.mode)


class _TempHolder:
    """Owns a temporary file that slices point into; closes it when dropped."""

    __slots__ = ("file", "fd", "__weakref__")

    def __init__(self):
        self.file = tempfile.TemporaryFile(prefix="spirodeploy-")
        self.fd = self.file.fileno()

    def close(self):
        f, self.file = self.file, None
        self.fd = -1  # never pread a closed (maybe reused) descriptor
        if f is not None:
            f.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class _SliceReader:
    """A read-only binary file over ``size`` bytes at ``offset`` of a temp file."""

    def __init__(self, holder: _TempHolder, offset: int, size: int):
        self._holder = holder
        self._pos = offset
        self._end = offset + size
        self.closed = False

    def readable(self):
        return True

    def read(self, n: int = -1) -> bytes:
        left = self._end - self._pos
        if n is None or n < 0 or n > left:
            n = left
        if n <= 0:
            return b""
        data = os.pread(self._holder.fd, n, self._pos)
        self._pos += len(data)
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def close(self):
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _SliceOpener:
    """Bytes held in one of our temp files (``git archive`` output, staged data)."""

    __slots__ = ("holder", "offset", "size", "mode", "shown")

    def __init__(self, holder: _TempHolder, offset: int, size: int, mode: int, shown: str):
        self.holder = holder
        self.offset = offset
        self.size = size
        self.mode = mode
        self.shown = shown

    def __call__(self) -> _SliceReader:
        return _SliceReader(self.holder, self.offset, self.size)

    def __repr__(self):
        return "<opener %s>" % _show(self.shown)

    def _emit(self, w: "_TarWriter", name: str):
        return w.add_slice(name, self.holder.fd, self.offset, self.size, self.mode)


# --------------------------------------------------------------------------
# the output side: buffered, hashed, written by a worker thread

def _write_all(write, mv, most: int = _WRITE_MAX) -> None:
    """Write all of ``mv``, in calls of at most ``most`` bytes."""
    while len(mv):
        n = write(mv[:most])
        if n is None:
            n = min(most, len(mv))
        mv = mv[n:]


class _FileRange(NamedTuple):
    """``size`` bytes of the open file ``fd`` from ``offset``; a manifest chunk."""

    fd: int
    offset: int
    size: int

    def __len__(self) -> int:  # what manifest_chunks and the tar header measure
        return self.size

    def pieces(self, block: int = _CHUNK) -> Iterator[memoryview]:
        """The bytes, read into one reused buffer (views valid until the next)."""
        mv = memoryview(bytearray(min(block, self.size)))
        pos, end = self.offset, self.offset + self.size
        while pos < end:
            got = os.preadv(self.fd, [mv[:end - pos]], pos)
            if not got:
                raise BundleError("internal temporary file of the bundle is truncated")
            yield mv[:got]
            pos += got


class _Sink:
    """Collects tar bytes into large buffers; a worker thread hashes and writes them.

    The main thread reads files straight into the free tail of the current
    buffer (:meth:`tail`/:meth:`commit`), so file data is copied once; the
    worker hashes the whole stream and writes it out while the main thread
    goes on reading.  At most ``_NBUFFERS`` buffers exist, which bounds memory.
    """

    def __init__(self, out, chunk: int = _CHUNK, nbuffers: int = _NBUFFERS,
                 hashing: bool = True, threaded: bool = True):
        self._out = out
        # A writer that takes each write as one block (the upload queue of a
        # streamed deploy) gets whole buffers; files get _WRITE_MAX at a time.
        self._write_max = chunk if getattr(out, "whole_writes", False) else _WRITE_MAX
        self._chunk = chunk
        self.sha = hashlib.sha256() if hashing else None
        self._flushed = 0
        self._free: "queue.SimpleQueue[bytearray]" = queue.SimpleQueue()
        for _ in range(nbuffers - 1 if threaded else 0):
            self._free.put(bytearray(chunk))
        self._buf = bytearray(chunk)
        self._mv = memoryview(self._buf)
        self.fill = 0
        self._error: Optional[BaseException] = None
        self._thread = None
        if threaded:
            self._todo: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._run, name="spirodeploy-bundle-writer",
                                            daemon=True)
            self._thread.start()
        else:
            # Without a spare core, handing buffers to a thread only adds switches.
            self._todo = _Inline(self._consume)

    @property
    def size(self) -> int:
        return self._flushed + self.fill

    def _run(self):
        while True:
            item = self._todo.get()
            if item is None:
                return
            self._consume(item)

    def _consume(self, item) -> None:
        if item is None:
            return
        if type(item) is threading.Event:
            item.set()
            return
        buf, n, hashed = item
        if self._error is None:
            try:
                mv = memoryview(buf)[:n]
                if self.sha is not None and not hashed:
                    self.sha.update(mv)
                _write_all(self._out.write, mv, self._write_max)
                del mv
            except BaseException as e:  # reported to the main thread
                self._error = e
        self._free.put(buf)

    def _raise(self):
        e = self._error
        if isinstance(e, OSError):
            raise BundleError("cannot write the bundle: %s" % (e.strerror or e)) from e
        raise e

    def _flush(self, hashed: bool = False):
        if self._error is not None:
            self._raise()
        if not self.fill:
            return
        self._todo.put((self._buf, self.fill, hashed))
        self._flushed += self.fill
        self._buf = self._free.get()
        self._mv = memoryview(self._buf)
        self.fill = 0

    def write(self, data) -> None:
        n = len(data)
        fill = self.fill
        if fill + n <= self._chunk:
            self._buf[fill:fill + n] = data
            self.fill = fill + n
            return
        src = memoryview(data)
        off = 0
        while off < n:
            room = self._chunk - self.fill
            if not room:
                self._flush()
                continue
            take = min(room, n - off)
            self._buf[self.fill:self.fill + take] = src[off:off + take]
            self.fill += take
            off += take

    def tail(self, need: int) -> memoryview:
        """A writable view of the free space of the current buffer (>= ``need`` bytes)."""
        if self._chunk - self.fill < need:
            self._flush()
        return self._mv[self.fill:]

    def commit(self, n: int) -> None:
        self.fill += n

    def copy_from(self, source: "_FileRange") -> None:
        """Append the bytes of ``source``, a range of a file.

        With a writer thread, this thread hashes each block and the writer
        only writes it, so the two run side by side; blocks queued before
        are hashed first (their turn comes before this call starts hashing).
        """
        hash_here = self._thread is not None and self.sha is not None
        if hash_here:
            self._flush()
            drained = threading.Event()
            self._todo.put(drained)
            drained.wait()
        fd, pos, size = source
        end = pos + size
        while pos < end:
            if self.fill == self._chunk:
                self._flush(hashed=hash_here)
            tail = self._mv[self.fill:self.fill + end - pos]
            got = os.preadv(fd, [tail], pos)
            if not got:
                raise BundleError("internal temporary file of the bundle is truncated")
            if hash_here:
                self.sha.update(tail[:got])
            self.fill += got
            pos += got
        self._flush(hashed=hash_here)

    def close(self) -> Tuple[str, int]:
        try:
            self._flush()
        finally:
            self._todo.put(None)
            if self._thread is not None:
                self._thread.join()
        if self._error is not None:
            self._raise()
        return (self.sha.hexdigest() if self.sha is not None else ""), self._flushed

    def abort(self) -> None:
        if self._error is None:
            self._error = RuntimeError("bundle aborted")
        self._todo.put(None)
        if self._thread is not None:
            self._thread.join()


class _Inline:
    """Stands in for the work queue of an unthreaded :class:`_Sink`."""

    __slots__ = ("put",)

    def __init__(self, consume):
        self.put = consume


if hasattr(os, "readv"):
    def _readinto(fd: int, mv) -> int:
        return os.readv(fd, [mv])
else:  # pragma: no cover - not Linux
    def _readinto(fd: int, mv) -> int:
        data = os.read(fd, len(mv))
        mv[:len(data)] = data
        return len(data)


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _pax_record(key: str, value: str) -> bytes:
    payload = (" %s=%s\n" % (key, value)).encode("utf-8")
    n = len(payload)
    length = n + len(str(n))
    while length != n + len(str(length)):
        length = n + len(str(length))
    return str(length).encode("ascii") + payload


class _TarWriter:
    """Writes the sorted entries as a deterministic POSIX tar in one pass."""

    def __init__(self, out, mtime: int, excluded: frozenset, hashing: bool = True,
                 threaded: bool = True):
        self.sink = _Sink(out, hashing=hashing, threaded=threaded)
        self.excluded = excluded
        self.files: list = []            # manifest entries, in write order (sorted)
        self.gitcommit: Optional[str] = None
        self._mtime_f = _octal(mtime, 12)
        # Header layout after the checksum field: typeflag, then linkname (100),
        # magic+version (8), uname+gname (64), devmajor+devminor (16), prefix.
        self._uidgid = _octal(0, 8) * 2
        self._mid = bytes(100) + b"ustar\x0000" + bytes(64) + _octal(0, 8) * 2
        self._base_sum = (sum(self._uidgid) + sum(self._mtime_f) + 8 * 32 + sum(self._mid))

    # -- headers --------------------------------------------------------
    def _ustar(self, name_b: bytes, prefix_b: bytes, mode: int, size: int,
               typeflag: bytes = b"0") -> bytes:
        mode_f = b"%07o\0" % mode
        size_f = b"%011o\0" % size
        chk = (self._base_sum + sum(name_b) + sum(prefix_b) + sum(mode_f) + sum(size_f)
               + typeflag[0])
        return b"".join((name_b, bytes(100 - len(name_b)), mode_f, self._uidgid, size_f,
                         self._mtime_f, b"%06o\0 " % chk, typeflag, self._mid, prefix_b,
                         bytes(167 - len(prefix_b))))

    def header(self, name: str, mode: int, size: int) -> bytes:
        name_b = name.encode("utf-8")
        big = size >= _MAX_OCTAL11
        if name.isascii() and not big:
            if len(name_b) <= 100:
                return self._ustar(name_b, b"", mode, size)
            # ustar: split at a '/' into prefix (<= 155) and name (<= 100)
            i = name_b.find(b"/", len(name_b) - 101)
            if 0 < i <= 155 and i < len(name_b) - 1:
                return self._ustar(name_b[i + 1:], name_b[:i], mode, size)
        records = b""
        if not name.isascii() or len(name_b) > 100:
            records += _pax_record("path", name)
        if big:
            records += _pax_record("size", str(size))
        pax = self._ustar(b"././@PaxHeader", b"", 0o644, len(records), b"x")
        pad = -len(records) % _BLOCK
        short = name_b[:100]
        while short:  # do not cut a UTF-8 sequence in half
            try:
                short.decode("utf-8")
                break
            except UnicodeDecodeError:
                short = short[:-1]
        return (pax + records + _ZEROS[:pad]
                + self._ustar(short, b"", mode, 0 if big else size))

    # -- members ----------------------------------------------------------
    def write_entries(self, names, entries) -> None:
        """Write every entry, in the order of ``names``.

        Small files on disk (the common case: tens of thousands of source
        files) take an inlined fast path: one open, fstat, read and close,
        with the ustar header, data and padding built in the output buffer.
        """
        sink = self.sink
        excluded = self.excluded
        files_append = self.files.append
        sha256 = hashlib.sha256
        fstat = os.fstat
        os_open = os.open
        os_close = os.close
        readv = getattr(os, "readv", None)
        flags = _OPEN_FLAGS
        small = _SMALL
        zeros = _ZEROS
        base_sum = self._base_sum
        prefix = {m: b"%07o\0" % m + self._uidgid for m in (0o644, 0o755)}
        prefix_sum = {m: sum(b"%07o\0" % m) for m in prefix}  # uid/gid are in base_sum
        mtime_f = self._mtime_f
        rest = b"0" + self._mid + bytes(167)
        Dir = _Dir if readv is not None else None
        FileOpener = _FileOpener if readv is not None else None
        chunk = sink._chunk
        for name in names:
            src = entries[name]
            if len(name) > 100 or not name.isascii():
                src._emit(self, name)
                continue
            if type(src) is Dir:
                path = src.path + name[name.rfind("/") + 1:]
            elif type(src) is FileOpener:
                path = src.path
            else:
                src._emit(self, name)
                continue
            try:
                fd = os_open(path, flags)
            except OSError as e:
                raise _os_error(_shown_source(src, name), e) from None
            try:
                try:
                    st = fstat(fd)
                    size = st.st_size
                    st_mode = st.st_mode
                    if size >= small or (st_mode & 0o170000) != 0o100000 or (
                            excluded and (st.st_dev, st.st_ino) in excluded):
                        self.add_path(name, path, partial(_shown_source, src, name),
                                      fd=fd, st=st)
                        continue
                    mode = 0o755 if st_mode & 0o111 else 0o644
                    pad = -size % 512
                    if chunk - sink.fill < 513 + size + pad:
                        sink._flush()
                    # header at h, data at h+512 .. e, padding e .. e+pad; one
                    # extra byte is read past the end to notice a file that grew
                    h = sink.fill
                    e = h + 512 + size
                    mv = sink._mv
                    name_b = name.encode("ascii")
                    size_f = b"%011o\0" % size
                    chk = base_sum + prefix_sum[mode] + sum(name_b) + sum(size_f) + 48
                    mv[h:h + 512] = b"".join((name_b, zeros[:100 - len(name_b)], prefix[mode],
                                              size_f, mtime_f, b"%06o\0 " % chk, rest))
                    got = readv(fd, [mv[h + 512:e + 1]])
                    while 0 < got < size:
                        more = readv(fd, [mv[h + 512 + got:e + 1]])
                        if not more:
                            break
                        got += more
                    if got != size:
                        raise _changed(_shown_source(src, name), got, size)
                    data = mv[h + 512:e]
                    digest = sha256(data).hexdigest()
                    if pad:
                        mv[e:e + pad] = zeros[:pad]
                    sink.fill = e + pad
                    if name == ".gitcommit":
                        self.gitcommit = bytes(data).decode("utf-8", "replace")
                except OSError as e:
                    raise _os_error(_shown_source(src, name), e, " while bundling it") from None
                files_append((name, size, digest, mode))
            finally:
                os_close(fd)

    def _record(self, name: str, size: int, digest: str, mode: int):
        self.files.append((name, size, digest, mode))

    def add_bytes(self, name: str, data: bytes, mode: int = 0o644):
        sink = self.sink
        sink.write(self.header(name, mode, len(data)))
        sink.write(data)
        pad = -len(data) % _BLOCK
        if pad:
            sink.write(_ZEROS[:pad])
        self._record(name, len(data), hashlib.sha256(data).hexdigest(), mode)
        if name == ".gitcommit":
            self.gitcommit = data.decode("utf-8", "replace")

    def add_path(self, name: str, path: str, shown, fd: Optional[int] = None, st=None):
        """Copy one file from disk; ``shown`` (str or callable) names it in errors.

        ``fd``/``st``: the file already opened and stat'ed by the caller (who
        then also closes it).
        """
        own = fd is None
        if own:
            try:
                fd = os.open(path, _OPEN_FLAGS)
            except OSError as e:
                raise _os_error(_shown(shown), e) from None
        try:
            try:
                if st is None:
                    st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise _refuse_special(_shown(shown), st.st_mode)
                if self.excluded and (st.st_dev, st.st_ino) in self.excluded:
                    return
                size = st.st_size
                mode = 0o755 if st.st_mode & 0o111 else 0o644
                sink = self.sink
                if size < _SMALL and len(name) <= 100 and name.isascii():
                    # Fast path: header, data and padding go straight into the
                    # output buffer with one read (one byte more than expected,
                    # to see a file that grew).
                    end = 512 + size
                    pad = -size % 512
                    tail = sink.tail(end + pad + 1)
                    tail[:512] = self._ustar(name.encode("ascii"), b"", mode, size)
                    got = _readinto(fd, tail[512:end + 1])
                    while 0 < got < size:
                        more = _readinto(fd, tail[512 + got:end + 1])
                        if not more:
                            break
                        got += more
                    if got != size:
                        raise _changed(shown, got, size)
                    data = tail[512:end]
                    digest = hashlib.sha256(data).hexdigest()
                    if pad:
                        tail[end:end + pad] = _ZEROS[:pad]
                    sink.commit(end + pad)
                    if name == ".gitcommit":
                        self.gitcommit = bytes(data).decode("utf-8", "replace")
                else:
                    sink.write(self.header(name, mode, size))
                    h = hashlib.sha256()
                    left = size
                    while left:
                        tail = sink.tail(1)
                        if len(tail) > left:
                            tail = tail[:left]
                        got = _readinto(fd, tail)
                        if not got:
                            raise _changed(shown, size - left, size)
                        h.update(tail[:got])
                        sink.commit(got)
                        left -= got
                    if os.read(fd, 1):
                        raise _changed(shown, size + 1, size)
                    digest = h.hexdigest()
                    pad = -size % 512
                    if pad:
                        sink.write(_ZEROS[:pad])
            except OSError as e:
                raise _os_error(_shown(shown), e, " while bundling it") from None
            self.files.append((name, size, digest, mode))
        finally:
            if own:
                os.close(fd)

    def add_slice(self, name: str, fd: int, offset: int, size: int, mode: int):
        sink = self.sink
        sink.write(self.header(name, mode, size))
        h = hashlib.sha256()
        left = size
        pos = offset
        while left:
            tail = sink.tail(1)
            if len(tail) > left:
                tail = tail[:left]
            got = os.preadv(fd, [tail], pos) if hasattr(os, "preadv") else None
            if got is None:  # pragma: no cover - not Linux
                data = os.pread(fd, len(tail), pos)
                got = len(data)
                tail[:got] = data
            if not got:
                raise BundleError("internal temporary file for %s is truncated" % _show(name))
            h.update(tail[:got])
            sink.commit(got)
            left -= got
            pos += got
        pad = -size % _BLOCK
        if pad:
            sink.write(_ZEROS[:pad])
        self._record(name, size, h.hexdigest(), mode)
        if name == ".gitcommit" and size < 65536:
            self.gitcommit = os.pread(fd, size, offset).decode("utf-8", "replace")

    def finish(self, manifest: list) -> Tuple[str, int]:
        """Write the manifest (:func:`manifest_chunks`: bytes and file ranges) and the end."""
        sink = self.sink
        size = sum(map(len, manifest))
        sink.write(self.header(MANIFEST_NAME, 0o644, size))
        for chunk in manifest:
            if type(chunk) is _FileRange:
                sink.copy_from(chunk)
            else:
                sink.write(chunk)
        sink.write(_ZEROS[:-size % _BLOCK])
        sink.write(_ZEROS[:2 * _BLOCK])          # end-of-archive marker
        sink.write(_ZEROS[:-sink.size % _RECORD])  # pad to a whole record
        return sink.close()


class _ForkedTail:
    """Writes the tail of the sorted entries in a forked child process.

    A tree of tens of thousands of small files costs CPython about as much
    CPU per file as the system calls themselves, so on a machine with a spare
    core the builder splits the sorted names: the child writes the tar
    members of ``names[start:]`` (headers, data, padding, per-file sha256)
    into an anonymous temporary file while the parent writes the head; the
    parent then appends that segment, hashing the whole stream itself.

    The child is only an optimisation: if it fails in any way (an
    unreadable file, a signal, a full disk), :meth:`collect` returns None and
    the parent writes the tail itself, so errors are raised, typed and
    worded, exactly as in a serial build.  The output is byte-identical.

    Forking is only done while this process has a single thread (a thread
    holding a lock at fork time could deadlock the child), so inside a
    threaded host such as a Salt minion the build stays serial.
    """

    def __init__(self, names, start: int, entries, mtime: int, excluded: frozenset):
        import marshal

        self.segment = tempfile.TemporaryFile(prefix="spirodeploy-part-", buffering=0)
        # The child's records go through a file, not a pipe: several MB through
        # a 64 KiB pipe would make the two processes take turns.
        self._results = tempfile.TemporaryFile(prefix="spirodeploy-part-", buffering=0)
        # The child says "done" on a pipe before it exits: tearing down a
        # forked address space takes a while, and the results are ready first.
        try:
            self._done_r, done_w = os.pipe()
        except BaseException:
            self.segment.close()
            self._results.close()
            raise
        try:
            self.pid = os.fork()
        except BaseException:
            os.close(self._done_r)
            os.close(done_w)
            self.segment.close()
            self._results.close()
            raise
        if self.pid == 0:  # pragma: no cover - runs in the child (coverage cannot see it)
            status = 1
            try:
                os.close(self._done_r)
                w = _TarWriter(self.segment, mtime, excluded, hashing=False, threaded=False)
                try:
                    w.write_entries(names[start:], entries)
                    _sha, size = w.sink.close()
                except BaseException:
                    w.sink.abort()
                    raise
                # Results file: the content-digest lines, the manifest's JSON
                # objects (comma-joined), then the facts; each piece is written
                # as it is made, so no whole-manifest string exists here.
                out = self._results
                put = partial(_write_all, out.write)
                body = manifest_parts(w.files, lambda data: put(memoryview(data)))
                lines_size = out.tell()
                for i, piece in enumerate(body):
                    put(memoryview(b"," if i else b""))
                    put(memoryview(piece))
                facts_at = out.tell()
                # The records go as one opaque blob: the parent only unpacks
                # them if someone asks for the manifest dict.
                put(memoryview(marshal.dumps((
                    size, w.gitcommit, Contents.summarise(w.files), marshal.dumps(w.files),
                    lines_size, facts_at - lines_size))))
                os.write(done_w, b"%d\n" % facts_at)
                status = 0
            except BaseException:
                pass
            finally:
                os._exit(status)
        os.close(done_w)

    def collect(self) -> Optional[tuple]:
        """Wait for the child's results; None if it failed, else ``(segment size,
        gitcommit, Contents.summarise(records), marshal.dumps(records), the
        content-digest lines, the manifest's JSON objects)``, the last two as
        :class:`_FileRange`."""
        import marshal

        done = os.read(self._done_r, 32)
        if not done.endswith(b"\n"):  # the pipe closed without a word: the child failed
            self._reap()
            return None
        facts_at = int(done)
        fd = self._results.fileno()
        try:
            size, gitcommit, summary, blob, lines_size, body_size = marshal.loads(
                os.pread(fd, os.fstat(fd).st_size - facts_at, facts_at))
        except (EOFError, ValueError, TypeError):
            return None
        return (size, gitcommit, summary, blob, _FileRange(fd, 0, lines_size),
                _FileRange(fd, lines_size, body_size))

    def append_to(self, sink: "_Sink", size: int) -> None:
        """Copy the child's segment into ``sink`` (which hashes and writes it)."""
        sink.copy_from(_FileRange(self.segment.fileno(), 0, size))

    def _reap(self) -> None:
        if self.pid is not None:
            os.waitpid(self.pid, 0)
            self.pid = None

    def close(self) -> None:
        """Stop the child if it still runs (or is still exiting), reap it, and
        drop the segment."""
        if self.pid is not None:
            try:
                os.kill(self.pid, 9)
            except OSError:
                pass
        self._reap()
        os.close(self._done_r)
        self._results.close()
        self.segment.close()


def _fork_split(names) -> int:
    """Where to split ``names`` between this process and a forked child; 0: do not fork."""
    if len(names) < _PARALLEL_MIN or not _CAN_FORK:
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    if cpus < 2 or threading.active_count() != 1:
        return 0
    # The parent also appends the child's segment and builds the manifest,
    # so the child takes the larger share.
    return int(len(names) * _PARENT_SHARE)


# --------------------------------------------------------------------------
# walking the file system

def _load_ignore(root_abs: str, root_shown: str):
    """Return a matcher for ``<root>/.spiroignore`` or None."""
    path = os.path.join(root_abs, IGNORE_FILE)
    try:
        with open(path, "rb") as fh:
            data = fh.read(4 * MiB + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise _os_error(_join_show(root_shown, IGNORE_FILE), e) from None
    if len(data) > 4 * MiB:
        raise BundleError("%s is larger than 4 MiB" % _show(_join_show(root_shown, IGNORE_FILE)))
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise BundleError("%s is not valid UTF-8"
                          % _show(_join_show(root_shown, IGNORE_FILE))) from None
    try:
        import pathspec
    except ImportError:  # pragma: no cover - pathspec is a dependency
        raise BundleError("reading %s needs the 'pathspec' package"
                          % _show(_join_show(root_shown, IGNORE_FILE))) from None
    try:
        if hasattr(pathspec, "GitIgnoreSpec"):
            spec = pathspec.GitIgnoreSpec.from_lines(lines)
        else:  # pragma: no cover - pathspec < 0.10
            spec = pathspec.PathSpec.from_lines("gitwildmatch", lines)
    except Exception as e:
        raise BundleError("%s has an invalid pattern: %s"
                          % (_show(_join_show(root_shown, IGNORE_FILE)), e)) from None
    return spec.match_file


_entry_name = operator.attrgetter("name")  # the sort key of directory entries (C, not Python)


def _walk(top_abs: str, boundary: str, top_shown: str, *,
          skip: Optional[Callable[[str], bool]] = None,
          ignore: Optional[Callable[[str], bool]] = None,
          excluded: frozenset = frozenset()) -> Iterator[Tuple[str, Any]]:
    """Yield ``(relative posix name, source)`` for every file under ``top_abs``.

    The source of a file is its directory's :class:`_Dir` (the file is the
    name's last component) or, for a symlink to a file, a :class:`_FileOpener`
    of the target.

    VCS directories are pruned; ``skip(rel)`` and ``ignore(rel)`` (with a
    trailing ``/`` for directories) prune more.  Symlinks are followed when
    their target is inside ``boundary`` (absolute, real); a loop is refused.
    """
    excluded_inodes = {ino for _dev, ino in excluded}
    # The default skip judges the last component only: inlined below.
    default_skip = skip is _default_should_skip
    if default_skip:
        skip = None
    # Depth-first; ("exit", real) markers keep ``active`` = real paths of the
    # directories on the current walk path, which detects every symlink loop.
    stack: list = [(top_abs, "", os.path.realpath(top_abs))]
    active: set = set()
    while stack:
        item = stack.pop()
        if item[0] is None:
            active.discard(item[1])
            continue
        dir_path, rel_dir, real_dir = item
        if real_dir in active:
            raise BundleError("symlink loop: %s leads back into itself"
                              % _show(_join_show(top_shown, rel_dir.rstrip("/"))))
        active.add(real_dir)
        stack.append((None, real_dir))
        try:
            with os.scandir(dir_path) as it:
                entries = sorted(it, key=_entry_name)
        except OSError as e:
            raise _os_error(_join_show(top_shown, rel_dir.rstrip("/")) or top_shown, e) from None
        subdirs = []
        here = _Dir(dir_path + os.sep, top_shown, rel_dir)
        for entry in entries:
            name = entry.name
            rel = rel_dir + name
            if not name.isascii():
                _check_utf8(name, _join_show(top_shown, rel))
            if name in VCS_DIRS or (default_skip and name == "_salt"):
                continue
            if skip is not None and skip(rel):
                continue
            try:
                if entry.is_file(follow_symlinks=False):
                    if ignore is not None and ignore(rel):
                        continue
                    if excluded and entry.inode() in excluded_inodes:
                        st = entry.stat(follow_symlinks=False)
                        if (st.st_dev, st.st_ino) in excluded:
                            continue
                    yield rel, here
                elif entry.is_dir(follow_symlinks=False):
                    if ignore is not None and ignore(rel + "/"):
                        continue
                    subdirs.append((entry.path, rel + "/", real_dir + os.sep + name))
                elif entry.is_symlink():
                    shown = _join_show(top_shown, rel)
                    if ignore is not None and ignore(rel):
                        continue
                    try:
                        st = os.stat(entry.path)
                    except OSError as e:
                        if e.errno == errno.ELOOP:
                            raise BundleError("symlink loop at %s" % _show(shown)) from None
                        if isinstance(e, FileNotFoundError):
                            raise BundleError("%s is a broken symlink (its target does not "
                                              "exist)" % _show(shown)) from None
                        raise _os_error(shown, e) from None
                    target = os.path.realpath(entry.path)
                    if not _inside(target, boundary):
                        raise BundleError("symlink %s points outside %s (to %s)"
                                          % (_show(shown), _show(boundary), _show(target)))
                    if _vcs_part(target, boundary) is not None:
                        continue  # leads into VCS metadata: pruned like the directory
                    if stat.S_ISDIR(st.st_mode):
                        if ignore is not None and ignore(rel + "/"):
                            continue
                        subdirs.append((target, rel + "/", target))
                    elif stat.S_ISREG(st.st_mode):
                        if excluded and (st.st_dev, st.st_ino) in excluded:
                            continue
                        yield rel, _FileOpener(target, top_shown, rel)
                    else:
                        raise _refuse_special(shown, st.st_mode)
                else:
                    if ignore is not None and ignore(rel):
                        continue
                    raise _refuse_special(_join_show(top_shown, rel),
                                          entry.stat(follow_symlinks=False).st_mode)
            except BundleError:
                raise
            except OSError as e:
                raise _os_error(_join_show(top_shown, rel), e) from None
        # reverse order on the stack so directories come out sorted
        stack.extend(reversed(subdirs))


# --------------------------------------------------------------------------
# scanners

def fs_scanner(should_skip: Callable[[str], bool],
               root: str = ".") -> Iterator[Tuple[str, Callable[[], BinaryIO]]]:
    """Walk the file system under ``root`` (default: the current directory).

    Yields ``(name, opener)`` with ``name`` relative to ``root`` in posix form
    (``src/app.py``, without the ``./`` of 0.x).  ``should_skip(name)`` is
    called for every directory and file (with its path relative to root);
    true prunes it.  VCS directories are always pruned.  A ``.spiroignore``
    at ``root`` (gitignore syntax) prunes matching files and directories; the
    ``.spiroignore`` file itself is included unless it ignores itself.
    Symlinks are followed when they stay inside ``root`` and refused
    otherwise.
    """
    for name, source in _fs_walk(should_skip, root):
        yield name, (source.opener(name[len(source._rel):]) if type(source) is _Dir else source)


def _fs_walk(should_skip: Callable[[str], bool], root: str = ".") -> Iterator[Tuple[str, Any]]:
    """:func:`fs_scanner`, yielding :func:`_walk`'s sources (what the builder keeps)."""
    root_shown = os.fspath(root)
    root_abs = os.path.abspath(root_shown)
    if not os.path.isdir(root_abs):
        raise BundleError("source directory %s does not exist" % _show(root_shown))
    ignore = _load_ignore(root_abs, root_shown)
    yield from _walk(root_abs, os.path.realpath(root_abs), root_shown,
                     skip=should_skip, ignore=ignore)


def _run_git(args, root, *, stdout=None):
    """Run ``git -C root <args>``; FileNotFoundError if git is not installed."""
    import subprocess
    return subprocess.run(["git", "-C", os.fspath(root)] + list(args), stdin=subprocess.DEVNULL,
                          stdout=stdout if stdout is not None else subprocess.PIPE,
                          stderr=subprocess.PIPE)


def _git_has_commit(root) -> bool:
    try:
        proc = _run_git(["rev-parse", "--verify", "--quiet", "HEAD^{commit}"], root)
    except FileNotFoundError:
        return False
    return proc.returncode == 0 and bool(proc.stdout.strip())


def _git_error(root, proc) -> BundleError:
    msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    last = msg[-1] if msg else "exit status %d" % proc.returncode
    text = " ".join(msg).lower()
    if "not a git repository" in text:
        return BundleError("--include-source git: %s is not inside a git checkout"
                           % _show(root))
    if "not a valid object name" in text or "unknown revision" in text \
            or "does not have any commits" in text:
        return BundleError("--include-source git: the git repository at %s has no commits"
                           % _show(root))
    return BundleError("git archive failed in %s: %s" % (_show(root), last))


def git_scanner(should_skip: Callable[[str], bool],
                root: str = ".") -> Iterator[Tuple[str, Callable[[], BinaryIO]]]:
    """Yield the files of ``git archive HEAD`` run in ``root``.

    The archive is spooled to an anonymous temporary file (never held in
    memory); openers read their member from there and stay valid after the
    generator ends.  Symlinks in the archive are dereferenced inside the
    archive; one that leaves it, is broken or loops is a BundleError.
    Raises BundleError if git is missing, ``root`` is not in a git checkout
    or the repository has no commits.
    """
    import tarfile

    root_shown = os.fspath(root)
    holder = _TempHolder()
    try:
        try:
            proc = _run_git(["archive", "--format=tar", "HEAD"], root_shown, stdout=holder.file)
        except FileNotFoundError:
            raise BundleError("--include-source git: git is not installed "
                              "(not found on PATH)") from None
        if proc.returncode != 0:
            raise _git_error(root_shown, proc)
        holder.file.seek(0)
        files: dict = {}
        dirs = {""}
        links: dict = {}
        children: dict = {}
        try:
            tf = tarfile.open(fileobj=holder.file, mode="r:", encoding="utf-8",
                              errors="surrogateescape")
        except tarfile.TarError as e:
            raise BundleError("cannot read the output of git archive: %s" % e) from None
        with tf:
            while True:
                try:
                    m = tf.next()
                except tarfile.TarError as e:
                    raise BundleError("cannot read the output of git archive: %s" % e) from None
                if m is None:
                    break
                if isinstance(getattr(tf, "members", None), list):
                    tf.members.clear()  # keep memory flat for big trees
                name = m.name.rstrip("/")
                while name.startswith("./"):
                    name = name[2:]
                if not name or name == "pax_global_header":
                    continue
                _check_utf8(name, _join_show(root_shown, name))
                parts = name.split("/")
                if name.startswith("/") or ".." in parts:
                    raise BundleError("git archive produced an unsafe name %s" % _show(name))
                if m.isreg():
                    files[name] = (m.offset_data, m.size, 0o755 if m.mode & 0o111 else 0o644)
                elif m.isdir():
                    dirs.add(name)
                elif m.issym():
                    links[name] = m.linkname
                else:
                    raise BundleError("git archive produced %s, which is not a file, "
                                      "directory or symlink" % _show(name))
                # register the path and its parents in the tree
                child = name
                while True:
                    parent, _, base = child.rpartition("/")
                    kids = children.get(parent)
                    if kids is None:
                        children[parent] = {base}
                        dirs.add(parent)
                        if parent:
                            child = parent
                            continue
                    else:
                        kids.add(base)
                    break

        # Imported here: tarcheck's dataclasses cost a fs build 7 ms of start-up.
        from .tarcheck import LinkLoop, PathEscapes, resolve_in_archive

        def walk(logical: str, phys: str, active: frozenset):
            for base in sorted(children.get(phys, ())):
                p = phys + "/" + base if phys else base
                lname = logical + "/" + base if logical else base
                if base in VCS_DIRS or should_skip(lname):
                    continue
                shown = _join_show(root_shown, lname)
                target = p
                if p in links:
                    target_text = links[p]
                    try:
                        target = resolve_in_archive(links, p.split("/")[:-1] + target_text.split("/"))
                    except PathEscapes:
                        raise BundleError("symlink %s points outside %s (to %s)"
                                          % (_show(shown), _show(root_shown),
                                             _show(target_text))) from None
                    except LinkLoop:
                        raise BundleError("symlink loop at %s" % _show(shown)) from None
                    if target not in files and target not in dirs:
                        raise BundleError("%s is a broken symlink (its target %s is not in "
                                          "the commit)" % (_show(shown), _show(target_text)))
                # A symlink to a file or directory is bundled like its target.
                if target in files:
                    off, size, mode = files[target]
                    yield lname, _SliceOpener(holder, off, size, mode, shown)
                elif target in dirs:
                    if target in active:
                        raise BundleError("symlink loop: %s leads back into itself"
                                          % _show(shown))
                    yield from walk(lname, target, active | {target})

        yield from walk("", "", frozenset({""}))
    finally:
        # Openers keep the holder (and its temp file) alive; drop our reference.
        holder = None


# --------------------------------------------------------------------------
# the builder

class _SpooledBuffer(tempfile.SpooledTemporaryFile):
    """The bundle, in memory while small, on disk past the threshold.

    ``getvalue()`` is kept because the original ``.buffer`` was a BytesIO
    and code written against it may call it; it reads the whole bundle, so
    spiro-deploy's own code never does (the client streams the file).
    """

    def getvalue(self) -> bytes:
        position = self.tell()
        try:
            self.seek(0)
            return self.read()
        finally:
            self.seek(position)


class TarballBuilder:
    """Builds up a deployment bundle.

    ``TarballBuilder(fileobj=None, *, spool_threshold=8 MiB, mtime=None,
    root=None, exclude=())``.  Use it as a context manager; the ``add_*``
    methods work inside the ``with`` block, and the tar is written when the
    block ends.  Afterwards:

    * ``buffer``: the bundle, a seekable binary file positioned at its start
      (a spooled temporary file, or the ``fileobj`` you passed);
    * ``sha256``, ``size``, ``manifest`` (dict), ``file_count``, ``warnings``.

    ``fileobj`` receives the tar instead of a temporary file; it need not be
    seekable (it is only written to, and rewound afterwards if it can be).
    ``mtime`` defaults to ``SOURCE_DATE_EPOCH`` or :data:`DEFAULT_MTIME`.
    ``root`` is the project directory: when given, every path added must be
    inside it and symlinks may point anywhere inside it.  ``exclude`` is a
    list of paths that are never bundled.
    """

    def __init__(self, fileobj: Optional[BinaryIO] = None, *,
                 spool_threshold: int = DEFAULT_SPOOL_THRESHOLD, mtime: Optional[int] = None,
                 root=None, exclude: Iterable = ()):
        self._fileobj = fileobj
        self._spool_threshold = spool_threshold
        self._mtime_arg = mtime
        self.root = root
        self._exclude_paths = list(exclude)
        self._state = "new"
        self.contents: Optional[Contents] = None

    @property
    def manifest(self) -> Optional[dict]:
        """The manifest dict of the written bundle (None before it is written)."""
        return self.contents.manifest if self.contents is not None else None

    # -- context manager ----------------------------------------------------
    def __enter__(self) -> "TarballBuilder":
        if self._state != "new":
            raise RuntimeError("a TarballBuilder can only be used once")
        self.mtime = _resolve_mtime(self._mtime_arg)
        self._root_abs = (os.path.abspath(os.fspath(self.root))
                          if self.root is not None else None)
        self._root_real = (os.path.realpath(self._root_abs)
                           if self.root is not None else None)
        excluded = set()
        for p in self._exclude_paths:
            try:
                st = os.stat(p)
            except (OSError, ValueError):
                continue
            excluded.add((st.st_dev, st.st_ino))
        if self._fileobj is None:
            if self._spool_threshold and self._spool_threshold > 0:
                self.buffer = _SpooledBuffer(max_size=self._spool_threshold,
                                             prefix="spirodeploy-bundle-")
            else:
                self.buffer = tempfile.TemporaryFile(prefix="spirodeploy-bundle-")
            self._start = 0
        else:
            self.buffer = self._fileobj
            try:
                st = os.fstat(self._fileobj.fileno())
                if stat.S_ISREG(st.st_mode):
                    excluded.add((st.st_dev, st.st_ino))
            except (AttributeError, OSError, ValueError):
                pass
            try:
                self._start = self._fileobj.tell() if self._fileobj.seekable() else None
            except (AttributeError, OSError):
                self._start = None
        self._excluded = frozenset(excluded)
        self._entries: dict = {}
        self._holders: list = []
        self._staging: Optional[_TempHolder] = None
        self._staging_size = 0
        self.warnings: list = []
        self.salt_file_count = 0
        self.sha256 = None
        self.size = None
        self.contents: Optional[Contents] = None
        self.file_count = None
        self._state = "open"
        return self

    def __exit__(self, exc_type, exc, tb):
        self._state = "closing"
        try:
            if exc_type is None:
                with _gc_paused():
                    self._write()
        except BaseException:
            if self._fileobj is None:
                self.buffer.close()
            raise
        finally:
            self._release()
            self._state = "done"
        return False

    def _release(self):
        self._entries = {}
        for h in self._holders:
            h.close()
        self._holders = []
        if self._staging is not None:
            self._staging.close()
            self._staging = None

    def _check_open(self):
        if self._state != "open":
            raise RuntimeError("TarballBuilder methods can only be used inside its with block")

    # -- collecting entries ---------------------------------------------------
    def _put(self, name: str, source, origin: Optional[str] = None) -> None:
        if name in self._entries or name == MANIFEST_NAME:
            if origin is None:
                origin = _shown_source(source, name)
            if name == MANIFEST_NAME:
                raise BundleError("%s is reserved for the bundle manifest; rename %s"
                                  % (MANIFEST_NAME, _show(origin)))
            self.warnings.append("%s was added twice; the one from %s is kept"
                                 % (_show(name), _show(origin)))
        self._entries[name] = source

    def _explicit(self, path, what: str):
        """Stat a path given by the caller; return (stat, absolute path to open, boundary)."""
        shown = os.fspath(path)
        if isinstance(shown, bytes):
            shown = os.fsdecode(shown)
        _check_utf8(shown, shown)
        abs_path = os.path.abspath(shown)
        try:
            st = os.stat(abs_path)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise BundleError("%s %s is a symlink loop" % (what, _show(shown))) from None
            if isinstance(e, FileNotFoundError):
                if os.path.lexists(abs_path):
                    raise BundleError("%s %s is a broken symlink" % (what, _show(shown))) from None
                raise BundleError("%s %s does not exist" % (what, _show(shown))) from None
            raise _os_error(shown, e) from None
        real = os.path.realpath(abs_path)
        if self._root_real is not None:
            if not _inside(real, self._root_real):
                raise BundleError("%s %s is outside the project directory %s%s"
                                  % (what, _show(shown), _show(self._root_real),
                                     " (it resolves to %s)" % _show(real)
                                     if real != abs_path else ""))
            boundary = self._root_real
        else:
            boundary = real
        # Judged by what the path resolves to (and by how it is spelt, which
        # is what the member name is made from): .git/config often holds a
        # CI token in the remote URL.
        vcs = (_vcs_part(real, self._root_real)
               or _vcs_part(os.path.normpath(abs_path), self._root_abs))
        if vcs is not None:
            raise BundleError("%s %s is version-control metadata (%s), which is never bundled%s"
                              % (what, _show(shown), vcs,
                                 " (it resolves to %s)" % _show(real)
                                 if real != abs_path else ""))
        if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) in self._excluded:
            raise BundleError("%s %s is a file that is never bundled (the token file or "
                              "the bundle's output)" % (what, _show(shown)))
        return st, real, boundary, shown

    def add_saltdir(self, path) -> None:
        """Add the contents of a Salt state directory (``_salt``) at the bundle root."""
        self._check_open()
        st, real, boundary, shown = self._explicit(path, "salt directory")
        if not stat.S_ISDIR(st.st_mode):
            raise BundleError("salt directory %s is not a directory" % _show(shown))
        count = 0
        for rel, opener in _walk(os.path.abspath(shown), boundary, shown,
                                 excluded=self._excluded):
            self._put(rel, opener)
            count += 1
        self.salt_file_count += count

    def add_artifact(self, path, name) -> None:
        """Add a file or directory ``path`` under ``_artifacts/<name>``."""
        self._check_open()
        member = "_artifacts/" + _clean_name(name, "artifact name")
        st, real, boundary, shown = self._explicit(path, "artifact")
        if not VCS_DIRS.isdisjoint(member.split("/")):
            raise BundleError("artifact name %s is version-control metadata, which is never "
                              "bundled" % _show(name))
        if stat.S_ISDIR(st.st_mode):
            for rel, opener in _walk(os.path.abspath(shown), boundary, shown,
                                     excluded=self._excluded):
                self._put(member + "/" + rel, opener)
        elif stat.S_ISREG(st.st_mode):
            self._put(member, _FileOpener(real, shown), shown)
        else:
            raise _refuse_special(shown, st.st_mode)

    def add_virtual(self, name, data) -> None:
        """Add ``data`` (bytes) to the bundle as ``name``."""
        self._check_open()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("add_virtual() needs bytes, not %s" % type(data).__name__)
        name = _clean_name(name, "bundle member name")
        if not VCS_DIRS.isdisjoint(name.split("/")):
            raise BundleError("%s is version-control metadata, which is never bundled"
                              % _show(name))
        self._put(name, _BytesSource(bytes(data)), name)

    def add_gitcommit(self, root=None) -> None:
        """Add ``.gitcommit`` (commit hash line, ``git describe --always --all`` line).

        ``root`` defaults to the builder's ``root``, else the current
        directory.  Raises FileNotFoundError if git is not installed.  Adds
        nothing when ``root`` is not in a git checkout or the repository has
        no commits.
        """
        self._check_open()
        if root is None:
            root = self.root if self.root is not None else "."
        info = git_commit_info(root)
        if info is not None:
            self.add_virtual(".gitcommit", info)

    def add_source(self, scanner: Callable) -> None:
        """Add source files under ``_source/``, from ``scanner(should_skip)``."""
        self._check_open()
        entries = self._entries
        # fs_scanner itself is walked directly: no opener per file
        if scanner is fs_scanner:
            scanner = _fs_walk
        elif isinstance(scanner, partial) and scanner.func is fs_scanner:
            scanner = partial(_fs_walk, *scanner.args, **scanner.keywords)
        for name, opener in scanner(_default_should_skip):
            if type(opener) is _Dir or (type(opener) is _FileOpener and opener._rel is name):
                # Straight from _walk (fs_scanner): the name is already checked
                # (UTF-8, no VCS part), and checking 50,000 names twice shows.
                key = "_source/" + name
                if key in entries:
                    self._put(key, opener)
                else:
                    entries[key] = opener
                continue
            if isinstance(name, str):
                parts = name.split("/")
                if "" in parts or "." in parts or ".." in parts or os.sep != "/":
                    name = _clean_name(name, "source file name")
                    parts = name.split("/")
                else:
                    _check_utf8(name, name)
            else:
                name = _clean_name(name, "source file name")
                parts = name.split("/")
            if not VCS_DIRS.isdisjoint(parts):
                continue
            if isinstance(opener, _FileOpener):
                source = opener
            elif isinstance(opener, _SliceOpener):
                source = opener
                if opener.holder not in self._holders:
                    self._holders.append(opener.holder)
            else:
                source = self._stage(opener, name)
                if source is None:
                    continue
            self._put("_source/" + name, source)

    def _stage(self, opener: Callable, name: str) -> Optional[_SliceOpener]:
        """Copy a foreign scanner's file into our staging temp file.

        A third-party scanner's opener may only be valid while its generator
        runs, and the tar is written later, in name order.
        """
        try:
            f = opener()
        except OSError as e:
            raise _os_error(name, e) from None
        try:
            mode = 0o644
            try:
                st = os.fstat(f.fileno())
                if (st.st_dev, st.st_ino) in self._excluded:
                    return None
                mode = 0o755 if st.st_mode & 0o111 else 0o644
            except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
                pass
            if self._staging is None:
                self._staging = _TempHolder()
            out = self._staging.file
            start = self._staging_size
            size = 0
            while True:
                chunk = f.read(_CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                size += len(chunk)
            out.flush()
            self._staging_size += size
            return _SliceOpener(self._staging, start, size, mode, name)
        finally:
            close = getattr(f, "close", None)
            if close is not None:
                close()

    # -- writing --------------------------------------------------------------
    def _sorted_names(self) -> list:
        """The bundle's names in tar order; refuses a name that is also a directory."""
        entries = self._entries
        names = sorted(entries)
        parents = {n.rpartition("/")[0] for n in names}
        parents.discard("")
        for p in list(parents):
            i = p.rfind("/")
            while i > 0:
                q = p[:i]
                if q in parents:
                    break
                parents.add(q)
                i = q.rfind("/")
        clash = parents.intersection(entries)
        if clash:
            n = min(clash)
            raise BundleError("%s is both a file and a directory in the bundle" % _show(n))
        return names

    def _write(self) -> None:
        entries = self._entries
        names = self._sorted_names()
        if self._staging is not None:
            self._staging.file.flush()
        split = _fork_split(names)
        # Fork before the writer thread of _TarWriter starts (see _ForkedTail).
        tail = None
        if split:
            try:
                tail = _ForkedTail(names, split, entries, self.mtime, self._excluded)
            except OSError:  # no fork today (out of processes or memory): one process
                tail = None
        try:
            w = _TarWriter(self.buffer, self.mtime, self._excluded)
            try:
                segments = []  # (records or their marshal dump, Contents.summarise(records))
                content = hashlib.sha256()  # the manifest's content digest
                body: list = []  # the manifest's JSON objects, in pieces
                if tail is None:
                    w.write_entries(names, entries)
                else:
                    w.write_entries(names[:split], entries)
                    body += manifest_parts(w.files, content.update)
                    segments.append((w.files, Contents.summarise(w.files)))
                    w.files = []
                    done = tail.collect()
                    if done is None:
                        w.write_entries(names[split:], entries)
                    else:
                        size, gitcommit, summary, blob, lines, child_body = done
                        tail.append_to(w.sink, size)
                        for piece in lines.pieces():
                            content.update(piece)
                        body.append(child_body)
                        segments.append((blob, summary))
                        w.gitcommit = w.gitcommit if gitcommit is None else gitcommit
                if w.files:  # written here and not formatted yet
                    body += manifest_parts(w.files, content.update)
                    segments.append((w.files, Contents.summarise(w.files)))
                # The entries are written: free them before the manifest is.
                names = entries = w.files = None
                self._entries = {}
                digest = content.hexdigest()
                self.contents = Contents([records for records, _s in segments], digest=digest,
                                         gitcommit=w.gitcommit,
                                         summaries=[summary for _r, summary in segments])
                segments = None
                self.sha256, self.size = w.finish(manifest_chunks(digest, body,
                                                                  gitcommit=w.gitcommit))
            except BaseException:
                w.sink.abort()
                self.contents = None
                raise
        finally:
            if tail is not None:  # after finish: the child's manifest pieces are in its file
                tail.close()
        self.file_count = self.contents.count
        flush = getattr(self.buffer, "flush", None)
        if flush is not None:
            flush()
        if self._start is not None:
            self.buffer.seek(self._start)

def git_commit_info(root=".") -> Optional[bytes]:
    """Return the ``.gitcommit`` contents for ``root``, or None outside a checkout.

    Raises FileNotFoundError if git is not installed.
    """
    proc = _run_git(["rev-parse", "--verify", "--quiet", "HEAD^{commit}"], root)
    commit = proc.stdout.strip()
    if proc.returncode != 0 or not commit:
        return None
    proc = _run_git(["describe", "--always", "--all"], root)
    describe = proc.stdout.strip() if proc.returncode == 0 else b""
    return commit + b"\n" + describe


# --------------------------------------------------------------------------
# the high-level API

class Bundle:
    """A built bundle: the tar in :attr:`file` and what is known about it.

    Attributes: ``file`` (seekable binary file at position 0; None for a
    bundle streamed without ``output``), ``sha256``,
    ``size``, ``manifest`` (dict, made on first use), ``file_count``,
    ``digest`` (content digest), ``gitcommit`` (the ``.gitcommit`` text or
    None), ``has_top`` (``top.sls`` or ``spirotop.sls`` at the root),
    ``top_counts`` (files per top-level directory, ``""`` for the root),
    ``warnings`` (list of str) and ``path`` (the ``output`` file, or None).
    Close it (or use it as a context manager) to free the temporary file.
    """

    def __init__(self, file: BinaryIO, *, sha256: str, size: int, contents: Contents,
                 warnings: list, path: Optional[str] = None):
        self.file = file
        self.sha256 = sha256
        self.size = size
        self.contents = contents
        self.warnings = list(warnings)
        self.path = path

    @property
    def manifest(self) -> dict:
        return self.contents.manifest

    @property
    def file_count(self) -> int:
        return self.contents.count

    @property
    def has_top(self) -> bool:
        return self.contents.has_top

    @property
    def top_counts(self) -> dict:
        return self.contents.top_counts

    @property
    def digest(self) -> str:
        return self.contents.digest

    @property
    def gitcommit(self) -> Optional[str]:
        return self.contents.gitcommit

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    def __enter__(self) -> "Bundle":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self):
        return "<Bundle %d files, %d bytes, sha256 %s>" % (self.file_count, self.size,
                                                            self.sha256)


class _Tee:
    """Writes to the ``output`` file and to the ``stream`` of :func:`build_bundle`."""

    whole_writes = True  # see _Sink: the stream gets whole blocks, the file smaller writes

    def __init__(self, first: BinaryIO, second: BinaryIO):
        self._first = first
        self._second = second

    def write(self, data) -> int:
        _write_all(self._first.write, memoryview(data))
        self._second.write(data)
        return len(data)

    def flush(self) -> None:
        self._first.flush()

    def seekable(self) -> bool:
        return False


def _artifact_name(root_shown: str, root_abs: str, root_real: str, artifact) -> Tuple[str, str]:
    """Return (path to add, name under _artifacts/) for a build_bundle artifact.

    Relative paths are relative to the project root and keep their
    (normalised) path as the name.  Absolute paths must be inside the project
    root; the name is then their path relative to the root.
    """
    given = os.fspath(artifact)
    if isinstance(given, bytes):
        given = os.fsdecode(given)
    if not given.strip():
        raise BundleError("artifact path is empty")
    if os.path.isabs(given):
        rel = os.path.relpath(os.path.normpath(given), root_abs)
        if rel == ".." or rel.startswith(".." + os.sep):
            rel = os.path.relpath(os.path.realpath(given), root_real)
            if rel == ".." or rel.startswith(".." + os.sep):
                raise BundleError("artifact %s is outside the project directory %s"
                                  % (_show(given), _show(root_abs)))
        name = rel.replace(os.sep, "/")
        path = given
    else:
        name = posixpath.normpath(given.replace(os.sep, "/"))
        if name == ".." or name.startswith("../"):
            raise BundleError("artifact %s would escape _artifacts/ (it leads out of the "
                              "project directory)" % _show(given))
        path = given if root_shown in ("", ".") else os.path.join(root_shown, given)
    if name in (".", ""):
        raise BundleError("artifact %s is the whole project directory; name a file or "
                          "directory inside it" % _show(given))
    return path, name


def _create_beside(out_abs: str, shown: str) -> Tuple[int, str]:
    """Create a new hidden temporary file next to ``out_abs``.

    Unlike mkstemp (0600), the file gets the usual permissions (0666 less the
    umask), like the file ``tar -cf`` would create.
    """
    import secrets
    directory, base = os.path.split(out_abs)
    for _ in range(100):
        tmp = os.path.join(directory, ".%s.%s.tmp" % (base, secrets.token_hex(6)))
        try:
            return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
                           | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
        except OSError as e:
            raise BundleError("cannot write output %s: %s" % (_show(shown), e.strerror or e)) \
                from None
    raise BundleError("cannot write output %s: no free temporary name" % _show(shown))


def _pick_scanner(include_source, root):
    if include_source is None or include_source is False:
        return None
    if callable(include_source):
        return include_source
    method = str(include_source).strip().lower()
    if method == "auto" or include_source is True:
        method = "git" if _git_has_commit(root) else "fs"
    if method == "git":
        return partial(git_scanner, root=root)
    if method in ("fs", "filesystem"):
        return partial(fs_scanner, root=root)
    raise BundleError("unknown source method %r (use git, fs, filesystem or auto)"
                      % (include_source,))


def build_bundle(root=".", *, artifacts: Iterable = (), include_source=None,
                 gitcommit: bool = True, output=None, allow_empty: bool = False,
                 exclude: Iterable = (), spool_threshold: int = DEFAULT_SPOOL_THRESHOLD,
                 mtime: Optional[int] = None, stream: Optional[BinaryIO] = None) -> Bundle:
    """Bundle the project at ``root`` and return a :class:`Bundle`.

    * ``_salt/`` under root is the bundle root.  A bundle without any file
      from ``_salt`` is refused (a deploy replaces the whole saltenv, so it
      would wipe it) unless ``allow_empty`` is true.
    * ``artifacts``: paths relative to root (or absolute, inside root), each
      added as ``_artifacts/<path>``.  A path leading out of the project is
      refused.
    * ``include_source``: None, ``"git"``, ``"fs"``/``"filesystem"``,
      ``"auto"`` (git when root is in a git checkout with a commit, else fs),
      or a scanner callable.  Added under ``_source/``.
    * ``gitcommit``: add ``.gitcommit`` (a warning when git is missing).
    * ``output``: also write the bundle to this path (replaced atomically on
      success); ``Bundle.file`` then reads from it.
    * ``exclude``: paths never to bundle (the token file, for instance).
      ``output`` and ``exclude`` are ordinary paths (relative to the current
      directory); neither is ever included.
    * ``stream``: a writable binary file object that gets the tar as it is
      written (in blocks of up to 1 MiB), instead of a temporary file.  The
      returned bundle then has no ``file`` (None) unless ``output`` is also
      given, in which case both get the bytes.
    """
    root_shown = os.fspath(root)
    root_abs = os.path.abspath(root_shown)
    if not os.path.isdir(root_abs):
        raise BundleError("project directory %s does not exist or is not a directory"
                          % _show(root_shown))
    root_real = os.path.realpath(root_abs)
    scanner = _pick_scanner(include_source, root_shown)
    plan = [_artifact_name(root_shown, root_abs, root_real, a) for a in artifacts]

    out_file = None
    tmp_path = None
    excl = list(exclude)
    if output is not None:
        output = os.fspath(output)
        out_abs = os.path.abspath(output)
        if os.path.isdir(out_abs):
            raise BundleError("output %s is a directory" % _show(output))
        fd, tmp_path = _create_beside(out_abs, output)
        out_file = os.fdopen(fd, "w+b")
        excl += [out_abs, tmp_path]  # the old output, and the new one being written
    warnings: list = []
    target = out_file
    if stream is not None:
        target = stream if out_file is None else _Tee(out_file, stream)
    try:
        with _gc_paused(), TarballBuilder(target, spool_threshold=spool_threshold, mtime=mtime,
                                          root=root_abs, exclude=excl) as builder:
            if gitcommit:
                try:
                    builder.add_gitcommit(root=root_shown)
                except FileNotFoundError:
                    warnings.append("git is not installed: the bundle has no .gitcommit")
            salt = os.path.join(root_shown, "_salt") if root_shown not in ("", ".") else "_salt"
            salt_abs = os.path.join(root_abs, "_salt")
            if os.path.lexists(salt_abs):
                builder.add_saltdir(salt)
            if builder.salt_file_count == 0 and not allow_empty:
                raise BundleError(
                    "%s %s: a deploy replaces the whole saltenv, so this bundle would wipe "
                    "it; use --allow-empty to deploy it anyway"
                    % (_show(salt_abs), "has no files" if os.path.lexists(salt_abs)
                       else "does not exist"))
            if builder.salt_file_count == 0:
                warnings.append("the bundle has no files from _salt: deploying it empties "
                                "the saltenv")
            for path, name in plan:
                builder.add_artifact(path, name)
            if scanner is not None:
                builder.add_source(scanner)
        warnings.extend(builder.warnings)
        if out_file is not None:
            if stream is not None:
                out_file.flush()
                out_file.seek(0)
            os.replace(tmp_path, output)
            tmp_path = None
    except BaseException:
        if out_file is not None:
            out_file.close()
        if tmp_path is not None:
            try:
                os.unlink(tmp_path)
            except OSError:
                pass
        raise
    bundle = Bundle(out_file if stream is not None else builder.buffer,
                    sha256=builder.sha256, size=builder.size,
                    contents=builder.contents, warnings=warnings,
                    path=output if output is not None else None)
    return bundle
