"""The Ray Train + DeepSpeed harness on local Ray: real workers, real ZeRO, real crashes and resumes.

The reference loop below trains a tiny MLP on a noise-free linear regression, either from seeded
synthetic batches or from a Ray Data shard, the way the video and reconstructor loops use the
harness. Its rank-0 return value (Ray Train V2 hands it back as `Result.return_value`) carries
what the tests check: losses, the step it resumed from, and predictions of the final model.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import ray.cloudpickle
import ray.data
import torch
from processes import wait_until_gone

from vf3d.config import ConfigError
from vf3d.training import build_deepspeed_config, consolidate, parameter_groups, read_metadata, run_training
from vf3d.training.checkpointing import LOCAL_CHECKPOINT_PREFIX, METADATA_FILE
from vf3d.training.config import (
    CheckpointSettings,
    DeepSpeedConfig,
    FaultInjection,
    OptimizerConfig,
    RunSettings,
    ScalingSettings,
    TrainingConfig,
)
from vf3d.training.deepspeed_setup import learning_rate_multiplier
from vf3d.training.fault_injection import FAULT_MARKER_FILE

# Ray workers cannot import this test module (pytest put its folder on sys.path only here), so the
# loop and its helpers travel by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

NUM_FEATURES = 8
PROBE_SEED = 1234


def build_mlp() -> torch.nn.Module:
    """The regression model; the LayerNorm gives the no-decay parameter group something to hold."""
    return torch.nn.Sequential(
        torch.nn.Linear(NUM_FEATURES, 32),
        torch.nn.LayerNorm(32),
        torch.nn.GELU(),
        torch.nn.Linear(32, 1),
    )


def regression_targets(features: torch.Tensor) -> torch.Tensor:
    """y = x·w + 0.5 with a fixed w: [B, NUM_FEATURES] → [B, 1]."""
    weights = torch.linspace(-1.0, 1.0, NUM_FEATURES).unsqueeze(1)
    return features @ weights + 0.5


def probe_features() -> torch.Tensor:
    """Fixed inputs on which the trained and the consolidated model must agree: [16, NUM_FEATURES]."""
    return torch.randn(16, NUM_FEATURES, generator=torch.Generator().manual_seed(PROBE_SEED))


def synthetic_batches(training: TrainingConfig, rank: int, start_step: int):
    """Batches that depend only on (seed, rank, step), so a resumed run sees what it would have seen."""
    step = start_step
    while True:
        generator = torch.Generator().manual_seed(training.run.seed * 1_000_003 + rank * 7919 + step)
        features = torch.randn(training.run.batch_size, NUM_FEATURES, generator=generator)
        yield features, regression_targets(features), None
        step += 1


def dataset_batches(training: TrainingConfig):
    """Epoch after epoch over this worker's shard of the "train" dataset."""
    import ray.train

    shard = ray.train.get_dataset_shard("train")
    while True:
        for batch in shard.iter_torch_batches(batch_size=training.run.batch_size, dtypes=torch.float32):
            yield batch["features"], batch["target"].unsqueeze(1), batch["id"]


def regression_loop(config: dict) -> dict:
    """The reference `train_loop_per_worker`: everything it needs comes through `config`."""
    import ray.train
    import torch.distributed

    from vf3d.training import committed_checkpoint, consolidate, initialize, inject_fault_if_due, restore, save, training_config_from

    training = training_config_from(config)
    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(training.run.seed)
    engine = initialize(build_mlp(), training)
    start_step = restore(engine)
    batches = dataset_batches(training) if config["from_dataset"] else synthetic_batches(training, rank, start_step)
    losses, first_epoch_ids, saved = [], [], False
    step = start_step
    while step < training.run.max_steps:
        inject_fault_if_due(training, step + 1)
        features, targets, ids = next(batches)
        if ids is not None and len(first_epoch_ids) < config["rows_per_worker"]:
            first_epoch_ids.extend(int(i) for i in ids)
        loss = torch.nn.functional.mse_loss(engine(features), targets)
        engine.backward(loss)
        engine.step()
        step += 1
        losses.append(loss.item())
        metrics = {"loss": loss.item(), "resumed_from": start_step}
        if step % training.checkpoint.every_n_steps == 0 or step == training.run.max_steps:
            save(engine, step, metrics, extra={"loop": config["loop_name"]}, upload=training.checkpoint.upload)
            saved = True
        elif step % training.run.log_every_n_steps == 0:
            ray.train.report(metrics)
    with torch.no_grad():
        # Every rank runs the forward: under ZeRO-3 it gathers parameter shards collectively.
        probe_predictions = engine(probe_features())
        exported_predictions = None
        if rank == 0 and saved:
            # The export a model loop ends with: one full fp32 state dict, written by rank 0 alone,
            # from the last checkpoint once committed (its upload may still be running).
            exported = build_mlp()
            exported.load_state_dict(consolidate(committed_checkpoint()))
            exported_predictions = exported(probe_features()).tolist()
    # Which rows each worker saw in its first epoch, summed over the workers.
    seen = torch.tensor([len(first_epoch_ids), sum(first_epoch_ids)], dtype=torch.float64)
    torch.distributed.all_reduce(seen)
    return {
        "losses": losses,
        "resumed_from": start_step,
        "final_step": step,
        "probe_predictions": probe_predictions.tolist(),
        "exported_predictions": exported_predictions,
        "first_epoch_rows_all_workers": int(seen[0]),
        "first_epoch_id_sum_all_workers": int(seen[1]),
    }


