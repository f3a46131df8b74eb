"""Reconstructor training benchmark: harness overhead (bare PyTorch vs Ray Train + DeepSpeed) and
what gradient checkpointing over the transformer blocks buys (peak memory) and costs (step time).

What it measures (side by side, in one run):
  1. Steps/s of reconstructor training on the CPU, fp32 (--model, default `debug`: the
     `debug` train-recon preset as it is; its 0.23M-parameter model still takes ~0.1-0.5 s a step
     here, almost all of it rendering and LPIPS, so the harness overhead is measured against a
     step of realistic length; `--model small` swaps in the 68M-parameter `small` reconstructor,
     ~5 s a step, with fewer timed steps).
     A. A bare PyTorch loop in this process: `Reconstructor(preset model)`, torch.optim.AdamW with
        the preset's settings over the same parameter groups DeepSpeed gets
        (`vf3d.training.parameter_groups`), `ReconstructionLoss(preset losses)`, and per step
        forward → loss → backward → clip_grad_norm_(preset grad_clip) → step → zero_grad. The
        clipping is there because DeepSpeed's engine clips too, so both do the same arithmetic.
     B. The same model, batch and loss under Ray Train with one worker (a private local Ray
        cluster), wrapped by `vf3d.training.initialize` (DeepSpeed, ZeRO-2 from the preset, fp32 on
        the CPU), stepping with engine(...), engine.backward(loss), engine.step(), exactly as
        `train_recon_loop` does. Wall time is taken inside the worker around the step loop only
        (no Ray/DeepSpeed start-up, no checkpoint I/O: nothing is saved).
     C. A's bare loop again, inside the same Ray worker as B, interleaved with B in chunks of 5
        steps (B, C, C, B, B, C, ...; each window of B and of C sums its chunks). A, B, A is
        exposed to whatever else the machine does between the runs (tens of seconds apart); B/C
        compares steps a second apart in one process, so it is far less exposed to that drift
        (and leaves out the process being a Ray worker): it is DeepSpeed's own cost on the step.
        B/A is the headline number; B/C says how much of a gap is drift.
  2. Gradient checkpointing of the transformer blocks (`config.transformer.gradient_checkpointing`):
     the same training step of a bigger model (--memory-model, default `small`, 68M parameters;
     batch --memory-batch, default 1) without (A) and with (B) checkpointing. On the CPU each
     setting runs in a fresh process: one warm-up step (which allocates gradients and the AdamW
     state), then free memory is handed back to the OS (malloc_trim), the kernel's peak-RSS mark
     is reset (/proc/self/clear_refs, Linux) and the peak RSS growth over the next step is read
     from VmHWM. (Where the mark cannot be reset the peak over the first step, from ru_maxrss, is
     reported instead and the log says so.) The growth covers the step's activations plus the
     gradients (≈ the parameter bytes, the same in both settings), so the ratio understates the
     saving on activations alone. On CUDA (--device) torch.cuda.max_memory_allocated is used.
     Step time: checkpointing recomputes the transformer forward in the backward pass, so it should
     cost some time. A third fresh process trains one model and switches the flag between steps
     (one warm-up step each, then 3 rounds of one step per setting, alternating order) and the
     medians are compared; --quick skips it and compares the two measured steps instead.

The fixed batch (both sections): pybullet's duck rendered as a real orbit (`render_orbit` +
`OrbitRenderer`, 64², 16 orbit views + 4 random ones, as the train-recon integration test does),
encoded and decoded through the shard schema (`encode_record` → `decode_row`), then cut into one
training batch by `build_batch` for the preset's second stage ("high": 48px renders, 32px crops,
pixel loss on), with the preset's batch size (1), 3 target views. No Ray Data: B/A measures the
overhead of Train + DeepSpeed on the step itself, not the input pipeline. Both sides of every
comparison use the same number of torch threads (--threads, default 1: on a 2-core machine the
Ray daemons need the other core).

Machines are noisy: each side is warmed up, then timed over several windows of N steps; A runs
before and after B (A, B, A) and the medians over windows are reported. Compare ratios, not
absolute numbers; the 1-min load average at both ends shows whether other processes ran. Nothing
asserts a timing or a memory figure; targets are printed as information.

Run (from the repository root):
  python bench/train_recon.py              # default, about 3 minutes on 2 quiet CPU cores (5 when busy)
  python bench/train_recon.py --quick      # smoke test, about 2 minutes (mostly Ray start-up and model builds)
  python bench/train_recon.py --json bench-train-recon.json
  python bench/train_recon.py --model small  # harness section on the 68M model: ~5 s a step, 5-10 minutes
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from report import BENCH_START, Row, log, markdown_table, on_private_ray, write_json

from vf3d import config as config_lib
from vf3d.data.config import OrbitRenderConfig
from vf3d.models.reconstructor.config import RECONSTRUCTOR_PRESETS
from vf3d.training.config import TRAIN_RECON_PRESETS, ReconStage, TrainReconConfig

SEED = 0
ORBIT_RESOLUTION = 64
NUM_ORBIT_VIEWS = 16
NUM_RANDOM_VIEWS = 4
RATIO_TARGET = 0.9
WORKER_RESULT_PREFIX = "TRAIN_RECON_MEMORY_RESULT "
"""The one line of JSON a memory or timing worker prints on stdout starts with this."""


@dataclass
class Settings:
    """What differs between the default run and --quick (and between models)."""

    warmup_steps: int
    steps: int
    windows: int
    timing_rounds: int
    """Checkpointing section: rounds of one step per setting in the timing process (0: report the
    time of the step whose memory was measured, one per setting, in separate processes)."""


DEFAULT = {
    "debug": Settings(warmup_steps=3, steps=15, windows=3, timing_rounds=3),
    "small": Settings(warmup_steps=1, steps=3, windows=2, timing_rounds=3),
}
QUICK = {
    "debug": Settings(warmup_steps=2, steps=8, windows=2, timing_rounds=0),
    "small": Settings(warmup_steps=1, steps=2, windows=1, timing_rounds=0),
}


def recon_config(model: str) -> TrainReconConfig:
    """The `debug` train-recon preset (losses, optimizer, stages, batch size), with the `model`
    reconstructor preset in place of its own model when `model` is not "debug"."""
    recon = config_lib.preset(TRAIN_RECON_PRESETS, "debug")
    if model != "debug":
        recon.model = config_lib.preset(RECONSTRUCTOR_PRESETS, model)
    return recon.validate()


def training_stage(recon: TrainReconConfig) -> ReconStage:
    """The stage the benchmark trains: the preset's second one (crop rendering, pixel loss)."""
    return recon.stages[1]


