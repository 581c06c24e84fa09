"""The tar writer: the sorted members into the hashing sink, then the manifest.

A member is written one of two ways:

* the fast path, inlined in :meth:`TarWriter.write_entries`: a small file
  on disk with a short ASCII name (the common case: tens of thousands of
  source files) costs one open, fstat, read and close, with the ustar
  header, data and padding built in place in the output buffer;
* the general path, :meth:`TarWriter.write_member`: any size, any name,
  any source (a file on disk through :meth:`TarWriter.write_file`, bytes, a
  slice of a temporary file), read through the source's ``readinto``.

Each member's sha256 is taken as it is written; the records go into the
manifest.  The ``.gitcommit`` member, whatever its source, is always
written by the general path, which keeps its text for the manifest.
"""

from __future__ import annotations

import hashlib
import os
import stat
from functools import partial

from ..manifest import MANIFEST_NAME
from .names import GITCOMMIT, changed, os_error, refuse_special
from .sink import FileRange, Sink
from .sources import OPEN_FLAGS, MemberSource
from .tarformat import BLOCK, RECORD, ZEROS, TarHeaders, file_mode

#: Files up to this size are read in one call, by the fast path.
SMALL = 256 * 1024
#: A ``.gitcommit`` up to this size is kept as the manifest's ``gitcommit``.
GITCOMMIT_MAX = 1 << 20

if hasattr(os, "readv"):
    def _readinto(fd: int, mv) -> int:
        return os.readv(fd, [mv])
else:  # pragma: no cover - not Linux
    def _readinto(fd: int, mv) -> int:
        data = os.read(fd, len(mv))
        mv[:len(data)] = data
        return len(data)


