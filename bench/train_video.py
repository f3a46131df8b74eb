"""Training-harness overhead benchmark: steps/s of the `debug` video model, bare PyTorch vs Ray Train + DeepSpeed.

What it measures (side by side, in one run):
  A. A bare PyTorch loop in this process: `OrbitVideoModel.from_config(debug model)` (trainable
     "full"), torch.optim.AdamW with the preset's settings, and per step `training_loss` →
     backward → clip_grad_norm_(preset grad_clip) → step → zero_grad. The clipping is there
     because DeepSpeed's engine clips too (gradient_clipping from the preset), so both do the same
     arithmetic.
  B. The same model, batch and loss under Ray Train with one worker (a private local Ray cluster),
     wrapped by `vf3d.training.initialize` (DeepSpeed, ZeRO-2 from the preset, fp32 on the CPU),
     stepping with engine(...), engine.backward(loss), engine.step(). Wall time is taken inside
     the worker around the step loop only (no Ray/DeepSpeed start-up, no checkpoint I/O: the
     checkpoint interval is longer than the run, and this loop never saves).

Both use the same fixed in-memory batch (frames [B, 16, 3, 32, 32] random but seeded, fixed prompts
and elevations; B is the preset's batch size) and no Ray Data, so the ratio B/A measures the
overhead of Train + DeepSpeed on the step itself, not the input pipeline. Both set the same number
of torch threads (--threads, default 1: on a 2-core machine the Ray daemons need the other core).

Machines are noisy: each side is warmed up, then timed over several windows of N steps; A runs
before and after B (A, B, A) and the medians over windows are reported. Compare ratios, not
absolute numbers. Nothing asserts a timing; the target is printed as information.

Run (from the repository root):
  python bench/train_video.py              # default, about 2 minutes on 2 CPU cores (start-up included)
  python bench/train_video.py --quick      # smoke test, 1-2 minutes (mostly model build and Ray start-up)
  python bench/train_video.py --json bench-train-video.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from report import BENCH_START, Row, log, markdown_table, on_private_ray, write_json

from vf3d import config as config_lib
from vf3d.models.video.config import VideoModelConfig
from vf3d.training.config import FINETUNE_VIDEO_PRESETS, TrainingConfig

SEED = 0
NUM_VIEWS = 16
PROMPTS = ("a red chair", "a wooden table", "a ceramic vase", "a toy robot")
ELEVATIONS = (20.0, 10.0, 30.0, 0.0)
RATIO_TARGET = 0.9


@dataclass
class Settings:
    """What differs between the default run and --quick."""

    warmup_steps: int
    steps: int
    windows: int


DEFAULT = Settings(warmup_steps=20, steps=200, windows=3)
QUICK = Settings(warmup_steps=5, steps=60, windows=2)


def fixed_batch(batch_size: int, resolution: int) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """The benchmark's one batch: seeded random frames [B, 16, 3, R, R] in [0, 1], prompts, elevations."""
    generator = torch.Generator().manual_seed(SEED)
    frames = torch.rand(batch_size, NUM_VIEWS, 3, resolution, resolution, generator=generator)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch_size)]
    elevations = torch.tensor([ELEVATIONS[i % len(ELEVATIONS)] for i in range(batch_size)], dtype=torch.float32)
    return frames, prompts, elevations


def timed_windows(step, warmup_steps: int, steps: int, windows: int) -> list[float]:
    """Run `warmup_steps` untimed steps, then `windows` windows of `steps` steps; steps/s of each."""
    for _ in range(warmup_steps):
        step()
    rates = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        rates.append(steps / (time.perf_counter() - start))
    return rates


# ---------------------------------------------------------------------------------------------
# A. Bare PyTorch
# ---------------------------------------------------------------------------------------------


