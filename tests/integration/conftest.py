"""Integration tests run against the real bed: a salt-master with the real
SpiroFS server (spirofs 0.3 + our shim) and a salt-minion, started once per
session. See tests/saltbed/plugin.py for the ``spiro_bed`` fixture API.

``salt_ext`` and ``synced`` put spiro-deploy's Salt faces on the bed the way
the README's ``saltutil.sync_*`` route does (test_salt_modules.py says why a
test needs ``synced`` again after a highstate).
"""

import contextlib
import json
import shutil
from pathlib import Path

import pytest

from tests.saltbed import plugin
from tests.support import REPO, sync_minion

# The bed's fixtures, for every integration test.
event_listener = plugin.event_listener
salt_factories_config = plugin.salt_factories_config
spiro_bed = plugin.spiro_bed


@pytest.fixture(scope="module")
def salt_ext(spiro_bed):
    """Sync the modules through the master's file_roots, and put the settings in pillar."""
    master = spiro_bed.master
    file_root = Path(master.config["file_roots"]["base"][0])
    # Copies an earlier module synced: gone, so this sync installs (and
    # reports) the faces afresh; Salt's sync does not always clean them.
    for config, kinds in ((master.config, ("runners",)),
                          (spiro_bed.minion.config, ("modules", "states"))):
        for kind in kinds:
            (Path(config["extension_modules"]) / kind / "spirodeploy_mod.py").unlink(missing_ok=True)
    copied = []
    with contextlib.ExitStack() as stack:
        for kind in ("_modules", "_runners", "_states"):
            dest = file_root / kind
            dest.mkdir(exist_ok=True)
            shutil.copy2(REPO / kind / "spirodeploy_mod.py", dest / "spirodeploy_mod.py")
            copied.append(dest / "spirodeploy_mod.py")
        pillar = {"spirodeploy": {"server": spiro_bed.https_url, "token": spiro_bed.root_token,
                                  "ssl_cert": str(spiro_bed.ca_cert)}}
        stack.enter_context(master.pillar_tree.base.temp_file(
            "top.sls", "base:\n  '*':\n    - spirodeploy_itest\n"))
        stack.enter_context(master.pillar_tree.base.temp_file(
            "spirodeploy_itest.sls", json.dumps(pillar)))

        # saltenv=base: without it, Salt syncs from the saltenvs the minion's top
        # files match, which are the SpiroFS deployments once anything is deployed.
        minion_sync = spiro_bed.salt_call_cli.run("saltutil.sync_all", saltenv="base")
        assert minion_sync.returncode == 0, minion_sync
        master_sync = spiro_bed.salt_run_cli.run("saltutil.sync_all")
        assert master_sync.returncode == 0, master_sync
        refresh = spiro_bed.salt_call_cli.run("saltutil.refresh_pillar", wait=True)
        assert refresh.returncode == 0, refresh
        yield {"minion_sync": minion_sync.data, "master_sync": master_sync.data}
        for path in copied:
            path.unlink()
        # Sync again so that nothing synced outlives the module that synced it.
        spiro_bed.salt_call_cli.run("saltutil.sync_all", saltenv="base")
        spiro_bed.salt_run_cli.run("saltutil.sync_all")


@pytest.fixture
def synced(spiro_bed, salt_ext):
    """The minion has the modules synced (an earlier highstate may have removed them)."""
    sync_minion(spiro_bed)
