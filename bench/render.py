"""Asset-rendering benchmarks, measured side by side in one run and reported as ratios.

What it measures:
  1. The `render-assets` Ray Data job vs a plain single-process loop over the same assets
     (real meshes from the pybullet wheel, default 48, quick 12) with the same render settings
     (16 views at 256², quick: 8 views at 128²) and the same work per asset: load → render →
     encode (PNG) → write Parquet shards with `OrbitShardWriter`, one file per `rows_per_shard`
     orbits. Both are timed from their start until every file is written; the Ray job excludes the
     cluster's start-up (reported on its own) but includes everything else (planning, actor
     start-up, rendering, writing). The job's own frames/s from its summary is reported as well,
     and, to show where the time goes, both sides' seconds to their first written shard (the job's
     fixed costs) and their median load+render seconds per asset as recorded in the shards (how much
     slower an actor renders than the lone loop while sharing the cores). Three rounds (quick: one)
     of plain loop then Ray job; the table shows medians of the values and of per-round ratios.
  2. Single-process render throughput at 256² vs 512² (16 views, default multisampling) with
     `render_orbit` on the same assets, loaded once beforehand so only rendering is timed.

Fairness: llvmpipe (Mesa's CPU OpenGL) renders with one thread per core by default, so a lone
renderer would use every core while each Ray actor fights the others for them. LP_NUM_THREADS=1
is set for the actors (runtime_env) and for this process (the plain loop and section 2), so both
sides of the comparison render one frame per core and the ideal Ray/plain ratio is the number of
actors that run at once (the core count, on this 2-core machine about 2×).

Machines are noisy: only ratios measured in the same run mean much, and the load average is
printed after every round and at both ends to show whether other processes ran. Nothing here
asserts a timing; the ideal ratios are printed as information.

Run (from the repository root):
  python bench/render.py                 # full run, about 3 minutes on 2 CPU cores
  python bench/render.py --quick         # smoke test, about 30 seconds
  python bench/render.py --assets 96 --json bench-render.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Before anything loads Mesa (it reads this when a context is created) or Ray (the actors inherit
# it through runtime_env below): one rasterizer thread per renderer, on both sides.
RENDER_THREADS = {"LP_NUM_THREADS": "1"}
os.environ.update(RENDER_THREADS)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private test cluster needs no token

from report import BENCH_START, Row, log, markdown_table, write_json  # noqa: E402

from vf3d import config as config_lib  # noqa: E402
from vf3d.config import RenderAssetsConfig  # noqa: E402
from vf3d.data import shards  # noqa: E402
from vf3d.data.assets import Asset, AssetError, asset_id, find_assets, gather_sample_assets, load_asset  # noqa: E402
from vf3d.data.config import OrbitRenderConfig  # noqa: E402
from vf3d.data.orbit_renderer import OrbitRenderer, render_orbit  # noqa: E402
from vf3d.synthesis.config import RENDER_ASSETS_PRESETS, ActorPoolConfig  # noqa: E402
from vf3d.synthesis.render_assets import RENDER_STAGE, plan_render, render_assets  # noqa: E402

WRITER_CPUS = 0.25
"""CPUs `render_assets` reserves for its single WriteShards actor."""
SCHEDULING_HEADROOM_CPUS = 0.1
"""Logical CPUs left unreserved so Ray Data can still schedule small tasks next to the actors."""
RESOLUTION_VIEWS = 16
RESOLUTIONS = (256, 512)
JOB_PROGRESS = re.compile(r"\s*\d+/\d+ assets \(")
"""Start of render_assets's progress line, logged once per written batch."""


@dataclass
class Settings:
    """What differs between the default run and --quick."""

    assets: int
    views: int
    resolution: int
    rows_per_shard: int
    batch_size: int
    repeats: int
    """Rounds of (plain loop, Ray job); medians are reported."""


DEFAULT = Settings(assets=48, views=16, resolution=256, rows_per_shard=8, batch_size=4, repeats=3)
QUICK = Settings(assets=12, views=8, resolution=128, rows_per_shard=4, batch_size=2, repeats=1)


