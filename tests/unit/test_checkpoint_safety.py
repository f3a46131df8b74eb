"""Training checkpoints load weights-only: a crafted pickle in the checkpoint store is refused by
`restore` and `consolidate` and never runs.

Real DeepSpeed engines (ZeRO 0, 2 and 3, fp32 on the CPU) in this process, on a one-rank gloo
process group: the same `initialize`, save and load code the Ray Train workers run, without
starting a Ray cluster.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from vf3d.training.checkpointing import (
    CheckpointError,
    consolidate,
    deepspeed_tag,
    load_weights_only,
    read_metadata,
    restore_from_directory,
    save_to_directory,
)
from vf3d.training.config import DeepSpeedConfig, OptimizerConfig, RunSettings, TrainingConfig
from vf3d.training.deepspeed_setup import initialize

SAVED_STEP = 3


@pytest.fixture(scope="module")
def process_group(tmp_path_factory):
    """A one-rank gloo group, the environment DeepSpeed expects from a launcher (Ray Train sets it)."""
    import torch.distributed

    if torch.distributed.is_initialized():
        pytest.skip("another test left a process group in this process")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}.items():
            patch.setenv(name, value)
        rendezvous = tmp_path_factory.mktemp("process_group") / "rendezvous"
        torch.distributed.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=0, world_size=1)
        try:
            yield
        finally:
            torch.distributed.destroy_process_group()


def build_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.LayerNorm(16), torch.nn.GELU(), torch.nn.Linear(16, 1))


def build_engine(zero_stage: int, storage: Path):
    settings = TrainingConfig(
        optimizer=OptimizerConfig(lr=1e-2, warmup_steps=2),
        deepspeed=DeepSpeedConfig(zero_stage=zero_stage, precision="fp32"),
        run=RunSettings(name="safety", storage_path=str(storage), batch_size=8, max_steps=10),
    ).validate()
    return initialize(build_model(), settings)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded inputs [8, 4] and targets [8, 1] of `step`."""
    features = torch.randn(8, 4, generator=torch.Generator().manual_seed(step))
    return features, features.sum(dim=1, keepdim=True)


def train_step(engine, step: int) -> None:
    features, targets = batch(step)
    loss = torch.nn.functional.mse_loss(engine(features), targets)
    engine.backward(loss)
    engine.step()


def parameters(engine) -> dict[str, torch.Tensor]:
    """The module's full state; ZeRO-3 holds only shards of it between steps, so gather them."""
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), enabled=engine.zero_optimization_stage() == 3):
        return {name: tensor.detach().clone() for name, tensor in engine.module.state_dict().items()}


