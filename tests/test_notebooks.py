"""The teaching notebooks: stored without outputs, and each runs top to bottom headless.

The execution tests set ``ASCA_SMOKE=1`` (less data, one epoch); ``conftest.py`` points
``ASCA_CACHE_DIR`` and ``ASCA_RUNS_DIR`` at pytest's temp folder, and the kernel inherits the
environment when it starts. The kernel is this interpreter (the project's virtualenv), through a
``python3`` kernel spec placed first on ``JUPYTER_PATH``. Also here: the ipywidgets helpers the
notebooks use (``workbench.widgets``).
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import ipywidgets as widgets
import nbformat
import numpy as np
import pytest
import soundfile as sf

from workbench.widgets import audio_player, audio_row, live_panel

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
EXPECTED = [
    "01_audio_to_logmel.ipynb",
    "02_augmentation.ipynb",
    "03_inside_asca.ipynb",
    "04_training_small_data.ipynb",
    "05_attention_inspection.ipynb",
    "06_attributions_captum.ipynb",
]
NOTEBOOKS = [NOTEBOOK_DIR / name for name in EXPECTED]


def _code_cells(nb) -> list:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


# ----------------------------------------------------------------------------- stored notebooks
def test_the_six_notebooks_are_there():
    assert sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb")) == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert "widgets" not in nb.metadata, f"{path.name} stores widget state: clear its outputs"
    cells = _code_cells(nb)
    assert cells
    for cell in cells:
        assert cell.outputs == [], f"{path.name}: cell {cell.get('id')} has outputs"
        assert cell.execution_count is None, f"{path.name}: cell {cell.get('id')} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_shape(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert nb.cells[-1].cell_type == "markdown" and "## Exercises" in nb.cells[-1].source
    source = "\n".join(cell.source for cell in _code_cells(nb))
    assert "import *" not in source and ".cuda(" not in source
    assert 'os.environ.get("ASCA_SMOKE") == "1"' in source  # every notebook honours the smoke setting
    assert "live_panel(" in source  # and is interactive


# ----------------------------------------------------------------------------- execution
@pytest.fixture
def kernel_name(tmp_path, monkeypatch) -> str:
    """A ``python3`` kernel spec running ``sys.executable``, ahead of any user or system spec."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (ASCA tests)",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return "python3"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_headless(path, kernel_name, monkeypatch):
    from nbclient import NotebookClient, output_widget

    # nbclient's stand-in for Output widgets syncs its state back on the shell socket that
    # nbclient is polling, and the wake-up is sometimes lost: the cell then stalls for the whole
    # timeout (nbclient issue #312). Captured outputs do not need the sync.
    monkeypatch.setattr(output_widget.OutputWidget, "sync_state", lambda self: None)
    monkeypatch.setenv("ASCA_SMOKE", "1")
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    client = NotebookClient(
        nb, kernel_name=kernel_name, timeout=600, resources={"metadata": {"path": str(NOTEBOOK_DIR)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, on the first error

    assert nb.cells[0].outputs[0]["text"].strip() == sys.executable
    counts = [cell.execution_count for cell in _code_cells(nb)]
    assert counts == list(range(1, len(counts) + 1))
    panels = [
        out
        for cell in _code_cells(nb)
        for out in cell.outputs
        if "application/vnd.jupyter.widget-view+json" in out.get("data", {})
    ]
    assert panels, f"{path.name} displayed no widgets"


# ----------------------------------------------------------------------------- widget helpers
def test_live_panel_draws_at_once_and_on_every_change():
    calls = []
    n = widgets.IntSlider(value=3, min=0, max=10)
    kind = widgets.Dropdown(options=["a", "b"], value="a")
    panel = live_panel(lambda n, kind: calls.append((n, kind)), n=n, kind=kind)
    assert calls == [(3, "a")]
    n.value = 7
    kind.value = "b"
    assert calls == [(3, "a"), (7, "a"), (7, "b")]
    assert n.continuous_update is False  # a drag redraws once, on release
    assert isinstance(panel, widgets.VBox) and isinstance(panel.children[1], widgets.Output)
    assert list(panel.children[0].children) == [n, kind]


def test_live_panel_raises_on_the_first_draw_and_reports_later_errors(capsys):
    def draw(n):
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return None

    with pytest.raises(ValueError, match="got -1"):
        live_panel(draw, n=widgets.IntSlider(value=-1, min=-5, max=5))
    n = widgets.IntSlider(value=1, min=-5, max=5)
    live_panel(draw, n=n)
    n.value = -2  # inside a widget callback: shown in the panel, not raised into the kernel log
    assert "ValueError: n must be >= 0, got -2" in capsys.readouterr().out
    with pytest.raises(ValueError, match="at least one control"):
        live_panel(draw)


def test_audio_player_writes_a_wav_of_the_wave():
    sample_rate = 8000
    wave = 0.5 * np.sin(2 * np.pi * 440 * np.arange(4000) / sample_rate).astype(np.float32)
    player = audio_player(wave, sample_rate)
    data, rate = sf.read(io.BytesIO(player.value), dtype="float32")
    assert player.format == "wav" and rate == sample_rate and data.shape == wave.shape
    np.testing.assert_allclose(data, wave, atol=1e-4)
    loud = audio_player(np.array([[0.0, 2.0, -4.0, 1.0]]), sample_rate)  # (1, T), past full scale
    data, _ = sf.read(io.BytesIO(loud.value), dtype="float32")
    np.testing.assert_allclose(data, [0.0, 0.5, -1.0, 0.25], atol=1e-4)  # scaled, not clipped


def test_audio_row_labels_each_player():
    row = audio_row({"before": np.zeros(100), "after": np.ones(100) * 0.1}, 8000)
    assert [box.children[0].value for box in row.children] == ["before", "after"]
    assert all(isinstance(box.children[1], widgets.Audio) for box in row.children)