def bare_pytorch_rates(model_config: VideoModelConfig, training: TrainingConfig, settings: Settings, threads: int) -> list[float]:
    from vf3d.models.video import OrbitVideoModel

    torch.set_num_threads(threads)
    torch.manual_seed(training.run.seed)
    model = OrbitVideoModel.from_config(model_config).train()
    optimizer_settings = training.optimizer
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(
        parameters,
        lr=optimizer_settings.lr,
        betas=tuple(optimizer_settings.betas),
        eps=optimizer_settings.eps,
        weight_decay=optimizer_settings.weight_decay,
    )
    frames, prompts, elevations = fixed_batch(training.run.batch_size, model_config.resolution)
    generator = torch.Generator().manual_seed(training.run.seed)

    def step() -> None:
        loss = model.training_loss(frames, prompts, elevations, generator)
        loss.backward()
        if optimizer_settings.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(parameters, optimizer_settings.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return timed_windows(step, settings.warmup_steps, settings.steps, settings.windows)


# ---------------------------------------------------------------------------------------------
# B. Ray Train + DeepSpeed, one worker
# ---------------------------------------------------------------------------------------------


def deepspeed_worker_loop(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train worker: the same model and batch through `vf3d.training.initialize`; returns steps/s."""
    import torch

    from vf3d import config as config_lib
    from vf3d.models.video import OrbitVideoModel
    from vf3d.models.video.config import VideoModelConfig
    from vf3d.training import initialize, training_config_from

    torch.set_num_threads(config["threads"])
    training = training_config_from(config)
    model_config = config_lib.from_dict(VideoModelConfig, config["model"])
    torch.manual_seed(training.run.seed)
    model = OrbitVideoModel.from_config(model_config)
    engine = initialize(model, training)
    frames, prompts, elevations = fixed_batch(training.run.batch_size, model_config.resolution)
    frames, elevations = frames.to(engine.device), elevations.to(engine.device)
    generator = torch.Generator(device=engine.device).manual_seed(training.run.seed)

    def step() -> None:
        loss = engine(frames, prompts, elevations, generator=generator)
        engine.backward(loss)
        engine.step()

    rates = timed_windows(step, config["warmup_steps"], config["steps"], config["windows"])
    return {
        "rates": rates,
        "device": str(engine.device),
        "threads": torch.get_num_threads(),
        "zero_stage": engine.zero_optimization_stage(),
        "world_size": engine.world_size,
    }


def ray_deepspeed_rates(
    model_config: VideoModelConfig, training: TrainingConfig, settings: Settings, threads: int, storage: str
) -> dict[str, Any]:
    import ray

    from vf3d.training import run_training

    if __name__ != "__main__":
        # Imported as a module (not run as a script): ship the worker loop by value, since the
        # workers cannot import `bench` from their own working directories.
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    training.scaling.num_workers = 1
    training.scaling.use_gpu = False
    training.deepspeed.precision = "fp32"
    total = settings.warmup_steps + settings.steps * settings.windows
    training.run.max_steps = total
    training.run.max_failures = 0
    training.run.name = "bench-train-video"
    training.run.storage_path = storage
    training.checkpoint.every_n_steps = total + 1
    loop_config = {
        "model": config_lib.to_dict(model_config),
        "threads": threads,
        "warmup_steps": settings.warmup_steps,
        "steps": settings.steps,
        "windows": settings.windows,
    }
    result = run_training(deepspeed_worker_loop, loop_config, training)
    if not result.return_value:
        raise RuntimeError(f"the worker returned nothing: {result}")
    return result.return_value


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps and windows (smoke test)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in both A and the Ray worker (default 1)")
    parser.add_argument("--json", type=Path, help="also write the summary and raw numbers as JSON here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    settings = QUICK if args.quick else DEFAULT
    mode = "quick" if args.quick else "default"
    preset = config_lib.preset(FINETUNE_VIDEO_PRESETS, "debug").validate()
    model_config, training = preset.model, preset.training
    load_start = os.getloadavg()[0]
    log(
        f"vf3d video training benchmark ({mode} mode): debug video model (trainable {model_config.trainable}), "
        f"batch {training.run.batch_size}×{NUM_VIEWS}×3×{model_config.resolution}², torch {torch.__version__}, "
        f"{args.threads} torch thread(s) in both, {settings.warmup_steps} warm-up + {settings.windows}×{settings.steps} "
        f"timed steps per run, 1-min load average {load_start:.2f}"
    )

    log("A (bare PyTorch), first run")
    rates_a = bare_pytorch_rates(model_config, training, settings, args.threads)
    log(f"A: {', '.join(f'{rate:.1f}' for rate in rates_a)} steps/s")

    log("B (Ray Train + DeepSpeed ZeRO-2, 1 worker, fp32 CPU): starting a private local Ray cluster")
    outcome_b, b_wall = on_private_ray(
        lambda storage: ray_deepspeed_rates(model_config, training, settings, args.threads, storage), "vf3d-bench-train-"
    )
    rates_b = outcome_b["rates"]
    log(
        f"B: {', '.join(f'{rate:.1f}' for rate in rates_b)} steps/s (worker: {outcome_b['device']}, "
        f"{outcome_b['threads']} thread(s), ZeRO-{outcome_b['zero_stage']}, world size {outcome_b['world_size']}; "
        f"whole run_training {b_wall:.1f}s including start-up)"
    )

    log("A (bare PyTorch), second run")
    rates_a2 = bare_pytorch_rates(model_config, training, settings, args.threads)
    log(f"A: {', '.join(f'{rate:.1f}' for rate in rates_a2)} steps/s")
    rates_a += rates_a2

    median_a, median_b = statistics.median(rates_a), statistics.median(rates_b)
    ratio = median_b / median_a
    rows = [
        Row(
            "debug video model steps/s (bare PyTorch vs Ray Train + DeepSpeed ZeRO-2, 1 worker, fixed in-memory batch)",
            f"{median_a:.1f}",
            f"{median_b:.1f}",
            f"{ratio:.2f} (B/A)",
            f"≥ {RATIO_TARGET}",
        ),
        Row(
            "ms per step (bare PyTorch vs Ray Train + DeepSpeed)",
            f"{1000 / median_a:.1f}",
            f"{1000 / median_b:.1f}",
            f"+{1000 / median_b - 1000 / median_a:.1f} ms",
            "—",
        ),
    ]
    wall_seconds, load_end = time.perf_counter() - BENCH_START, os.getloadavg()[0]
    print(
        f"\n## vf3d video training benchmark ({mode}, CPU, {args.threads} torch thread(s) in both, {wall_seconds:.0f}s, "
        f"load average {load_start:.2f} → {load_end:.2f})\n\n{markdown_table(rows)}\n\n"
        f"Medians over {len(rates_a)} windows of A (runs before and after B) and {len(rates_b)} windows of B, "
        f"{settings.steps} steps each. No Ray Data: B/A is the Train + DeepSpeed overhead on the step.\n",
        flush=True,
    )
    if args.json:
        write_json(
            args.json,
            {
                "mode": mode,
                "torch": torch.__version__,
                "threads": args.threads,
                "wall_seconds": wall_seconds,
                "load_average": [load_start, load_end],
                "settings": asdict(settings),
                "rates_a": rates_a,
                "rates_b": rates_b,
                "median_a": median_a,
                "median_b": median_b,
                "ratio": ratio,
                "run_training_seconds": b_wall,
                "worker": outcome_b,
            },
            rows,
        )


if __name__ == "__main__":
    main()
