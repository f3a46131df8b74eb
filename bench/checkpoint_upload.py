"""Checkpoint uploads off the training step: Ray Train's background upload (`checkpoint.upload:
async`, the default) vs a synchronous upload, to a real S3 API, side by side in one run.

What it measures: the same DeepSpeed run (ZeRO-2, 2 Ray Train workers on a private local Ray
cluster, fp32 on the CPU) of an MLP (--width × --depth, default 2048 × 4: 16.8M parameters, a
~270 MB checkpoint across both ranks: the fp32 module plus the AdamW state) for --steps optimizer
steps, checkpointing every --every steps through `vf3d.training.save` into `s3://` on moto's S3
server (127.0.0.1, started here; the workers reach it through AWS_ENDPOINT_URL as they would reach
AWS or MinIO). A = `upload="sync"`, B = `upload="async"`. Inside rank 0:
  - loop seconds: from before the first step until the last checkpoint is committed
    (`committed_checkpoint()`: async runs pay for their last upload too);
  - save seconds: time spent inside `save` calls, i.e. what the steps waited for. Under async a
    save still writes the rank's files locally (DeepSpeed's torch.save) and waits for the previous
    upload to be committed, so the saving is the upload time minus what a slow store forces back.
Runs go A, B, B, A (--quick: A, B with a smaller model), each with its own run name and bucket
prefix; the medians per mode are compared. moto runs in this process and shares the 2 cores with
the workers, a slow store by design: the gap is the upload time that background uploads hide.
Nothing asserts a timing; the ratio is printed with the 1-minute load average at both ends.

Run (from the repository root; needs the dev extra's moto[server]):
  python bench/checkpoint_upload.py            # about 4 minutes on 2 quiet cores
  python bench/checkpoint_upload.py --quick    # smoke test, about 2 minutes
  python bench/checkpoint_upload.py --json bench-results/checkpoint_upload.json
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
import uuid
from pathlib import Path

from report import BENCH_START, Row, log, markdown_table, write_json

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private cluster needs no token


def mlp_loop(config: dict) -> dict:
    """Ray Train worker: train the MLP for run.max_steps steps, checkpointing every
    checkpoint.every_n_steps through vf3d's `save`; rank 0 returns its timings."""
    import ray.train
    import torch

    from vf3d.training import committed_checkpoint, initialize, save, training_config_from

    training = training_config_from(config)
    torch.set_num_threads(1)
    torch.manual_seed(training.run.seed)
    width, depth = config["width"], config["depth"]
    layers = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.GELU()]
    engine = initialize(torch.nn.Sequential(*layers, torch.nn.Linear(width, 1)), training)
    generator = torch.Generator().manual_seed(ray.train.get_context().get_world_rank())
    save_seconds, step_seconds = 0.0, 0.0
    started = time.perf_counter()
    for step in range(1, training.run.max_steps + 1):
        step_started = time.perf_counter()
        features = torch.randn(training.run.batch_size, width, generator=generator)
        loss = engine(features).pow(2).mean()
        engine.backward(loss)
        engine.step()
        step_seconds += time.perf_counter() - step_started
        if step % training.checkpoint.every_n_steps == 0:
            save_started = time.perf_counter()
            save(engine, step, {"loss": loss.item()}, upload=training.checkpoint.upload)
            save_seconds += time.perf_counter() - save_started
    final = committed_checkpoint()
    loop_seconds = time.perf_counter() - started
    return {
        "loop_seconds": loop_seconds,
        "save_seconds": save_seconds,
        "step_seconds": step_seconds,
        "checkpoint": final.path if final is not None else None,
        "parameters": sum(parameter.numel() for parameter in engine.module.parameters()),
    }


def checkpoint_megabytes(filesystem, path: str) -> float:
    """Total size of the files under `path` on `filesystem` (a pyarrow filesystem), in MB."""
    import pyarrow.fs as pafs

    infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
    return sum(info.size for info in infos if info.type == pafs.FileType.File) / 1e6


def run_once(bucket: str, upload: str, args: argparse.Namespace) -> dict:
    from vf3d.training import run_training
    from vf3d.training.config import CheckpointSettings, DeepSpeedConfig, RunSettings, ScalingSettings, TrainingConfig

    name = f"{upload}-{uuid.uuid4().hex[:6]}"
    settings = TrainingConfig(
        deepspeed=DeepSpeedConfig(zero_stage=2),
        scaling=ScalingSettings(num_workers=2, use_gpu=False, cpus_per_worker=1),
        checkpoint=CheckpointSettings(every_n_steps=args.every, keep_last=2, upload=upload),
        run=RunSettings(name=name, storage_path=f"{bucket}/bench", max_failures=0, batch_size=args.batch, max_steps=args.steps),
    ).validate()
    result = run_training(mlp_loop, {"width": args.width, "depth": args.depth}, settings)
    outcome = dict(result.return_value)
    outcome["megabytes"] = checkpoint_megabytes(result.checkpoint.filesystem, result.checkpoint.path)
    return outcome


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one run per mode, a 1024-wide MLP (smoke test)")
    parser.add_argument("--width", type=int, help="hidden width of the MLP (default 2048; --quick 1024)")
    parser.add_argument("--depth", type=int, default=4, help="hidden layers of the MLP")
    parser.add_argument("--batch", type=int, default=256, help="rows per step and worker")
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default 24; --quick 12)")
    parser.add_argument("--every", type=int, default=4, help="checkpoint every this many steps")
    parser.add_argument("--json", type=Path, help="also write the summary and raw numbers as JSON here")
    args = parser.parse_args()
    args.width = args.width or (1024 if args.quick else 2048)
    args.steps = args.steps or (12 if args.quick else 24)
    return args


