"""Packaging shim: the metadata is in pyproject.toml (PEP 621).

What stays here is what pyproject.toml cannot say next to a package search:
the Salt modules live at the top of the checkout (Salt's own layout for
file_roots), and in the wheel they become the packages
``spirodeploy.salt_modules`` etc., found by ``spirodeploy.saltloader``.
"""

from setuptools import find_packages, setup

SALT_DIRS = {
    "spirodeploy.salt_modules": "_modules",
    "spirodeploy.salt_runners": "_runners",
    "spirodeploy.salt_states": "_states",
    "spirodeploy.salt_output": "_output",
}

setup(
    packages=find_packages(include=["spirodeploy", "spirodeploy.*"]) + list(SALT_DIRS),
    package_dir=SALT_DIRS,
)
