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
        log (rank 0) / validate / checkpoint when step % every_n == 0, at the last step, and (validate,
        checkpoint) where task.stage_ends(step)
    result = task.finish(engine, state); rank 0: task.export(ray.train.get_checkpoint())

Imports of ray and torch stay inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    import ray.train
    import torch

    from vf3d.training.config import TrainingConfig

RUNS_DIRNAME = "training_runs"
"""Checkpoints live under OUT/training_runs/<run name>/ unless run.storage_path says otherwise."""


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
        """Rank 0: report the steps in `window` (those since the last log)."""

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

    from vf3d.ray_runtime import require_usable_gpus
    from vf3d.training import initialize, inject_fault_if_due, restore, save, training_config_from

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
    since_log, since_checkpoint = Window(), Window()
    while state.step < max_steps:
        task.begin_step(state.step)
        inject_fault_if_due(training, state.step + 1)
        terms = task.train_step(engine, state.step)
        state.step += 1
        step = state.step
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
            save(engine, step, task.checkpoint_metrics(step, since_checkpoint, state), extra=task.checkpoint_extra())
            since_checkpoint = Window()
    result = task.finish(engine, state)
    if rank == 0:
        task.export(ray.train.get_checkpoint())
    return result


def use_default_storage(training: TrainingConfig, out_dir: Path) -> None:
    """Checkpoints under `out_dir`/training_runs unless `training.run.storage_path` is set."""
    if training.run.storage_path is None:
        training.run.storage_path = str((Path(out_dir) / RUNS_DIRNAME).resolve())


def run_summary(outcome: dict[str, Any], result: ray.train.Result, started: float, out_dir: Path, **fields: Any) -> dict[str, Any]:
    """A driver's summary: rank 0's `outcome`, the driver's `fields`, time taken (since the
    `time.perf_counter()` value `started`), the model directory and the latest checkpoint."""
    checkpoint = str(result.checkpoint.path) if result.checkpoint else None
    return {**outcome, **fields, "seconds": round(time.perf_counter() - started, 1), "model_dir": str(out_dir), "checkpoint": checkpoint}
