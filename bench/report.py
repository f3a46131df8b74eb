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