def pool_for(cpus: int) -> ActorPoolConfig:
    """An elastic pool of up to one actor per core whose reservations leave room for the writer.

    On a 2-CPU cluster, actors that reserve every CPU starve the other operators and the job
    hangs (seen on 2-core machines), so each actor asks for a fraction of a CPU: all `cpus` actors plus the
    writer's 0.25 plus a little headroom fit in the cluster's `cpus` logical CPUs. The reservation
    is bookkeeping only; each actor still renders on a whole core of its own. (The alternative, a
    cluster with more logical CPUs than cores, works too, but would let Ray schedule more CPU
    work than the machine has without saying so.)
    """
    per_actor = round((cpus - WRITER_CPUS - SCHEDULING_HEADROOM_CPUS) / cpus, 2)
    return ActorPoolConfig(min_actors=1, max_actors=cpus, num_cpus=per_actor)


def job_config(settings: Settings, cpus: int) -> RenderAssetsConfig:
    """The `small` preset at the benchmark's render size, with a pool sized to this machine."""
    small = config_lib.preset(RENDER_ASSETS_PRESETS, "small")
    pool = config_lib.to_dict(pool_for(cpus)) | {"batch_size": settings.batch_size}
    overrides = {
        "render": {"num_views": settings.views, "resolution": settings.resolution},
        "pool": pool,
        "rows_per_shard": settings.rows_per_shard,
    }
    return config_lib.merge(small, overrides).validate()


def median_render_seconds(out_dir: Path) -> float:
    """Median load+render seconds per orbit, from the `render_seconds` each orbit's metadata
    records (the plain loop records it as the job's actors do). The median, because each process's
    first asset also pays for lazy imports and shader compilation."""
    metadata = shards.read_table(out_dir, columns=["metadata"]).column("metadata").to_pylist()
    return statistics.median(json.loads(text)["render_seconds"] for text in metadata)


def format_ratio(ratio: float) -> str:
    return f"{ratio:.2f}×"


def count_files(out_dir: Path) -> int:
    return len(list(out_dir.glob("*.parquet")))


# ---------------------------------------------------------------------------------------------
# 1. Ray Data job vs plain loop
# ---------------------------------------------------------------------------------------------


def plain_loop(assets_dir: Path, out_dir: Path, config: RenderAssetsConfig) -> dict[str, Any]:
    """The job's work in one process: the same items, renderer, records and shard writer, with a
    shard written every `rows_per_shard` orbits (and the rest at the end), as the job does."""
    started = time.perf_counter()
    plan = plan_render(assets_dir, out_dir, config)
    renderer = OrbitRenderer(config.render.resolution, ambient=config.render.ambient)
    writer = shards.OrbitShardWriter(out_dir)
    rows, errors, frames = [], [], 0
    first_shard_seconds = None
    for done, item in enumerate(plan.pending, start=1):
        asset_started = time.perf_counter()
        try:
            asset = load_asset(assets_dir / item["asset"], margin=config.render.margin)
            orbit = render_orbit(renderer, asset, config.render, item["id"], config.seed)
        except AssetError as error:
            errors.append({"id": item["id"], "asset": item["asset"], "stage": RENDER_STAGE, "reason": str(error)})
            continue
        record = shards.OrbitRecord(
            id=item["id"],
            source="render",
            prompt=item["prompt"],
            asset=item["asset"],
            rgba=orbit.rgba,
            cameras=orbit.cameras,
            num_orbit_views=orbit.num_orbit_views,
            elevation=orbit.elevation_deg,
            metadata={"render_seconds": round(time.perf_counter() - asset_started, 4), "seed": config.seed, "margin": config.render.margin},
        )
        rows.append(shards.encode_record(record))
        frames += len(orbit.rgba)
        if len(rows) == config.rows_per_shard:
            writer.write(rows)
            rows = []
            first_shard_seconds = first_shard_seconds or time.perf_counter() - started
        if done % config.rows_per_shard == 0:
            log(f"  plain: {done}/{len(plan.pending)} assets, {frames / (time.perf_counter() - started):.1f} frames/s")
    writer.write(rows)
    writer.write_errors(errors)
    renderer.close()
    seconds = time.perf_counter() - started
    return {
        "frames": frames,
        "orbits": len(plan.pending) - len(errors),
        "errors": len(errors),
        "seconds": seconds,
        "frames_per_second": frames / seconds,
        "first_shard_seconds": first_shard_seconds or seconds,
        "render_seconds_per_asset": median_render_seconds(out_dir),
    }


