"""Member-name rules, and how messages name the files they are about.

What a bundle member may be called (relative, UTF-8, no ``..``, never
version-control metadata), how a path is shown in a one-line message, and
the one-line :class:`~spirodeploy.errors.BundleError` for each way a file
can fail while it is bundled.  Everything else in the builder imports this.
"""

from __future__ import annotations

import errno
import os
import stat

from ..errors import BundleError

#: Version-control metadata directories that are never bundled.
VCS_DIRS = frozenset({".git", ".hg", ".svn", ".bzr", "_darcs", "CVS", ".pijul"})
#: The member that holds the commit the bundle was built from.
GITCOMMIT = ".gitcommit"


def show(path) -> str:
    """A path as it should appear in a one-line message."""
    if isinstance(path, bytes):
        return repr(path)
    path = os.fspath(path)
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return repr(os.fsencode(path))
    return path if path.isprintable() else repr(path)


def join_show(base: str, rel: str) -> str:
    """``rel`` below ``base``, as messages name it (no ``./`` in front)."""
    if base in ("", "."):
        return rel
    return base.rstrip("/") + "/" + rel


def inside(path: str, base: str) -> bool:
    """True if ``path`` is ``base`` or below it (both absolute, normalised)."""
    if path == base:
        return True
    if not base.endswith(os.sep):
        base += os.sep
    return path.startswith(base)


def vcs_part(real: str, base: str | None = None) -> str | None:
    """The VCS metadata directory (a :data:`VCS_DIRS` name) that ``real`` lies in, or None.

    ``real`` is a resolved absolute path.  Only the part below ``base`` (when
    ``real`` is inside it) is judged, so a project that itself lives under,
    say, a ``CVS`` directory is not refused as a whole.  Called where paths
    enter (explicit paths, symlink targets), never per regular file.
    """
    if base is not None and inside(real, base):
        real = real[len(base):]
    for part in real.split(os.sep):
        if part in VCS_DIRS:
            return part
    return None


def check_utf8(name: str, shown: str) -> None:
    """Refuse a file name that is not valid UTF-8 (tar and the manifest need UTF-8)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise BundleError(f"file name is not valid UTF-8: {show(shown)}") from None


def clean_name(name, what: str) -> str:
    """Normalise a member name; refuse absolute names and ``..``."""
    if isinstance(name, bytes):
        try:
            name = name.decode("utf-8")
        except UnicodeDecodeError:
            raise BundleError(f"{what} is not valid UTF-8: {name!r}") from None
    name = os.fspath(name)
    if not isinstance(name, str):
        raise BundleError(f"{what} must be a string, not {name!r}")
    check_utf8(name, name)
    if os.sep != "/":
        name = name.replace(os.sep, "/")
    parts = name.split("/")
    if "" in parts or "." in parts or ".." in parts:
        if name.startswith("/"):
            raise BundleError(f"{what} {show(name)} is absolute; bundle members must be relative")
        parts = [p for p in parts if p not in ("", ".")]
        if ".." in parts:
            raise BundleError(f"{what} {show(name)} contains '..' and would escape the bundle")
        name = "/".join(parts)
    if not name:
        raise BundleError(f"{what} {name!r} is empty")
    if "\0" in name:
        raise BundleError(f"{what} {show(name)} contains a NUL byte")
    return name


class SkipByName:
    """A ``should_skip`` that judges a path by its last component only.

    Walks read :attr:`names` and prune those entries themselves instead of
    calling it for every file (50,000 calls show in a build).
    """

    __slots__ = ("names",)

    def __init__(self, names):
        self.names = frozenset(names)

    def __call__(self, path: str) -> bool:
        return path.rstrip("/").rpartition("/")[2] in self.names


#: The ``should_skip`` that :meth:`TarballBuilder.add_source` passes to
#: scanners: VCS metadata and ``_salt`` (bundled at the root already), by the
#: last path component, like spiro-deploy 0.x.
default_should_skip = SkipByName(VCS_DIRS | {"_salt"})


# --------------------------------------------------------------------------
# one-line errors about a file being bundled

def _special_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a fifo"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    return "not a regular file"


def changed(shown: str, got: int, size: int) -> BundleError:
    """The file ``shown`` did not have the ``size`` it had when it was opened."""
    if got > size:
        return BundleError(f"{show(shown)} grew while the bundle was being built")
    return BundleError(f"{show(shown)} shrank while the bundle was being built "
                       f"({got} of {size} bytes)")


def refuse_special(shown: str, mode: int) -> BundleError:
    return BundleError(f"{show(shown)} is {_special_kind(mode)}; only regular files, "
                       "directories and symlinks to them can be bundled")


def os_error(shown: str, err: OSError, during: str = "") -> BundleError:
    """Map an OSError on a file being bundled to a one-line BundleError."""
    shown = show(shown)
    if isinstance(err, FileNotFoundError):
        return BundleError(f"{shown} vanished while the bundle was being built")
    if isinstance(err, PermissionError):
        return BundleError(f"{shown} is not readable (permission denied)")
    if err.errno == errno.ELOOP:
        return BundleError(f"{shown} was replaced by a symlink while the bundle was being built")
    return BundleError(f"cannot read {shown}{during}: {err.strerror or err}")
