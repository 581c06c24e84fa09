"""Where Salt finds spiro-deploy's execution module, runner and state.

``pyproject.toml`` registers these functions as ``salt.loader`` entry points
(``module_dirs``, ``runner_dirs``, ``states_dirs``, and ``outputter_dirs`` for
the runner's progress lines), so a ``pip install`` of spiro-deploy is all
Salt needs: every salt-master, salt-minion, salt-call
and salt-run in that Python environment loads ``spirodeploy.*`` with no
copying and no configuration.

Two layouts are found:

* an installed wheel, where setup.py's ``package_dir`` puts ``_modules/``,
  ``_runners/``, ``_states/`` and ``_output/`` inside the package as
  ``salt_modules/``, ``salt_runners/``, ``salt_states/`` and ``salt_output/``;
* a source checkout (or an editable install of one), where they are next
  to the package.

This module must not import Salt: Salt imports it while it builds a loader.
"""

from __future__ import annotations

import os

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
#: Each kind of Salt module: the file that must be there.
_MODULE_FILE = "spirodeploy_mod.py"


def _dirs(kind: str, module_file: str = _MODULE_FILE) -> list[str]:
    candidates = (
        os.path.join(_PACKAGE_DIR, f"salt_{kind}"),                  # installed wheel
        os.path.join(os.path.dirname(_PACKAGE_DIR), f"_{kind}"),     # source checkout
    )
    for directory in candidates:
        if os.path.isfile(os.path.join(directory, module_file)):
            return [directory]
    return []


def module_dirs() -> list[str]:
    """Directories holding the ``spirodeploy`` execution module."""
    return _dirs("modules")


def runner_dirs() -> list[str]:
    """Directories holding the ``spirodeploy`` runner."""
    return _dirs("runners")


def states_dirs() -> list[str]:
    """Directories holding the ``spirodeploy`` state module."""
    return _dirs("states")


def outputter_dirs() -> list[str]:
    """Directories holding the ``spirodeploy_progress`` outputter (the runner's progress lines)."""
    return _dirs("output", "spirodeploy_progress.py")
