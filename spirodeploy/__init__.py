"""spiro-deploy: bundle a project and deploy it to a SpiroFS server.

The package stays cheap to import (``spiro-deploy --help`` must start fast),
so the submodules are imported by whoever needs them:

* :mod:`spirodeploy.builder` builds bundles (``TarballBuilder``, scanners);
* :mod:`spirodeploy.client` talks to the server (``upload``, ``check_token``);
* :mod:`spirodeploy.report` folds the server's events into a ``DeployReport``;
* :mod:`spirodeploy.deploy` is the one flow that the CLI and Salt share;
* :mod:`spirodeploy.errors` holds the error types and exit codes.
"""

__version__ = "1.0.0"
