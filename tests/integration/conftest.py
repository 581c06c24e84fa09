"""Integration tests run against the real bed: a salt-master with the real
SpiroFS server (spirofs 0.3 + our shim) and a salt-minion, started once per
session. See tests/saltbed/plugin.py for the ``spiro_bed`` fixture API."""

from tests.saltbed.plugin import event_listener, salt_factories_config, spiro_bed  # noqa: F401
