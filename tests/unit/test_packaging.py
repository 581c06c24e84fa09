"""Release metadata: what PyPI, pip, Salt users and the container build rely on.

The built artifacts themselves are checked by ``make dist-check`` (twine,
check-wheel-contents, .ci/check_dist.py), which ``make test`` runs.
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
from pathlib import Path

import pytest
import trove_classifiers

import spirodeploy

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
README = (REPO / "README.md").read_text(encoding="utf-8")
SALT_FILES = ["_modules/spirodeploy_mod.py", "_runners/spirodeploy_mod.py", "_states/spirodeploy_mod.py"]


def minimum_version() -> str:
    """The version users are told to ask for: this release's major.minor."""
    major, minor = spirodeploy.__version__.split(".")[:2]
    return f"{major}.{minor}"


def install_hint(path: str) -> str:
    tree = ast.parse((REPO / path).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "INSTALL_HINT":
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path} has no INSTALL_HINT")


def test_classifiers_are_trove_classifiers():
    classifiers = PROJECT["classifiers"]
    assert classifiers == sorted(set(classifiers), key=classifiers.index)  # no duplicates
    unknown = [c for c in classifiers if c not in trove_classifiers.classifiers]
    assert not unknown, f"not trove classifiers (PyPI refuses the upload): {unknown}"
    deprecated = [c for c in classifiers if c in trove_classifiers.deprecated_classifiers]
    assert not deprecated, deprecated


def test_licence_is_apache_2_with_its_text():
    assert PROJECT["license"] == "Apache-2.0"
    assert PROJECT["license-files"] == ["LICENSE"]
    # PEP 639: a licence expression replaces licence classifiers
    assert not [c for c in PROJECT["classifiers"] if c.startswith("License ::")]
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) > 190


def test_python_floor_is_the_same_everywhere():
    floor = PROJECT["requires-python"]
    assert floor == ">=3.10"
    versions = sorted(tuple(map(int, c.rsplit(" ", 1)[1].split(".")))
                      for c in PROJECT["classifiers"]
                      if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c))
    assert versions and ".".join(map(str, versions[0])) == floor[2:]
    assert f"Python {floor[2:]}+" in README


def test_version_comes_from_the_package_and_has_a_changelog_entry():
    assert "version" in PROJECT["dynamic"] and "version" not in PROJECT
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "spirodeploy.__version__"}
    changelog = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(rf"^## {re.escape(spirodeploy.__version__)}\b", changelog, re.M)
    assert re.search(r"^## 0\.4\b", changelog, re.M)  # what it is compared with
    for section in ("### Stays compatible", "### Changed", "### New"):
        assert section in changelog


def test_entry_points_resolve():
    scripts = PROJECT["scripts"]
    loader = PROJECT["entry-points"]["salt.loader"]
    assert scripts["spiro-deploy"] == "spirodeploy.cli:run"
    assert set(loader) == {"module_dirs", "runner_dirs", "states_dirs", "outputter_dirs"}
    for target in [*scripts.values(), *loader.values()]:
        module, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), target


def test_test_extra_keeps_what_ci_installs():
    names = {re.split(r"[<>=!;\[ ]", r, maxsplit=1)[0].lower() for r in
             PROJECT["optional-dependencies"]["test"]}
    assert {"pytest", "pytest-timeout", "hypothesis", "cryptography", "pymacaroons", "salt",
            "pytest-salt-factories", "trove-classifiers"} <= names


def test_project_urls():
    urls = PROJECT["urls"]
    assert {"Homepage", "Source", "Issues", "Changelog"} <= set(urls)
    assert all(u.startswith("https://") for u in urls.values())


def test_setup_py_is_only_the_salt_directory_shim():
    setup_py = (REPO / "setup.py").read_text(encoding="utf-8")
    # one source of truth for the metadata: pyproject.toml
    for keyword in ("name=", "version=", "install_requires", "extras_require", "entry_points",
                    "classifiers", "python_requires"):
        assert keyword not in setup_py, keyword
    for package, directory in (("salt_modules", "_modules"), ("salt_runners", "_runners"),
                               ("salt_states", "_states")):
        assert f'"spirodeploy.{package}": "{directory}"' in setup_py


@pytest.mark.parametrize("path", SALT_FILES)
def test_virtual_hint_names_pip_salt_pip_and_the_minimum_version(path):
    hint = install_hint(path)
    requirement = f'"spiro-deploy>={minimum_version()}"'
    assert f"pip install {requirement}" in hint
    assert f"salt-pip install {requirement}" in hint
    assert "\n" not in hint


def test_readme_installs_this_version_not_0_4():
    install = README.split("## Install", 1)[1].split("\n## ", 1)[0]
    assert "pip install ." in install
    assert f'"spiro-deploy>={minimum_version()}"' in install
    # a bare name installs 0.4 from PyPI, which has no Salt modules
    commands = "\n".join(re.findall(r"^```\w*\n(.*?)^```", README, re.M | re.S))
    assert "pip install" in commands
    assert not re.search(r"pip install spiro-deploy(?![>=\w-])", commands)


def test_dockerignore_keeps_secrets_and_clutter_out_of_the_context():
    patterns = set((REPO / ".dockerignore").read_text(encoding="utf-8").split())
    for needed in (".venv/", ".git/", ".cache/", ".token", "*.token", "**/*.token",
                   "bench/work/", "dist/", "build/"):
        assert needed in patterns, needed


def test_dockerfile_builds_a_wheel_and_runs_unprivileged():
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M | re.I)
    assert len(stages) >= 2, "build the wheel in one stage, install it in another"
    # a base that can be made from Debian's packages (no image registry here)
    assert all(image.split("@")[0].startswith(("debian:", "docker.io/library/debian:"))
               or image == "${BASE_IMAGE}" for image, _ in stages), stages
    final = text[text.rfind("\nFROM"):]
    copies = re.findall(r"^COPY\s+(.*)$", final, re.M)
    assert copies and all(c.startswith("--from=") and ".whl" in c for c in copies), copies
    users = re.findall(r"^USER\s+(\S+)", final, re.M)
    assert users and users[-1] not in ("root", "0", "0:0")
    for label in ("org.opencontainers.image.title", "org.opencontainers.image.version",
                  "org.opencontainers.image.licenses", "org.opencontainers.image.source"):
        assert label in text, label
