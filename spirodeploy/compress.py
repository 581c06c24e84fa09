"""Gzip-compressed bundles: the builder's tar, gzipped as it is written.

SpiroFS opens a bundle with tarfile's auto-detection, so a gzip-compressed
tar deploys as is.  :class:`GzipWriter` is a write-only file that the
builder writes its tar into (it stands where the upload queue or the
output file would): it compresses each block as it comes, so a compressed
bundle streams into the upload as it is built and memory stays flat.  It is
called from the builder's writer thread, so the compression runs beside the
thread that reads the files (the deflate code releases the GIL).

The gzip is reproducible: the header is fixed (no file name, mtime 0, XFL 0,
OS 255 "unknown"), so the same inputs and the same compressor give the same
bytes.  Different compressors (ISA-L or zlib) give different, equally valid
deflate data; :func:`compressor` names the one in use.

The compressor is ISA-L (the ``isal`` package) when it is installed, else
Python's zlib at the same level: at level 1 ISA-L compresses about 7x as
fast for the same ratio (see the README's design notes).
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO, NamedTuple

from .errors import BundleError, UsageError

#: Compression formats the ``compress`` option accepts.
FORMATS = ("gzip",)
#: Deflate level: 1 is the fastest and, on ISA-L, as dense as 2 and 3 within 1%.
DEFAULT_LEVEL = 1
#: Compressed bytes are handed on in blocks of at least this size (the upload
#: queue counts blocks, so small pieces would not bound its memory).
BLOCK = 1 << 20
# ID1 ID2 CM=deflate FLG=0 (no name, no comment, no extra) MTIME=0 XFL=0 OS=255.
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_SPOOL = 8 << 20
#: Input between two heap trims (see :func:`_heap_trimmer`).
TRIM_EVERY = 32 << 20


class Compressor(NamedTuple):
    """A raw-deflate implementation: ``compressobj(level)`` and ``crc32(data, value)``."""

    name: str
    compressobj: Callable[[int], Any]
    crc32: Callable[..., int]
    level: int
    trims_heap: bool = False


def compressor(prefer: str | None = None, level: int = DEFAULT_LEVEL) -> Compressor:
    """The deflate implementation to use: ISA-L when installed, else zlib.

    ``prefer`` forces ``"isal"`` or ``"zlib"`` (for tests and benchmarks).
    ISA-L has levels 0-3; a zlib level above 3 is given to it as 3.
    """
    if prefer in (None, "isal"):
        try:
            import isal
            from isal import isal_zlib
        except ImportError:
            if prefer == "isal":
                raise UsageError("the isal package is not installed") from None
        else:
            isal_level = min(level, 3)
            return Compressor(
                f"isal {getattr(isal, '__version__', '?')} level {isal_level}",
                lambda lvl: isal_zlib.compressobj(lvl, isal_zlib.DEFLATED, -15),
                isal_zlib.crc32, isal_level, trims_heap=True)
    if prefer not in (None, "isal", "zlib"):
        raise UsageError(f"unknown compressor {prefer!r} (use isal or zlib)")
    return Compressor(f"zlib {zlib.ZLIB_RUNTIME_VERSION} level {level}",
                      lambda lvl: zlib.compressobj(lvl, zlib.DEFLATED, -15),
                      zlib.crc32, level)


def check_format(value: str | bool | int | None) -> str | None:
    """``compress`` as given -> ``"gzip"`` or None.

    A format name, or yes/no the way Salt users write it (``True``,
    ``"yes"``, ``"on"``, ``1`` mean gzip; ``False``, ``"no"``, ``"off"``,
    ``0``, ``None``, ``""`` mean none).  Anything else is a UsageError.
    """
    if value is None or value is False or value == 0:
        return None
    if value is True or value == 1:
        return "gzip"
    text = str(value).strip().lower()
    if text in FORMATS:
        return text
    if text in ("true", "yes", "on", "1"):
        return "gzip"
    if text in ("false", "no", "off", "0", "", "none"):
        return None
    raise UsageError(f"compress: unknown compression {value!r} (use gzip, or yes/no)")


def _heap_trimmer() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None elsewhere.

    ISA-L's ``compress`` returns output shorter than the buffer it allocated;
    with glibc the freed tails were not reused, and a client's peak RSS grew
    by about 35 MiB per GiB compressed (measured; flat with
    ``MALLOC_TRIM_THRESHOLD_`` set, so it is free memory, not a leak).
    Trimming every :data:`TRIM_EVERY` bytes keeps it flat for ~25 ms a GiB.
    """
    try:
        import ctypes

        return ctypes.CDLL(None).malloc_trim
    except (ImportError, OSError, AttributeError):
        return None