def main() -> None:
    args = parse_args()
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise SystemExit("bench/checkpoint_upload.py: error: needs moto[server] (the dev extra: pip install -e '.[dev]')") from None
    import pyarrow.fs as pafs
    import ray

    mode = "quick" if args.quick else "default"
    load_start = os.getloadavg()[0]
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # The standard variables, set before the cluster starts so that its workers inherit them.
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
        AWS_ACCESS_KEY_ID="vf3d-bench",
        AWS_SECRET_ACCESS_KEY="vf3d-bench-secret",
        AWS_DEFAULT_REGION="us-east-1",
    )
    bucket = f"vf3d-bench-{uuid.uuid4().hex[:8]}"
    pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http", region="us-east-1", allow_bucket_creation=True).create_dir(bucket)
    order = ["sync", "async"] if args.quick else ["sync", "async", "async", "sync"]
    log(
        f"vf3d checkpoint upload benchmark ({mode}): MLP {args.depth}×{args.width}, batch {args.batch}, ZeRO-2 on 2 workers, "
        f"{args.steps} steps with a checkpoint every {args.every}, to s3://{bucket} on moto at {host}:{port}; "
        f"runs {', '.join(order)}; 1-min load average {load_start:.2f}"
    )
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    runs: dict[str, list[dict]] = {"sync": [], "async": []}
    try:
        for upload in order:
            outcome = run_once(f"s3://{bucket}", upload, args)
            runs[upload].append(outcome)
            log(
                f"{upload}: loop {outcome['loop_seconds']:.1f}s, inside save {outcome['save_seconds']:.1f}s, "
                f"steps {outcome['step_seconds']:.1f}s; checkpoint {outcome['megabytes']:.0f} MB, {outcome['parameters'] / 1e6:.1f}M parameters"
            )
    finally:
        ray.shutdown()
        server.stop()

    def median(mode_name: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[mode_name])

    checkpoints = args.steps // args.every
    megabytes = runs["sync"][0]["megabytes"]
    rows = [
        Row(
            f"training loop seconds, {args.steps} steps with {checkpoints} checkpoints of {megabytes:.0f} MB to S3 (sync vs async upload)",
            f"{median('sync', 'loop_seconds'):.1f}",
            f"{median('async', 'loop_seconds'):.1f}",
            f"{median('sync', 'loop_seconds') / median('async', 'loop_seconds'):.2f}× faster (A/B)",
            "> 1: uploads overlap the steps",
        ),
        Row(
            "seconds the steps waited inside save (sync vs async upload)",
            f"{median('sync', 'save_seconds'):.1f}",
            f"{median('async', 'save_seconds'):.1f}",
            f"{median('sync', 'save_seconds') / max(median('async', 'save_seconds'), 1e-9):.2f}× less (A/B)",
            "async still writes local files",
        ),
        Row(
            "seconds of the steps themselves (sync vs async upload)",
            f"{median('sync', 'step_seconds'):.1f}",
            f"{median('async', 'step_seconds'):.1f}",
            f"{median('async', 'step_seconds') / median('sync', 'step_seconds'):.2f} (B/A)",
            "> 1 where the upload competes with the steps for the CPU",
        ),
    ]
    wall_seconds, load_end = time.perf_counter() - BENCH_START, os.getloadavg()[0]
    print(
        f"\n## vf3d checkpoint upload benchmark ({mode}, {wall_seconds:.0f}s, load average {load_start:.2f} → {load_end:.2f})\n\n"
        f"{markdown_table(rows)}\n\nMedians over {len(runs['sync'])} sync and {len(runs['async'])} async runs; loop seconds end when "
        f"the last checkpoint is committed.\n",
        flush=True,
    )
    if args.json:
        write_json(
            args.json,
            {
                "mode": mode,
                "wall_seconds": wall_seconds,
                "load_average": [load_start, load_end],
                "settings": vars(args) | {"json": None},
                "runs": runs,
            },
            rows,
        )


if __name__ == "__main__":
    main()
