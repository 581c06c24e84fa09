"""The support-matrix driver, .ci/matrix.py: what each leg installs, and the
README's "Tested with" table kept in step with it."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def matrix():
    spec = importlib.util.spec_from_file_location("ci_matrix", REPO / ".ci" / "matrix.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def test_each_leg_installs_its_own_salt_and_the_rest_of_the_test_extra(matrix):
    default = matrix.test_requirements(None)
    for leg in matrix.LEGS:
        reqs = matrix.test_requirements(leg.salt)
        salts = [r for r in reqs if re.match(r"salt\s*[=<>!~]", r)]
        assert salts == [f"salt=={leg.salt}"], reqs
        assert [r for r in reqs if r not in salts] == default
    assert any(r.startswith("pytest-salt-factories") for r in default)


def test_the_matrix_covers_each_salt_line_and_python_310_to_313(matrix):
    assert {leg.salt.split(".")[0] for leg in matrix.LEGS} >= {"3006", "3007", "3008"}
    assert {leg.python for leg in matrix.LEGS} >= {"3.10", "3.12", "3.13"}
    # The onedir packages of 3006 and 3007 ship Python 3.10.
    for leg in matrix.LEGS:
        if leg.salt.startswith(("3006", "3007")):
            assert leg.python == "3.10" and leg.salt_requirements


def test_pyenv_interpreter_wins_over_a_shim_on_path_that_cannot_run_it(matrix, tmp_path, monkeypatch):
    # pyenv puts a python3.10 shim on PATH that fails unless 3.10 is activated.
    shims = tmp_path / "shims"
    shims.mkdir()
    shim = shims / "python3.10"
    shim.write_text("#!/bin/sh\necho 'pyenv: python3.10: command not found' >&2\nexit 127\n")
    shim.chmod(0o755)
    real = tmp_path / "pyenv" / "versions" / "3.10.13" / "bin" / "python3.10"
    real.parent.mkdir(parents=True)
    real.symlink_to(sys.executable)
    monkeypatch.setenv("PATH", f"{shims}:/usr/bin:/bin")
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "pyenv"))
    assert matrix.find_python("3.10") == str(real)


def test_readme_tested_with_table_lists_every_leg(matrix):
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Tested with", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    for leg in matrix.LEGS:
        assert any(f"`{leg.name}`" in row and f"Salt {leg.salt}" in row
                   and f"Python {leg.python}" in row for row in rows), (
            f"README's Tested with table has no row for {leg.name} (Salt {leg.salt}, "
            f"Python {leg.python})")