def ray_job(assets_dir: Path, out_dir: Path, config: RenderAssetsConfig, cpus: int) -> dict[str, Any]:
    """`render_assets` on a fresh private local cluster; start-up is timed apart from the job."""
    import ray

    cluster_started = time.perf_counter()
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, runtime_env={"env_vars": RENDER_THREADS}, logging_level="warning")
    startup_seconds = time.perf_counter() - cluster_started
    log(
        f"  ray: local cluster with {ray.cluster_resources().get('CPU', 0):g} CPUs up in {startup_seconds:.1f}s; actor env {RENDER_THREADS}"
    )
    # Progress bars would flood a log that is not a terminal; render_assets logs progress itself.
    ray.data.DataContext.get_current().enable_progress_bars = False
    first_shard_seconds = None  # when render_assets reported its first written batch

    def job_log(message: str) -> None:
        nonlocal first_shard_seconds
        if first_shard_seconds is None and JOB_PROGRESS.match(message):
            first_shard_seconds = time.perf_counter() - job_started
        log(f"  ray: {message}")

    job_started = time.perf_counter()
    try:
        summary = render_assets(assets_dir, out_dir, config, log=job_log)
        seconds = time.perf_counter() - job_started
    finally:
        ray.shutdown()
    return {
        "summary": summary,
        "frames": summary["frames"],
        "seconds": seconds,
        "frames_per_second": summary["frames"] / seconds,
        "first_shard_seconds": first_shard_seconds or seconds,
        "render_seconds_per_asset": median_render_seconds(out_dir),
        "startup_seconds": startup_seconds,
    }


def compare_once(assets_dir: Path, work_dir: Path, config: RenderAssetsConfig, cpus: int, index: int, repeats: int) -> dict[str, Any]:
    """One plain loop, then one Ray job, each into a fresh directory; their rates and ratios."""
    label = f"round {index + 1}/{repeats}"
    plain_dir, ray_dir = work_dir / f"plain-{index}", work_dir / f"ray-{index}"
    log(f"{label}: plain loop (load → render → encode → write, one process)")
    plain = plain_loop(assets_dir, plain_dir, config)
    log(
        f"{label}: plain loop: {plain['frames']} frames in {plain['seconds']:.1f}s = {plain['frames_per_second']:.1f} frames/s, "
        f"{count_files(plain_dir)} shards, {plain['errors']} errors"
    )
    log(f"{label}: Ray job (render_assets on a private local cluster)")
    ray = ray_job(assets_dir, ray_dir, config, cpus)
    summary = ray["summary"]
    log(
        f"{label}: Ray job: {ray['frames']} frames in {ray['seconds']:.1f}s wall = {ray['frames_per_second']:.1f} frames/s "
        f"(pipeline's own {summary['frames_per_second']:.1f} frames/s over {summary['seconds']:.1f}s), {count_files(ray_dir)} shards, "
        f"{summary['errors_total']} errors; first shard after {ray['first_shard_seconds']:.1f}s (plain loop: {plain['first_shard_seconds']:.1f}s); "
        f"cluster start-up {ray['startup_seconds']:.1f}s not counted"
    )
    if ray["frames"] != plain["frames"]:
        log(f"WARNING: the job rendered {ray['frames']} frames, the plain loop {plain['frames']}: the ratios compare different work")
    result = {
        "plain_fps": plain["frames_per_second"],
        "ray_fps": ray["frames_per_second"],
        "pipeline_fps": summary["frames_per_second"],
        "wall_ratio": ray["frames_per_second"] / plain["frames_per_second"],
        "pipeline_ratio": summary["frames_per_second"] / plain["frames_per_second"],
        "plain_seconds": plain["seconds"],
        "ray_seconds": ray["seconds"],
        "seconds_ratio": ray["seconds"] / plain["seconds"],
        "startup_seconds": ray["startup_seconds"],
        "plain_first_shard": plain["first_shard_seconds"],
        "ray_first_shard": ray["first_shard_seconds"],
        "first_shard_ratio": ray["first_shard_seconds"] / plain["first_shard_seconds"],
        "plain_asset_seconds": plain["render_seconds_per_asset"],
        "ray_asset_seconds": ray["render_seconds_per_asset"],
        "asset_seconds_ratio": ray["render_seconds_per_asset"] / plain["render_seconds_per_asset"],
        "load_average": os.getloadavg()[0],
        "plain": plain,
        "ray": ray,
    }
    log(
        f"{label}: ray/plain = {result['wall_ratio']:.2f}× frames/s (job wall), {result['pipeline_ratio']:.2f}× (pipeline summary); "
        f"load+render per asset {plain['render_seconds_per_asset']:.3f}s plain vs {ray['render_seconds_per_asset']:.3f}s in an actor "
        f"({result['asset_seconds_ratio']:.2f}×); 1-min load average {result['load_average']:.2f}"
    )
    return result


