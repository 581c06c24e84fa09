"""`salt-call sys.doc spirodeploy` works on the Salt this venv runs.

The issue's "done" line for every Salt version of the matrix (.ci/matrix.py):
a user who pip-installs spiro-deploy next to Salt gets the modules loaded
(not refused by ``__virtual__``) and documented. Runs ``salt-call --local``
of this virtualenv with a configuration naming no module directory, so the
modules come from the ``salt.loader`` entry points.
"""

from __future__ import annotations

import getpass
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("salt-sysdoc")
    (root / "minion").write_text("\n".join([
        "id: sysdoc", "file_client: local", f"user: {getpass.getuser()}",
        f"root_dir: {root}", f"pki_dir: {root}/pki", f"cachedir: {root}/cache",
        f"sock_dir: {root}/sock", f"log_file: {root}/log", "",
    ]))
    return root


def test_sys_doc_documents_every_public_function(config_dir):
    proc = subprocess.run(
        [str(BIN / "salt-call"), "--local", "-c", str(config_dir), "--out=json",
         "sys.doc", "spirodeploy"],
        capture_output=True, text=True, cwd="/", timeout=100,
    )
    assert proc.returncode == 0, proc
    docs = json.loads(proc.stdout)["local"]
    salt_version = metadata.version("salt")
    assert {"spirodeploy.deploy", "spirodeploy.status"} <= set(docs), (
        f"Salt {salt_version}: sys.doc lists {sorted(docs)}\n{proc.stderr}")
    assert all(doc and "CLI Example" in doc for doc in docs.values()), (
        f"Salt {salt_version}: undocumented: "
        f"{sorted(name for name, doc in docs.items() if not doc or 'CLI Example' not in doc)}")
