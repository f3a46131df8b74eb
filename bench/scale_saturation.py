"""Do the CPU stages keep the generation GPUs busy? A simulated saturation benchmark of `synthesize`.

Orbit generation (and the first-frame model) are replaced by stand-ins on logical GPUs: a stand-in
generation actor sleeps a fixed time per video (a GPU that is working) and returns real-size frames
(16 views of 256² RGB: a photo of an object moving around the white background, so masks,
heuristics and PNG encoding do real work). Everything after generation is the real pipeline:
masks and heuristics, PNG encoding into shard rows, the writer pool, real Parquet files. The
cluster is a private local one declaring logical GPUs (VF3D_ALLOW_LOGICAL_GPUS=1, so the stages'
GPU check lets them through).

Measured: the generation actors' busy fraction in the steady window (from the moment every
generation actor has started its first batch until the first one finishes its last batch):
Σ busy seconds inside the window / (actors × window). Below 100% a generation GPU waited because
the stages after it (CPU work, the writers) could not take its output: Ray Data's backpressure
stalls the generation actors when the queue behind them is full. The offered rate is
actors / seconds-per-video; the benchmark tries rates from low to high and reports the highest one
with the generation actors ≥ 90% busy, for two layouts:

  new     masks + heuristics on the CPU mask pool, encoding on the CPU encode pool, a writer pool
          of 1..`writers`; the (absent: no probe) GPU filter does no CPU work.
  today   the layout before this change, measured with the same stand-ins: masks on CPU actors,
          heuristics and PNG encoding of every view on the filter's GPU actors (pool max 1 here:
          the cluster preset had 8 filter actors for 128 generation GPUs), and one writer actor.
          `TODAY_MEASURED` holds the figures measured on the old code; `run_saturation` measures
          the new code with the old pool sizes (1 encoder, 1 writer) beside it.

This machine has 2 shared CPU cores: every figure is the rate those 2 cores can feed, not what a
GPU node's CPUs would; what scales is the ratio between layouts and the fraction of busy time.
Nothing here asserts a timing.

Run: python bench/scale_saturation.py --quick   (4 generation actors, 2 rates × 2 layouts: 4 runs of
                                                 2-12 minutes each on the shared 2-core machine)
     python bench/scale_saturation.py           (8 generation actors, 4 rates × 2 layouts)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import Row, log, markdown_table, write_json  # noqa: E402

BUSY_TARGET = 0.9
"""Generation actors must be busy at least this share of the steady window."""
VIEWS, SIDE = 16, 256
TODAY_MEASURED: dict[str, Any] = {
    "code": "before issue 14 part 2 (heuristics + PNG encoding on the filter actor, one writer actor)",
    "generators": 4,
    "videos_per_actor": 10,
    "busy_by_offered_videos_per_s": {0.5: 0.983, 2.0: 0.733},
    "load_average_during": {0.5: 22.2, 2.0: 47.5},
}
"""Generation busy fractions measured with `run_layout("today", ...)` on the code before this
change (same stand-ins, same local cluster), on this repository's shared 2-core machine while
other jobs kept its load average at 22-47: kept for comparison, since the old layout no longer
exists to be measured."""


def _stand_in_frames(seed: int) -> Any:
    """uint8 [16, 256, 256, 3]: an object photo moving around a white background, one per view."""
    import numpy as np
    from PIL import Image
    from skimage import data

    photo = np.asarray(Image.fromarray(data.chelsea()).resize((128, 96)))
    frames = np.full((VIEWS, SIDE, SIDE, 3), 255, np.uint8)
    rng = np.random.default_rng(seed)
    for view in range(VIEWS):
        angle = 2 * np.pi * view / VIEWS
        top, left = int(80 + 40 * np.sin(angle)), int(64 + 40 * np.cos(angle))
        frames[view, top : top + 96, left : left + 128] = np.clip(photo.astype(np.int16) + rng.integers(-3, 4, photo.shape), 0, 255).astype(
            np.uint8
        )
    return frames


def stand_in_classes():
    """(FirstFrames, GenerateOrbits) stand-ins: no model, a fixed time per video, real-size frames."""
    import numpy as np

    from vf3d.data import shards
    from vf3d.synthesis import stages

    class StandInFirstFrames(stages.FirstFrames):
        def __init__(self, config, out_dir, resolution):
            stages._ModelStage.__init__(self, config, out_dir)
            self.resolution = resolution

        def process(self, batch, rows):
            frame = np.full((self.resolution, self.resolution, 3), 255, np.uint8)
            return {"first_frame": [frame for _ in rows], "first_frame_given": [False for _ in rows]}, {}

    class StandInGenerateOrbits(stages.GenerateOrbits):
        seconds_per_video = float(os.environ.get("VF3D_BENCH_SECONDS_PER_VIDEO", "1.0"))

        def __init__(self, config, out_dir, video_model):
            stages._ModelStage.__init__(self, config, out_dir)
            self.num_views, self.resolution = VIEWS, SIDE
            self.frames = _stand_in_frames(os.getpid())
            self.log = Path(out_dir) / f".bench-generate-{self.actor}.jsonl"

        def process(self, batch, rows):
            from vf3d.models.video import orbit_cameras

            started = time.time()
            time.sleep(self.seconds_per_video * len(rows))  # the GPU is working
            frames = [np.roll(self.frames, int(batch["seed"][row]) % 7, axis=2) for row in rows]
            cameras = [orbit_cameras(VIEWS, float(batch["elevation"][row])).numpy().astype(np.float32) for row in rows]
            with self.log.open("a") as handle:
                handle.write(json.dumps([started, time.time()]) + "\n")
            return {"frames": frames, "cameras": cameras}, {}

    assert shards.CAMERA_DIM == 25
    return StandInFirstFrames, StandInGenerateOrbits


def busy_fraction(out_dir: Path) -> dict[str, float]:
    """Generation actors' busy share of the steady window (all started, none finished)."""
    intervals = [[json.loads(line) for line in path.read_text().splitlines()] for path in out_dir.glob(".bench-generate-*.jsonl")]
    intervals = [actor for actor in intervals if actor]
    if not intervals:
        return {"actors": 0, "window_s": 0.0, "busy": float("nan")}
    start = max(actor[0][0] for actor in intervals)
    end = min(actor[-1][1] for actor in intervals)
    if end <= start:
        return {"actors": len(intervals), "window_s": 0.0, "busy": float("nan")}
    busy = sum(max(0.0, min(b, end) - max(a, start)) for actor in intervals for a, b in actor)
    return {"actors": len(intervals), "window_s": round(end - start, 2), "busy": round(busy / (len(intervals) * (end - start)), 4)}