# ---------------------------------------------------------------------------------------------
# The fixed batch: a real orbit of pybullet's duck through the shard schema and build_batch
# ---------------------------------------------------------------------------------------------


def duck_orbit_row() -> dict[str, Any]:
    """One decoded orbit row of pybullet's duck (frames [20, 3, 64, 64], masks, cameras)."""
    import pybullet_data

    from vf3d.data import shards
    from vf3d.data.assets import load_asset
    from vf3d.data.orbit_renderer import OrbitRenderer, render_orbit

    render = OrbitRenderConfig(
        num_views=NUM_ORBIT_VIEWS, resolution=ORBIT_RESOLUTION, num_random_views=NUM_RANDOM_VIEWS, elevation_range_deg=[15.0, 15.0]
    )
    asset = load_asset(Path(pybullet_data.getDataPath()) / "duck.obj", margin=render.margin)
    orbit = render_orbit(OrbitRenderer(ORBIT_RESOLUTION), asset, render, "duck", 0)
    record = shards.OrbitRecord(
        id="duck",
        source="render",
        prompt="duck",
        rgba=orbit.rgba,
        cameras=orbit.cameras,
        num_orbit_views=NUM_ORBIT_VIEWS,
        elevation=orbit.elevation_deg,
    )
    return shards.decode_row(shards.encode_record(record))


def fixed_batch(row: dict[str, Any], recon: TrainReconConfig, batch_size: int) -> dict[str, torch.Tensor]:
    """`build_batch` of `batch_size` samples of the orbit for the benchmark's stage (seeded)."""
    from vf3d.training.recon import build_batch

    return build_batch([row] * batch_size, training_stage(recon), recon, torch.Generator().manual_seed(SEED))


