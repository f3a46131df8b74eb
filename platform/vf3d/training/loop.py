"""The training skeleton every Ray Train worker runs: one loop that asks a `TrainTask` for the
model-specific parts (torchtitan style), and the driver-side helpers around `run_training`.

`run_loop(Task, config)` (inside `train_loop_per_worker`):

    require_usable_gpus; training = training_config_from(config); task = Task(config, training, rank)
    torch.manual_seed(training.run.seed); engine = initialize(task.build_model(), training)
    step = restore(engine); task.start(engine, step)
    if validating and step == 0: first validation
    while step < training.run.max_steps:
        task.begin_step(step); inject_fault_if_due(training, step + 1)
        terms = task.train_step(engine, step); step += 1          # forward, backward, optimizer step
        every rank: Ray metrics of the step (vf3d.metrics); rank 0 every run.log_every_n_steps:
        scalars to TensorBoard / MLflow (vf3d.training.tracking)
        log (rank 0) / validate / checkpoint when step % every_n == 0, at the last step, and (validate,
        checkpoint) where task.stage_ends(step)
    result = task.finish(engine, state) + {"gpu_time": ...}; rank 0: task.export(committed_checkpoint())

Imports of ray and torch stay inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from vf3d import storage

if TYPE_CHECKING:
    import ray.train
    import torch

    from vf3d.training.config import TrainingConfig

RUNS_DIRNAME = "training_runs"
"""Checkpoints live under OUT/training_runs/<run name>/ unless run.storage_path says otherwise."""
TENSORBOARD_DIRNAME = "tensorboard"
"""TensorBoard event files live under OUT/tensorboard/ unless tracking.tensorboard_dir says otherwise."""


class Window:
    """The loss terms of the steps since the window was last reset, and when it started."""

    def __init__(self) -> None:
        self.terms: list[dict[str, float]] = []
        self.started = time.perf_counter()

    def __len__(self) -> int:
        return len(self.terms)

    def add(self, terms: dict[str, float]) -> None:
        self.terms.append(terms)

    def mean(self, key: str) -> float:
        return float(np.mean([entry[key] for entry in self.terms if key in entry]))

    def means(self) -> dict[str, float]:
        """The mean of every term the last step reported (over the steps that reported it)."""
        return {key: self.mean(key) for key in self.terms[-1]}

    def steps_per_second(self) -> float:
        return len(self.terms) / (time.perf_counter() - self.started)


def progress_line(label: str, step: int, max_steps: int, window: Window) -> str:
    """ "[label] step 40/120 (33%, 1.52 steps/s, ETA 53 s)": where a run stands, its speed over
    `window` (the steps since the last line) and the time the rest takes at that speed."""
    rate = window.steps_per_second() if len(window) else 0.0
    remaining = (max_steps - step) / rate if rate > 0 else float("nan")
    eta = "?" if remaining != remaining else f"{remaining:.0f} s" if remaining < 120 else f"{remaining / 60:.1f} min"
    return f"[{label}] step {step}/{max_steps} ({100 * step / max(max_steps, 1):.0f}%, {rate:.2f} steps/s, ETA {eta})"


def worker_print(line: str) -> None:
    """Print one line from a training worker, once.

    Ray Train routes a worker's `print` to its logger as well as to the worker's (replaced)
    sys.stdout, so each line reached the driver twice; the process's own stdout (what Ray
    streams to the driver) takes it once."""
    print(line, file=sys.__stdout__, flush=True)


@dataclass
class LoopState:
    """Where the loop stands: the step it resumed from, the step done last, and validations."""

    start: int
    step: int
    first_validation: dict[str, Any] | None = None
    last_validation: dict[str, Any] | None = None


class TrainTask:
    """The model-specific parts of a training run; `run_loop` calls them.

    A subclass is built on every worker as `Task(config, training, rank)` (the loop config, its
    `TrainingConfig`, the world rank). Steps passed to `begin_step` / `train_step` are 0-based (the
    step about to run); those passed to the other hooks count the steps done.
    """

    label: ClassVar[str] = "training"
    """Names the command in the worker's GPU check ("<label> worker")."""

    log_every_n_steps: int | None = None
    """Rank 0 calls `log` this often (and at the last step); None: never."""

    validate_every_n_steps: int | None = None
    """`validate` runs this often (and at step 0 of a fresh run, the last step, stage ends); None: never."""

    def __init__(self, config: dict[str, Any], training: TrainingConfig, rank: int) -> None:
        self.config = config
        self.training = training
        self.rank = rank

    def build_model(self) -> torch.nn.Module:
        """The model to train (the global torch seed is `training.run.seed` here, on every rank)."""
        raise NotImplementedError

    def start(self, engine, step: int) -> None:
        """After the DeepSpeed engine is built and restored to `step`: data, losses, evaluation state."""

    def begin_step(self, step: int) -> None:
        """Before step `step` (and before fault injection): e.g. announce a new stage."""

    def train_step(self, engine, step: int) -> dict[str, float]:
        """Forward, `engine.backward`, `engine.step` for step `step`; returns the loss terms ("loss" first)."""
        raise NotImplementedError

    def stage_ends(self, step: int) -> bool:
        """Whether the step just done (`step` steps in all) ends a stage: validate and checkpoint then."""
        return False

    def log(self, step: int, window: Window) -> None:
        """Rank 0: report the steps in `window` (those since the last log); by default one
        progress line with the mean loss terms."""
        terms = ", ".join(f"{key} {value:.4f}" for key, value in window.means().items())
        worker_print(progress_line(self.label, step, self.training.run.max_steps, window) + f": {terms}")

    def validate(self, engine, step: int) -> dict[str, Any] | None:
        """Validation metrics after `step` steps (None where this rank does not validate)."""
        return None

    def checkpoint_metrics(self, step: int, window: Window, state: LoopState) -> dict[str, Any]:
        """The metrics saved (and reported to Ray) with the checkpoint of `step`; `window`: the
        steps since the last checkpoint."""
        return {"step": step, "loss": window.mean("loss")}

    def checkpoint_extra(self) -> dict[str, Any]:
        """JSON-ready data saved in the checkpoint's metadata."""
        return {}

    def finish(self, engine, state: LoopState) -> dict[str, Any]:
        """After the last step (every rank): what the worker returns (rank 0's reaches the driver)."""
        return {"resumed_from": state.start, "steps": state.step}

    def export(self, checkpoint: ray.train.Checkpoint | None) -> None:
        """Rank 0, at the end: export the latest checkpoint."""