def bench_ray_vs_plain(assets_dir: Path, work_dir: Path, settings: Settings) -> tuple[list[Row], dict[str, Any]]:
    cpus = os.cpu_count() or 1
    config = job_config(settings, cpus)
    pool = config.pool
    log(
        f"ray vs plain: {settings.assets} assets, {settings.views} views at {settings.resolution}², {config.rows_per_shard} orbits per shard, "
        f"{settings.repeats} round(s) of plain loop then Ray job; pool min {pool.min_actors} max {pool.max_actors} actors × {pool.num_cpus} CPU "
        f"(+ writer {WRITER_CPUS}) on a cluster of {cpus} logical CPUs = cores, batch {pool.batch_size}; "
        f"LP_NUM_THREADS={RENDER_THREADS['LP_NUM_THREADS']} for the actors and the plain loop"
    )
    rounds = [compare_once(assets_dir, work_dir, config, cpus, index, settings.repeats) for index in range(settings.repeats)]

    def median(key: str) -> float:
        return statistics.median(result[key] for result in rounds)

    log(
        f"ray/plain frames/s, median of {len(rounds)}: {format_ratio(median('wall_ratio'))} (job wall). Ideal on this machine: about "
        f"{pool.max_actors}× ({pool.max_actors} single-threaded renderers on {cpus} cores), never more. What keeps the job below it: "
        f"fixed costs before the first shard ({median('ray_first_shard'):.1f}s vs {median('plain_first_shard'):.1f}s: a fresh worker "
        f"process per actor and for the writer imports torch and vf3d, each actor creates its EGL context, and the pool starts at "
        f"{pool.min_actors} actor and grows while work queues), the tail where one actor renders the last batch alone, and Ray's own "
        f"processes (raylet, GCS, object store, the writer actor, the driver) taking CPU time from the same {cpus} cores, which makes "
        f"each asset slower in an actor than in the lone loop ({format_ratio(median('asset_seconds_ratio'))}; 1.00× would let "
        f"{pool.max_actors} actors reach the ideal). Fixed costs weigh less the more assets a job has."
    )

    scope = f"{settings.assets} assets × {settings.views} views {settings.resolution}²"
    # Each round's ratio compares two runs minutes apart at most; their median is steadier than
    # the ratio of the medians, so the ratio column need not equal B/A of the columns shown.
    of_rounds = f"medians of {len(rounds)} round(s), ratio = median of per-round ratios"
    rows = [
        Row(
            f"frames/s, load+render+encode+write, {scope} (plain loop vs Ray job wall)",
            f"{median('plain_fps'):.1f}",
            f"{median('ray_fps'):.1f}",
            format_ratio(median("wall_ratio")),
            f"Ray/plain, ideal ≈ {pool.max_actors}×; {of_rounds}",
        ),
        Row(
            f"frames/s, {scope} (plain loop vs Ray pipeline's own summary)",
            f"{median('plain_fps'):.1f}",
            f"{median('pipeline_fps'):.1f}",
            format_ratio(median("pipeline_ratio")),
            f"Ray/plain; the summary leaves out planning; {of_rounds}",
        ),
        Row(
            f"wall seconds, {scope} (plain loop vs Ray job)",
            f"{median('plain_seconds'):.1f}",
            f"{median('ray_seconds'):.1f}",
            format_ratio(median("seconds_ratio")),
            f"Ray/plain; + {median('startup_seconds'):.1f}s cluster start-up, not counted",
        ),
        Row(
            f"seconds to the first shard written, {scope} (plain loop vs Ray job)",
            f"{median('plain_first_shard'):.1f}",
            f"{median('ray_first_shard'):.1f}",
            format_ratio(median("first_shard_ratio")),
            f"Ray/plain; the job's fixed costs; {of_rounds}",
        ),
        Row(
            "median load+render seconds per asset, from the shards' metadata (plain loop vs Ray actor)",
            f"{median('plain_asset_seconds'):.3f}",
            f"{median('ray_asset_seconds'):.3f}",
            format_ratio(median("asset_seconds_ratio")),
            f"Ray/plain; 1.00× = each of {pool.max_actors} actors as fast as the lone loop; {of_rounds}",
        ),
    ]
    return rows, {"config": config_lib.to_dict(config), "cpus": cpus, "rounds": rounds}


# ---------------------------------------------------------------------------------------------
# 2. Render resolution
# ---------------------------------------------------------------------------------------------


