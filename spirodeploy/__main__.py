"""``python -m spirodeploy``: the same as the ``spiro-deploy`` command."""

from .cli import run

run()
