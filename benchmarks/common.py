"""Shared helpers of the benchmark scripts: machine facts, timing, Markdown tables.

Every benchmark times peers in the same process and the same run, alternating them where it can,
so load from other processes on the machine hits both sides alike; figures are reported as
ratios against the peer, with the medians behind them.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"  # raw JSON of each benchmark (git-ignored)
SHARED_DATA = Path(os.environ.get("ASCA_SHARED_DATA", ROOT.parent / "shared" / "data"))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU, cores, library versions, torch threads, date and current load."""
    import numpy as np
    import torch

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = os.cpu_count()
    return {
        "date": datetime.now(UTC).astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "usable_cores": affinity,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def median_time(fn: Callable[[], Any], repeat: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of ``fn()`` over ``repeat`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def alternate(fns: dict[str, Callable[[], Any]], repeat: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time several peers in alternation (the order flips every round). Returns times per peer."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeat):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (numbers right-aligned)."""

    def cell(v: Any) -> str:
        return v if isinstance(v, str) else f"{v}"

    body = [[cell(v) for v in row] for row in rows]
    align = ["---:" if rows and not isinstance(rows[0][i], str) else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def fmt(x: float, digits: int = 2) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def save_json(name: str, data: dict[str, Any]) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def section(title: str, markdown: str, data: dict[str, Any]) -> dict[str, Any]:
    """What every ``run()`` returns: a RESULTS.md section and its raw numbers."""
    return {"title": title, "markdown": markdown, "data": data}


def quick_main(run: Callable[[bool], dict[str, Any]], name: str, doc: str | None) -> None:
    """Command line of a benchmark whose only option is ``--quick``: run, print, save the JSON."""
    import argparse

    parser = argparse.ArgumentParser(description=(doc or name).splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced sizes and repeats (a smoke run)")
    result = run(parser.parse_args().quick)
    print(result["markdown"])
    print(f"wrote {save_json(name, result['data'])}")
