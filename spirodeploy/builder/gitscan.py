"""The git scanner: a commit's files, from ``git archive HEAD``, and ``.gitcommit``.

The archive is spooled to an anonymous temporary file (never held in
memory); each file becomes a :class:`~.sources.TempSlice` of it.  Symlinks
are resolved inside the archive (with :mod:`spirodeploy.tarcheck`'s
resolver, the one that judges bundles), so one that leaves the commit, is
broken or loops is refused.  Version-control metadata is pruned by name.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import BinaryIO

from ..errors import BundleError
from .names import VCS_DIRS, check_utf8, join_show, show
from .sources import TempHolder, TempSlice


def run_git(args, root, *, stdout=None):
    """Run ``git -C root <args>``; FileNotFoundError if git is not installed."""
    import subprocess
    return subprocess.run(["git", "-C", os.fspath(root)] + list(args), stdin=subprocess.DEVNULL,
                          stdout=stdout if stdout is not None else subprocess.PIPE,
                          stderr=subprocess.PIPE)


def git_has_commit(root) -> bool:
    try:
        proc = run_git(["rev-parse", "--verify", "--quiet", "HEAD^{commit}"], root)
    except FileNotFoundError:
        return False
    return proc.returncode == 0 and bool(proc.stdout.strip())


#: Each face names the option that asked for git ({include_source_git}).
_ASKED_FOR_GIT = "{include_source_git}: {what}"


def _git_error(root, proc) -> BundleError:
    msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    last = msg[-1] if msg else f"exit status {proc.returncode}"
    text = " ".join(msg).lower()
    if "not a git repository" in text:
        return BundleError(f"{show(root)} is not inside a git checkout", setting="include_source",
                           fix=_ASKED_FOR_GIT)
    if "not a valid object name" in text or "unknown revision" in text \
            or "does not have any commits" in text:
        return BundleError(f"the git repository at {show(root)} has no commits",
                           setting="include_source", fix=_ASKED_FOR_GIT)
    return BundleError(f"git archive failed in {show(root)}: {last}")


def git_scanner(should_skip: Callable[[str], bool],
                root: str = ".") -> Iterator[tuple[str, Callable[[], BinaryIO]]]:
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
    holder = TempHolder()
    try:
        try:
            proc = run_git(["archive", "--format=tar", "HEAD"], root_shown, stdout=holder.file)
        except FileNotFoundError:
            raise BundleError("git is not installed (not found on PATH)",
                              setting="include_source", fix=_ASKED_FOR_GIT) from None
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
            raise BundleError(f"cannot read the output of git archive: {e}") from None
        with tf:
            while True:
                try:
                    m = tf.next()
                except tarfile.TarError as e:
                    raise BundleError(f"cannot read the output of git archive: {e}") from None
                if m is None:
                    break
                if isinstance(getattr(tf, "members", None), list):
                    tf.members.clear()  # keep memory flat for big trees
                name = m.name.rstrip("/")
                while name.startswith("./"):
                    name = name[2:]
                if not name or name == "pax_global_header":
                    continue
                check_utf8(name, join_show(root_shown, name))
                parts = name.split("/")
                if name.startswith("/") or ".." in parts:
                    raise BundleError(f"git archive produced an unsafe name {show(name)}")
                if m.isreg():
                    files[name] = (m.offset_data, m.size, 0o755 if m.mode & 0o111 else 0o644)
                elif m.isdir():
                    dirs.add(name)
                elif m.issym():
                    links[name] = m.linkname
                else:
                    raise BundleError(f"git archive produced {show(name)}, which is not a file, "
                                      "directory or symlink")
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
        from ..tarcheck import LinkLoop, PathEscapes, resolve_in_archive

        def walk(logical: str, phys: str, active: frozenset):
            for base in sorted(children.get(phys, ())):
                p = phys + "/" + base if phys else base
                lname = logical + "/" + base if logical else base
                if base in VCS_DIRS or should_skip(lname):
                    continue
                shown = join_show(root_shown, lname)
                target = p
                if p in links:
                    target_text = links[p]
                    try:
                        target = resolve_in_archive(links,
                                                    p.split("/")[:-1] + target_text.split("/"))
                    except PathEscapes:
                        raise BundleError(f"symlink {show(shown)} points outside "
                                          f"{show(root_shown)} (to {show(target_text)})") from None
                    except LinkLoop:
                        raise BundleError(f"symlink loop at {show(shown)}") from None
                    if target not in files and target not in dirs:
                        raise BundleError(f"{show(shown)} is a broken symlink (its target "
                                          f"{show(target_text)} is not in the commit)")
                # A symlink to a file or directory is bundled like its target.
                if target in files:
                    off, size, mode = files[target]
                    yield lname, TempSlice(holder, off, size, mode, shown)
                elif target in dirs:
                    if target in active:
                        raise BundleError(f"symlink loop: {show(shown)} leads back into itself")
                    yield from walk(lname, target, active | {target})

        yield from walk("", "", frozenset({""}))
    finally:
        # Openers keep the holder (and its temp file) alive; drop our reference.
        holder = None


def git_commit_info(root=".") -> bytes | None:
    """Return the ``.gitcommit`` contents for ``root``, or None outside a checkout.

    Raises FileNotFoundError if git is not installed.
    """
    proc = run_git(["rev-parse", "--verify", "--quiet", "HEAD^{commit}"], root)
    commit = proc.stdout.strip()
    if proc.returncode != 0 or not commit:
        return None
    proc = run_git(["describe", "--always", "--all"], root)
    describe = proc.stdout.strip() if proc.returncode == 0 else b""
    return commit + b"\n" + describe
