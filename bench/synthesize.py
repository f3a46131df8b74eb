"""Synthesis pipeline benchmarks, measured side by side in one run and reported as ratios.

What it measures:
  1. `synthesize()` (the Ray Data pipeline, `debug` preset, generation pool elastic from 1 to 2
     actors) vs a bare loop in this process over the same prompts. The bare loop calls the same
     stage classes as plain objects (no Ray): `prepare_inputs` on the input table, then, one shard
     of `rows_per_shard` rows at a time, FirstFrames → GenerateOrbits → ForegroundMasks →
     (FilterOrbits with a probe) → EncodeOrbits with each stage's batch size from the same
     config, and WriteSynthesized, which
     writes real shards to the loop's own temporary directory. Both sides are timed end to end
     from the same starting point (the prompts Parquet and the saved debug video model on disk)
     until every shard is written, model loading included: the bare loop builds its five stage
     objects (loading the video model and the text-to-image model) inside its timer;
     the pipeline's actors load theirs inside `synthesize()`. The pipeline runs on one private
     local Ray cluster (`vf3d.ray_runtime.ray_cluster`, started once and reused for every
     pipeline run); its start-up is reported on its own and counted nowhere else. Python imports
     are not model loading and fall on the pipeline's side only: this process has torch, diffusers
     and vf3d imported before the bare loop's timer starts, while each of the pipeline's fresh
     worker processes (one per actor, plus task workers) imports them inside `synthesize()`
     (2-7 s each here, most for the diffusers stages). Reported: videos/s of both and their ratio, both sides'
     seconds to their first written shard (the pipeline's fixed costs: worker start-up, imports,
     model loading, filling the stages), the pipeline summary's own videos/s (which
     starts after planning), and per stage the items per actor-second of the pipeline's actors
     next to the bare loop's (from the traces the stages write in both cases; below 1.00× an actor
     works slower than the lone loop because the pipeline's processes share the cores; a stage's
     first batch includes its lazy imports and model loading, which weighs on the cheap stages).
  2. The same pipeline with a generation pool of exactly 1 actor vs exactly 2 (min = max, all
     else equal): videos/s of each and their ratio. On 2 cores the ideal is at most about 2×, and
     less in practice because generation shares the cores with the other stages and Ray itself.

Generation is made the dominant cost, as it is on real clusters, by sampling with more Euler
steps than the debug preset (--steps, default 96; the debug preset's 4 steps would leave the tiny
model's generation cheaper than its text-to-image first frame and the filter). Prompts are text
only (first frames come from the debug preset's random tiny text-to-image model).

Fairness, threads: Ray sets OMP_NUM_THREADS for each worker from its CPU reservation (1 for the
fractional reservations of the debug preset), whereas torch in a plain process uses every core.
Here both sides run the same number of torch threads per process (--threads, default 1):
OMP_NUM_THREADS / MKL_NUM_THREADS are set in this process before torch is imported, and the local
Ray cluster started from it hands that environment to its workers, which Ray then leaves alone;
one Ray task checks and prints what a worker really gets. With 1 thread the bare loop runs one
stage at a time on one core while the pipeline may use both (2 generation actors, other stages
next to them), so above 1.00× is possible. Why not let the bare loop use both cores instead: on
this shared 2-core machine, torch with 2 OpenMP threads was measured 10-100× slower per item than
with 1 thread whenever other processes were busy (its threads spin and wait for each other), which
would make the bare loop look far worse than it is.

Machines are noisy: only ratios measured in the same run mean much, and the 1-minute load average
is printed before and after each measurement (another user's job shows there). Load from other
processes does not fall evenly: the OS shares the cores per process, so the pipeline's half-dozen
busy processes get a larger share of a contended machine than the lone bare loop, which flatters
the pipeline/bare ratio; the bare loop's generation items per second (compare a quiet run, or the
pipeline's single generation actor) shows how much it was starved. Nothing here asserts a timing;
targets are printed as information.

Run (from the repository root):
  python bench/synthesize.py                 # default: 384 prompts, 6-9 minutes on 2 shared CPU cores
  python bench/synthesize.py --quick         # smoke test: 24 prompts, 2-3 minutes (mostly fixed costs)
  python bench/synthesize.py --prompts 96 --json bench-synthesize.json    # start-up weighs more

On 2 cores each pipeline run pays roughly 30-50 s before its first shard (six fresh worker processes
importing torch and diffusers and loading models at once), against a few seconds for the bare loop.
At 96 prompts that was most of the pipeline's wall time (0.41-0.61× end to end), so the default
run is 384 prompts: a synthesis run is thousands to millions of prompts, and the ratio that matters
is the one where start-up is paid once. The table still shows the seconds to the first shard.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Only the standard library and report at import time: torch reads OMP_NUM_THREADS when it is first
# imported, and --threads is known only once the arguments are parsed (vf3d's synthesis modules
# import torch), so everything else is imported inside the functions, after main() sets it.
from report import BENCH_START, Row, log, markdown_table, write_json

PIPELINE_TARGET = 0.8
"""Pipeline/bare-loop videos/s the pipeline should reach on 2 CPUs (information, not asserted)."""
PROGRESS = re.compile(r"\s*\d+/\d+ inputs: (?P<kept>\d+) kept, (?P<rejected>\d+) rejected")
"""Start of synthesize()'s progress line, logged once per written batch (= shard)."""
SUBJECTS = (
    "a wooden chair",
    "a red sports car",
    "a ceramic mug",
    "a toy robot",
    "a potted plant",
    "a leather boot",
    "a brass lamp",
    "a teddy bear",
)
STAGE_NAMES = ("first_frame", "generate", "mask", "filter", "encode")


