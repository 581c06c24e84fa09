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

Where each job lives (each module imports only those above it):

* ``names``: member-name rules, VCS metadata, how messages name files;
* ``sources``: where a member's bytes come from (the ``MemberSource``
  protocol, the opener kinds scanners yield) and the scanner protocol;
* ``tarformat``: tar headers and the members' mtime;
* ``sink``: the output buffers, hashed and written by a worker thread;
* ``writer``: members into the sink (a fast path for small files, one
  general path for everything else), then the manifest;
* ``parallel``: the forked child that writes the second half of a big tree;
* ``fswalk``: the file-system walk, ``.spiroignore``, ``fs_scanner``;
* ``gitscan``: ``git_scanner`` and ``.gitcommit``;
* ``tarball``: ``TarballBuilder``, which collects members and writes them;
* ``bundle``: ``build_bundle`` and ``Bundle``, the project layout.

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
  half of the sorted members to a temporary file, and the parent appends it.
  The bytes are the same as a serial build's.
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

from ..manifest import MANIFEST_NAME, diff_manifests, read_manifest
from .bundle import SOURCE_METHODS, Bundle, build_bundle
from .fswalk import IGNORE_FILE, fs_scanner
from .gitscan import git_commit_info, git_scanner
from .names import VCS_DIRS
from .tarball import DEFAULT_SPOOL_THRESHOLD, TarballBuilder
from .tarformat import DEFAULT_MTIME

__all__ = [
    "TarballBuilder",
    "Bundle",
    "build_bundle",
    "git_scanner",
    "fs_scanner",
    "git_commit_info",
    "read_manifest",
    "diff_manifests",
    "MANIFEST_NAME",
    "DEFAULT_MTIME",
    "DEFAULT_SPOOL_THRESHOLD",
    "IGNORE_FILE",
    "VCS_DIRS",
    "SOURCE_METHODS",
]
