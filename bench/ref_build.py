"""Build a bundle with spiro-deploy 0.4's own TarballBuilder, then write it to a file.

Run with the python of the reference venv (bench/work/ref-venv), where
``spirodeploy`` is spiro-deploy 0.4 from PyPI.  It does what 0.4's CLI does
before uploading (``spirodeploy.cli.main``: .gitcommit, ``_salt``, each
artifact, the source) and then writes ``builder.buffer`` out without another
copy (``getbuffer``), so the figures are those of 0.4's bundling itself.

    python ref_build.py OUT PROJECT_DIR SOURCE_METHOD|- [ARTIFACT ...]
"""

import os
import sys

from spirodeploy.builder import TarballBuilder, fs_scanner, git_scanner


def main(argv):
    out, project, source, artifacts = argv[0], argv[1], argv[2], argv[3:]
    out = os.path.abspath(out)
    os.chdir(project)  # 0.4 assumes the cwd is the project root
    with TarballBuilder() as builder:
        try:
            builder.add_gitcommit()
        except FileNotFoundError:
            pass
        if os.path.exists("_salt"):
            builder.add_saltdir("_salt")
        for artifact in artifacts:
            builder.add_artifact(artifact, artifact)
        if source != "-":
            builder.add_source({"git": git_scanner, "fs": fs_scanner, "filesystem": fs_scanner}[source])
    with open(out, "wb") as handle:
        handle.write(builder.buffer.getbuffer())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