@dataclass
class Settings:
    """What differs between the default run and --quick."""

    prompts: int
    steps: int
    """Euler steps of orbit generation (the debug preset has 4)."""


DEFAULT = Settings(prompts=384, steps=96)
QUICK = Settings(prompts=24, steps=96)


def load_average() -> float:
    return os.getloadavg()[0]


def format_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}×"


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def write_prompts(path: Path, count: int) -> None:
    """`count` text prompts (ids p0000…, every fifth with a given elevation), as the tests write them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {
            "id": f"p{index:04d}",
            "prompt": f"{SUBJECTS[index % len(SUBJECTS)]}, studio photo, white background",
            "elevation": 10.0 if index % 5 == 0 else None,
        }
        for index in range(count)
    ]
    pq.write_table(
        pa.Table.from_pylist(rows, schema=pa.schema([("id", pa.string()), ("prompt", pa.string()), ("elevation", pa.float64())])), path
    )


def bench_config(steps: int, generate_pool: dict[str, Any] | None = None):
    """The debug preset with `steps` generation steps (and optionally another generation pool)."""
    from vf3d import config as config_lib
    from vf3d.synthesis.config import SYNTHESIZE_PRESETS

    overrides: dict[str, Any] = {"generation": {"num_inference_steps": steps}}
    if generate_pool:
        overrides["generate_pool"] = generate_pool
    return config_lib.merge(config_lib.preset(SYNTHESIZE_PRESETS, "debug"), overrides).validate()


def add_stage_traces(totals: dict[str, dict[str, float]], written: dict[str, list]) -> None:
    """Sum WriteSynthesized's per-batch stage traces ({stage: {items, seconds, actors}})."""
    for stage, entry in json.loads(written["stages"][0]).items():
        stage_totals = totals.setdefault(stage, {"items": 0, "seconds": 0.0})
        stage_totals["items"] += entry["items"]
        stage_totals["seconds"] += entry["seconds"]


def written_ids(out_dir: Path) -> dict[str, set[str]]:
    from vf3d.data import shards

    return {table: shards.read_ids(out_dir, table=table) for table in ("orbits", "rejected", "errors")}


# ---------------------------------------------------------------------------------------------
# The bare loop
# ---------------------------------------------------------------------------------------------


def numpy_batch(table) -> dict[str, Any]:
    """A pyarrow table as the dict of numpy arrays Ray Data hands a `batch_format="numpy"` stage."""
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def in_batches(stage, batch: dict[str, Any], batch_size: int) -> list:
    """Call `stage` on consecutive slices of `batch` of `batch_size` rows; the list of outputs."""
    rows = len(batch["id"])
    return [stage({name: values[start : start + batch_size] for name, values in batch.items()}) for start in range(0, rows, batch_size)]