def harness_settings(
    storage, name, *, zero_stage=2, num_workers=2, max_steps=24, every_n_steps=8, keep_last=2, max_failures=0, fault=None, upload="async"
):
    return TrainingConfig(
        optimizer=OptimizerConfig(lr=2e-2, warmup_steps=2, schedule="cosine", weight_decay=0.01),
        deepspeed=DeepSpeedConfig(zero_stage=zero_stage),
        scaling=ScalingSettings(num_workers=num_workers, use_gpu="auto", cpus_per_worker=0.5),
        checkpoint=CheckpointSettings(every_n_steps=every_n_steps, keep_last=keep_last, upload=upload),
        fault_injection=fault or FaultInjection(),
        run=RunSettings(
            name=name, storage_path=str(storage), max_failures=max_failures, batch_size=16, max_steps=max_steps, log_every_n_steps=4
        ),
    ).validate()


def train(settings, *, datasets=None, rows_per_worker=0):
    loop_config = {"from_dataset": datasets is not None, "rows_per_worker": rows_per_worker, "loop_name": "regression"}
    return run_training(regression_loop, loop_config, settings, datasets=datasets)


def consolidated_predictions(checkpoint) -> torch.Tensor:
    model = build_mlp()
    model.load_state_dict(consolidate(checkpoint))
    with torch.no_grad():
        return model(probe_features())


def local_checkpoint_copies(run_name):
    """The ranks' local checkpoint directories of run `run_name` still in the temporary directory."""
    return sorted(Path(tempfile.gettempdir()).glob(f"{LOCAL_CHECKPOINT_PREFIX}{run_name}-step*"))


def checkpoint_dirs(run_dir):
    return sorted(path.name for path in run_dir.iterdir() if path.is_dir() and path.name.startswith("step_"))


# ---------------------------------------------------------------------------------------------
# Pure pieces (no Ray): DeepSpeed config, parameter groups, schedule, validation
# ---------------------------------------------------------------------------------------------


def test_deepspeed_config_and_parameter_groups_follow_the_settings(tmp_path):
    settings = harness_settings(tmp_path, "pure", zero_stage=3)
    cpu = build_deepspeed_config(settings, use_cuda=False)
    assert cpu["zero_optimization"] == {"stage": 3} and cpu["bf16"] == {"enabled": False}
    assert cpu["train_micro_batch_size_per_gpu"] == 16 and cpu["gradient_clipping"] == 1.0
    assert build_deepspeed_config(settings, use_cuda=True)["bf16"] == {"enabled": True}
    model = build_mlp()
    decay, no_decay = parameter_groups(model, weight_decay=0.01)
    assert [tuple(p.shape) for p in decay["params"]] == [(32, NUM_FEATURES), (1, 32)]
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0  # 2 biases, LayerNorm weight and bias
    model[0].weight.requires_grad_(False)
    assert [tuple(p.shape) for p in parameter_groups(model, 0.01)[0]["params"]] == [(1, 32)]
    multipliers = [learning_rate_multiplier(step, settings.optimizer, max_steps=24) for step in range(24)]
    assert multipliers[:2] == [0.5, 1.0] and multipliers[-1] == pytest.approx(0.1, abs=0.01)
    assert all(a >= b for a, b in zip(multipliers[1:], multipliers[2:]))
    with pytest.raises(ConfigError, match="fail_rank"):
        harness_settings(tmp_path, "bad", fault=FaultInjection(fail_at_step=3, fail_rank=2))


# ---------------------------------------------------------------------------------------------
# Real runs on the session's local Ray cluster
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zero2_run(ray_local, tmp_path_factory):
    """A finished 24-step ZeRO-2 run on 2 workers, and what its storage held right after it."""
    storage = tmp_path_factory.mktemp("zero2")
    result = train(harness_settings(storage, "zero2"))
    return storage, result, checkpoint_dirs(storage / "zero2")