def bench_resolution(assets_dir: Path) -> tuple[list[Row], dict[str, Any]]:
    paths = find_assets(assets_dir)
    configs = {size: OrbitRenderConfig(num_views=RESOLUTION_VIEWS, resolution=size) for size in RESOLUTIONS}
    renderers = {size: OrbitRenderer.from_config(config) for size, config in configs.items()}
    log(
        f"resolution: {RESOLUTION_VIEWS} views at {' vs '.join(f'{size}²' for size in RESOLUTIONS)}, single process, "
        f"{renderers[RESOLUTIONS[0]].samples}× multisampling; loading {len(paths)} assets first (not timed)"
    )
    margin = configs[RESOLUTIONS[0]].margin
    assets: list[tuple[str, Asset]] = [(asset_id(path.relative_to(assets_dir)), load_asset(path, margin=margin)) for path in paths]
    # Warm up each context (shader compilation, first allocations) before timing.
    for size, renderer in renderers.items():
        render_orbit(renderer, assets[0][1], configs[size], assets[0][0])
    seconds = dict.fromkeys(RESOLUTIONS, 0.0)
    frames = dict.fromkeys(RESOLUTIONS, 0)
    # Each asset at every size in turn, so load from other processes hits both sizes alike.
    for identifier, asset in assets:
        for size, renderer in renderers.items():
            started = time.perf_counter()
            frames[size] += len(render_orbit(renderer, asset, configs[size], identifier).rgba)
            seconds[size] += time.perf_counter() - started
    for renderer in renderers.values():
        renderer.close()
    rates = {size: frames[size] / seconds[size] for size in RESOLUTIONS}
    small, large = RESOLUTIONS
    for size in RESOLUTIONS:
        log(f"resolution: {size}²: {frames[size]} frames in {seconds[size]:.2f}s = {rates[size]:.1f} frames/s")
    pixel_ratio = (large / small) ** 2
    rows = [
        Row(
            f"frames/s, render only, {len(assets)} assets × {RESOLUTION_VIEWS} views ({small}² vs {large}²)",
            f"{rates[small]:.1f}",
            f"{rates[large]:.1f}",
            f"{rates[small] / rates[large]:.2f}×",
            f"{small}²/{large}²; {large}² has {pixel_ratio:.0f}× the pixels",
        ),
    ]
    return rows, {"frames": frames, "seconds": seconds, "frames_per_second": rates, "samples": renderers[small].samples}


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer assets, views and pixels (smoke test)")
    parser.add_argument("--assets", type=int, help="number of sample assets (default 48, quick 12)")
    parser.add_argument("--json", type=Path, help="also write the summary rows and raw numbers as JSON here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    settings = QUICK if args.quick else DEFAULT
    if args.assets is not None:
        settings = Settings(**{**asdict(settings), "assets": args.assets})
    mode = "quick" if args.quick else "default"
    load_start = os.getloadavg()[0]
    log(
        f"vf3d render benchmark ({mode} mode), {os.cpu_count()} CPUs, 1-min load average {load_start:.2f}; set "
        f"{', '.join(f'{key}={value}' for key, value in RENDER_THREADS.items())} for this process and the Ray actors"
    )

    with tempfile.TemporaryDirectory(prefix="vf3d-bench-render-") as temp:
        work_dir = Path(temp)
        assets_dir = work_dir / "assets"
        gathered = gather_sample_assets(assets_dir, limit=settings.assets)
        log(f"gathered {len(gathered)} sample assets from pybullet_data into {assets_dir}")
        rows, details = [], {}
        for section, run in {
            "ray_vs_plain": lambda: bench_ray_vs_plain(assets_dir, work_dir, settings),
            "resolution": lambda: bench_resolution(assets_dir),
        }.items():
            section_rows, details[section] = run()
            rows += section_rows

    wall_seconds, load_end = time.perf_counter() - BENCH_START, os.getloadavg()[0]
    print(
        f"\n## vf3d render benchmark ({mode}, {os.cpu_count()} CPUs, {wall_seconds:.0f}s, load average {load_start:.2f} → {load_end:.2f})\n\n"
        f"{markdown_table(rows)}\n",
        flush=True,
    )
    if args.json:
        write_json(
            args.json,
            {
                "mode": mode,
                "settings": asdict(settings),
                "cpus": os.cpu_count(),
                "env": RENDER_THREADS,
                "wall_seconds": wall_seconds,
                "load_average": [load_start, load_end],
                "details": details,
            },
            rows,
        )


if __name__ == "__main__":
    main()
