"""Paper-scale costs that do not need a GPU: what resuming `vf3d synthesize` costs at 100k / 1M / 4M ids.

    python bench/scale.py                     # 100k and 1M ids (a few minutes on 2 cores)
    python bench/scale.py --full              # also 4M ids (~125k shard files; tens of minutes to build)
    python bench/scale.py --quick             # 10k and 100k ids (smoke test)
    python bench/scale.py --max-ids 2000000   # drop sizes above this
    python bench/scale.py --json bench-results/scale.json

Section "resume": for each size, an output directory is built directly with pyarrow in a
temporary folder: N finished ids in shards of 32 rows (realistic file counts: the paper's 2.7M
kept orbits, docs/vfusion3d.md#data-engine, are ~85k files; cheap rows, a 1-pixel frame each) written by `OrbitShardWriter`, so
each shard is also in a per-writer id log (vf3d.data.manifest), plus an input table of N + 1% new
ids. Then, in a fresh subprocess per size (so its peak RSS is the planner's own):

- planning: `read_inputs` (ids only) + the output lease + `plan_resume` (index the manifests,
  fold them into one index file, build the finished-id set) — the driver's work before any model
  runs — in seconds and peak RSS;
- resume again: the same once the index is folded (what every later resume costs);
- prepare filter: `IdSet.contains` over every input row in 4096-row batches, as the prepare tasks
  run it: µs per input row (it should not grow with N);
- summary: write this run's new files (the 1% new ids, as error rows of 32), re-index from the
  planning index plus the new manifests, and compute the exactly-once checks;
- legacy planning (smallest size only, or all with --full): the same directory without manifests,
  as directories written before them are resumed the first time (reads every shard's id column).

Targets (issue 14) at 4M ids on the 2-core test machine: planning ≤ 20 s and ≤ 1 GB peak RSS.

Section "training_input" (bench/scale_training.py): train-recon's input pipeline start-up (Ray
start excluded, to the first batch) at 1k vs 100k orbits, and bytes moved per training sample vs
the uint8 size of the views it uses. Section "saturation" (bench/scale_saturation.py): a local
cluster declaring logical GPUs, the generation stage replaced by a stand-in that sleeps a fixed
time per video, the rest of the pipeline real: the generation actors' busy share of the wall time
at several offered rates. `--sections NAME ...` runs a subset.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from report import BENCH_START, Row, log, markdown_table, write_json  # noqa: E402

ROWS_PER_SHARD = 32
BATCH_ROWS = 4096
WRITERS = 8
"""Id logs per built directory (a run's writer pool leaves one per writer)."""


# ---------------------------------------------------------------------------------------------
# Section "resume"
# ---------------------------------------------------------------------------------------------


def build_directory(root: Path, finished: int, new: int) -> tuple[Path, Path, float]:
    """An output directory with `finished` ids in 32-row orbit shards (id-logged by 8 writers) and
    a prompts table of finished + new ids. Returns (out_dir, prompts, seconds)."""
    from vf3d.data import shards

    started = time.perf_counter()
    out, prompts = root / "out", root / "prompts.parquet"
    record = shards.OrbitRecord(
        id="template",
        source="synthetic",
        prompt="a mug",
        rgb=np.full((1, 1, 1, 3), 255, np.uint8),
        mask=np.zeros((1, 1, 1), np.uint8),
        cameras=np.zeros((1, 25), np.float32),
        elevation=10.0,
    )
    template = shards.records_to_table([record])
    ids = np.char.add("p", np.char.zfill(np.arange(finished + new).astype(str), 9))
    writers = [shards.OrbitShardWriter(out, prefix="synthetic") for _ in range(WRITERS)]
    for shard, start in enumerate(range(0, finished, ROWS_PER_SHARD)):
        chunk = ids[start : min(start + ROWS_PER_SHARD, finished)]
        table = pa.concat_tables([template] * len(chunk)).set_column(0, "id", pa.array(chunk.tolist(), pa.string()))
        # Written as the writer does, minus validation (the rows are known good): same files, same logs.
        shards._write_atomically(table.cast(shards.ORBIT_SCHEMA), out, "synthetic", False, writers[shard % WRITERS]._log, "orbits")
    for writer in writers:
        writer.close()
    pq.write_table(pa.table({"id": pa.array(ids.tolist(), pa.string()), "prompt": pa.array(["a mug"] * len(ids))}), prompts)
    return out, prompts, time.perf_counter() - started


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: the lifetime peak


def reset_peak_rss() -> float:
    """Reset this process's peak RSS to its current RSS and return that (MB). ru_maxrss cannot be
    used: on Linux a child keeps the peak of the parent it was forked from (here the process that
    built the directory) across exec."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """Peak RSS since the last `reset_peak_rss` (MB)."""
    return _status_mb("VmHWM")


def measure(out: Path, prompts: Path) -> dict[str, Any]:
    """Runs in a fresh subprocess: planning, planning again, the prepare filter and the summary."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
    from vf3d.data import shards
    from vf3d.synthesis.config import LeaseConfig
    from vf3d.synthesis.lease import OutputLease
    from vf3d.synthesis.synthesize import exactly_once_counts, plan_resume, read_inputs

    # The driver's imports (torch, via the stage classes) come before planning: its own share is
    # the peak above this baseline.
    figures: dict[str, Any] = {"import_rss_mb": reset_peak_rss()}
    started = time.perf_counter()
    with OutputLease(out, LeaseConfig(), command="bench", log=lambda line: None):
        inputs = read_inputs(prompts)
        plan = plan_resume(inputs, out, retry_errors=False)
        figures["plan_seconds"] = time.perf_counter() - started
        figures["plan_peak_rss_mb"] = peak_rss_mb()
        figures["read_from_shards"] = plan.index.read_from_shards
        figures["pending"] = plan.pending

        started = time.perf_counter()
        again = plan_resume(read_inputs(prompts), out, retry_errors=False)
        figures["replan_seconds"] = time.perf_counter() - started
        assert again.pending == plan.pending

        rows = pq.read_table(prompts, columns=["id"]).column("id").combine_chunks()
        started = time.perf_counter()
        kept = 0
        for start in range(0, len(rows), BATCH_ROWS):
            kept += int((~plan.done.contains(rows.slice(start, BATCH_ROWS))).sum())
        figures["filter_us_per_row"] = (time.perf_counter() - started) / len(rows) * 1e6
        assert kept == plan.pending

        started = time.perf_counter()
        writer = shards.OrbitShardWriter(out, prefix="synthetic")
        new_ids = rows.filter(pa.array(~plan.done.contains(rows))).to_pylist()
        for start in range(0, len(new_ids), ROWS_PER_SHARD):
            writer.write_errors(
                [{"id": identifier, "stage": "generate", "reason": "bench"} for identifier in new_ids[start : start + ROWS_PER_SHARD]]
            )
        writer.close()
        figures["write_new_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        index = shards.compact_index(out, shards.index_shards(out, previous=plan.index))
        checks = exactly_once_counts(index, inputs.id_set())
        figures["summary_seconds"] = time.perf_counter() - started
        assert checks["missing"] == 0 and checks["duplicate_rows"] == 0, checks
    figures["peak_rss_mb"] = peak_rss_mb()
    return figures


def measure_legacy(out: Path, prompts: Path) -> dict[str, Any]:
    """Runs in a fresh subprocess: the first resume of a directory without id manifests."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
    from vf3d.synthesis.synthesize import plan_resume, read_inputs

    reset_peak_rss()
    started = time.perf_counter()
    plan = plan_resume(read_inputs(prompts), out, retry_errors=False)
    return {
        "legacy_plan_seconds": time.perf_counter() - started,
        "legacy_peak_rss_mb": peak_rss_mb(),
        "read_from_shards": plan.index.read_from_shards,
    }


def in_subprocess(function: str, out: Path, prompts: Path) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, __file__, "--measure", function, str(out), str(prompts)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"bench/scale.py: {function} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def bench_resume(args: argparse.Namespace) -> tuple[list[Row], dict[str, Any]]:
    sizes = [10_000, 100_000] if args.quick else [100_000, 1_000_000] + ([4_000_000] if args.full else [])
    if args.max_ids:
        sizes = [size for size in sizes if size <= args.max_ids] or [args.max_ids]
    details: dict[str, Any] = {}
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix=f"vf3d-bench-scale-{size}-") as temp:
            new = max(1, size // 100)
            out, prompts, build_seconds = build_directory(Path(temp), size, new)
            files = len(list(out.glob("*.parquet")))
            log(f"{size:,} ids: built {files:,} shard files + {WRITERS} id logs in {build_seconds:.1f} s")
            figures = {
                "ids": size,
                "new_ids": new,
                "files": files,
                "build_seconds": build_seconds,
                **in_subprocess("measure", out, prompts),
            }
            log(
                f"{size:,} ids: plan {figures['plan_seconds']:.2f} s ({figures['plan_peak_rss_mb']:.0f} MB peak), again {figures['replan_seconds']:.2f} s, "
                f"filter {figures['filter_us_per_row']:.2f} µs/row, summary {figures['summary_seconds']:.2f} s"
            )
            if size == sizes[0] or args.full:
                shutil.rmtree(out / "_ids")
                (out / "synthesize_config.json").unlink(missing_ok=True)
                legacy = in_subprocess("measure_legacy", out, prompts)
                figures.update({key: value for key, value in legacy.items() if key != "read_from_shards"})
                log(
                    f"{size:,} ids without manifests: first resume {legacy['legacy_plan_seconds']:.2f} s, read {legacy['read_from_shards']:,} shards"
                )
            details[str(size)] = figures
    rows = []
    for size, figures in details.items():
        ids = int(size)
        rows.append(
            Row(
                f"resume planning at {ids:,} ids / {figures['files']:,} files: seconds (first vs folded)",
                f"{figures['plan_seconds']:.2f}",
                f"{figures['replan_seconds']:.2f}",
                f"{figures['plan_seconds'] / max(figures['replan_seconds'], 1e-9):.2f}",
                "≤ 20 s at 4M",
            )
        )
        rows.append(
            Row(
                f"resume planning at {ids:,} ids: peak driver RSS MB (after planning vs after imports)",
                f"{figures['plan_peak_rss_mb']:.0f}",
                f"{figures['import_rss_mb']:.0f}",
                f"+{figures['plan_peak_rss_mb'] - figures['import_rss_mb']:.0f} MB",
                "≤ 1,000 MB at 4M",
            )
        )
        rows.append(
            Row(
                f"at {ids:,} ids: µs per finished id (planning) vs µs per input row (prepare filter)",
                f"{figures['plan_seconds'] / ids * 1e6:.2f}",
                f"{figures['filter_us_per_row']:.2f}",
                "",
                "filter constant in N",
            )
        )
        rows.append(
            Row(
                f"at {ids:,} ids: summary seconds vs seconds writing the {figures['new_ids']:,} new ids",
                f"{figures['summary_seconds']:.2f}",
                f"{figures['write_new_seconds']:.2f}",
                "",
                "no shard rescanned",
            )
        )
        if "legacy_plan_seconds" in figures:
            rows.append(
                Row(
                    f"at {ids:,} ids: first resume without manifests vs with (seconds)",
                    f"{figures['legacy_plan_seconds']:.2f}",
                    f"{figures['plan_seconds']:.2f}",
                    f"{figures['legacy_plan_seconds'] / max(figures['plan_seconds'], 1e-9):.1f}",
                    "once per old directory",
                )
            )
    return rows, details


def bench_training_input(args: argparse.Namespace) -> tuple[list[Row], dict[str, Any]]:
    """train-recon start-up at 1k vs 100k orbits and bytes moved per sample (bench/scale_training.py)."""
    from scale_training import run_training_input

    details, rows = run_training_input(args.quick)
    return rows, details


def bench_saturation(args: argparse.Namespace) -> tuple[list[Row], dict[str, Any]]:
    """Generation actors' busy share with a stand-in generator (bench/scale_saturation.py)."""
    from scale_saturation import run_saturation

    details, rows = run_saturation(args.quick)
    return rows, details


SECTIONS: dict[str, Callable[[argparse.Namespace], tuple[list[Row], dict[str, Any]]]] = {
    "resume": bench_resume,
    "training_input": bench_training_input,
    "saturation": bench_saturation,
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10k and 100k ids (smoke test)")
    parser.add_argument("--full", action="store_true", help="also 4M ids (slow to build), and the no-manifest resume at every size")
    parser.add_argument("--max-ids", type=int, help="leave out sizes above this many ids")
    parser.add_argument("--sections", nargs="*", choices=sorted(SECTIONS), help="sections to run (default: all)")
    parser.add_argument("--json", type=Path, help="also write the summary rows and raw numbers as JSON here")
    parser.add_argument("--measure", nargs=3, metavar=("FUNCTION", "OUT", "PROMPTS"), help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.measure:  # the subprocess half of a measurement: one JSON line on stdout
        function, out, prompts = args.measure
        print(json.dumps({"measure": measure, "measure_legacy": measure_legacy}[function](Path(out), Path(prompts))))
        return
    mode = "quick" if args.quick else ("full" if args.full else "default")
    load_start = os.getloadavg()[0]
    log(f"vf3d scale benchmark ({mode} mode), {os.cpu_count()} CPUs, 1-min load average {load_start:.2f}")
    rows, details = [], {}
    for name, section in SECTIONS.items():
        if args.sections and name not in args.sections:
            continue
        section_rows, details[name] = section(args)
        rows += section_rows
    wall_seconds, load_end = time.perf_counter() - BENCH_START, os.getloadavg()[0]
    print(
        f"\n## vf3d scale benchmark ({mode}, {os.cpu_count()} CPUs, {wall_seconds:.0f}s, load average {load_start:.2f} → {load_end:.2f})\n\n{markdown_table(rows)}\n",
        flush=True,
    )
    if args.json:
        write_json(
            args.json,
            {
                "mode": mode,
                "cpus": os.cpu_count(),
                "wall_seconds": wall_seconds,
                "load_average": [load_start, load_end],
                "details": details,
            },
            rows,
        )


if __name__ == "__main__":
    main()
