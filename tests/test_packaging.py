"""The install surfaces stay in step: pyproject.toml, environment.yml, the README and CI."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower()


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["test"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pinned = {_name(r): r.replace(" ", "") for r in pip_section if not r.startswith("-")}
    for requirement in wanted:
        assert pinned.get(_name(requirement)) == requirement.replace(" ", ""), requirement
    extra = set(pinned) - {_name(r) for r in wanted}
    assert not extra, f"environment.yml lists packages pyproject.toml does not: {extra}"


def test_ci_runs_the_readme_test_command():
    ci = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    command = [line for line in ci if line and not line.startswith(("#", "set ", "cd "))][-1]
    assert command == "make test"
    readme = (ROOT / "README.md").read_text().splitlines()
    assert any(line.strip().startswith(command) for line in readme), command


def test_asca_console_script_lists_every_command():
    result = subprocess.run(
        [sys.executable, "-m", "asca_core.cli", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("demo-data", "data", "train", "eval", "ablate", "predict"):
        assert re.search(rf"\b{command}\b", result.stdout), command


def test_readme_model_table_is_current():
    """The README's model table is what scripts/model_table.py computes from the registry now."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import model_table
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    readme = (ROOT / "README.md").read_text()
    assert model_table.START in readme and model_table.END in readme
    current = readme.split(model_table.START, 1)[1].split(model_table.END, 1)[0].strip()
    assert current == model_table.table(264).strip(), "run scripts/model_table.py to update README.md"
    assert model_table.splice(readme, model_table.table(264)) == readme
