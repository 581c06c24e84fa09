"""TarballBuilder: collect a bundle's members, then write them in one pass.

The ``add_*`` methods only *collect* entries (member name -> a
:class:`~.sources.MemberSource`), checking each path where it enters.  At
the end of the ``with`` block the entries are written sorted by name (by
two processes for big trees, see :mod:`.parallel`), then the manifest.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import io
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

from ..errors import BundleError
from ..manifest import MANIFEST_NAME, Contents, manifest_chunks, manifest_parts
from .fswalk import walk
from .gitscan import git_commit_info
from .names import (
    GITCOMMIT,
    VCS_DIRS,
    check_utf8,
    clean_name,
    default_should_skip,
    inside,
    os_error,
    refuse_special,
    show,
    vcs_part,
)
from .parallel import ForkedTail, fork_split
from .sink import CHUNK, MiB
from .sources import DiskFile, InMemory, MemberSource, TempHolder, TempSlice, member_sources
from .tarformat import resolve_mtime
from .writer import TarWriter

#: Bundles smaller than this stay in memory; bigger ones spill to a temp file.
DEFAULT_SPOOL_THRESHOLD = 8 * MiB


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
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


class SpooledBuffer(tempfile.SpooledTemporaryFile):
    """The bundle, in memory while small, on disk past the threshold.

    ``getvalue()`` is there for code written against 0.x, whose ``.buffer``
    was a BytesIO; it reads the whole bundle, so spiro-deploy's own code
    never does (the client streams the file).
    """

    def seekable(self) -> bool:
        # SpooledTemporaryFile has no seekable() before Python 3.11, and
        # readers that check it would not rewind the bundle.
        return True

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

    def __init__(self, fileobj: BinaryIO | None = None, *,
                 spool_threshold: int = DEFAULT_SPOOL_THRESHOLD, mtime: int | None = None,
                 root=None, exclude: Iterable = ()):
        self._fileobj = fileobj
        self._spool_threshold = spool_threshold
        self._mtime_arg = mtime
        self.root = root
        self._exclude_paths = list(exclude)
        self._state = "new"
        self.contents: Contents | None = None

    @property
    def manifest(self) -> dict | None:
        """The manifest dict of the written bundle (None before it is written)."""
        return self.contents.manifest if self.contents is not None else None

    # -- context manager ----------------------------------------------------
    def __enter__(self) -> TarballBuilder:
        if self._state != "new":
            raise RuntimeError("a TarballBuilder can only be used once")
        self.mtime = resolve_mtime(self._mtime_arg)
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
                self.buffer = SpooledBuffer(max_size=self._spool_threshold,
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
        self._staging: TempHolder | None = None
        self._staging_size = 0
        self.warnings: list = []
        self.salt_file_count = 0
        self.sha256 = None
        self.size = None
        self.contents: Contents | None = None
        self.file_count = None
        self._state = "open"
        return self

    def __exit__(self, exc_type, exc, tb):
        self._state = "closing"
        try:
            if exc_type is None:
                with gc_paused():
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
    def _put(self, name: str, source, origin: str | None = None) -> None:
        if name in self._entries or name == MANIFEST_NAME:
            if origin is None:
                origin = source.shown(name)
            if name == MANIFEST_NAME:
                raise BundleError(f"{MANIFEST_NAME} is reserved for the bundle manifest; "
                                  f"rename {show(origin)}")
            self.warnings.append(f"{show(name)} was added twice; the one from {show(origin)} "
                                 "is kept")
        self._entries[name] = source

    def _explicit(self, path, what: str):
        """Stat a path given by the caller; return (stat, absolute path to open, boundary)."""
        shown = os.fspath(path)
        if isinstance(shown, bytes):
            shown = os.fsdecode(shown)
        check_utf8(shown, shown)
        abs_path = os.path.abspath(shown)
        try:
            st = os.stat(abs_path)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise BundleError(f"{what} {show(shown)} is a symlink loop") from None
            if isinstance(e, FileNotFoundError):
                if os.path.lexists(abs_path):
                    raise BundleError(f"{what} {show(shown)} is a broken symlink") from None
                raise BundleError(f"{what} {show(shown)} does not exist") from None
            raise os_error(shown, e) from None
        real = os.path.realpath(abs_path)
        resolves = f" (it resolves to {show(real)})" if real != abs_path else ""
        if self._root_real is not None:
            if not inside(real, self._root_real):
                raise BundleError(f"{what} {show(shown)} is outside the project directory "
                                  f"{show(self._root_real)}{resolves}")
            boundary = self._root_real
        else:
            boundary = real
        # Judged by what the path resolves to (and by how it is spelt, which
        # is what the member name is made from): .git/config often holds a
        # CI token in the remote URL.
        vcs = (vcs_part(real, self._root_real)
               or vcs_part(os.path.normpath(abs_path), self._root_abs))
        if vcs is not None:
            raise BundleError(f"{what} {show(shown)} is version-control metadata ({vcs}), which "
                              f"is never bundled{resolves}")
        if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) in self._excluded:
            raise BundleError(f"{what} {show(shown)} is a file that is never bundled (the token "
                              "file or the bundle's output)")
        return st, real, boundary, shown

    def add_saltdir(self, path) -> None:
        """Add the contents of a Salt state directory (``_salt``) at the bundle root."""
        self._check_open()
        st, real, boundary, shown = self._explicit(path, "salt directory")
        if not stat.S_ISDIR(st.st_mode):
            raise BundleError(f"salt directory {show(shown)} is not a directory")
        count = 0
        for rel, source in walk(os.path.abspath(shown), boundary, shown,
                                excluded=self._excluded):
            self._put(rel, source)
            count += 1
        self.salt_file_count += count

    def add_artifact(self, path, name) -> None:
        """Add a file or directory ``path`` under ``_artifacts/<name>``."""
        self._check_open()
        member = "_artifacts/" + clean_name(name, "artifact name")
        st, real, boundary, shown = self._explicit(path, "artifact")
        if not VCS_DIRS.isdisjoint(member.split("/")):
            raise BundleError(f"artifact name {show(name)} is version-control metadata, which is "
                              "never bundled")
        if stat.S_ISDIR(st.st_mode):
            for rel, source in walk(os.path.abspath(shown), boundary, shown,
                                    excluded=self._excluded):
                self._put(member + "/" + rel, source)
        elif stat.S_ISREG(st.st_mode):
            self._put(member, DiskFile(real, shown), shown)
        else:
            raise refuse_special(shown, st.st_mode)

    def add_virtual(self, name, data) -> None:
        """Add ``data`` (bytes) to the bundle as ``name``."""
        self._check_open()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"add_virtual() needs bytes, not {type(data).__name__}")
        name = clean_name(name, "bundle member name")
        if not VCS_DIRS.isdisjoint(name.split("/")):
            raise BundleError(f"{show(name)} is version-control metadata, which is never bundled")
        self._put(name, InMemory(bytes(data)), name)

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
            self.add_virtual(GITCOMMIT, info)

    def add_source(self, scanner: Callable) -> None:
        """Add source files under ``_source/``, from ``scanner(should_skip)``.

        The scanner yields ``(name, opener)``; each name is checked and each
        opener's file is copied to a staging file now (an opener may only be
        valid while its scanner runs), unless the opener is one of our
        :class:`~.sources.MemberSource` kinds.  A scanner that offers
        ``member_sources`` (:func:`fs_scanner` does) is walked through it.
        """
        self._check_open()
        entries = self._entries
        walk_sources = member_sources(scanner)
        if walk_sources is not None:
            # The names are checked already, and checking 50,000 names twice shows.
            for name, source in walk_sources(default_should_skip):
                key = "_source/" + name
                if key in entries:
                    self._put(key, source)
                else:
                    entries[key] = source
            return
        for name, opener in scanner(default_should_skip):
            if isinstance(name, str):
                parts = name.split("/")
                if "" in parts or "." in parts or ".." in parts or os.sep != "/":
                    name = clean_name(name, "source file name")
                    parts = name.split("/")
                else:
                    check_utf8(name, name)
            else:
                name = clean_name(name, "source file name")
                parts = name.split("/")
            if not VCS_DIRS.isdisjoint(parts):
                continue
            if isinstance(opener, MemberSource):
                source = opener
                holder = source.temp_file()
                if holder is not None and holder not in self._holders:
                    self._holders.append(holder)
            else:
                source = self._stage(opener, name)
                if source is None:
                    continue
            self._put("_source/" + name, source)

    def _stage(self, opener: Callable, name: str) -> TempSlice | None:
        """Copy a foreign scanner's file into our staging temp file.

        A third-party scanner's opener may only be valid while its generator
        runs, and the tar is written later, in name order.
        """
        try:
            f = opener()
        except OSError as e:
            raise os_error(name, e) from None
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
                self._staging = TempHolder()
            out = self._staging.file
            start = self._staging_size
            size = 0
            while True:
                chunk = f.read(CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                size += len(chunk)
            out.flush()
            self._staging_size += size
            return TempSlice(self._staging, start, size, mode, name)
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
            raise BundleError(f"{show(n)} is both a file and a directory in the bundle")
        return names

    def _write(self) -> None:
        entries = self._entries
        names = self._sorted_names()
        if self._staging is not None:
            self._staging.file.flush()
        split = fork_split(names)
        # Fork before the writer thread of TarWriter starts (see ForkedTail).
        tail = None
        if split:
            try:
                tail = ForkedTail(names, split, entries, self.mtime, self._excluded)
            except OSError:  # no fork today (out of processes or memory): one process
                tail = None
        try:
            w = TarWriter(self.buffer, self.mtime, self._excluded)
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
