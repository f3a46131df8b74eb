"""Ray Data's footer readers sized to the files (`vf3d.synthesis.datasets.footer_readers_for`) vs
its default pool of 32, side by side in one run, on small Parquet reads like vf3d's prompts table.

What it measures: --reads reads of one small Parquet file (`ray.data.read_parquet(...)
.materialize()`) on a private local Ray cluster with --cpus logical CPUs, A = Ray's default pool,
B = inside `footer_readers_for(1)`. Rounds go A, B, B, A (--quick: A, B). For each round: wall
seconds and the machine's busy CPU-seconds (from /proc/stat, so run it on a quiet machine), which
include the new Ray worker processes the reads start. Nothing asserts a timing.

Run (from the repository root, Linux):
  python bench/parquet_footers.py            # about 2 minutes on 2 quiet cores
  python bench/parquet_footers.py --quick
  python bench/parquet_footers.py --json bench-results/parquet_footers.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

from report import busy_cpu_seconds, cpu_and_wall_rows, finish, log

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private cluster needs no token


def one_round(path: Path, reads: int, sized: bool) -> dict[str, float]:
    import ray

    from vf3d.synthesis.datasets import footer_readers_for

    time.sleep(3)  # let the previous round's actors exit
    cpu, wall = busy_cpu_seconds(), time.perf_counter()
    for _ in range(reads):
        with footer_readers_for(1) if sized else contextlib.nullcontext():
            dataset = ray.data.read_parquet(str(path))
        dataset.materialize()
    time.sleep(3)  # the processes the reads started finish starting up and are counted
    return {"cpu_seconds": busy_cpu_seconds() - cpu, "wall_seconds": time.perf_counter() - wall - 3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round each (A, B)")
    parser.add_argument("--reads", type=int, default=3, help="reads per round")
    parser.add_argument("--cpus", type=int, default=4, help="logical CPUs of the private cluster (vf3d's local minimum is 4)")
    parser.add_argument("--json", type=Path, help="also write the summary and raw numbers as JSON here")
    args = parser.parse_args()
    from vf3d.synthesis.datasets import FOOTER_READERS_VARIABLE

    if FOOTER_READERS_VARIABLE in os.environ:
        raise SystemExit(f"bench/parquet_footers.py: error: unset {FOOTER_READERS_VARIABLE} (it overrides both sides)")
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    load_start = os.getloadavg()[0]
    order = [False, True] if args.quick else [False, True, True, False]
    runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="vf3d-bench-footers-") as folder:
        path = Path(folder) / "prompts.parquet"
        pq.write_table(pa.table({"id": [f"p{index}" for index in range(100)], "prompt": ["a toy"] * 100}), path)
        log(f"vf3d Parquet footer-reader benchmark: {args.reads} reads of one file per round, rounds {order}, {args.cpus} CPUs")
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        try:
            time.sleep(5)  # the cluster's own start-up is not counted
            for sized in order:
                outcome = one_round(path, args.reads, sized)
                runs[sized].append(outcome)
                log(
                    f"{'sized (1 reader)' if sized else 'default (32)'}: {outcome['cpu_seconds']:.1f} CPU-s, {outcome['wall_seconds']:.1f} s"
                )
        finally:
            ray.shutdown()

    rows = cpu_and_wall_rows(
        f"{args.reads} one-file reads (default pool vs sized)", runs[False], runs[True], "> 1: fewer worker processes started"
    )
    finish(
        "vf3d Parquet footer-reader benchmark",
        rows,
        f"Medians over {len(runs[False])} rounds each.",
        load_start,
        args.json,
        "quick" if args.quick else "full",
        reads=args.reads,
        cpus=args.cpus,
        runs={"sized" if key else "default": value for key, value in runs.items()},
    )


if __name__ == "__main__":
    main()
