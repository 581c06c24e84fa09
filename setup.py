"""Packaging for spiro-deploy: the library, the CLI and the Salt modules."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
#: The Salt modules live at the top of the checkout (Salt's own layout for
#: file_roots); in the wheel they become packages found by saltloader.
SALT_DIRS = {
    "spirodeploy.salt_modules": "_modules",
    "spirodeploy.salt_runners": "_runners",
    "spirodeploy.salt_states": "_states",
}
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "spirodeploy" / "__init__.py").read_text()).group(1)

setup(
    name="spiro-deploy",
    version=VERSION,
    description="Bundle a Salt state tree and deploy it to a SpiroFS server",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["spirodeploy", "spirodeploy.*"]) + list(SALT_DIRS),
    package_dir=SALT_DIRS,
    install_requires=[
        "requests>=2.28,<3",
        "pathspec>=0.11,<2",
        "tqdm>=4.60,<5",
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "pytest-timeout>=2.1,<3",
            "hypothesis>=6.80,<7",
            "cryptography>=41",
            "pymacaroons>=0.13,<1",
            "salt==3008.3",
            "pytest-salt-factories==1.0.5",
        ],
    },
    entry_points={
        "console_scripts": ["spiro-deploy = spirodeploy.cli:run"],
        # pip install is enough for Salt to find the modules.
        "salt.loader": [
            "module_dirs = spirodeploy.saltloader:module_dirs",
            "runner_dirs = spirodeploy.saltloader:runner_dirs",
            "states_dirs = spirodeploy.saltloader:states_dirs",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3 :: Only",
        "Topic :: System :: Systems Administration",
        "Framework :: Salt",
    ],
)