@pytest.fixture(scope="module")
def saved_checkpoints(process_group, tmp_path_factory):
    """`saved(zero_stage)`: a checkpoint of step SAVED_STEP written by our save path (made once per
    stage), the weights it holds, and the weights one more training step from there gives (which
    depend on the optimizer state)."""
    made = {}

    def saved(zero_stage: int) -> tuple[Path, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        if zero_stage not in made:
            directory = tmp_path_factory.mktemp(f"zero{zero_stage}") / "step_00000003"
            engine = build_engine(zero_stage, directory.parent)
            for step in range(SAVED_STEP):
                train_step(engine, step)
            save_to_directory(engine, directory, SAVED_STEP, extra={"loop": "safety"})
            weights = parameters(engine)
            train_step(engine, SAVED_STEP)
            made[zero_stage] = directory, weights, parameters(engine)
        return made[zero_stage]

    return saved


@pytest.mark.heavy  # DeepSpeed engines
@pytest.mark.parametrize("zero_stage", [0, 2, 3], ids=["zero0", "zero2", "zero3"])
def test_our_checkpoints_restore_and_consolidate_weights_only(saved_checkpoints, tmp_path, zero_stage):
    directory, weights, next_weights = saved_checkpoints(zero_stage)
    assert read_metadata(directory)["zero_stage"] == zero_stage
    # Every file of the tag, optimizer shards included, is plain data to the weights-only loader.
    files = sorted((directory / deepspeed_tag(SAVED_STEP)).glob("*.pt"))
    assert len(files) == (1 if zero_stage == 0 else 2)  # ZeRO-3: the rank's parameter and optimizer shards
    for path in files:
        assert isinstance(load_weights_only(path), dict)
    engine = build_engine(zero_stage, tmp_path)
    assert restore_from_directory(engine, directory) == SAVED_STEP
    assert engine.global_steps == SAVED_STEP
    restored = parameters(engine)
    assert restored.keys() == weights.keys()
    assert all(torch.equal(restored[name], weights[name]) for name in weights)
    # The same next step as the engine that saved: Adam's moments and the schedule came back too.
    train_step(engine, SAVED_STEP)
    stepped = parameters(engine)
    assert all(torch.allclose(stepped[name], next_weights[name], rtol=0, atol=1e-6) for name in next_weights)
    consolidated = consolidate(directory)
    assert consolidated.keys() == weights.keys()
    assert all(torch.equal(consolidated[name], weights[name]) for name in weights)


@pytest.mark.heavy  # a DeepSpeed engine
def test_cpu_engines_reduce_through_gloo_without_compiling_the_shared_memory_op(saved_checkpoints):
    """DeepSpeed's CPU backend would compile a C++ shared-memory all-reduce (minutes) on first use;
    `deepspeed.cpu_shared_memory_comm` is off by default, so the engine's backend holds no such op."""
    import deepspeed.comm.comm

    saved_checkpoints(0)
    assert deepspeed.comm.comm.cdb is not None
    assert deepspeed.comm.comm.cdb.shm_comm_op is None


class Payload:
    """What an attacker plants: unpickling it runs code (here: it creates `marker`)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"import pathlib; pathlib.Path({str(self.marker)!r}).touch()",)


def plant(checkpoint: Path, file_name: str, marker: Path) -> Path:
    """Replace `file_name` of the checkpoint's tag with the same state plus a code-running object."""
    path = checkpoint / deepspeed_tag(SAVED_STEP) / file_name
    state = load_weights_only(path)
    state["payload"] = Payload(marker)
    torch.save(state, path)
    return path


@pytest.mark.heavy  # DeepSpeed engines
@pytest.mark.parametrize(
    ("zero_stage", "file_name"),
    [
        (0, "mp_rank_00_model_states.pt"),
        (2, "mp_rank_00_model_states.pt"),
        (2, "zero_pp_rank_0_mp_rank_00_optim_states.pt"),
        (3, "zero_pp_rank_0_mp_rank_00_model_states.pt"),
    ],
    ids=["zero0-model-states", "zero2-model-states", "zero2-optimizer-shard", "zero3-parameter-shard"],
)
def test_a_planted_pickle_is_refused_by_restore_and_consolidate_and_never_runs(saved_checkpoints, tmp_path, zero_stage, file_name):
    checkpoint = tmp_path / "step_00000003"
    shutil.copytree(saved_checkpoints(zero_stage)[0], checkpoint)
    marker = tmp_path / "payload-ran"
    planted = plant(checkpoint, file_name, marker)
    # The payload is live: plain unpickling runs it.
    pickle.loads(pickle.dumps(Payload(tmp_path / "control")))
    assert (tmp_path / "control").exists()

    engine = build_engine(zero_stage, tmp_path)
    with pytest.raises(CheckpointError) as refused:
        restore_from_directory(engine, checkpoint)
    assert str(planted) in str(refused.value) and "pickles exec," in str(refused.value)
    assert "\n" not in str(refused.value)
    assert not marker.exists()

    with pytest.raises(CheckpointError) as refused:
        consolidate(checkpoint)
    assert str(planted) in str(refused.value) and "pickles exec," in str(refused.value)
    assert "\n" not in str(refused.value)
    assert not marker.exists()


def test_the_scope_makes_even_weights_only_false_loads_safe_and_then_steps_aside(tmp_path, monkeypatch):
    from vf3d.training.checkpointing import weights_only_loads

    marker = tmp_path / "payload-ran"
    path = tmp_path / "planted.pt"
    torch.save({"weight": torch.ones(2), "payload": Payload(marker)}, path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # an operator's setting: set aside, then restored
    with weights_only_loads():
        # DeepSpeed's zero_to_fp32 asks for weights_only=False like this; the scope overrides it.
        with pytest.raises(pickle.UnpicklingError, match="exec"):
            torch.load(path, weights_only=False)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match=r"planted\.pt: refusing to load this checkpoint file: it pickles exec,"):
        load_weights_only(path)
    assert not marker.exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ and os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(
        CheckpointError, match=r"planted\.pt: refusing to load this checkpoint file: weights-only unpickling failed \(Unsupported operand"
    ):
        load_weights_only(path)


def test_a_refused_checkpoint_in_a_worker_reaches_the_driver_as_itself():
    """Ray Train wraps what a worker raised; run_training unwraps a CheckpointError so the CLI
    prints its one line (exit 2) instead of a training-failure traceback."""
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2.api.exceptions import WorkerGroupError

    from vf3d.training.checkpointing import CheckpointError
    from vf3d.training.runner import _checkpoint_error_in

    refused = CheckpointError("step_00000003/global_step3/mp_rank_00_model_states.pt: refusing to load this checkpoint file")
    failure = WorkerGroupError(
        "worker group failed", {0: UserExceptionWithTraceback(refused, "Traceback ..."), 1: RuntimeError("peer gone")}
    )
    assert _checkpoint_error_in(failure) is refused
    assert _checkpoint_error_in(WorkerGroupError("worker group failed", {0: RuntimeError("CUDA error")})) is None
