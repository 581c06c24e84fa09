"""Real Salt + SpiroFS test bed for spiro-deploy (tests and demo only).

install.py - fetch spirofs 0.3 from PyPI into .cache/ (never vendored)
shim/      - our compatibility shim for spirofs 0.3 on Salt 3008 (sitecustomize)
bed.py     - configs, throwaway TLS CA/cert, environment (no pytest needed)
plugin.py  - pytest fixtures: ``spiro_bed``, ``salt_factories_config``, ``event_listener``

See README.md here for the five fixes and how to check each is still needed.
"""
