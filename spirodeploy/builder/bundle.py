"""build_bundle: bundle a project directory; Bundle: what a build gives back.

The project layout is applied here: ``_salt/`` is the bundle root, the
artifacts go under ``_artifacts/``, the source (``git``, ``fs`` or a scanner)
under ``_source/``, ``.gitcommit`` at the root; the output file is replaced
atomically, and a bundle with nothing from ``_salt`` is refused unless asked.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable
from functools import partial
from typing import BinaryIO

from ..errors import BundleError
from ..manifest import Contents
from .fswalk import fs_scanner
from .gitscan import git_has_commit, git_scanner
from .names import show
from .sink import write_all
from .tarball import DEFAULT_SPOOL_THRESHOLD, TarballBuilder, gc_paused

#: Accepted values of ``build_bundle(include_source=...)``.
SOURCE_METHODS = ("git", "fs", "filesystem", "auto")


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
                 warnings: list, path: str | None = None):
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
    def gitcommit(self) -> str | None:
        return self.contents.gitcommit

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self):
        return f"<Bundle {self.file_count} files, {self.size} bytes, sha256 {self.sha256}>"


class _Tee:
    """Writes to the ``output`` file and to the ``stream`` of :func:`build_bundle`."""

    whole_writes = True  # see Sink: the stream gets whole blocks, the file smaller writes

    def __init__(self, first: BinaryIO, second: BinaryIO):
        self._first = first
        self._second = second

    def write(self, data) -> int:
        write_all(self._first.write, memoryview(data))
        self._second.write(data)
        return len(data)

    def flush(self) -> None:
        self._first.flush()

    def seekable(self) -> bool:
        return False


def _artifact_name(root_shown: str, root_abs: str, root_real: str, artifact) -> tuple[str, str]:
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
                raise BundleError(f"artifact {show(given)} is outside the project directory "
                                  f"{show(root_abs)}")
        name = rel.replace(os.sep, "/")
        path = given
    else:
        name = posixpath.normpath(given.replace(os.sep, "/"))
        if name == ".." or name.startswith("../"):
            raise BundleError(f"artifact {show(given)} would escape _artifacts/ (it leads out "
                              "of the project directory)")
        path = given if root_shown in ("", ".") else os.path.join(root_shown, given)
    if name in (".", ""):
        raise BundleError(f"artifact {show(given)} is the whole project directory; name a file or "
                          "directory inside it")
    return path, name


def _create_beside(out_abs: str, shown: str) -> tuple[int, str]:
    """Create a new hidden temporary file next to ``out_abs``.

    Unlike mkstemp (0600), the file gets the usual permissions (0666 less the
    umask), like the file ``tar -cf`` would create.
    """
    import secrets
    directory, base = os.path.split(out_abs)
    for _ in range(100):
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
                           | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
        except OSError as e:
            raise BundleError(f"cannot write output {show(shown)}: {e.strerror or e}") \
                from None
    raise BundleError(f"cannot write output {show(shown)}: no free temporary name")


def _pick_scanner(include_source, root):
    if include_source is None or include_source is False:
        return None
    if callable(include_source):
        return include_source
    method = str(include_source).strip().lower()
    if method == "auto" or include_source is True:
        method = "git" if git_has_commit(root) else "fs"
    if method == "git":
        return partial(git_scanner, root=root)
    if method in ("fs", "filesystem"):
        return partial(fs_scanner, root=root)
    raise BundleError(f"unknown source method {include_source!r} (use git, fs, filesystem or auto)")


def build_bundle(root=".", *, artifacts: Iterable = (), include_source=None,
                 gitcommit: bool = True, output=None, allow_empty: bool = False,
                 exclude: Iterable = (), spool_threshold: int = DEFAULT_SPOOL_THRESHOLD,
                 mtime: int | None = None, stream: BinaryIO | None = None) -> Bundle:
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
        raise BundleError(f"project directory {show(root_shown)} does not exist or is not a "
                          "directory")
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
            raise BundleError(f"output {show(output)} is a directory")
        fd, tmp_path = _create_beside(out_abs, output)
        out_file = os.fdopen(fd, "w+b")
        excl += [out_abs, tmp_path]  # the old output, and the new one being written
    warnings: list = []
    target = out_file
    if stream is not None:
        target = stream if out_file is None else _Tee(out_file, stream)
    try:
        with gc_paused(), TarballBuilder(target, spool_threshold=spool_threshold, mtime=mtime,
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
                state = "has no files" if os.path.lexists(salt_abs) else "does not exist"
                raise BundleError(
                    f"{show(salt_abs)} {state}: a deploy replaces the whole saltenv, so this "
                    "bundle would wipe it", setting="allow_empty",
                    fix="; use {allow_empty} to deploy it anyway")
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
