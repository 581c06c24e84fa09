"""Prototype: the bundle build with the tar's own sha256 switched off (not used by spiro-deploy).

Runs the real ``spiro-deploy`` CLI in this process, with ``_Sink``'s
whole-stream hash replaced by a no-op.  Every file is still read once and
hashed once for the manifest (``.spirodeploy.json``, whose ``digest`` already
identifies the bundle's content); only the second pass over the same bytes,
the sha256 of the tar stream, is gone.  It shows what that hash costs:
on input (a) it is a second full sha256 of the 1 GiB artifact, on the
writer thread's critical path (hash, then write, per 1 MiB buffer).

    python bench/proto_build.py <spiro-deploy arguments>
"""

import sys


class _NoHash:
    def update(self, data):
        pass

    def hexdigest(self):
        return "0" * 64


def install():
    from spirodeploy import builder

    # The writer thread binds ``self.sha.update`` when ``_run`` starts, so
    # swap the hash there, before the first buffer.
    run = builder._Sink._run

    def _run(self):
        self.sha = _NoHash()
        return run(self)

    builder._Sink._run = _run


if __name__ == "__main__":
    install()
    from spirodeploy import cli

    sys.exit(cli.main(sys.argv[1:]))
