"""What a training run costs on a private local cluster beside its steps, with and without Ray
Train's PreemptionWatcher, side by side in one run.

What it measures: a tiny training through vf3d's harness (`vf3d.training.run_training`: Ray Train
+ DeepSpeed ZeRO-2, 2 CPU workers, an 8-step MLP fit, one checkpoint), started --runs times per
round on a private local Ray cluster. A = Ray's default (RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=1:
a PreemptionWatcher actor, hence one more worker process, with every worker group), B = vf3d's
default on a cluster this process started (the watcher off; `training/runner.py`). Rounds go A, B,
B, A (--quick: A, B). For each round: wall seconds and the machine's busy CPU-seconds (from
/proc/stat, so run it on a quiet machine). The steps are a negligible part: this is the fixed cost
every training start (and restart) pays. Nothing asserts a timing.

Run (from the repository root, Linux):
  python bench/train_overhead.py            # about 3 minutes on 2 quiet cores
  python bench/train_overhead.py --quick
  python bench/train_overhead.py --json bench-results/train_overhead.json
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from report import busy_cpu_seconds, cpu_and_wall_rows, finish, log

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private cluster needs no token


def fit_loop(config: dict) -> dict:
    """8 AdamW steps of a 2-layer MLP on seeded batches, a checkpoint at the end (every rank)."""
    import torch

    from vf3d.training import initialize, save, training_config_from

    training = training_config_from(config)
    torch.manual_seed(0)
    engine = initialize(torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 1)), training)
    generator = torch.Generator().manual_seed(1)
    for _ in range(training.run.max_steps):
        features = torch.randn(training.run.batch_size, 8, generator=generator)
        loss = torch.nn.functional.mse_loss(engine(features), features.sum(dim=1, keepdim=True))
        engine.backward(loss)
        engine.step()
    save(engine, training.run.max_steps, {"loss": loss.item()})
    return {"loss": loss.item()}


def one_round(runs: int, watcher: bool) -> dict[str, float]:
    from vf3d.training import run_training
    from vf3d.training.config import CheckpointSettings, DeepSpeedConfig, RunSettings, ScalingSettings, TrainingConfig
    from vf3d.training.runner import PREEMPTION_WATCHER_ENV

    time.sleep(3)  # let the previous round's actors exit
    if watcher:
        os.environ[PREEMPTION_WATCHER_ENV] = "1"  # as a user would set it: vf3d then leaves it alone
    cpu, wall = busy_cpu_seconds(), time.perf_counter()
    try:
        for _ in range(runs):
            with tempfile.TemporaryDirectory(prefix="vf3d-bench-train-") as storage:
                training = TrainingConfig(
                    deepspeed=DeepSpeedConfig(zero_stage=2),
                    scaling=ScalingSettings(num_workers=2, use_gpu=False, cpus_per_worker=0.5),
                    checkpoint=CheckpointSettings(every_n_steps=8),
                    run=RunSettings(name="overhead", storage_path=storage, max_steps=8, batch_size=16, max_failures=0),
                )
                run_training(fit_loop, {}, training.validate())
    finally:
        os.environ.pop(PREEMPTION_WATCHER_ENV, None)
    time.sleep(3)  # the processes the runs started have exited and are counted
    return {"cpu_seconds": busy_cpu_seconds() - cpu, "wall_seconds": time.perf_counter() - wall - 3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round each (A, B)")
    parser.add_argument("--runs", type=int, default=2, help="training runs per round")
    parser.add_argument("--json", type=Path, help="also write the summary and raw numbers as JSON here")
    args = parser.parse_args()
    from vf3d.ray_runtime import MIN_LOCAL_CPUS, start_local_ray
    from vf3d.training.runner import PREEMPTION_WATCHER_ENV

    if PREEMPTION_WATCHER_ENV in os.environ:
        raise SystemExit(f"bench/train_overhead.py: error: unset {PREEMPTION_WATCHER_ENV} (it would decide both sides)")
    import ray

    load_start = os.getloadavg()[0]
    order = [True, False] if args.quick else [True, False, False, True]
    results: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    log(f"vf3d training-start benchmark: {args.runs} tiny 2-worker trainings per round, rounds {order} (True: watcher on)")
    start_local_ray(num_cpus=MIN_LOCAL_CPUS, include_dashboard=False, log_to_driver=False)
    try:
        time.sleep(5)  # the cluster's own start-up is not counted
        for watcher in order:
            outcome = one_round(args.runs, watcher)
            results[watcher].append(outcome)
            log(
                f"{'watcher on (Ray default)' if watcher else 'watcher off (vf3d)'}: {outcome['cpu_seconds']:.1f} CPU-s, {outcome['wall_seconds']:.1f} s"
            )
    finally:
        ray.shutdown()

    rows = cpu_and_wall_rows(
        f"{args.runs} training runs (watcher on vs off)", results[True], results[False], "> 1: one process fewer per worker-group start"
    )
    finish(
        "vf3d training-start benchmark",
        rows,
        f"Medians over {len(results[True])} rounds each.",
        load_start,
        args.json,
        "quick" if args.quick else "full",
        runs=args.runs,
        results={"watcher_on" if key else "watcher_off": value for key, value in results.items()},
    )


if __name__ == "__main__":
    main()
