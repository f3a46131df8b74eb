"""train-recon input at scale: start-up at 1k vs 100k orbits, and bytes moved per training sample.

What it measures (a private local Ray cluster, 4 logical CPUs; Ray start-up excluded):
  1. Start-up: from the call that prepares the datasets (`vf3d.training.recon.prepare_inputs`:
     ids, held-out set and counts from the id manifests, the lazy Ray Data pipeline)
     to the first training batch in the consumer (`training_input.batches_forever` over
     `streaming_split(1)`, as a Ray Train worker's shard is, with the preset's prefetching and
     shuffle buffer, then `batch_from_samples`: floats, composited, resized, cropped). The same
     code as a train-recon worker, minus the worker group and the model (their start-up does not
     depend on the dataset's size). A = the small dataset, B = the large one; runs alternate
     (small, large[, small, large]) and the fastest of each is reported. Target: B/A ≤ 1.3.
  2. Bytes per sample: the arrays a worker receives per sample (uint8 source at the encoder
     input, k uint8 targets and masks at the largest render resolution, float cameras and
     backgrounds) vs the uint8 size of the 1 + k views it uses at their stored resolution
     (RGB + mask). Target ≤ 1.5×.

The datasets are synthetic: orbits of V = 8 views, 64² frames (the train-recon debug preset's
stages render at 32 and 48 px, its encoder input is 64 px), drawn from a few pre-encoded PNG
templates so writing 100k orbits takes seconds (pyarrow, 64 orbits per file as render-assets
writes them by default, row groups of `shards.ROWS_PER_ROW_GROUP`, each file recorded in an id log
as render-assets' writers record theirs). Nothing asserts a timing; targets are printed as information.

Run (from the repository root):
  python bench/scale_training.py            # 1k vs 100k orbits, two rounds (~5-10 min on 2 busy cores)
  python bench/scale_training.py --quick    # 1k vs 20k orbits, one round
  python bench/scale_training.py --json bench-scale-training.json
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import Row, log, markdown_table, on_private_ray, write_json  # noqa: E402

VIEWS = 8
RESOLUTION = 64
ROWS_PER_FILE = 64
TEMPLATES = 8
STARTUP_TARGET = 1.3
BYTES_TARGET = 1.5


def _templates() -> tuple[list[bytes], list[bytes], np.ndarray]:
    """TEMPLATES encoded (frame, mask) pairs: a coloured disc on white, and orbit cameras."""
    import torch
    from PIL import Image

    from vf3d import cameras

    frames, masks = [], []
    yy, xx = np.mgrid[:RESOLUTION, :RESOLUTION]
    for index in range(TEMPLATES):
        radius = RESOLUTION * (0.2 + 0.03 * index)
        inside = (yy - RESOLUTION / 2) ** 2 + (xx - RESOLUTION / 2 - index) ** 2 < radius**2
        rgb = np.full((RESOLUTION, RESOLUTION, 3), 255, np.uint8)
        rgb[inside] = (40 * index % 256, 200 - 20 * index, 90)
        for pixels, store in ((rgb, frames), (inside.astype(np.uint8) * 255, masks)):
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            store.append(buffer.getvalue())
    vectors = []
    for view in range(VIEWS):
        angle = 2 * np.pi * view / VIEWS
        pose = cameras.look_at(torch.tensor([2.0 * np.cos(angle), 2.0 * np.sin(angle), 0.5]))
        vectors.append(cameras.render_camera_vector(pose).numpy())
    return frames, masks, np.stack(vectors).astype(np.float32)


def write_orbits(directory: Path, count: int) -> None:
    """`count` synthetic orbits in files of ROWS_PER_FILE rows (ORBIT_SCHEMA, zstd)."""
    from vf3d.data import shards
    from vf3d.data.manifest import ManifestLog

    frames, masks, camera_rows = _templates()
    directory.mkdir(parents=True, exist_ok=True)
    id_log = ManifestLog(directory)  # as render-assets' writers keep one
    for start in range(0, count, ROWS_PER_FILE):
        ids = [f"orbit-{index:07d}" for index in range(start, min(count, start + ROWS_PER_FILE))]
        rows = len(ids)
        picks = [[(row + view) % TEMPLATES for view in range(VIEWS)] for row in range(start, start + rows)]
        offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * VIEWS)
        table = pa.table(
            {
                "id": ids,
                "source": ["synthetic"] * rows,
                "prompt": [""] * rows,
                "asset": pa.nulls(rows, pa.string()),
                "frames": pa.ListArray.from_arrays(offsets, pa.array([frames[pick] for row in picks for pick in row], pa.binary())),
                "masks": pa.ListArray.from_arrays(offsets, pa.array([masks[pick] for row in picks for pick in row], pa.binary())),
                "cameras": pa.ListArray.from_arrays(
                    offsets, pa.FixedSizeListArray.from_arrays(pa.array(np.tile(camera_rows, (rows, 1)).ravel()), shards.CAMERA_DIM)
                ),
                "num_orbit_views": pa.array([VIEWS] * rows, pa.int32()),
                "elevation": pa.array([15.0] * rows, pa.float32()),
                "resolution": pa.array([RESOLUTION] * rows, pa.int32()),
                "quality": pa.nulls(rows, pa.float32()),
                "format_version": pa.array([shards.FORMAT_VERSION] * rows, pa.int16()),
                "metadata": ["{}"] * rows,
            }
        ).cast(shards.ORBIT_SCHEMA)
        name = shards.shard_file_name(ids)
        pq.write_table(table, directory / name, compression="zstd", row_group_size=shards.ROWS_PER_ROW_GROUP)
        id_log.append("orbits", name, ids)
    id_log.close()


def _config():
    from vf3d import config as config_lib
    from vf3d.training.config import TRAIN_RECON_PRESETS

    config = config_lib.preset(TRAIN_RECON_PRESETS, "debug")
    for stage in config.stages:
        stage.data = "synthetic"
    config.validation.num_objects = 8
    return config


def startup_and_bytes(directory: Path, batches: int = 4) -> dict[str, Any]:
    """Seconds from `prepare_inputs` to the first float training batch, plus bytes per sample."""
    import torch

    from vf3d.data import training_input
    from vf3d.training.recon import batch_from_samples, prepare_inputs, stage_at

    config = _config()
    batch_size = config.training.run.batch_size
    started = time.perf_counter()
    inputs = prepare_inputs({"synthetic": directory, "3d": None}, config, log=lambda line: None)
    prepared = time.perf_counter() - started
    shard = inputs["datasets"]["synthetic"].streaming_split(1, equal=True)[0]
    stream = training_input.batches_forever(
        shard, batch_size, prefetch_batches=config.input.prefetch_batches, shuffle_buffer_size=config.input.shuffle_buffer_size, seed=0
    )
    stage = stage_at(config.stages, 0)[1]
    first = next(stream)
    batch_from_samples(first, stage, config, torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - started
    received = [first] + [next(stream) for _ in range(batches - 1)]
    stream.close()  # stops the iterator's prefetching before the cluster shuts down
    per_sample = statistics.mean(training_input.sample_nbytes(batch) / batch_size for batch in received)
    return {
        "seconds": seconds,
        "prepare_seconds": prepared,
        "orbits": inputs["counts"]["synthetic"],
        "bytes_per_sample": per_sample,
        "used_view_bytes": training_input.used_view_nbytes(RESOLUTION, config.num_target_views),
        "dtypes": {name: str(value.dtype) for name, value in first.items()},
    }


def run_training_input(quick: bool) -> tuple[dict[str, Any], list[Row]]:
    """Measure train-recon's input start-up at a small vs a large dataset and the bytes per
    sample (see the module docstring); returns (report, summary rows)."""
    small, large = (1_000, 20_000) if quick else (1_000, 100_000)
    rounds = 1 if quick else 2
    with tempfile.TemporaryDirectory(prefix="vf3d-scale-training-") as root:
        directories = {}
        for count in (small, large):
            started = time.perf_counter()
            directories[count] = Path(root) / f"orbits-{count}"
            write_orbits(directories[count], count)
            size = sum(path.stat().st_size for path in directories[count].glob("*.parquet"))
            log(f"wrote {count} synthetic orbits ({size / 1e6:.0f} MB) in {time.perf_counter() - started:.1f} s")

        def measure(storage: str) -> dict[int, list[dict[str, Any]]]:
            del storage
            results: dict[int, list[dict[str, Any]]] = {small: [], large: []}
            for _ in range(rounds):
                for count in (small, large):
                    result = startup_and_bytes(directories[count])
                    log(
                        f"{count} orbits: first training batch after {result['seconds']:.2f} s ({result['prepare_seconds']:.2f} s of it preparing: ids, counts, plan)"
                    )
                    results[count].append(result)
            return results

        results, _ = on_private_ray(measure, "vf3d-scale-training-")
    best = {count: min(runs, key=lambda result: result["seconds"]) for count, runs in results.items()}
    ratio = best[large]["seconds"] / best[small]["seconds"]
    sample = best[large]
    bytes_ratio = sample["bytes_per_sample"] / sample["used_view_bytes"]
    report = {
        "startup_seconds": {str(count): [round(result["seconds"], 3) for result in runs] for count, runs in results.items()},
        "prepare_seconds": {str(count): [round(result["prepare_seconds"], 3) for result in runs] for count, runs in results.items()},
        "startup_ratio": round(ratio, 3),
        "bytes_per_sample": round(sample["bytes_per_sample"]),
        "used_view_bytes": sample["used_view_bytes"],
        "bytes_ratio": round(bytes_ratio, 3),
        "batch_dtypes": sample["dtypes"],
        "load_average": os.getloadavg(),
    }
    rows = [
        Row(
            f"train-recon start-up to first batch, {small} vs {large} orbits",
            f"{best[small]['seconds']:.2f} s",
            f"{best[large]['seconds']:.2f} s",
            f"{ratio:.2f}",
            f"≤ {STARTUP_TARGET}",
        ),
        Row(
            "bytes to a worker per sample vs uint8 views used",
            f"{sample['bytes_per_sample']:.0f} B",
            f"{sample['used_view_bytes']} B",
            f"{bytes_ratio:.2f}",
            f"≤ {BYTES_TARGET}",
        ),
    ]
    return report, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1k vs 20k orbits, one round")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args()
    report, rows = run_training_input(args.quick)
    print(markdown_table(rows))
    if args.json:
        write_json(args.json, report, rows)


if __name__ == "__main__":
    main()