def layout_overrides(layout: str, generators: int, writers: int) -> dict[str, Any]:
    """Config overrides of the debug preset for one layout (pools sized for a 2-core machine)."""
    common = {
        "generation": {"random_text_to_image": True},
        "first_frame_pool": {"min_actors": 1, "max_actors": 1, "num_cpus": 0.1, "num_gpus": 0.0, "batch_size": 4},
        "generate_pool": {"min_actors": generators, "max_actors": generators, "num_cpus": 0.05, "num_gpus": 1.0, "batch_size": 1},
        "mask_pool": {"min_actors": 1, "max_actors": 2, "num_cpus": 0.5, "batch_size": 4},
        "rows_per_shard": 16,
    }
    if layout == "today":
        return {
            **common,
            "filter_pool": {"min_actors": 1, "max_actors": 1, "num_cpus": 0.5, "num_gpus": 0.25, "batch_size": 4},
            **(
                {
                    "encode_pool": {"min_actors": 1, "max_actors": 1, "num_cpus": 0.5, "batch_size": 4},
                    "writer_pool": {"min_actors": 1, "max_actors": 1},
                }
                if _has_new_pools()
                else {}
            ),
        }
    return {
        **common,
        "filter_pool": {"min_actors": 1, "max_actors": 1, "num_cpus": 0.5, "num_gpus": 0.25, "batch_size": 4},
        "encode_pool": {"min_actors": 1, "max_actors": 2, "num_cpus": 0.5, "batch_size": 4},
        "writer_pool": {"min_actors": 1, "max_actors": writers, "num_cpus": 0.25},
    }


def _has_new_pools() -> bool:
    from vf3d.synthesis.config import SynthesizeConfig

    return "encode_pool" in SynthesizeConfig.__dataclass_fields__