def test_zero2_two_workers_learn_and_write_self_describing_consolidatable_checkpoints(zero2_run):
    storage, result, kept = zero2_run
    losses = result.return_value["losses"]
    assert len(losses) == 24 and result.return_value["resumed_from"] == 0
    assert losses[-1] < 0.5 * losses[0], losses
    assert kept == ["step_00000016", "step_00000024"]  # keep_last=2 of 8, 16, 24
    checkpoint_dir = storage / "zero2" / "step_00000024"
    assert result.checkpoint.path == str(checkpoint_dir)
    metadata = read_metadata(checkpoint_dir)
    assert metadata["step"] == 24 and metadata["zero_stage"] == 2 and metadata["world_size"] == 2
    assert metadata["extra"] == {"loop": "regression"} and metadata["deepspeed_config"]["train_micro_batch_size_per_gpu"] == 16
    assert json.loads((checkpoint_dir / METADATA_FILE).read_text()) == metadata
    shards = sorted(path.name for path in (checkpoint_dir / "global_step24").iterdir())
    assert "zero_pp_rank_0_mp_rank_00_optim_states.pt" in shards and "zero_pp_rank_1_mp_rank_00_optim_states.pt" in shards
    assert result.metrics["step"] == 24 and result.metrics["loss"] == pytest.approx(losses[-1])
    trained = torch.tensor(result.return_value["probe_predictions"])
    assert torch.allclose(consolidated_predictions(checkpoint_dir), trained, atol=1e-5)
    assert torch.allclose(torch.tensor(result.return_value["exported_predictions"]), trained, atol=1e-5)
    assert local_checkpoint_copies("zero2") == [], "Ray Train deletes each rank's local copy once it is uploaded"


def test_rerunning_a_finished_run_with_more_steps_resumes_where_it_stopped(zero2_run):
    storage, first, _ = zero2_run
    second = train(harness_settings(storage, "zero2", max_steps=28))
    assert second.return_value["resumed_from"] == 24 and len(second.return_value["losses"]) == 4
    assert second.metrics == {**second.metrics, "step": 28, "resumed_from": 24}
    assert checkpoint_dirs(storage / "zero2") == ["step_00000024", "step_00000028"]
    # It continued the first run's optimisation instead of starting over.
    assert max(second.return_value["losses"]) < 0.5 * first.return_value["losses"][0]


