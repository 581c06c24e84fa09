"""Member sources: where the bytes of each bundle member come from.

The builder first collects a map of member name -> source, then writes the
members in name order.  Every source is a :class:`MemberSource`; the writer
only talks to sources through that protocol:

* :meth:`~MemberSource.local_path` names the file on disk that holds the
  member, for the kinds the writer reads itself (:class:`DiskDir`,
  :class:`DiskFile`);
* :meth:`~MemberSource.open_member` gives size, mode and a ``readinto``
  for the others (:class:`InMemory`, :class:`TempSlice`);
* :meth:`~MemberSource.shown` names the member's origin in messages.

The scanners' protocol is here too: a scanner yields ``(name, opener)``
pairs; one that can yield the builder's own sources with names that are
already valid member names offers that walk as its ``member_sources``
attribute (see :func:`member_sources`).
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from functools import partial
from typing import BinaryIO

from ..errors import BundleError
from .names import join_show, os_error, show

#: How files to bundle are opened: never through a symlink in the last
#: component (walks resolve symlinks themselves), and never blocking on a fifo.
OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
              | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))

_HAVE_PREADV = hasattr(os, "preadv")


class MemberSource:
    """Where the bytes of bundle members come from (the protocol the writer uses)."""

    __slots__ = ()

    def local_path(self, name: str) -> str | None:
        """The file on disk holding member ``name``, or None if its bytes are elsewhere.

        The writer opens such a file itself and checks it as it reads it (a
        regular file, not excluded, the same size throughout).
        """
        return None

    def open_member(self, name: str) -> tuple[int, int, Callable]:
        """``(size, mode, readinto)`` of member ``name``, for a source with no local path.

        ``readinto(buffer)`` fills the buffer from the member's next bytes
        and returns how many it wrote, 0 at the end.
        """
        raise NotImplementedError

    def shown(self, name: str) -> str:
        """How messages name where member ``name`` comes from."""
        return name

    def temp_file(self) -> TempHolder | None:
        """A temporary file this source reads from; the builder closes it when done."""
        return None


class DiskFile(MemberSource):
    """A file on disk; also the opener that :func:`fs_scanner` yields.

    Calling it opens the file (``rb``).
    """

    __slots__ = ("path", "_base", "_rel")

    def __init__(self, path: str, base: str, rel: str = ""):
        self.path = path      # absolute; its last component is not a symlink
        self._base = base     # how messages name it: base + "/" + rel
        self._rel = rel

    def local_path(self, name: str) -> str:
        return self.path

    def shown(self, name: str = "") -> str:
        return join_show(self._base, self._rel) if self._rel else self._base

    def __call__(self) -> BinaryIO:
        try:
            fd = os.open(self.path, OPEN_FLAGS)
        except OSError as e:
            raise os_error(self.shown(), e) from None
        return open(fd, "rb", closefd=True)

    def __repr__(self):
        return f"<file opener {show(self.shown())}>"


class DiskDir(MemberSource):
    """A directory a walk listed; the source of each of its plain files.

    The builder maps every such file's member name to the one object of its
    directory (the file is the name's last component) rather than to an
    object of its own: at 50,000 files, per-file objects cost the scan their
    allocations and page faults, the forked writer its copy-on-write faults,
    and the build the time to free them.
    """

    __slots__ = ("path", "_base", "_rel")

    def __init__(self, path: str, base: str, rel: str):
        self.path = path      # absolute, ending with a separator
        self._base = base     # how messages name the walk's top
        self._rel = rel       # this directory under it: "" or ending with "/"

    def local_path(self, name: str) -> str:
        return self.path + name[name.rfind("/") + 1:]

    def shown(self, name: str) -> str:
        return join_show(self._base, self._rel + name[name.rfind("/") + 1:])

    def opener(self, name: str) -> DiskFile:
        """The opener of file ``name`` of this directory."""
        return DiskFile(self.path + name, self._base, self._rel + name)


class InMemory(MemberSource):
    """Bytes given by the caller (``add_virtual``)."""

    __slots__ = ("data", "mode")

    def __init__(self, data: bytes, mode: int = 0o644):
        self.data = data
        self.mode = mode

    def open_member(self, name: str) -> tuple[int, int, Callable]:
        return len(self.data), self.mode, io.BytesIO(self.data).readinto


class TempHolder:
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


class SliceReader:
    """A read-only binary file over ``size`` bytes at ``offset`` of a temp file."""

    def __init__(self, holder: TempHolder, offset: int, size: int, shown: str = ""):
        self._holder = holder
        self._pos = offset
        self._end = offset + size
        self._shown = shown
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
        left = self._end - self._pos
        if left <= 0:
            return 0
        if not _HAVE_PREADV:  # pragma: no cover - not Linux
            data = self.read(len(b))
            b[:len(data)] = data
            return len(data)
        mv = memoryview(b)
        got = os.preadv(self._holder.fd, [mv[:left] if len(mv) > left else mv], self._pos)
        if not got:
            raise self._truncated()
        self._pos += got
        return got

    def _truncated(self) -> BundleError:
        return BundleError(f"internal temporary file for {show(self._shown)} is truncated")

    def close(self):
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class TempSlice(MemberSource):
    """Bytes held in one of our temp files (``git archive`` output, staged data).

    Also the opener that :func:`git_scanner` yields: calling it gives a
    :class:`SliceReader`.
    """

    __slots__ = ("holder", "offset", "size", "mode", "_shown")

    def __init__(self, holder: TempHolder, offset: int, size: int, mode: int, shown: str):
        self.holder = holder
        self.offset = offset
        self.size = size
        self.mode = mode
        self._shown = shown

    def __call__(self) -> SliceReader:
        return SliceReader(self.holder, self.offset, self.size, self._shown)

    def open_member(self, name: str) -> tuple[int, int, Callable]:
        return self.size, self.mode, self().readinto

    def shown(self, name: str = "") -> str:
        return self._shown

    def temp_file(self) -> TempHolder:
        return self.holder

    def __repr__(self):
        return f"<opener {show(self._shown)}>"


def member_sources(scanner: Callable) -> Callable | None:
    """The scanner's walk that yields the builder's own sources, or None.

    A scanner may offer, as its attribute ``member_sources``, a function
    called like the scanner that yields ``(name, source)`` with each source a
    :class:`MemberSource` and each name already a valid member name (UTF-8,
    relative, normalised, no VCS part): the builder then keeps them as they
    are, checking nothing twice.  A :func:`functools.partial` of such a
    scanner offers it too, with the same arguments.
    """
    if isinstance(scanner, partial):
        inner = getattr(scanner.func, "member_sources", None)
        return partial(inner, *scanner.args, **scanner.keywords) if inner is not None else None
    return getattr(scanner, "member_sources", None)