def run_loop(task_class: type[TrainTask], config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train worker body: build `task_class`'s task and train it with DeepSpeed to
    `training.run.max_steps`, checkpointing, resuming and injecting faults as the harness settings
    say. Returns `task.finish`'s dict."""
    import ray.train
    import torch

    from vf3d import metrics
    from vf3d.ray_runtime import require_usable_gpus
    from vf3d.training import committed_checkpoint, initialize, inject_fault_if_due, restore, save, training_config_from
    from vf3d.training.tracking import ScalarTracker, learning_rate

    require_usable_gpus(f"{task_class.label} worker")
    training = training_config_from(config)
    rank = ray.train.get_context().get_world_rank()
    task = task_class(config, training, rank)
    torch.manual_seed(training.run.seed)  # identical initial weights on every rank
    engine = initialize(task.build_model(), training)
    state = LoopState(start=restore(engine), step=0)
    state.step = state.start
    task.start(engine, state.step)
    if task.validate_every_n_steps and state.step == 0:
        state.first_validation = task.validate(engine, 0)
    max_steps = training.run.max_steps
    since_log, since_checkpoint, since_track = Window(), Window(), Window()
    # Rank 0 logs scalars (TensorBoard, MLflow when configured); every rank reports its steps,
    # busy time and GPUs to the Ray metrics (vf3d.metrics), and its busy seconds for the summary.
    tracker = ScalarTracker(training, task_class.label, resumed_from=state.start) if rank == 0 else None
    gpus = metrics.assigned_gpus()
    meter = metrics.StageMeter(task_class.label, "train_step", gpus=gpus)
    samples_per_step = training.run.batch_size * training.deepspeed.gradient_accumulation_steps
    world_size = ray.train.get_context().get_world_size()
    loop_started, busy_seconds = time.perf_counter(), 0.0
    while state.step < max_steps:
        task.begin_step(state.step)
        inject_fault_if_due(training, state.step + 1)
        step_started = time.perf_counter()
        terms = task.train_step(engine, state.step)
        step_seconds = time.perf_counter() - step_started
        busy_seconds += step_seconds
        meter.batch(samples_per_step, step_seconds)
        state.step += 1
        step = state.step
        if tracker is not None:
            metrics.count("vf3d_train_steps", 1, pipeline=task_class.label)
            since_track.add(terms)
            if step % training.run.log_every_n_steps == 0 or step == max_steps:
                rate = since_track.steps_per_second()
                tracker.log(step, since_track.means(), learning_rate(engine), rate, rate * samples_per_step * world_size)
                since_track = Window()
        if task.log_every_n_steps:
            since_log.add(terms)
        since_checkpoint.add(terms)
        last = step == max_steps
        if task.log_every_n_steps and (step % task.log_every_n_steps == 0 or last):
            if rank == 0:
                task.log(step, since_log)
            since_log = Window()
        ends = task.stage_ends(step)
        if task.validate_every_n_steps and (step % task.validate_every_n_steps == 0 or last or ends):
            state.last_validation = task.validate(engine, step) or state.last_validation
        if step % training.checkpoint.every_n_steps == 0 or last or ends:
            save(
                engine,
                step,
                task.checkpoint_metrics(step, since_checkpoint, state),
                extra=task.checkpoint_extra(),
                upload=training.checkpoint.upload,
            )
            since_checkpoint = Window()
    result = task.finish(engine, state)
    # What the summary's GPU-hours are computed from (this worker group's; ranks run in lockstep).
    result["gpu_time"] = {
        "gpus_per_worker": gpus,
        "world_size": world_size,
        "busy_seconds": round(busy_seconds, 3),
        "loop_seconds": round(time.perf_counter() - loop_started, 3),
    }
    if tracker is not None:
        tracker.close({key: value for key, value in result.items() if isinstance(value, (int, float))})
    if rank == 0:
        # The last checkpoint may still be uploading (async uploads): export it once committed.
        task.export(committed_checkpoint())
    return result


def use_default_storage(training: TrainingConfig, out_dir: Path) -> None:
    """Checkpoints under `out_dir`/training_runs unless `training.run.storage_path` is set, and
    TensorBoard event files under `out_dir`/tensorboard unless `training.tracking.tensorboard_dir` is."""
    if storage.is_uri(out_dir):
        # Checkpoints go beside the model on the object store (Ray Train uploads them), and so do
        # the TensorBoard event files (written locally on rank 0, published by its ScalarTracker).
        if training.run.storage_path is None:
            training.run.storage_path = str(storage.join(out_dir, RUNS_DIRNAME))
        if training.tracking.tensorboard_dir is None:
            training.tracking.tensorboard_dir = str(storage.join(out_dir, TENSORBOARD_DIRNAME))
        return
    if training.run.storage_path is None:
        training.run.storage_path = str((Path(out_dir) / RUNS_DIRNAME).resolve())
    if training.tracking.tensorboard_dir is None:
        training.tracking.tensorboard_dir = str((Path(out_dir) / TENSORBOARD_DIRNAME).resolve())


def finished_rerun(
    training: TrainingConfig,
    out_dir: Path | str,
    *,
    label: str,
    model_config: dict[str, Any],
    files: dict[str, str],
    started: float,
    log=print,
) -> dict[str, Any] | None:
    """The summary of a rerun with nothing to do, written to `out_dir`, or None (then the workers
    start as usual).

    Nothing to do: the run's latest committed checkpoint (`runner.latest_checkpoint`) is at
    `run.max_steps` or past it, and `out_dir` already holds the export of that very checkpoint (the
    previous summary names it and its step, the export file is there) for the same model config.
    Starting the worker group would only restore that checkpoint (at scale, hundreds of processes
    fetching their optimizer shards) and export the same weights again. `files` names the driver's
    files in `out_dir`: {"summary": ..., "config": ..., "export": a file every export has}. The
    caller has not yet overwritten the saved config, which is what the model config is compared to.
    """
    import json

    from vf3d.training.runner import latest_checkpoint

    model_config = json.loads(json.dumps(model_config))  # as the saved config reads back (lists, not tuples)
    latest = latest_checkpoint(training)
    if latest is None:
        return None
    checkpoint, metrics = latest
    step = metrics.get("step")
    if not isinstance(step, int) or step < training.run.max_steps:
        return None
    try:
        previous = storage.read_json(storage.join(out_dir, files["summary"]))
        saved_config = storage.read_json(storage.join(out_dir, files["config"]))
        exported = storage.is_file(storage.join(out_dir, files["export"]))
    except (OSError, ValueError):  # missing or unreadable: export again
        return None
    if (
        not exported
        or previous.get("checkpoint") != checkpoint
        or previous.get("steps") != step
        or saved_config.get("model") != model_config
    ):
        return None
    from vf3d.atomic import write_json_atomic

    summary = {
        **previous,
        "resumed_from": step,
        "steps": step,
        "already_finished": True,
        "seconds": round(time.perf_counter() - started, 1),
        "gpus": 0.0,
        "gpu_hours_billed": 0.0,
        "gpu_hours_busy": 0.0,
        "step_seconds": 0.0,
    }
    write_json_atomic(storage.join(out_dir, files["summary"]), summary)
    log(
        f"{label}: run {training.run.name!r} already reached step {step} (run.max_steps {training.run.max_steps}) and "
        f"{out_dir} holds its export: nothing to train, no workers started. Raise run.max_steps to train on."
    )
    return summary


def run_summary(outcome: dict[str, Any], result: ray.train.Result, started: float, out_dir: Path, **fields: Any) -> dict[str, Any]:
    """A driver's summary: rank 0's `outcome`, the driver's `fields`, time taken (since the
    `time.perf_counter()` value `started`), the model directory, the latest checkpoint, and GPU-hours:
    `gpu_hours_billed` (GPUs the worker group held × the run's wall time, start-up and restarts
    included) beside `gpu_hours_busy` (GPUs × the time the steps ran; the last worker group's)."""
    from vf3d.training.runner import checkpoint_location

    checkpoint = checkpoint_location(result.checkpoint) if result.checkpoint else None
    seconds = time.perf_counter() - started
    gpu_time = outcome.pop("gpu_time", None) or {}
    gpus = gpu_time.get("gpus_per_worker", 0.0) * gpu_time.get("world_size", 0)
    return {
        **outcome,
        **fields,
        "seconds": round(seconds, 1),
        "gpus": gpus,
        "gpu_hours_billed": round(gpus * seconds / 3600, 6),
        "gpu_hours_busy": round(gpus * gpu_time.get("busy_seconds", 0.0) / 3600, 6),
        "step_seconds": gpu_time.get("busy_seconds"),
        "model_dir": str(out_dir),
        "checkpoint": checkpoint,
        "already_finished": False,
    }
