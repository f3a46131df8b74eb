"""DeepSpeed checkpoints as self-describing Ray Train checkpoints: save, resume, consolidate.

Every rank saves its own DeepSpeed files (ZeRO shards its optimizer state, and with stage 3 its
parameters) into a private temporary directory and reports it; Ray Train (V2) agrees on one
checkpoint directory name across ranks (rank 0's) and uploads every rank's files into it. A
checkpoint in the run's storage therefore looks like:

    <storage_path>/<run name>/step_00000040/
        vf3d_checkpoint.json                      what this is (written by rank 0, see `save`)
        latest                                    DeepSpeed's pointer to the tag below
        zero_to_fp32.py                           DeepSpeed's offline consolidation script
        global_step40/
            mp_rank_00_model_states.pt            module (all of it unless ZeRO-3), scheduler,
                                                  and with ZeRO 0 the optimizer state too
            zero_pp_rank_<r>_mp_rank_00_optim_states.pt   ZeRO 2/3: rank r's optimizer shard
            zero_pp_rank_<r>_mp_rank_00_model_states.pt   ZeRO 3: rank r's parameter shard

`restore` loads it back on every rank (each rank reading its own shard); `consolidate` turns it
into one full fp32 state dict for export, without DeepSpeed or a process group.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ray.train
    import torch
    from deepspeed import DeepSpeedEngine

METADATA_FILE = "vf3d_checkpoint.json"
"""The file that makes a checkpoint directory describe itself."""
CHECKPOINT_FORMAT = "vf3d.deepspeed_checkpoint"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or incompatible with the run trying to load it."""


def checkpoint_dir_name(step: int) -> str:
    """Name of the checkpoint directory of `step` in the run's storage (sorts by step)."""
    return f"step_{step:08d}"


def deepspeed_tag(step: int) -> str:
    """DeepSpeed's tag (sub-directory) for `step`, in DeepSpeed's own naming."""
    return f"global_step{step}"


def save(engine: "DeepSpeedEngine", step: int, metrics: dict[str, Any], extra: dict[str, Any] | None = None) -> "ray.train.Checkpoint":
    """Checkpoint `engine` after `step` optimizer steps and report it with `metrics` to Ray Train.

    Every rank must call this at the same step: DeepSpeed's save and `ray.train.report` are both
    collective. `extra` (JSON-serialisable: the loop's config, its epoch, data position) is stored
    in `vf3d_checkpoint.json` next to what the harness records itself. Returns the checkpoint as
    persisted in the run's storage, once Ray Train has committed it: from then on a crash or a
    rerun resumes from it (this waits for one controller poll, RAY_TRAIN_HEALTH_CHECK_INTERVAL_S).
    """
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    with tempfile.TemporaryDirectory(prefix=f"vf3d-checkpoint-rank{rank}-") as directory:
        engine.save_checkpoint(directory, tag=deepspeed_tag(step))
        if rank == 0:
            write_metadata(directory, engine, step, extra)
        ray.train.report(
            {**metrics, "step": step},
            checkpoint=ray.train.Checkpoint.from_directory(directory),
            checkpoint_dir_name=checkpoint_dir_name(step),
        )
    # A report only queues the checkpoint: the controller registers it (and records it in the
    # run's storage, which is what restarts and reruns resume from) on its next poll of every
    # worker. A worker that died before that poll would take the checkpoint down with it, so wait.
    ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
    # After a synchronous report the worker's latest checkpoint is the persisted copy, which
    # outlives the temporary directory.
    return ray.train.get_checkpoint()


