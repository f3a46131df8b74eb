"""What every benchmark in bench/ shares: timestamped progress lines and the summary table.

The scripts run as `python bench/NAME.py`, which puts this folder on sys.path, so they import it
as `report`.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH_START = time.perf_counter()
"""When the benchmark process started (progress lines and wall times count from here)."""


@dataclass
class Row:
    """One line of the summary table: A and B measured side by side, their ratio, the target."""

    name: str
    value_a: str
    value_b: str
    ratio: str
    target: str


def log(message: str) -> None:
    """A progress line stamped with the seconds since the benchmark started."""
    print(f"[{time.perf_counter() - BENCH_START:7.1f}s] {message}", flush=True)


def busy_cpu_seconds() -> float:
    """CPU-seconds the whole machine has spent busy since boot (user, nice, system, irq, ...; Linux
    /proc/stat): what a benchmark's processes, Ray's workers included, cost together."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle, iowait = fields[3], fields[4]
    return (sum(fields) - idle - iowait) / os.sysconf("SC_CLK_TCK")


def cpu_and_wall_rows(what: str, runs_a: list[dict[str, float]], runs_b: list[dict[str, float]], cpu_note: str) -> list[Row]:
    """Two rows, busy CPU-seconds and wall seconds of `what` (A vs B), from rounds measured as
    {"cpu_seconds": ..., "wall_seconds": ...}: medians, and A/B ratios (> 1: B costs less)."""
    import statistics

    rows = []
    for key, unit, ratio_word, note in (
        ("cpu_seconds", "busy CPU-seconds", "less", cpu_note),
        ("wall_seconds", "wall seconds", "faster", ""),
    ):
        a, b = statistics.median(run[key] for run in runs_a), statistics.median(run[key] for run in runs_b)
        rows.append(Row(f"{unit} of {what}", f"{a:.1f}", f"{b:.1f}", f"{a / max(b, 1e-9):.2f}× {ratio_word} (A/B)", note))
    return rows


def markdown_table(rows: list[Row]) -> str:
    """Rows as a markdown table (cells never contain "|": names say "vs" instead)."""
    lines = ["| measurement | A | B | ratio | target / note |", "|---|---|---|---|---|"]
    lines += [f"| {row.name} | {row.value_a} | {row.value_b} | {row.ratio} | {row.target} |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path, report: dict[str, Any], rows: list[Row]) -> None:
    """Write the run's report and its rows as JSON (what `make bench` collects)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**report, "rows": [asdict(row) for row in rows]}, indent=2, default=str) + "\n")
    log(f"wrote {path}")


def finish(title: str, rows: list[Row], footer: str, load_start: float, json_path: Path | None, mode: str, **raw: Any) -> None:
    """Print the summary (the benchmark's wall time and the load average around it beside the
    table, then `footer`) and, given --json, write it with the raw numbers `raw`."""
    wall_seconds, load_end = time.perf_counter() - BENCH_START, os.getloadavg()[0]
    print(
        f"\n## {title} ({wall_seconds:.0f}s, load average {load_start:.2f} → {load_end:.2f})\n\n{markdown_table(rows)}\n\n{footer}\n",
        flush=True,
    )
    if json_path:
        write_json(json_path, {"mode": mode, "wall_seconds": wall_seconds, "load_average": [load_start, load_end], **raw}, rows)


def on_private_ray(function: Callable[[str], Any], storage_prefix: str) -> tuple[Any, float]:
    """Start a private local Ray cluster, call `function(storage_dir)` with a temporary storage
    directory, shut the cluster down; returns (its result, its wall seconds, start-up excluded)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private cluster needs no token
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix=storage_prefix) as storage:
            started = time.perf_counter()
            result = function(storage)
            return result, time.perf_counter() - started
    finally:
        ray.shutdown()