def run_layout(layout: str, generators: int, seconds_per_video: float, videos: int, writers: int, root: Path) -> dict[str, Any]:
    """One synthesize() run with the stand-ins; returns busy fraction, videos/s and settings."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vf3d import config as config_lib
    from vf3d.synthesis import synthesize as synthesize_module
    from vf3d.synthesis.config import SYNTHESIZE_PRESETS

    os.environ["VF3D_BENCH_SECONDS_PER_VIDEO"] = str(seconds_per_video)
    first_frames, generate = stand_in_classes()
    synthesize_module.FirstFrames, synthesize_module.GenerateOrbits = first_frames, generate
    work = Path(tempfile.mkdtemp(prefix=f"{layout}-", dir=root))
    prompts = work / "prompts.parquet"
    pq.write_table(
        pa.table({"id": [f"v{index:05d}" for index in range(videos)], "prompt": [f"a stand-in object {index}" for index in range(videos)]}),
        prompts,
    )
    model = work / "video-model"
    model.mkdir()
    (model / "model_index.json").write_text(json.dumps({"_class_name": "OrbitVideoPipeline", "resolution": SIDE, "num_views": VIEWS}))
    config = config_lib.merge(config_lib.preset(SYNTHESIZE_PRESETS, "debug"), layout_overrides(layout, generators, writers))
    started = time.perf_counter()
    summary = synthesize_module.synthesize(prompts, model, work / "out", config, log=lambda line: None)
    seconds = time.perf_counter() - started
    result = {
        "layout": layout,
        "generators": generators,
        "seconds_per_video": seconds_per_video,
        "offered_videos_per_s": round(generators / seconds_per_video, 3),
        "videos": videos,
        "written": summary["kept_total"] + summary["rejected_total"],
        "errors": summary["errors_total"],
        "seconds": round(seconds, 1),
        "videos_per_s_summary": summary["videos_per_second"],
        **busy_fraction(work / "out"),
        "load_average": round(os.getloadavg()[0], 2),
    }
    log(
        f"{layout}: offered {result['offered_videos_per_s']} videos/s → generation busy {result['busy']:.1%} over {result['window_s']} s "
        f"({result['written']}/{videos} written, {result['errors']} errors, load {result['load_average']})"
    )
    return result


def run_saturation(quick: bool) -> tuple[dict, list[Row]]:
    """Sweep offered rates for both layouts on a private local cluster with logical GPUs.

    Returns (report with every run and the highest rate each layout keeps ≥ 90% busy, table rows).
    """
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ["VF3D_ALLOW_LOGICAL_GPUS"] = "1"  # workers inherit it from the cluster started here
    import ray
    from ray import cloudpickle

    generators = 4 if quick else 8
    seconds_per_video = [8.0, 2.0] if quick else [8.0, 4.0, 2.0, 1.0]
    videos_per_actor = 10 if quick else 16
    writers = 2
    layouts = ["today", "new"]
    # The stand-ins live in this file, which workers cannot import: ship them by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=4, num_gpus=generators + 2, include_dashboard=False, log_to_driver=False)
    runs: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="vf3d-saturation-") as root:
            for layout in layouts:
                for seconds in seconds_per_video:
                    runs.append(run_layout(layout, generators, seconds, generators * videos_per_actor, writers, Path(root)))
    finally:
        ray.shutdown()
    best: dict[str, float | None] = {}
    for layout in layouts:
        saturated = [run["offered_videos_per_s"] for run in runs if run["layout"] == layout and run["busy"] >= BUSY_TARGET]
        best[layout] = max(saturated) if saturated else None
    report = {
        "benchmark": "scale_saturation",
        "quick": quick,
        "generators": generators,
        "views": VIEWS,
        "side": SIDE,
        "busy_target": BUSY_TARGET,
        "runs": runs,
        "highest_rate_busy_ge_target": best,
        "today_measured_on_old_code": TODAY_MEASURED,
        "cpu_count": os.cpu_count(),
    }
    rows = []
    for seconds in seconds_per_video:
        by = {run["layout"]: run for run in runs if run["seconds_per_video"] == seconds}
        today, new = by.get("today"), by.get("new")
        rows.append(
            Row(
                name=f"generation busy at {generators / seconds:.2f} videos/s offered ({generators} actors) — today vs new",
                value_a=f"{today['busy']:.1%}" if today else "n/a",
                value_b=f"{new['busy']:.1%}" if new else "n/a",
                ratio=f"{new['busy'] / today['busy']:.2f}×" if today and new and today["busy"] else "n/a",
                target=f"≥ {BUSY_TARGET:.0%} busy",
            )
        )
    rows.append(
        Row(
            name="highest offered videos/s with generation ≥ 90% busy (2 CPU cores) — today vs new",
            value_a=str(best.get("today")),
            value_b=str(best.get("new")),
            ratio=f"{best['new'] / best['today']:.2f}×" if best.get("today") and best.get("new") else "n/a",
            target="information",
        )
    )
    return report, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 generation actors, 2 rates")
    parser.add_argument("--json", type=Path, help="also write the report as JSON")
    args = parser.parse_args()
    report, rows = run_saturation(args.quick)
    print(markdown_table(rows))
    if args.json:
        write_json(args.json, report, rows)


if __name__ == "__main__":
    main()