class TarWriter:
    """Writes sorted entries as a deterministic POSIX tar in one pass.

    ``files`` collects the manifest records ``(name, size, sha256, mode)``
    in write order; ``gitcommit`` is the text of the ``.gitcommit`` member,
    if one was written.
    """

    def __init__(self, out, mtime: int, excluded: frozenset, hashing: bool = True,
                 threaded: bool = True):
        self.sink = Sink(out, hashing=hashing, threaded=threaded)
        self.headers = TarHeaders(mtime)
        self.excluded = excluded
        self.files: list = []
        self.gitcommit: str | None = None

    def write_entries(self, names, entries: dict) -> None:
        """Write ``entries[name]`` (a :class:`MemberSource`) for every name, in order."""
        readv = getattr(os, "readv", None)
        if readv is None:  # pragma: no cover - not Linux: no fast path
            for name in names:
                self.write_source(name, entries[name])
            return
        sink = self.sink
        excluded = self.excluded
        files_append = self.files.append
        sha256 = hashlib.sha256
        fstat = os.fstat
        os_open = os.open
        os_close = os.close
        flags = OPEN_FLAGS
        small = SMALL
        zeros = ZEROS
        gitcommit = GITCOMMIT
        headers = self.headers
        base_sum = headers.base_sum
        prefix = {m: b"%07o\0" % m + headers.uidgid for m in (0o644, 0o755)}
        prefix_sum = {m: sum(b"%07o\0" % m) for m in prefix}  # uid/gid are in base_sum
        mtime_f = headers.mtime_f
        rest = b"0" + headers.mid + bytes(167)
        chunk = sink.chunk
        for name in names:
            src = entries[name]
            if len(name) > 100 or not name.isascii() or name == gitcommit:
                self.write_source(name, src)
                continue
            path = src.local_path(name)
            if path is None:
                self.write_source(name, src)
                continue
            try:
                fd = os_open(path, flags)
            except OSError as e:
                raise os_error(src.shown(name), e) from None
            try:
                try:
                    st = fstat(fd)
                    size = st.st_size
                    st_mode = st.st_mode
                    if size >= small or (st_mode & 0o170000) != 0o100000 or (
                            excluded and (st.st_dev, st.st_ino) in excluded):
                        self.write_file(name, path, src, fd=fd, st=st)
                        continue
                    mode = 0o755 if st_mode & 0o111 else 0o644
                    pad = -size % 512
                    if chunk - sink.fill < 513 + size + pad:
                        sink.flush()
                    # header at h, data at h+512 .. e, padding e .. e+pad; one
                    # extra byte is read past the end to notice a file that grew
                    h = sink.fill
                    e = h + 512 + size
                    mv = sink.mv
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
                        raise changed(src.shown(name), got, size)
                    digest = sha256(mv[h + 512:e]).hexdigest()
                    if pad:
                        mv[e:e + pad] = zeros[:pad]
                    sink.fill = e + pad
                except OSError as e:
                    raise os_error(src.shown(name), e, " while bundling it") from None
                files_append((name, size, digest, mode))
            finally:
                os_close(fd)

    def write_source(self, name: str, src: MemberSource) -> None:
        """Write member ``name`` from ``src`` by the general path."""
        path = src.local_path(name)
        if path is not None:
            self.write_file(name, path, src)
        else:
            size, mode, readinto = src.open_member(name)
            self.write_member(name, size, mode, readinto, src)

    def write_file(self, name: str, path: str, src: MemberSource, fd: int | None = None,
                   st: os.stat_result | None = None) -> None:
        """Write member ``name`` from the file ``path`` (unless it is excluded).

        ``fd``/``st``: the file already opened and stat'ed by the caller (who
        then also closes it).
        """
        own = fd is None
        if own:
            try:
                fd = os.open(path, OPEN_FLAGS)
            except OSError as e:
                raise os_error(src.shown(name), e) from None
        try:
            if st is None:
                st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise refuse_special(src.shown(name), st.st_mode)
            if self.excluded and (st.st_dev, st.st_ino) in self.excluded:
                return
            self.write_member(name, st.st_size, file_mode(st.st_mode), partial(_readinto, fd),
                              src)
        except OSError as e:
            raise os_error(src.shown(name), e, " while bundling it") from None
        finally:
            if own:
                os.close(fd)

    def write_member(self, name: str, size: int, mode: int, readinto,
                     src: MemberSource) -> None:
        """Write one member of ``size`` bytes that ``readinto(buffer)`` delivers.

        The data is read straight into the output buffer; a source that ends
        early, or still has bytes after ``size``, is refused (a file changed
        while it was bundled).
        """
        sink = self.sink
        sink.write(self.headers.header(name, mode, size))
        h = hashlib.sha256()
        kept = [] if name == GITCOMMIT and size <= GITCOMMIT_MAX else None
        left = size
        while left:
            tail = sink.tail(1)
            if len(tail) > left:
                tail = tail[:left]
            got = readinto(tail)
            if not got:
                raise changed(src.shown(name), size - left, size)
            data = tail[:got]
            h.update(data)
            if kept is not None:
                kept.append(bytes(data))
            sink.commit(got)
            left -= got
        if readinto(bytearray(1)):
            raise changed(src.shown(name), size + 1, size)
        pad = -size % BLOCK
        if pad:
            sink.write(ZEROS[:pad])
        self.files.append((name, size, h.hexdigest(), mode))
        if kept is not None:
            self.gitcommit = b"".join(kept).decode("utf-8", "replace")

    def finish(self, manifest: list) -> tuple[str, int]:
        """Write the manifest (:func:`manifest_chunks`: bytes and file ranges) and the end.

        Returns the bundle's sha256 and size.
        """
        sink = self.sink
        size = sum(map(len, manifest))
        sink.write(self.headers.header(MANIFEST_NAME, 0o644, size))
        for chunk in manifest:
            if type(chunk) is FileRange:
                sink.copy_from(chunk)
            else:
                sink.write(chunk)
        sink.write(ZEROS[:-size % BLOCK])
        sink.write(ZEROS[:2 * BLOCK])          # end-of-archive marker
        sink.write(ZEROS[:-sink.size % RECORD])  # pad to a whole record
        return sink.close()
