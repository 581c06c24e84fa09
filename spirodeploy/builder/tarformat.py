"""Tar headers: the deterministic POSIX ustar (and pax) format of every member.

Every member gets the same owner (uid/gid 0, empty names) and one integer
mtime; mode is 0o755 if any execute bit is set, else 0o644.  A pax extended
header is written only for a name that does not fit ustar or is not ASCII,
or a file of 8 GiB or more; pax headers never carry times.
"""

from __future__ import annotations

import os

from ..errors import BundleError

#: The mtime of every member when SOURCE_DATE_EPOCH is not set (1980-01-01 UTC).
DEFAULT_MTIME = 315532800

BLOCK = 512
RECORD = 20 * BLOCK        # tar record size (what tarfile and GNU tar pad to)
ZEROS = bytes(RECORD)
MAX_OCTAL11 = 8 ** 11      # largest value (exclusive) of a 12-byte octal field


def resolve_mtime(mtime: int | None) -> int:
    """The members' mtime: ``mtime``, else ``SOURCE_DATE_EPOCH``, else :data:`DEFAULT_MTIME`."""
    if mtime is None:
        env = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
        if env:
            try:
                mtime = int(env)
            except ValueError:
                raise BundleError(f"SOURCE_DATE_EPOCH={env!r} is not a whole number "
                                  "of seconds") from None
        else:
            mtime = DEFAULT_MTIME
    mtime = int(mtime)
    if not 0 <= mtime < MAX_OCTAL11:
        raise BundleError(f"bundle mtime {mtime} is out of range")
    return mtime


def file_mode(st_mode: int) -> int:
    """The mode a member gets: 0o755 if any execute bit is set, else 0o644."""
    return 0o755 if st_mode & 0o111 else 0o644


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _pax_record(key: str, value: str) -> bytes:
    payload = f" {key}={value}\n".encode()
    n = len(payload)
    length = n + len(str(n))
    while length != n + len(str(length)):
        length = n + len(str(length))
    return str(length).encode("ascii") + payload


class TarHeaders:
    """Makes the headers of one bundle (its mtime fixed).

    The fixed fields are kept, with their checksum, so that a header costs
    one join; the writer's fast path builds ustar headers from them inline.
    """

    def __init__(self, mtime: int):
        self.mtime_f = _octal(mtime, 12)
        self.uidgid = _octal(0, 8) * 2
        # After the checksum field: typeflag, then linkname (100),
        # magic+version (8), uname+gname (64), devmajor+devminor (16), prefix.
        self.mid = bytes(100) + b"ustar\x0000" + bytes(64) + _octal(0, 8) * 2
        # the checksum of the fixed fields, the checksum field itself as spaces
        self.base_sum = sum(self.uidgid) + sum(self.mtime_f) + 8 * 32 + sum(self.mid)

    def ustar(self, name_b: bytes, prefix_b: bytes, mode: int, size: int,
              typeflag: bytes = b"0") -> bytes:
        mode_f = b"%07o\0" % mode
        size_f = b"%011o\0" % size
        chk = (self.base_sum + sum(name_b) + sum(prefix_b) + sum(mode_f) + sum(size_f)
               + typeflag[0])
        return b"".join((name_b, bytes(100 - len(name_b)), mode_f, self.uidgid, size_f,
                         self.mtime_f, b"%06o\0 " % chk, typeflag, self.mid, prefix_b,
                         bytes(167 - len(prefix_b))))

    def header(self, name: str, mode: int, size: int) -> bytes:
        """The header block(s) of a regular file: ustar, or pax + ustar."""
        name_b = name.encode("utf-8")
        big = size >= MAX_OCTAL11
        if name.isascii() and not big:
            if len(name_b) <= 100:
                return self.ustar(name_b, b"", mode, size)
            # ustar: split at a '/' into prefix (<= 155) and name (<= 100)
            i = name_b.find(b"/", len(name_b) - 101)
            if 0 < i <= 155 and i < len(name_b) - 1:
                return self.ustar(name_b[i + 1:], name_b[:i], mode, size)
        records = b""
        if not name.isascii() or len(name_b) > 100:
            records += _pax_record("path", name)
        if big:
            records += _pax_record("size", str(size))
        pax = self.ustar(b"././@PaxHeader", b"", 0o644, len(records), b"x")
        pad = -len(records) % BLOCK
        short = name_b[:100]
        while short:  # do not cut a UTF-8 sequence in half
            try:
                short.decode("utf-8")
                break
            except UnicodeDecodeError:
                short = short[:-1]
        return pax + records + ZEROS[:pad] + self.ustar(short, b"", mode, 0 if big else size)