class GzipWriter:
    """A write-only file that gzips what is written into ``out``.

    ``out`` gets the gzip in blocks of :data:`BLOCK` bytes (the last one
    shorter); :meth:`close` writes the rest and the trailer, and leaves
    ``out`` open.  Afterwards :attr:`sha256` and :attr:`size` describe the
    compressed bytes, :attr:`tar_size` what was written in.
    """

    whole_writes = True  # the builder then hands over whole 1 MiB buffers

    def __init__(self, out: BinaryIO, *, codec: Compressor | None = None):
        self._out = out
        self.codec = codec or compressor()
        self._deflate = self.codec.compressobj(self.codec.level)
        self._crc32 = self.codec.crc32
        self._crc = 0
        self.tar_size = 0
        self._hash = hashlib.sha256()
        self.size = 0
        self._pending = bytearray(GZIP_HEADER)
        self.closed = False
        self._trim = _heap_trimmer() if self.codec.trims_heap else None
        self._next_trim = TRIM_EVERY

    def write(self, data: Any) -> int:
        n = len(data)
        self._crc = self._crc32(data, self._crc)
        self.tar_size += n
        piece = self._deflate.compress(data)
        if piece:
            self._pending += piece
            while len(self._pending) >= BLOCK:
                self._hand_on(BLOCK)
        if self._trim is not None and self.tar_size >= self._next_trim:
            self._next_trim += TRIM_EVERY
            self._trim(0)
        return n

    def _hand_on(self, n: int) -> None:
        # Blocks of one size, like the plain tar's: allocations of varying
        # sizes freed by another thread fragmented the heap (RSS grew).
        block = bytes(self._pending[:n])
        del self._pending[:n]
        self._hash.update(block)
        self.size += len(block)
        self._out.write(block)

    def flush(self) -> None:
        pass  # a deflate flush would cost ratio; the bytes go on at close()

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        """Finish the gzip (the rest of the deflate data and the trailer)."""
        if self.closed:
            return
        self.closed = True
        self._pending += self._deflate.flush()
        self._pending += struct.pack("<II", self._crc & 0xFFFFFFFF, self.tar_size & 0xFFFFFFFF)
        while self._pending:
            self._hand_on(min(BLOCK, len(self._pending)))

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


class _Tee:
    """Hands each block to the upload (``first``) and to the output file."""

    whole_writes = True

    def __init__(self, first: BinaryIO, file: BinaryIO):
        self._first = first
        self._file = file

    def write(self, data: Any) -> int:
        self._file.write(data)
        return self._first.write(data)

    def flush(self) -> None:
        self._file.flush()


class CompressedBundle:
    """A builder ``Bundle`` whose bytes went out gzipped.

    ``sha256``, ``size`` and ``file`` are those of the gzip (what is uploaded
    and written to ``output``); ``tar_sha256`` and ``tar_size`` those of the
    plain tar inside; ``compression`` is ``"gzip"`` and ``compressor`` names
    the implementation.  Everything else (manifest, file count, digest, ...)
    is the plain bundle's.
    """

    compression = "gzip"

    def __init__(self, bundle: Any, gz: GzipWriter, file: BinaryIO | None, path: str | None):
        self._bundle = bundle
        self.sha256 = gz.sha256
        self.size = gz.size
        self.tar_sha256 = bundle.sha256
        self.tar_size = bundle.size
        self.compressor = gz.codec.name
        self.file = file
        self.path = path

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bundle, name)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        self._bundle.close()

    def __enter__(self) -> CompressedBundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<CompressedBundle {self.file_count} files, {self.size} bytes gzip "
                f"({self.tar_size} tar), sha256 {self.sha256}>")


def build_compressed(root: str = ".", *, stream: BinaryIO | None = None,
                     output: str | None = None, exclude: Iterable[str] = (),
                     codec: Compressor | None = None, **options: Any) -> CompressedBundle:
    """:func:`spirodeploy.builder.build_bundle`, gzip-compressed.

    ``stream`` gets the gzip as it is built; ``output`` (a path) gets it too,
    replaced atomically once the bundle is complete.  Without ``stream`` the
    gzip is also kept in a temporary file (spilled to disk past 8 MiB), which
    is then the bundle's ``file``, at position 0.  Other options are
    :func:`~spirodeploy.builder.build_bundle`'s.
    """
    from .builder import build_bundle

    excluded = list(exclude)
    out_file, tmp_path = None, None
    if output is not None:
        output = os.fspath(output)
        out_abs = os.path.abspath(output)
        if os.path.isdir(out_abs):
            raise BundleError(f"output {output} is a directory")
        try:
            # Mode 0666 less the umask, like the plain output (mkstemp's is 0600).
            fd, tmp_path = tempfile.mkstemp(prefix=f".{os.path.basename(out_abs)}.",
                                            suffix=".tmp", dir=os.path.dirname(out_abs))
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
        except OSError as exc:
            raise BundleError(f"cannot write output {output}: {exc.strerror or exc}") from None
        out_file = os.fdopen(fd, "w+b")
        excluded += [out_abs, tmp_path]  # never bundle the output, old or new
    if stream is None:
        keep = out_file if out_file is not None else tempfile.SpooledTemporaryFile(_SPOOL)
        target: Any = keep
    else:
        keep = out_file
        target = stream if out_file is None else _Tee(stream, out_file)
    gz = GzipWriter(target, codec=codec)
    try:
        bundle = build_bundle(root, stream=gz, exclude=excluded, **options)
        try:
            gz.close()
            if keep is not None:
                keep.flush()
                keep.seek(0)
            if tmp_path is not None:
                try:
                    os.replace(tmp_path, output)
                except OSError as exc:
                    raise BundleError(f"cannot write output {output}: "
                                      f"{exc.strerror or exc}") from None
                tmp_path = None
        except BaseException:
            bundle.close()
            raise
    except BaseException:
        if keep is not None:
            keep.close()
        if tmp_path is not None:
            try:
                os.unlink(tmp_path)
            except OSError:
                pass
        raise
    return CompressedBundle(bundle, gz, keep, output)
