"""Strip outputs, execution counts and saved widget state from notebooks before committing.

python scripts/clear_notebook_outputs.py                  # every notebooks/*.ipynb, in place
python scripts/clear_notebook_outputs.py --check          # exit 1 if any notebook has outputs
python scripts/clear_notebook_outputs.py path/to/x.ipynb  # only these
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]


def is_clean(nb: nbformat.NotebookNode) -> bool:
    """True when no code cell holds outputs or a count and no widget state is saved."""
    return "widgets" not in nb.metadata and all(
        cell.outputs == [] and cell.execution_count is None for cell in nb.cells if cell.cell_type == "code"
    )


def clear(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove outputs, counts and widget state in place; cell sources and ids stay as they are."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)  # timestamps JupyterLab records per cell
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: notebooks/*.ipynb)")
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if any has outputs")
    args = parser.parse_args(argv)
    paths = args.paths or sorted((ROOT / "notebooks").glob("*.ipynb"))
    dirty = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        if is_clean(nb):
            continue
        dirty.append(path)
        if not args.check:
            nbformat.write(clear(nb), path)
    verb = "has outputs" if args.check else "cleared"
    for path in dirty:
        print(f"{path}: {verb}")
    return 1 if args.check and dirty else 0


if __name__ == "__main__":
    sys.exit(main())