@pytest.fixture(scope="module")
def dataset_run(ray_local, tmp_path_factory):
    """A 12-step ZeRO-0 run on 2 workers fed by a 64-row Ray Data dataset, uploading its
    checkpoints synchronously."""
    rows = 64
    generator = np.random.default_rng(0)
    items = []
    for index in range(rows):
        features = generator.standard_normal(NUM_FEATURES).astype(np.float32)
        target = float(regression_targets(torch.from_numpy(features)[None])[0, 0])
        items.append({"id": index, "features": features, "target": target})
    dataset = ray.data.from_items(items)
    # Synchronous uploads here (the other runs upload in the background, the default).
    settings = harness_settings(tmp_path_factory.mktemp("dataset"), "dataset", zero_stage=0, max_steps=12, every_n_steps=6, upload="sync")
    return rows, train(settings, datasets={"train": dataset}, rows_per_worker=rows // 2)


@pytest.fixture(scope="module")
def crash_run(ray_local, tmp_path_factory):
    """A 12-step ZeRO-3 run on 2 workers (checkpoints every 4 steps) whose rank 1 dies at step 7,
    with one restart allowed; and its storage."""
    storage = tmp_path_factory.mktemp("crash")
    fault = FaultInjection(fail_at_step=7, fail_rank=1)
    settings = harness_settings(storage, "crash", zero_stage=3, max_steps=12, every_n_steps=4, keep_last=3, max_failures=1, fault=fault)
    return storage, train(settings)


@pytest.mark.parametrize("zero_stage", [0, 3])
def test_zero_stages_0_and_3_train_and_consolidate(request, zero_stage):
    # Each stage's run is one the module makes anyway: ZeRO-0 the Ray Data run, ZeRO-3 the crash run.
    result = request.getfixturevalue({0: "dataset_run", 3: "crash_run"}[zero_stage])[1]
    assert result.return_value["final_step"] == 12 and read_metadata(result.checkpoint.path)["zero_stage"] == zero_stage
    trained = torch.tensor(result.return_value["probe_predictions"])
    assert torch.allclose(consolidated_predictions(result.checkpoint), trained, atol=1e-5)


def test_a_worker_crash_restarts_the_group_from_the_latest_checkpoint(crash_run):
    storage, result = crash_run
    # The restarted group resumed at the checkpoint of step 4 and ran steps 5..12 (the crash hit step 7).
    assert result.return_value["resumed_from"] == 4 and len(result.return_value["losses"]) == 8
    assert (storage / "crash" / FAULT_MARKER_FILE).read_text().startswith("rank 1 exited at step 7")
    reported = {metrics["step"]: metrics["resumed_from"] for _, metrics in result.best_checkpoints}
    assert reported == {4: 0, 8: 4, 12: 4}
    assert local_checkpoint_copies("crash") == []


def test_a_crash_without_restarts_left_fails_with_a_clear_error(ray_local, tmp_path):
    from vf3d.training import TrainingRunFailed

    settings = harness_settings(tmp_path, "fatal", num_workers=1, max_steps=2, every_n_steps=1, fault=FaultInjection(fail_at_step=2))
    with pytest.raises(TrainingRunFailed, match="rerun with the same run.name"):
        train(settings)
    assert (tmp_path / "fatal" / FAULT_MARKER_FILE).is_file()


def test_ray_data_feeds_two_workers_on_two_cpus(dataset_run):
    rows, result = dataset_run
    # Each worker read a disjoint half: together they saw every row exactly once in the first epoch.
    assert result.return_value["first_epoch_rows_all_workers"] == rows
    assert result.return_value["first_epoch_id_sum_all_workers"] == sum(range(rows))
    assert result.return_value["final_step"] == 12


RUN_ACTOR_CLASSES = ("TrainController", "RayTrainWorker", "DatasetManager", "SplitCoordinator")
"""The actors a training run (`run_training`) starts: its controller, workers and dataset actors."""


def test_finished_runs_leave_none_of_their_actors_running(dataset_run):
    """Once `run_training` has returned (or raised), Ray ends the run's actors: none polls on in a
    driver that goes on to other work. (Ray Train's `fit` leaves a Ctrl-C handler holding its
    controller; `run_training` puts the previous handler back.) Run after the module's other runs,
    the last of them a failed one, this checks all of them; alone, the Ray Data run's."""

    def running() -> list[str]:
        actors = ray._private.state.actors().values()
        return sorted(
            actor["ActorClassName"] for actor in actors if actor["State"] != "DEAD" and actor["ActorClassName"] in RUN_ACTOR_CLASSES
        )

    wait_until_gone(running, timeout_s=60, what="actors of finished training runs")


def test_trainings_on_a_cluster_this_process_started_start_no_preemption_watcher(zero2_run, crash_run):
    """The session's cluster was started by this process (`start_local_ray`): one machine that no
    cloud drains, so no worker group on it, first start or restart, gets Ray Train's
    PreemptionWatcher (an actor, hence a process of its own). GCS keeps the dead actors' records."""
    from vf3d.training.runner import PREEMPTION_WATCHER_ENV

    classes = {actor["ActorClassName"] for actor in ray._private.state.actors().values()}
    assert {"TrainController", "RayTrainWorker"} <= classes and "PreemptionWatcher" not in classes, sorted(classes)
    assert PREEMPTION_WATCHER_ENV not in os.environ, "set only while a training runs"


def test_the_preemption_watcher_is_left_on_elsewhere_and_a_users_setting_wins(ray_local, monkeypatch):
    from vf3d import ray_runtime
    from vf3d.training.runner import PREEMPTION_WATCHER_ENV, _preemption_watcher_off_on_own_local_cluster

    monkeypatch.delenv(PREEMPTION_WATCHER_ENV, raising=False)
    with _preemption_watcher_off_on_own_local_cluster():
        assert os.environ[PREEMPTION_WATCHER_ENV] == "0"
    assert PREEMPTION_WATCHER_ENV not in os.environ
    monkeypatch.setenv(PREEMPTION_WATCHER_ENV, "1")
    with _preemption_watcher_off_on_own_local_cluster():
        assert os.environ[PREEMPTION_WATCHER_ENV] == "1"
    monkeypatch.delenv(PREEMPTION_WATCHER_ENV)
    # Connected to a cluster some other process started (a job on a user's cluster): Ray's default.
    monkeypatch.setattr(ray_runtime, "_local_cluster_address", "10.0.0.1:6379")
    assert not ray_runtime.on_own_local_cluster()
    with _preemption_watcher_off_on_own_local_cluster():
        assert PREEMPTION_WATCHER_ENV not in os.environ