def training_loss(model, loss_fn, batch: dict[str, torch.Tensor], stage: ReconStage) -> torch.Tensor:
    """One forward pass and the loss, exactly as `train_recon_loop` computes them (fp32)."""
    planes, rendered = model(
        batch["source_images"],
        batch["source_cameras"],
        batch["target_cameras"],
        render_size=stage.render_resolution,
        background=batch["backgrounds"],
        crop_offsets=batch["crop_offsets"],
        crop_size=(stage.crop_size, stage.crop_size),
    )
    loss, _ = loss_fn(
        rendered.rgb.float(),
        rendered.opacity.float(),
        batch["target_images"],
        batch["target_masks"],
        planes.float(),
        pixel_loss=stage.pixel_loss,
    )
    return loss


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


def bare_training_step(
    recon: TrainReconConfig, batch: dict[str, torch.Tensor], gradient_checkpointing: bool, device: torch.device | str = "cpu"
):
    """(model, step): a bare PyTorch training step of `recon`'s model and losses on `batch`."""
    device = torch.device(device)
    from vf3d.models.reconstructor import Reconstructor
    from vf3d.training import parameter_groups
    from vf3d.training.losses import ReconstructionLoss

    settings = recon.training.optimizer
    torch.manual_seed(recon.training.run.seed)
    model = Reconstructor(recon.model).to(device).train()
    model.config.transformer.gradient_checkpointing = gradient_checkpointing
    loss_fn = ReconstructionLoss(recon.losses).to(device)
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(
        parameter_groups(model, settings.weight_decay), lr=settings.lr, betas=tuple(settings.betas), eps=settings.eps
    )
    batch = {key: value.to(device) for key, value in batch.items()}
    stage = training_stage(recon)

    def step() -> None:
        loss = training_loss(model, loss_fn, batch, stage)
        loss.backward()
        if settings.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(parameters, settings.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, step


# ---------------------------------------------------------------------------------------------
# 1A. Bare PyTorch
# ---------------------------------------------------------------------------------------------


def bare_pytorch_rates(recon: TrainReconConfig, batch: dict[str, torch.Tensor], settings: Settings, threads: int) -> list[float]:
    torch.set_num_threads(threads)
    _, step = bare_training_step(recon, batch, recon.gradient_checkpointing)
    return timed_windows(step, settings.warmup_steps, settings.steps, settings.windows)


# ---------------------------------------------------------------------------------------------
# 1B. Ray Train + DeepSpeed, one worker
# ---------------------------------------------------------------------------------------------


def interleaved_windows(steps: dict[str, Any], warmup_steps: int, count: int, windows: int, chunk: int = 5) -> dict[str, list[float]]:
    """Like `timed_windows` for several step functions at once: each is warmed up, then in every
    window each runs `count` steps, in chunks of `chunk` steps that take turns (in an order that
    alternates from chunk to chunk), so that a burst of load elsewhere hits all of them alike;
    steps/s of each window (its steps over the summed time of its chunks)."""
    for step in steps.values():
        for _ in range(warmup_steps):
            step()
    names = list(steps)
    rates: dict[str, list[float]] = {name: [] for name in names}
    turn = 0
    for _ in range(windows):
        seconds = dict.fromkeys(names, 0.0)
        done = 0
        while done < count:
            size = min(chunk, count - done)
            for name in names if turn % 2 == 0 else reversed(names):
                start = time.perf_counter()
                for _ in range(size):
                    steps[name]()
                seconds[name] += time.perf_counter() - start
            done += size
            turn += 1
        for name in names:
            rates[name].append(count / seconds[name])
    return rates


def deepspeed_worker_loop(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train worker: the same model, loss and batch through `vf3d.training.initialize`, its
    steps interleaved with the bare loop's (C); returns the steps/s of both."""
    import torch

    from vf3d import config as config_lib
    from vf3d.models.reconstructor import Reconstructor
    from vf3d.training import initialize, training_config_from
    from vf3d.training.config import TrainReconConfig
    from vf3d.training.losses import ReconstructionLoss

    torch.set_num_threads(config["threads"])
    training = training_config_from(config)
    recon = config_lib.from_dict(TrainReconConfig, config["recon"])
    stage = training_stage(recon)
    torch.manual_seed(training.run.seed)
    model = Reconstructor(recon.model)
    model.config.transformer.gradient_checkpointing = recon.gradient_checkpointing
    engine = initialize(model, training)
    loss_fn = ReconstructionLoss(recon.losses).to(engine.device)
    batch = {key: torch.from_numpy(value).to(engine.device) for key, value in config["batch"].items()}

    def step() -> None:
        loss = training_loss(engine, loss_fn, batch, stage)
        engine.backward(loss)
        engine.step()

    _, bare_step = bare_training_step(
        recon, {key: value.cpu() for key, value in batch.items()}, recon.gradient_checkpointing, engine.device
    )
    rates = interleaved_windows({"deepspeed": step, "bare": bare_step}, config["warmup_steps"], config["steps"], config["windows"])
    return {
        "rates": rates["deepspeed"],
        "bare_rates": rates["bare"],
        "device": str(engine.device),
        "threads": torch.get_num_threads(),
        "zero_stage": engine.zero_optimization_stage(),
        "world_size": engine.world_size,
    }


def ray_deepspeed_rates(
    recon: TrainReconConfig, batch: dict[str, torch.Tensor], settings: Settings, threads: int, storage: str
) -> dict[str, Any]:
    from vf3d.training import run_training

    if __name__ != "__main__":
        import ray

        # Imported as a module (not run as a script): ship the worker loop by value, since the
        # workers cannot import `bench` from their own working directories.
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    training = recon.training
    training.scaling.num_workers = 1
    training.scaling.use_gpu = False
    training.deepspeed.precision = "fp32"
    total = settings.warmup_steps + settings.steps * settings.windows  # engine steps (the bare ones do not count)
    training.run.max_steps = total
    training.run.max_failures = 0
    training.run.name = "bench-train-recon"
    training.run.storage_path = storage
    training.checkpoint.every_n_steps = total + 1
    loop_config = {
        "recon": config_lib.to_dict(recon),
        "batch": {key: value.numpy() for key, value in batch.items()},
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
# 2. Gradient checkpointing: peak memory and step time of one bigger model's training step
# ---------------------------------------------------------------------------------------------


def format_bytes(count: float) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.0f} MiB"


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_resident_bytes() -> int:
    """VmHWM: the kernel's peak-RSS mark of this process (reset by `reset_peak_resident`)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak_resident() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def release_free_memory() -> None:
    """Hand memory that is free but still mapped back to the OS, so RSS before a step is what is in use."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def synchronizer(device: torch.device):
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def timed_step(step, synchronize) -> float:
    synchronize()
    start = time.perf_counter()
    step()
    synchronize()
    return time.perf_counter() - start


def memory_worker(model: str, gradient_checkpointing: bool, batch_path: Path, threads: int, device_name: str) -> None:
    """Runs in a fresh process: prints the peak memory growth of one training step (after a
    warm-up step) as JSON."""
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    recon = recon_config(model)
    batch = torch.load(batch_path, weights_only=True)
    model_module, step = bare_training_step(recon, batch, gradient_checkpointing, device)
    synchronize = synchronizer(device)
    result: dict[str, Any] = {
        "gradient_checkpointing": gradient_checkpointing,
        "device": str(device),
        "parameter_bytes": sum(p.numel() * p.element_size() for p in model_module.parameters()),
    }
    if device.type == "cuda":
        result["first_step_seconds"] = timed_step(step, synchronize)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result["step_seconds"] = timed_step(step, synchronize)
        result.update(
            method="torch.cuda.max_memory_allocated over a step after a warm-up step",
            before=before,
            peak_increase=torch.cuda.max_memory_allocated(device) - before,
        )
    elif reset_peak_resident():
        result["first_step_seconds"] = timed_step(step, synchronize)
        release_free_memory()
        reset_peak_resident()
        before = resident_bytes()
        result["step_seconds"] = timed_step(step, synchronize)
        result.update(
            method="VmHWM growth over a step after a warm-up step", before=before, peak_increase=max(peak_resident_bytes() - before, 0)
        )
    else:
        release_free_memory()
        before = resident_bytes()
        result["step_seconds"] = timed_step(step, synchronize)
        # ru_maxrss is in KiB on Linux.
        result.update(
            method="ru_maxrss growth over the first step (VmHWM cannot be reset here)",
            before=before,
            peak_increase=max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before, 0),
        )
    print(WORKER_RESULT_PREFIX + json.dumps(result), flush=True)


def timing_worker(model: str, batch_path: Path, rounds: int, threads: int, device_name: str) -> None:
    """Runs in a fresh process: one model whose checkpointing flag is switched between steps
    (the transformer reads it at every forward), one warm-up step per setting, then `rounds`
    rounds of one step per setting in alternating order; prints the step seconds as JSON."""
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    recon = recon_config(model)
    batch = torch.load(batch_path, weights_only=True)
    model_module, step = bare_training_step(recon, batch, False, device)
    synchronize = synchronizer(device)
    flag = model_module.config.transformer
    seconds: dict[str, list[float]] = {"off": [], "on": []}
    for name in ("off", "on"):
        flag.gradient_checkpointing = name == "on"
        timed_step(step, synchronize)
    for round_index in range(rounds):
        for name in ("off", "on") if round_index % 2 == 0 else ("on", "off"):
            flag.gradient_checkpointing = name == "on"
            seconds[name].append(timed_step(step, synchronize))
    print(WORKER_RESULT_PREFIX + json.dumps(seconds), flush=True)


def run_worker(kind: str, model: str, batch_path: Path, threads: int, device: str, rounds: int = 0) -> dict[str, Any]:
    """Run this script as a memory ("on"/"off") or timing worker in a fresh process; its JSON result."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--memory-worker",
        kind,
        "--memory-model",
        model,
        "--memory-batch-file",
        str(batch_path),
        "--timing-rounds",
        str(rounds),
        "--threads",
        str(threads),
        "--device",
        device,
    ]
    completed = subprocess.run(command, capture_output=True, text=True)
    for line in completed.stdout.splitlines():
        if line.startswith(WORKER_RESULT_PREFIX):
            return json.loads(line[len(WORKER_RESULT_PREFIX) :])
    raise RuntimeError(f"{kind} worker exited with {completed.returncode} and no result:\n{completed.stderr[-3000:]}")


def bench_checkpointing(
    row: dict[str, Any], model: str, batch_size: int, settings: Settings, threads: int, device: str
) -> tuple[list[Row], dict[str, Any]]:
    recon = recon_config(model)
    stage = training_stage(recon)
    batch = fixed_batch(row, recon, batch_size)
    what = "torch.cuda.max_memory_allocated growth" if device.startswith("cuda") else "peak RSS growth, fresh process per setting"
    log(
        f"checkpointing: {model} reconstructor, batch {batch_size}, {stage.render_resolution}px renders with "
        f"{stage.crop_size}px crops × {recon.num_target_views} views, on {device}, without vs with gradient "
        f"checkpointing of the {recon.model.transformer.num_layers} transformer blocks; {what}"
    )
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="vf3d-bench-train-recon-") as scratch:
        batch_path = Path(scratch) / "batch.pt"
        torch.save(batch, batch_path)
        for name in ("off", "on"):
            result = results[name] = run_worker(name, model, batch_path, threads, device)
            log(
                f"checkpointing {name}: +{format_bytes(result['peak_increase'])} over {format_bytes(result['before'])} "
                f"in use before the step ({result['method']}); that step {result['step_seconds']:.2f}s"
            )
        if settings.timing_rounds:
            log(f"checkpointing: step times, one process, {settings.timing_rounds} rounds of one step each, alternating order")
            results["timing"] = run_worker("timing", model, batch_path, threads, device, settings.timing_rounds)
            for name in ("off", "on"):
                log(f"checkpointing {name}: {', '.join(f'{value:.2f}' for value in results['timing'][name])}s per step")
    off, on = results["off"], results["on"]
    memory_ratio = on["peak_increase"] / off["peak_increase"] if off["peak_increase"] else float("nan")
    if settings.timing_rounds:
        seconds_off, seconds_on = (statistics.median(results["timing"][name]) for name in ("off", "on"))
        how = f"median of {settings.timing_rounds} interleaved steps each"
    else:
        seconds_off, seconds_on = off["step_seconds"], on["step_seconds"]
        how = "the measured step of each memory process"
    label = "peak CUDA memory" if device.startswith("cuda") else "peak RSS"
    where = f"{model} reconstructor, batch {batch_size}, {stage.crop_size}px crops"
    rows = [
        Row(
            f"{label} growth of one training step, {where} (no checkpointing vs transformer checkpointing)",
            format_bytes(off["peak_increase"]),
            format_bytes(on["peak_increase"]),
            f"{memory_ratio:.2f}× (B/A)",
            f"< 1 (includes {format_bytes(off['parameter_bytes'])} of gradients in both)",
        ),
        Row(
            f"seconds per training step, {where}, {how} (no checkpointing vs transformer checkpointing)",
            f"{seconds_off:.2f}",
            f"{seconds_on:.2f}",
            f"{seconds_on / seconds_off:.2f}× (B/A)",
            "> 1 expected (recompute)",
        ),
    ]
    details = {
        "model": model,
        "batch_size": batch_size,
        "device": device,
        "stage": asdict(stage),
        **results,
        "memory_ratio": memory_ratio,
        "seconds_off": seconds_off,
        "seconds_on": seconds_on,
        "seconds_ratio": seconds_on / seconds_off,
    }
    return rows, details


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps and windows (smoke test)")
    parser.add_argument(
        "--model", choices=("debug", "small"), default="debug", help="reconstructor preset of the harness-overhead section (default debug)"
    )
    parser.add_argument(
        "--memory-model",
        choices=tuple(RECONSTRUCTOR_PRESETS),
        default="small",
        help="reconstructor preset of the checkpointing section (default small)",
    )
    parser.add_argument("--memory-batch", type=int, default=1, help="batch size of the checkpointing section (default 1)")
    parser.add_argument("--device", default="auto", help="device of the checkpointing section: auto (CUDA when available), cpu, cuda[:N]")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every process that trains (default 1)")
    parser.add_argument("--json", type=Path, help="also write the summary and raw numbers as JSON here")
    # Internal: how the checkpointing section re-invokes this script in a fresh process.
    parser.add_argument("--memory-worker", choices=("on", "off", "timing"), help=argparse.SUPPRESS)
    parser.add_argument("--memory-batch-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--timing-rounds", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.memory_worker == "timing":
        timing_worker(args.memory_model, args.memory_batch_file, args.timing_rounds, args.threads, device)
        return
    if args.memory_worker:
        memory_worker(args.memory_model, args.memory_worker == "on", args.memory_batch_file, args.threads, device)
        return
    mode = "quick" if args.quick else "default"
    settings = (QUICK if args.quick else DEFAULT)[args.model]
    recon = recon_config(args.model)
    stage = training_stage(recon)
    load_start = os.getloadavg()[0]
    log(
        f"vf3d reconstructor training benchmark ({mode} mode): {args.model} reconstructor, stage {stage.name!r} "
        f"({stage.render_resolution}px renders, {stage.crop_size}px crops, pixel loss {'on' if stage.pixel_loss else 'off'}), "
        f"batch {recon.training.run.batch_size}×(1 source + {recon.num_target_views} targets), torch {torch.__version__}, "
        f"{args.threads} torch thread(s) in both, {settings.warmup_steps} warm-up + {settings.windows}×{settings.steps} "
        f"timed steps per run, 1-min load average {load_start:.2f}"
    )

    log(
        f"rendering the duck orbit ({NUM_ORBIT_VIEWS} views + {NUM_RANDOM_VIEWS} random at {ORBIT_RESOLUTION}²) "
        f"and decoding it through the shard schema"
    )
    row = duck_orbit_row()
    batch = fixed_batch(row, recon, recon.training.run.batch_size)
    log("fixed batch: " + ", ".join(f"{key} {list(value.shape)}" for key, value in batch.items()))

    log("A (bare PyTorch), first run")
    rates_a = bare_pytorch_rates(recon, batch, settings, args.threads)
    log(f"A: {', '.join(f'{rate:.3g}' for rate in rates_a)} steps/s")

    log("B (Ray Train + DeepSpeed ZeRO-2, 1 worker, fp32 CPU) and C (bare, same worker): starting a private local Ray cluster")
    outcome_b, b_wall = on_private_ray(
        lambda storage: ray_deepspeed_rates(recon_config(args.model), batch, settings, args.threads, storage), "vf3d-bench-train-recon-"
    )
    rates_b, rates_c = outcome_b["rates"], outcome_b["bare_rates"]
    log(f"C (bare PyTorch in the same Ray worker, interleaved with B): {', '.join(f'{rate:.3g}' for rate in rates_c)} steps/s")
    log(
        f"B: {', '.join(f'{rate:.3g}' for rate in rates_b)} steps/s (worker: {outcome_b['device']}, "
        f"{outcome_b['threads']} thread(s), ZeRO-{outcome_b['zero_stage']}, world size {outcome_b['world_size']}; "
        f"whole run_training {b_wall:.1f}s including start-up)"
    )

    log("A (bare PyTorch), second run")
    rates_a2 = bare_pytorch_rates(recon, batch, settings, args.threads)
    log(f"A: {', '.join(f'{rate:.3g}' for rate in rates_a2)} steps/s")
    rates_a += rates_a2

    median_a, median_b, median_c = statistics.median(rates_a), statistics.median(rates_b), statistics.median(rates_c)
    ratio = median_b / median_a
    rows = [
        Row(
            f"{args.model} reconstructor steps/s, {stage.crop_size}px crops of {stage.render_resolution}px renders "
            f"(bare PyTorch vs Ray Train + DeepSpeed ZeRO-2, 1 worker, fixed in-memory batch)",
            f"{median_a:.3g}",
            f"{median_b:.3g}",
            f"{ratio:.2f} (B/A)",
            f"≥ {RATIO_TARGET}",
        ),
        Row(
            "ms per step (bare PyTorch vs Ray Train + DeepSpeed)",
            f"{1000 / median_a:.1f}",
            f"{1000 / median_b:.1f}",
            f"{1000 / median_b - 1000 / median_a:+.1f} ms",
            "—",
        ),
        Row(
            "same Ray worker, interleaved in 5-step chunks: steps/s (bare PyTorch C vs DeepSpeed engine B)",
            f"{median_c:.3g}",
            f"{median_b:.3g}",
            f"{median_b / median_c:.2f} (B/C)",
            f"≥ {RATIO_TARGET}; less exposed to drift",
        ),
    ]

    memory_rows, memory_details = bench_checkpointing(row, args.memory_model, args.memory_batch, settings, args.threads, device)
    rows += memory_rows

    wall_seconds, load_end = time.perf_counter() - BENCH_START, os.getloadavg()[0]
    print(
        f"\n## vf3d reconstructor training benchmark ({mode}, harness on the CPU, checkpointing on {device}, "
        f"{args.threads} torch thread(s) in both, {wall_seconds:.0f}s, "
        f"load average {load_start:.2f} → {load_end:.2f})\n\n{markdown_table(rows)}\n\n"
        f"Steps/s: medians over {len(rates_a)} windows of A (runs before and after B) and {len(rates_b)} windows of B, "
        f"{settings.steps} steps each (C: {len(rates_c)} windows in B's worker, interleaved with B's in chunks of 5 steps); no Ray Data, "
        f"so B/A is the Train + DeepSpeed overhead on the step. "
        f"Checkpointing: A = without, B = with; memory is the growth over one step after a warm-up step, one fresh "
        f"process per setting.\n",
        flush=True,
    )
    if args.json:
        write_json(
            args.json,
            {
                "mode": mode,
                "torch": torch.__version__,
                "threads": args.threads,
                "model": args.model,
                "stage": asdict(stage),
                "wall_seconds": wall_seconds,
                "load_average": [load_start, load_end],
                "settings": asdict(settings),
                "rates_a": rates_a,
                "rates_b": rates_b,
                "median_a": median_a,
                "median_b": median_b,
                "ratio": ratio,
                "rates_c": rates_c,
                "median_c": median_c,
                "ratio_b_c": median_b / median_c,
                "run_training_seconds": b_wall,
                "worker": outcome_b,
                "checkpointing": memory_details,
            },
            rows,
        )


if __name__ == "__main__":
    main()
