"""Run every tutorial notebook top to bottom headless, in order, and print its run time.

    .venv/bin/python scripts/time_notebooks.py            # full mode, as a reader runs them
    .venv/bin/python scripts/time_notebooks.py --smoke    # ASCA_SMOKE=1, as the tests run them

Each notebook runs in a fresh kernel of this interpreter with the notebooks folder as working
directory; caches and runs go to a temporary folder (``--keep DIR`` to choose one), so the first
notebook also generates the demo set and notebook 4 trains the model that 5 and 6 reuse, as on a
fresh machine. Prints a Markdown table: wall seconds and the kernel's CPU seconds, with the load
average before and after. Notebooks are read, never written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient, output_widget

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CPU_CELL = (
    "import resource as _r; _u = _r.getrusage(_r.RUSAGE_SELF); _c = _r.getrusage(_r.RUSAGE_CHILDREN); "
    "print(_u.ru_utime + _u.ru_stime + _c.ru_utime + _c.ru_stime)"
)


def run(path: Path, kernel: str) -> tuple[float, float]:
    """(wall seconds, kernel CPU seconds) of one top-to-bottom run."""
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(CPU_CELL))
    client = NotebookClient(nb, kernel_name=kernel, timeout=1800, resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    wall = time.perf_counter() - start
    return wall, float(nb.cells[-1].outputs[0]["text"].strip())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="set ASCA_SMOKE=1 (reduced data and epochs)")
    parser.add_argument("--keep", metavar="DIR", help="cache and runs folder (default: a temporary one)")
    args = parser.parse_args(argv)

    # nbclient's Output-widget stand-in syncs state on the socket it polls and can stall a cell
    # for the whole timeout (nbclient issue #312); captured outputs do not need the sync.
    output_widget.OutputWidget.sync_state = lambda self: None
    work = Path(args.keep or tempfile.mkdtemp(prefix="asca-notebooks-"))
    spec = work / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (ASCA)",
                "language": "python",
            }
        )
    )
    os.environ.update(
        JUPYTER_PATH=str(work / "jupyter"), ASCA_CACHE_DIR=str(work / "cache"), ASCA_RUNS_DIR=str(work / "runs")
    )
    if args.smoke:
        os.environ["ASCA_SMOKE"] = "1"
    else:
        os.environ.pop("ASCA_SMOKE", None)

    load = os.getloadavg()[0]
    print(
        f"{'smoke' if args.smoke else 'full'} mode, {os.cpu_count()} cores, load average {load:.2f}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}",
        file=sys.stderr,
    )
    print("| notebook | wall s | kernel CPU s |\n|---|---:|---:|")
    for path in NOTEBOOKS:
        wall, cpu = run(path, "python3")
        print(f"| {path.stem} | {wall:.0f} | {cpu:.0f} |", flush=True)
    print(f"load average {load:.2f} before, {os.getloadavg()[0]:.2f} after", file=sys.stderr)


if __name__ == "__main__":
    main()
