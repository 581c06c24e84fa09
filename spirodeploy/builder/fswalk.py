"""The file-system walk: a directory tree to member names and sources.

Used for ``_salt``, artifact directories and :func:`fs_scanner`.  Walks in
name order; prunes version-control metadata by name, what ``should_skip``
and ``.spiroignore`` (gitignore syntax, at the scanned root) say, and
excluded files (by device and inode); follows symlinks that stay inside the
boundary and refuses the rest (outside, broken, loops); refuses device
files, fifos and sockets.  A symlink that resolves into VCS metadata is
skipped, as the directory itself would be.
"""

from __future__ import annotations

import errno
import operator
import os
import stat
from collections.abc import Callable, Iterator
from typing import BinaryIO

from ..errors import BundleError
from .names import (
    VCS_DIRS,
    SkipByName,
    check_utf8,
    inside,
    join_show,
    os_error,
    refuse_special,
    show,
    vcs_part,
)
from .sources import DiskDir, DiskFile, MemberSource

#: The ignore file read by :func:`fs_scanner` at its root.
IGNORE_FILE = ".spiroignore"
_IGNORE_MAX = 4 << 20


def load_ignore(root_abs: str, root_shown: str):
    """Return a matcher for ``<root>/.spiroignore`` or None."""
    path = os.path.join(root_abs, IGNORE_FILE)
    try:
        with open(path, "rb") as fh:
            data = fh.read(_IGNORE_MAX + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise os_error(join_show(root_shown, IGNORE_FILE), e) from None
    shown = show(join_show(root_shown, IGNORE_FILE))
    if len(data) > _IGNORE_MAX:
        raise BundleError(f"{shown} is larger than 4 MiB")
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise BundleError(f"{shown} is not valid UTF-8") from None
    try:
        import pathspec
    except ImportError:  # pragma: no cover - pathspec is a dependency
        raise BundleError(f"reading {shown} needs the 'pathspec' package") from None
    try:
        if hasattr(pathspec, "GitIgnoreSpec"):
            spec = pathspec.GitIgnoreSpec.from_lines(lines)
        else:  # pragma: no cover - pathspec < 0.10
            spec = pathspec.PathSpec.from_lines("gitwildmatch", lines)
    except Exception as e:
        raise BundleError(f"{shown} has an invalid pattern: {e}") from None
    return spec.match_file


_entry_name = operator.attrgetter("name")  # the sort key of directory entries (C, not Python)


def walk(top_abs: str, boundary: str, top_shown: str, *,
         skip: Callable[[str], bool] | None = None,
         ignore: Callable[[str], bool] | None = None,
         excluded: frozenset = frozenset()) -> Iterator[tuple[str, MemberSource]]:
    """Yield ``(relative posix name, source)`` for every file under ``top_abs``.

    The source of a file is its directory's :class:`DiskDir` (the file is the
    name's last component) or, for a symlink to a file, a :class:`DiskFile`
    of the target.  The names are valid member names.

    VCS directories are pruned; ``skip(rel)`` and ``ignore(rel)`` (with a
    trailing ``/`` for directories) prune more; a ``skip`` that is a
    :class:`SkipByName` is applied by name here, without a call per entry.
    Symlinks are followed when their target is inside ``boundary`` (absolute,
    real); a loop is refused.
    """
    excluded_inodes = {ino for _dev, ino in excluded}
    pruned = VCS_DIRS
    if isinstance(skip, SkipByName):
        pruned = pruned | skip.names
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
            looped = show(join_show(top_shown, rel_dir.rstrip("/")))
            raise BundleError(f"symlink loop: {looped} leads back into itself")
        active.add(real_dir)
        stack.append((None, real_dir))
        try:
            with os.scandir(dir_path) as it:
                entries = sorted(it, key=_entry_name)
        except OSError as e:
            raise os_error(join_show(top_shown, rel_dir.rstrip("/")) or top_shown, e) from None
        subdirs = []
        here = DiskDir(dir_path + os.sep, top_shown, rel_dir)
        for entry in entries:
            name = entry.name
            rel = rel_dir + name
            if not name.isascii():
                check_utf8(name, join_show(top_shown, rel))
            if name in pruned:
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
                    shown = join_show(top_shown, rel)
                    if ignore is not None and ignore(rel):
                        continue
                    try:
                        st = os.stat(entry.path)
                    except OSError as e:
                        if e.errno == errno.ELOOP:
                            raise BundleError(f"symlink loop at {show(shown)}") from None
                        if isinstance(e, FileNotFoundError):
                            raise BundleError(f"{show(shown)} is a broken symlink (its target "
                                              "does not exist)") from None
                        raise os_error(shown, e) from None
                    target = os.path.realpath(entry.path)
                    if not inside(target, boundary):
                        raise BundleError(f"symlink {show(shown)} points outside "
                                          f"{show(boundary)} (to {show(target)})")
                    if vcs_part(target, boundary) is not None:
                        continue  # leads into VCS metadata: pruned like the directory
                    if stat.S_ISDIR(st.st_mode):
                        if ignore is not None and ignore(rel + "/"):
                            continue
                        subdirs.append((target, rel + "/", target))
                    elif stat.S_ISREG(st.st_mode):
                        if excluded and (st.st_dev, st.st_ino) in excluded:
                            continue
                        yield rel, DiskFile(target, top_shown, rel)
                    else:
                        raise refuse_special(shown, st.st_mode)
                else:
                    if ignore is not None and ignore(rel):
                        continue
                    raise refuse_special(join_show(top_shown, rel),
                                          entry.stat(follow_symlinks=False).st_mode)
            except BundleError:
                raise
            except OSError as e:
                raise os_error(join_show(top_shown, rel), e) from None
        # reverse order on the stack so directories come out sorted
        stack.extend(reversed(subdirs))


def fs_scanner(should_skip: Callable[[str], bool],
               root: str = ".") -> Iterator[tuple[str, Callable[[], BinaryIO]]]:
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
    for name, source in fs_member_sources(should_skip, root):
        if isinstance(source, DiskDir):
            source = source.opener(name[name.rfind("/") + 1:])
        yield name, source


def fs_member_sources(should_skip: Callable[[str], bool],
                      root: str = ".") -> Iterator[tuple[str, MemberSource]]:
    """:func:`fs_scanner` yielding :func:`walk`'s sources, one per directory.

    The builder walks :func:`fs_scanner` through this (see
    :func:`~spirodeploy.builder.sources.member_sources`): no object per file.
    """
    root_shown = os.fspath(root)
    root_abs = os.path.abspath(root_shown)
    if not os.path.isdir(root_abs):
        raise BundleError(f"source directory {show(root_shown)} does not exist")
    ignore = load_ignore(root_abs, root_shown)
    yield from walk(root_abs, os.path.realpath(root_abs), root_shown,
                    skip=should_skip, ignore=ignore)


fs_scanner.member_sources = fs_member_sources
