"""Each fact the library, the app and the notebooks share is written down once.

A second copy of a formula or a list drifts (the Classify page once padded a short clip at its
end while predict centred it), so the tell-tale text of each fact may appear only in its home
module. Notebooks may teach a formula inline before calling the library; they may not restate a
list the library owns.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _library_sources() -> dict[str, str]:
    files = [*ROOT.glob("asca_core/**/*.py"), *ROOT.glob("workbench/**/*.py"), ROOT / "app.py"]
    return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in files if p.is_file()}


def _notebook_code() -> dict[str, str]:
    out = {}
    for path in sorted(ROOT.glob("notebooks/*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        out[str(path.relative_to(ROOT))] = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return out


# fact: (pattern, its one home)
FACTS = {
    "HTK mel scale": (r"\b2595\b", "asca_core/geometry.py"),
    "next power of two n_fft": (r"bit_length\(\)", "asca_core/geometry.py"),
    "stage strides": (r"\(\s*4,\s*8,\s*16,\s*32\s*\)|\(\"S0\",\s*2\)", "asca_core/geometry.py"),
    "dataset formats": (r"[\"']birdclef[\"'],\s*[\"']esc50[\"']", "asca_core/config.py"),
    "logits to probabilities": (
        r"(sigmoid|softmax)\(logits[^)]*\)[^\n]* if [^\n]* else [^\n]*(softmax|sigmoid)\(",
        "asca_core/scores.py",
    ),
    "trapezoid rule": (r"np\.trapz|np\.trapezoid", None),
    "run folder time stamp": (r"%Y%m%d-%H%M%S", "asca_core/train/runstore.py"),
    "centre padding offset": (r"\(\s*n\s*-\s*\w+\.size\s*\)\s*//\s*2", None),
}
LAYOUT_LIST = re.compile(r"[\[(]\s*(?:[\"']C[CT]{3}[\"'],?\s*){4}[\])]")


@pytest.mark.parametrize("fact", sorted(FACTS))
def test_a_fact_lives_in_its_home_module_only(fact):
    pattern, home = FACTS[fact]
    found = sorted(name for name, text in _library_sources().items() if re.search(pattern, text))
    assert found == ([home] if home else []), f"{fact} is written in {found}; only {home} should have it"


def test_the_layout_list_is_written_once():
    sources = {**_library_sources(), **_notebook_code()}
    found = sorted(name for name, text in sources.items() if LAYOUT_LIST.search(text))
    assert found == ["asca_core/config.py"]
