"""The install surfaces stay in step: pyproject.toml, environment.yml, the README and CI."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


PROJECT = "asca-workbench"


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower()


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _extra(project: dict, extra: str, seen: tuple[str, ...] = ()) -> list[str]:
    """The requirements of one extra, with ``asca-workbench[a,b]`` replaced by those extras' own."""
    assert extra not in seen, f"extras include each other in a loop: {[*seen, extra]}"
    flat = []
    for requirement in project["optional-dependencies"][extra]:
        if _name(requirement) == PROJECT:
            inner = re.search(r"\[(.*)\]", requirement)
            assert inner, requirement
            for name in inner.group(1).split(","):
                flat += _extra(project, name.strip(), (*seen, extra))
        else:
            flat.append(requirement.replace(" ", ""))
    return flat


def _by_name(requirements: list[str]) -> dict[str, str]:
    """Name -> requirement; a package named twice (in two extras) must carry the same range."""
    out: dict[str, str] = {}
    for requirement in requirements:
        name = _name(requirement)
        assert out.get(name, requirement) == requirement, f"{name} has two ranges: {out[name]} and {requirement}"
        out[name] = requirement
    return out


def test_environment_yml_mirrors_pyproject():
    """environment.yml lists the core dependencies and the flattened ``test`` extra, no more, no less."""
    project = _project()
    wanted = _by_name([r.replace(" ", "") for r in project["dependencies"]] + _extra(project, "test"))
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pinned = _by_name([r.replace(" ", "") for r in pip_section if not r.startswith("-")])
    missing = {name: r for name, r in wanted.items() if pinned.get(name) != r}
    assert not missing, f"environment.yml lacks or differs from pyproject.toml on: {missing}"
    extra = set(pinned) - set(wanted)
    assert not extra, f"environment.yml lists packages pyproject.toml does not: {extra}"


def test_extras_split_the_library_from_the_app_and_notebooks():
    """The app, notebooks, export and tests are extras (tests/test_lean_install.py: the core alone)."""
    project = _project()
    extras = project["optional-dependencies"]
    assert {"app", "notebooks", "deploy", "bench", "test"} <= set(extras)
    assert {"streamlit", "plotly", "pandas"} <= set(_by_name(_extra(project, "app")))
    assert {"jupyterlab", "ipywidgets", "plotly"} <= set(_by_name(_extra(project, "notebooks")))
    assert {"onnx", "onnxruntime"} <= set(_by_name(_extra(project, "deploy")))
    test = set(_by_name(_extra(project, "test")))
    for extra in ("app", "notebooks", "deploy"):
        assert set(_by_name(_extra(project, extra))) <= test, f"the test extra misses part of [{extra}]"
    assert {"pytest", "ruff", "mypy", "playwright", "timm"} <= test
    # torch and torchaudio: ranges around the tested pair, not exact pins
    ranges = _by_name([r.replace(" ", "") for r in project["dependencies"]])
    assert "==" not in ranges["torch"] and "<" in ranges["torch"], ranges["torch"]
    assert "==" not in ranges["torchaudio"] and "<" in ranges["torchaudio"], ranges["torchaudio"]
    assert project["license"] == "Apache-2.0" and "LICENSE" in project.get("license-files", [])
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()


def test_setup_installs_the_extras_each_command_needs():
    setup = (ROOT / "scripts/setup.sh").read_text()
    assert "[app,notebooks]" in setup and "[test]" in setup


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


@pytest.mark.slow
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


def _make_recipe(target: str) -> str:
    """The commands of one Makefile target, with its ``$(canned_recipe)`` lines expanded."""
    text = (ROOT / "Makefile").read_text()
    canned = dict(re.findall(r"^define (\w+)\n(.*?)^endef", text, flags=re.M | re.S))
    body = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n?)*)", text, flags=re.M)
    assert body, f"Makefile has no target {target}"
    lines = [line.strip() for line in body.group(1).splitlines()]
    text = "\n".join(canned[m.group(1)] if (m := re.fullmatch(r"\$\((\w+)\)", line)) else line for line in lines)
    return "\n".join(line for line in text.splitlines() if not line.strip().startswith("@echo"))


def test_make_test_runs_the_lanes_in_order():
    """Set-up, lint (ruff, format, mypy), the fast tests, the slow ones: every test once."""
    steps = ["scripts/setup.sh test", "ruff check .", "ruff format --check .", "mypy", '-m "not slow"', "-m slow"]
    recipe = _make_recipe("test")
    positions = [recipe.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), dict(zip(steps, positions))
    fast = _make_recipe("test-fast")
    assert all(step in fast for step in steps[:-1]) and "-m slow" not in fast
    assert all(step in _make_recipe("lint") for step in steps[1:4])