def write_metadata(checkpoint_dir: str | os.PathLike, engine: "DeepSpeedEngine", step: int, extra: dict[str, Any] | None = None) -> None:
    """Write `vf3d_checkpoint.json` for the DeepSpeed checkpoint of `step` saved in `checkpoint_dir`."""
    import deepspeed

    metadata = {
        "format": CHECKPOINT_FORMAT,
        "format_version": FORMAT_VERSION,
        "step": step,
        "tag": deepspeed_tag(step),
        "zero_stage": engine.zero_optimization_stage(),
        "world_size": engine.world_size,
        "precision": "bf16" if engine.bfloat16_enabled() else "fp32",
        "deepspeed_version": deepspeed.__version__,
        "deepspeed_config": engine.config,
        "extra": extra or {},
    }
    Path(checkpoint_dir, METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str) + "\n")


def read_metadata(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
    """The contents of a checkpoint directory's `vf3d_checkpoint.json`."""
    path = Path(checkpoint_dir, METADATA_FILE)
    if not path.is_file():
        raise CheckpointError(f"{checkpoint_dir} is not a vf3d checkpoint: {METADATA_FILE} is missing")
    metadata = json.loads(path.read_text())
    if metadata.get("format") != CHECKPOINT_FORMAT or metadata.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint format {metadata.get('format')!r} v{metadata.get('format_version')}")
    return metadata


def restore(engine: "DeepSpeedEngine") -> int:
    """Load the run's latest checkpoint into `engine` on every rank; returns the step to resume at.

    Returns 0 on a fresh run. The checkpoint comes from `ray.train.get_checkpoint()`: the latest
    one after a worker-group restart, or the latest of a previous run with the same name and
    storage path. Every rank must call this (DeepSpeed's load is collective).
    """
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as directory:
        metadata = read_metadata(directory)
        if metadata["zero_stage"] != engine.zero_optimization_stage():
            raise CheckpointError(f"checkpoint {checkpoint.path} was written with ZeRO stage {metadata['zero_stage']}, this run uses stage {engine.zero_optimization_stage()}")
        if metadata["zero_stage"] > 0 and metadata["world_size"] != engine.world_size:
            # ZeRO shards are per rank; resharding them is not supported, so say what to do instead.
            raise CheckpointError(
                f"checkpoint {checkpoint.path} holds ZeRO shards of {metadata['world_size']} ranks, this run has {engine.world_size}; "
                "resume with the same number of workers, or `consolidate` it and start a new run from the weights"
            )
        load_path, _ = engine.load_checkpoint(directory, tag=metadata["tag"])
        if load_path is None:
            raise CheckpointError(f"DeepSpeed found no checkpoint {metadata['tag']!r} in {checkpoint.path}")
    return int(metadata["step"])


def consolidate(checkpoint: "str | os.PathLike | ray.train.Checkpoint") -> dict[str, "torch.Tensor"]:
    """One full fp32 state dict (CPU tensors, the module's own keys) from a checkpoint of any stage.

    ZeRO 2/3 checkpoints keep the fp32 master weights only in the per-rank optimizer shards, which
    DeepSpeed's zero_to_fp32 utilities merge. ZeRO 0 checkpoints hold the whole module in one file:
    its fp32 weights, or under bf16 the bf16 weights the model ran with, upcast (DeepSpeed keeps the
    fp32 master copy of ZeRO 0 only as flat per-group buffers). Needs no process group, so rank 0 or
    a driver can export with it.
    """
    # A ray.train.Checkpoint (which refuses to act as an os.PathLike) is fetched to a local directory.
    if hasattr(checkpoint, "as_directory"):
        with checkpoint.as_directory() as directory:
            return consolidate(directory)
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    metadata = read_metadata(checkpoint)
    tag_dir = Path(checkpoint, metadata["tag"])
    if not tag_dir.is_dir():
        raise CheckpointError(f"{checkpoint}: DeepSpeed directory {metadata['tag']!r} is missing")
    if any(tag_dir.glob("*zero_pp_rank_*_optim_states.pt")):
        state_dict = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag=metadata["tag"])
    else:
        # Written by our own save; it pickles DeepSpeed objects, which weights_only refuses.
        model_states = torch.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
        state_dict = model_states["module"]
    return {name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in state_dict.items()}
