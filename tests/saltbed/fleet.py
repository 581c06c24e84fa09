"""A small fleet on the bed: ``spiro_bed``'s master with two more minions (three in all).

For tests that need several minions (staged rollouts). Import the fixture
where it is used::

    from tests.saltbed.fleet import spiro_fleet_fixture  # noqa: F401

The extra minions live for one test module only: they are started on the
already running ``spiro_bed`` master (no second master, no second SpiroFS),
and at the end they are stopped and their keys deleted, so the rest of the
session sees the one-minion bed it expects (with an accepted key and no
minion behind it, every ``state.show_top`` on ``*``, and so every SpiroFS
deploy, would wait the master's timeout for it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from . import bed

#: The extra minions' ids; with the bed's ``spiro-minion`` they sort as
#: spiro-fleet-1, spiro-fleet-2, spiro-minion.
FLEET_IDS = ("spiro-fleet-1", "spiro-fleet-2")


@dataclass
class SpiroFleet:
    """Handle on the fleet, returned by the ``spiro_fleet`` fixture."""

    bed: Any  #: the ``spiro_bed`` it extends
    minion_ids: list[str]  #: every minion of the master, sorted
    minions: list[Any]  #: the extra saltfactories SaltMinion daemons


@pytest.fixture(scope="module", name="spiro_fleet")
def spiro_fleet_fixture(spiro_bed: Any) -> Iterator[SpiroFleet]:
    """Two more minions on the bed's master for this module; same options as its minion."""
    master = spiro_bed.master
    minions = [master.salt_minion_daemon(minion_id,
                                         overrides=bed.minion_config(spiro_bed.output_dir))
               for minion_id in FLEET_IDS]
    try:
        with contextlib.ExitStack() as stack:
            for minion in minions:
                stack.enter_context(minion.started())
            yield SpiroFleet(bed=spiro_bed,
                             minion_ids=sorted([spiro_bed.minion_id, *FLEET_IDS]),
                             minions=minions)
    finally:
        salt_key = master.salt_key_cli()
        for minion_id in FLEET_IDS:
            salt_key.run("-d", minion_id, "-y")