def concatenated(outputs: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    return {name: np.concatenate([output[name] for output in outputs]) for name in outputs[0]}


def bare_loop(prompts: Path, video_model: Path, out_dir: Path, config) -> dict[str, Any]:
    """The pipeline's work in this process, one shard of `rows_per_shard` rows at a time, every
    stage on slices of its pool's batch size; timed from reading the prompts (models loaded inside)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vf3d import config as config_lib
    from vf3d.synthesis.stages import (
        EncodeOrbits,
        FilterOrbits,
        FirstFrames,
        ForegroundMasks,
        GenerateOrbits,
        WriteSynthesized,
        prepare_inputs,
    )
    from vf3d.synthesis.synthesize import video_model_settings

    started = time.perf_counter()
    as_dict, out = config_lib.to_dict(config), str(out_dir)
    resolution = int(video_model_settings(video_model).get("resolution", 512))
    rows = prepare_inputs(pq.read_table(prompts), done_ids=pa.array([], pa.string()), config=as_dict, images_root=str(prompts.parent))
    stages = [
        (FirstFrames(config=as_dict, out_dir=out, resolution=resolution), config.first_frame_pool.batch_size),
        (GenerateOrbits(config=as_dict, out_dir=out, video_model=str(video_model)), config.generate_pool.batch_size),
        (ForegroundMasks(config=as_dict, out_dir=out), config.mask_pool.batch_size),
    ]
    if config.filter.probe_path:  # the pipeline runs the probe stage only when there is a probe
        stages.append((FilterOrbits(config=as_dict, out_dir=out, video_model=str(video_model)), config.filter_pool.batch_size))
    encode_stage, encode_batch = EncodeOrbits(config=as_dict, out_dir=out, video_model=str(video_model)), config.encode_pool.batch_size
    writer = WriteSynthesized(out_dir=out)
    load_seconds = time.perf_counter() - started
    log(f"  bare: {rows.num_rows} inputs prepared, {len(stages) + 2} stage objects built in {load_seconds:.1f}s (from the start)")
    counts = {"kept": 0, "rejected": 0, "errors": 0}
    stage_totals: dict[str, dict[str, float]] = {}
    first_shard_seconds = None
    progress: list[tuple[float, int]] = []  # (seconds since start, videos written) after each shard, as for the pipeline
    for start in range(0, rows.num_rows, config.rows_per_shard):
        batch = numpy_batch(rows.slice(start, config.rows_per_shard))
        for stage, batch_size in stages:
            batch = concatenated(in_batches(stage, batch, batch_size))
        filtered = pa.concat_tables(in_batches(encode_stage, batch, encode_batch))
        written = writer(filtered)
        for key in counts:
            counts[key] += written[key][0]
        add_stage_traces(stage_totals, written)
        first_shard_seconds = first_shard_seconds or time.perf_counter() - started
        videos = counts["kept"] + counts["rejected"]
        progress.append((time.perf_counter() - started, videos))
        log(
            f"  bare: {videos + counts['errors']}/{rows.num_rows} inputs: {counts['kept']} kept, {counts['rejected']} rejected, {counts['errors']} errors; "
            f"{videos / (time.perf_counter() - started):.2f} videos/s"
        )
    seconds = time.perf_counter() - started
    videos = counts["kept"] + counts["rejected"]
    return {
        **counts,
        "videos": videos,
        "seconds": seconds,
        "videos_per_second": videos / seconds,
        "first_shard_seconds": first_shard_seconds or seconds,
        "progress": progress,
        "load_seconds": load_seconds,
        "stages": {
            stage: {**entry, "items_per_actor_second": ratio(entry["items"], entry["seconds"])} for stage, entry in stage_totals.items()
        },
    }


# ---------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------


def start_cluster(stack) -> dict[str, Any]:
    """Start the private local cluster once (kept open on `stack`); returns its start-up seconds and
    the torch threads a worker with a fractional CPU reservation really gets."""
    import ray

    from vf3d.ray_runtime import ray_cluster

    started = time.perf_counter()
    stack.enter_context(ray_cluster(log=lambda message: log(f"  ray: {message}")))
    startup_seconds = time.perf_counter() - started
    # Progress bars would flood a log that is not a terminal; synthesize() logs progress itself.
    ray.data.DataContext.get_current().enable_progress_bars = False

    @ray.remote(num_cpus=0.25)
    def worker_threads() -> tuple[str | None, int]:
        import torch

        return os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()

    omp, threads = ray.get(worker_threads.remote())
    return {
        "startup_seconds": startup_seconds,
        "cpus": ray.cluster_resources().get("CPU", 0),
        "worker_omp_num_threads": omp,
        "worker_torch_threads": threads,
    }


def pipeline(prompts: Path, video_model: Path, out_dir: Path, config, label: str) -> dict[str, Any]:
    """`synthesize()` on the connected cluster, timed from the call to its return."""
    from vf3d.synthesis.synthesize import synthesize

    # (seconds since the call, videos written) at each progress line. Not a steady-state rate: the
    # output arrives in bursts (stages that started early hand over a backlog when the writer is up).
    progress: list[tuple[float, int]] = []

    def job_log(message: str) -> None:
        match = PROGRESS.match(message)
        if match:
            progress.append((time.perf_counter() - started, int(match["kept"]) + int(match["rejected"])))
        log(f"  {label}: {message.strip()}")

    started = time.perf_counter()
    summary = synthesize(prompts, video_model, out_dir, config, log=job_log)
    seconds = time.perf_counter() - started
    videos = summary["videos_this_run"]
    return {
        "summary": summary,
        "videos": videos,
        "kept": summary["kept_this_run"],
        "rejected": summary["rejected_this_run"],
        "errors": summary["errors_this_run"],
        "seconds": seconds,
        "videos_per_second": videos / seconds,
        "first_shard_seconds": progress[0][0] if progress else seconds,
        "progress": progress,
    }


def measured(name: str, run) -> dict[str, Any]:
    """Run one measurement with the load average logged before and after."""
    before = load_average()
    log(f"{name}: start (1-min load average {before:.2f})")
    result = run()
    result["load_average"] = [before, load_average()]
    log(
        f"{name}: {result['videos']} videos ({result['kept']} kept, {result['rejected']} rejected, {result['errors']} errors) in {result['seconds']:.1f}s = "
        f"{result['videos_per_second']:.3f} videos/s; first shard after {result['first_shard_seconds']:.1f}s (load average {before:.2f} → {result['load_average'][1]:.2f})"
    )
    return result


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def run_benchmarks(work_dir: Path, settings: Settings, threads: int) -> tuple[list[Row], dict[str, Any]]:
    import contextlib

    from vf3d import config as config_lib
    from vf3d.models.video import build_video_pipeline
    from vf3d.models.video.config import VIDEO_MODEL_PRESETS

    prompts, video_model = work_dir / "prompts.parquet", work_dir / "video-model"
    write_prompts(prompts, settings.prompts)
    build_video_pipeline(VIDEO_MODEL_PRESETS["debug"]()).save_pretrained(video_model)
    config = bench_config(settings.steps)
    pools = {stage: getattr(config, f"{stage}_pool") for stage in ("first_frame", "generate", "mask", "filter")}
    log(
        f"{settings.prompts} text prompts in {prompts}; debug video model in {video_model}; debug preset with {settings.steps} generation steps; pools "
        + ", ".join(
            f"{stage} {pool.min_actors}-{pool.max_actors}×{pool.num_cpus} CPU batch {pool.batch_size}" for stage, pool in pools.items()
        )
        + f", {config.rows_per_shard} rows per shard; {threads} torch thread(s) per process on both sides"
    )

    bare = measured(
        "bare loop (same stage classes in this process, no Ray)", lambda: bare_loop(prompts, video_model, work_dir / "bare", config)
    )
    with contextlib.ExitStack() as stack:
        before = load_average()
        cluster = start_cluster(stack)
        log(
            f"local Ray cluster with {cluster['cpus']:g} logical CPUs up in {cluster['startup_seconds']:.1f}s (not counted in any run; load average "
            f"{before:.2f} → {load_average():.2f}); a worker reserving 0.25 CPU runs OMP_NUM_THREADS={cluster['worker_omp_num_threads']}, "
            f"{cluster['worker_torch_threads']} torch thread(s)"
        )
        if cluster["worker_torch_threads"] != threads:
            log(
                f"WARNING: Ray workers run {cluster['worker_torch_threads']} torch threads, this process {threads}: the sides are not matched"
            )
        elastic = measured(
            f"pipeline (debug preset, generation pool {pools['generate'].min_actors}-{pools['generate'].max_actors} actors)",
            lambda: pipeline(prompts, video_model, work_dir / "pipeline", config, "pipeline"),
        )
        one = measured(
            "pipeline, generation pool exactly 1 actor",
            lambda: pipeline(
                prompts,
                video_model,
                work_dir / "generate-1",
                bench_config(settings.steps, {"min_actors": 1, "max_actors": 1}),
                "1 generator",
            ),
        )
        two = measured(
            "pipeline, generation pool exactly 2 actors",
            lambda: pipeline(
                prompts,
                video_model,
                work_dir / "generate-2",
                bench_config(settings.steps, {"min_actors": 2, "max_actors": 2, "initial_actors": 2}),
                "2 generators",
            ),
        )
    # Same ids and seeds on both sides: the outcome tables should hold the same ids (a difference
    # means the two sides did different work, or float noise moved an orbit across a filter threshold).
    bare_ids, pipeline_ids = written_ids(work_dir / "bare"), written_ids(work_dir / "pipeline")
    if bare_ids != pipeline_ids:
        log(
            f"NOTE: the outcome tables hold different ids: bare {[len(ids) for ids in bare_ids.values()]} vs pipeline {[len(ids) for ids in pipeline_ids.values()]} "
            f"(orbits, rejected, errors)"
        )
    else:
        log(f"both sides put the same ids in the same tables ({', '.join(f'{table} {len(ids)}' for table, ids in bare_ids.items())})")
    if bare["videos"] != elastic["videos"]:
        log(f"WARNING: the bare loop made {bare['videos']} videos, the pipeline {elastic['videos']}: the ratios compare different work")

    pipeline_ratio = elastic["videos_per_second"] / bare["videos_per_second"]
    actors_ratio = two["videos_per_second"] / one["videos_per_second"]
    summary = elastic["summary"]
    log(
        f"pipeline/bare videos/s = {format_ratio(pipeline_ratio)} (target ≥ {PIPELINE_TARGET:.2f}×; generation used {summary['stages']['generate']['actors_used']} actor(s)); "
        f"first shard after {elastic['first_shard_seconds']:.1f}s vs {bare['first_shard_seconds']:.1f}s bare"
    )
    log(
        f"2/1 generation actors videos/s = {format_ratio(actors_ratio)} (ideal on {os.cpu_count()} cores: at most about {min(2, os.cpu_count() or 1)}×)"
    )

    scope = f"{settings.prompts} prompts, {settings.steps} steps"
    rows = [
        Row(
            f"videos/s end to end incl. model loading, {scope} (bare loop vs pipeline)",
            f"{bare['videos_per_second']:.3f}",
            f"{elastic['videos_per_second']:.3f}",
            format_ratio(pipeline_ratio),
            f"pipeline/bare, target ≥ {PIPELINE_TARGET:.2f}×; generation pool {pools['generate'].min_actors}-{pools['generate'].max_actors}, "
            f"{summary['stages']['generate']['actors_used']} used; {threads} torch thread(s) per process",
        ),
        Row(
            f"wall seconds, {scope} (bare loop vs pipeline)",
            f"{bare['seconds']:.1f}",
            f"{elastic['seconds']:.1f}",
            format_ratio(elastic["seconds"] / bare["seconds"]),
            f"pipeline/bare; + {cluster['startup_seconds']:.1f}s cluster start-up, not counted",
        ),
        Row(
            f"seconds to the first written shard, {scope} (bare loop vs pipeline)",
            f"{bare['first_shard_seconds']:.1f}",
            f"{elastic['first_shard_seconds']:.1f}",
            format_ratio(ratio(elastic["first_shard_seconds"], bare["first_shard_seconds"])),
            f"pipeline/bare; bare loads its models in {bare['load_seconds']:.1f}s",
        ),
        Row(
            f"videos/s, {scope} (bare loop vs pipeline summary's own)",
            f"{bare['videos_per_second']:.3f}",
            f"{summary['videos_per_second']:.3f}",
            format_ratio(ratio(summary["videos_per_second"], bare["videos_per_second"])),
            "pipeline/bare; the summary leaves out planning",
        ),
    ]
    for stage in STAGE_NAMES:
        ours, theirs = bare["stages"].get(stage, {}).get("items_per_actor_second"), summary["stages"][stage]["items_per_actor_second"]
        rows.append(
            Row(
                f"{stage}: items per actor-second (bare loop vs pipeline actor)",
                "n/a" if ours is None else f"{ours:.2f}",
                "n/a" if theirs is None else f"{theirs:.2f}",
                format_ratio(ratio(theirs, ours)),
                f"pipeline/bare; {summary['stages'][stage]['actors_used']} actor(s) used, batch {pools[stage].batch_size}",
            )
        )
    one_rate, two_rate = (
        one["summary"]["stages"]["generate"]["items_per_actor_second"],
        two["summary"]["stages"]["generate"]["items_per_actor_second"],
    )
    rows += [
        Row(
            f"videos/s, {scope} (generation pool 1 vs 2 actors)",
            f"{one['videos_per_second']:.3f}",
            f"{two['videos_per_second']:.3f}",
            format_ratio(actors_ratio),
            f"2/1, ideal at most ≈ {min(2, os.cpu_count() or 1)}× on {os.cpu_count()} cores; actors used {one['summary']['stages']['generate']['actors_used']} vs "
            f"{two['summary']['stages']['generate']['actors_used']}",
        ),
        Row(
            "generate: items per actor-second (1 vs 2 actors)",
            "n/a" if one_rate is None else f"{one_rate:.2f}",
            "n/a" if two_rate is None else f"{two_rate:.2f}",
            format_ratio(ratio(two_rate, one_rate)),
            "2/1; 1.00× = 2 actors each as fast as one alone",
        ),
    ]
    details = {
        "config": config_lib.to_dict(config),
        "cluster": cluster,
        "bare": bare,
        "pipeline": elastic,
        "generate_1": one,
        "generate_2": two,
        "pipeline_ratio": pipeline_ratio,
        "generate_actors_ratio": actors_ratio,
    }
    return rows, details


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer prompts (smoke test)")
    parser.add_argument("--prompts", type=int, help=f"number of text prompts (default {DEFAULT.prompts}, quick {QUICK.prompts})")
    parser.add_argument("--steps", type=int, help=f"generation Euler steps (default {DEFAULT.steps}; the debug preset has 4)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads per process, the bare loop and every Ray worker alike (default 1)"
    )
    parser.add_argument("--json", type=Path, help="also write the summary rows and raw numbers as JSON here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # Before torch is imported (here and, through the local cluster's environment, in Ray's workers).
    threads = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    os.environ.update(threads)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local cluster needs no token
    os.environ.pop("RAY_ADDRESS", None)  # never attach to a stray cluster: ray_cluster() starts a private one
    import torch

    torch.set_num_threads(args.threads)
    settings = QUICK if args.quick else DEFAULT
    settings = Settings(prompts=args.prompts or settings.prompts, steps=args.steps or settings.steps)
    mode = "quick" if args.quick else "default"
    load_start = load_average()
    log(
        f"vf3d synthesis benchmark ({mode} mode), {os.cpu_count()} CPUs, 1-min load average {load_start:.2f}; "
        f"{', '.join(f'{key}={value}' for key, value in threads.items())} for this process and the Ray workers"
    )
    with tempfile.TemporaryDirectory(prefix="vf3d-bench-synthesize-") as temp:
        rows, details = run_benchmarks(Path(temp), settings, args.threads)

    wall_seconds, load_end = time.perf_counter() - BENCH_START, load_average()
    print(
        f"\n## vf3d synthesis benchmark ({mode}: {settings.prompts} prompts, {settings.steps} steps; {os.cpu_count()} CPUs, {args.threads} torch thread(s) per process, {wall_seconds:.0f}s, "
        f"load average {load_start:.2f} → {load_end:.2f})\n\n{markdown_table(rows)}\n",
        flush=True,
    )
    if args.json:
        write_json(
            args.json,
            {
                "mode": mode,
                "settings": asdict(settings),
                "threads": args.threads,
                "cpus": os.cpu_count(),
                "wall_seconds": wall_seconds,
                "load_average": [load_start, load_end],
                "details": details,
            },
            rows,
        )


if __name__ == "__main__":
    main()
