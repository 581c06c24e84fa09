"""``python -m spirodeploy``: the same as the ``spiro-deploy`` command."""

import sys

from .cli import main

sys.exit(main())
