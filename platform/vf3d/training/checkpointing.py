"""DeepSpeed checkpoints as self-describing Ray Train checkpoints: save, resume, consolidate.

Every rank saves its own DeepSpeed files (ZeRO shards its optimizer state, and with stage 3 its
parameters) into a private local directory and reports it; Ray Train (V2) agrees on one
checkpoint directory name across ranks (rank 0's) and uploads every rank's files into it, by
default in the background while training goes on (`checkpoint.upload`), deleting the local copy
once uploaded. A checkpoint in the run's storage therefore looks like:

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
into one full fp32 state dict for export, without DeepSpeed or a process group. When the run's
storage is an object store (`run.storage_path` s3://, gs://), each rank downloads only the files
it loads: the shared ones and its own `zero_pp_rank_<r>_` shards, not every rank's (DeepSpeed,
with `elastic_checkpoint` off, reads only its own rank's shard files).

Checkpoints live in shared storage that every worker resumes from, and a `.pt` file is a pickle: a
crafted one would run its payload on each worker that loads it. Both `restore` and `consolidate`
therefore read every file weights-only (tensors, plain containers and the three plain-data
DeepSpeed types of `_allowed_deepspeed_globals`), and refuse anything else with a `CheckpointError`
naming the file and the global it wanted. The checkpoint's own `zero_to_fp32.py` is never run.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pickle
import re
import tempfile
import threading
from collections.abc import Iterator
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


LOCAL_CHECKPOINT_PREFIX = "vf3d-checkpoint-"
"""Start of the name of a rank's local copy of a checkpoint (in the temporary directory, until
Ray Train has uploaded it): vf3d-checkpoint-<run name>-step<step>-rank<rank>-<random>."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or incompatible with the run trying to load it."""


def checkpoint_dir_name(step: int) -> str:
    """Name of the checkpoint directory of `step` in the run's storage (sorts by step)."""
    return f"step_{step:08d}"


def deepspeed_tag(step: int) -> str:
    """DeepSpeed's tag (sub-directory) for `step`, in DeepSpeed's own naming."""
    return f"global_step{step}"


def save(engine: DeepSpeedEngine, step: int, metrics: dict[str, Any], extra: dict[str, Any] | None = None, upload: str = "async") -> None:
    """Checkpoint `engine` after `step` optimizer steps and report it with `metrics` to Ray Train.

    Every rank must call this at the same step: DeepSpeed's save and `ray.train.report` are both
    collective. `extra` (JSON-serialisable: the loop's config, its epoch, data position) is stored
    in `vf3d_checkpoint.json` next to what the harness records itself.

    Each rank writes its files into a fresh local directory, which Ray Train uploads into the run's
    storage and then deletes. `upload` ("async" or "sync", `checkpoint.upload`):
    - "async" returns as soon as the files are written: the upload runs on Ray Train's background
      thread while training goes on. The save first waits until the previous checkpoint is
      committed, so a rank never holds more than one checkpoint waiting for upload (local disk)
      and a slow store slows training down rather than piling up copies.
    - "sync" returns once the checkpoint is committed.
    A checkpoint counts once it is committed: the controller has every rank's upload and has
    recorded it in the run's storage, which restarts and reruns resume from. `committed_checkpoint`
    waits for that (the run's end, before exporting).
    """
    import shutil

    import ray.train

    if upload not in ("async", "sync"):
        raise ValueError(f"checkpoint upload must be 'async' or 'sync', not {upload!r}")
    context = ray.train.get_context()
    rank = context.get_world_rank()
    if upload == "async":
        committed_checkpoint()
    directory = tempfile.mkdtemp(prefix=f"{LOCAL_CHECKPOINT_PREFIX}{context.get_experiment_name()}-step{step}-rank{rank}-")
    try:
        save_to_directory(engine, directory, step, extra, write_metadata_file=rank == 0)
        ray.train.report(
            {**metrics, "step": step},
            checkpoint=ray.train.Checkpoint.from_directory(directory),
            checkpoint_dir_name=checkpoint_dir_name(step),
            checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC if upload == "async" else ray.train.CheckpointUploadMode.SYNC,
            delete_local_checkpoint_after_upload=True,
        )
    except BaseException:
        # Not handed to Ray Train (or its synchronous upload failed): nobody else deletes it.
        shutil.rmtree(directory, ignore_errors=True)
        raise
    if upload == "sync":
        committed_checkpoint()


def committed_checkpoint() -> ray.train.Checkpoint | None:
    """Wait until every checkpoint this worker has reported is committed; → the latest one, as
    persisted in the run's storage (None when the run has none yet).

    A report only queues a checkpoint: the rank's upload (in the background under async uploads)
    hands it to the controller, which registers it on its next poll of every worker
    (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S) and records it in the run's storage. Until then a worker
    that dies would take the checkpoint down with it. Not collective: any rank may call it.
    """
    import ray.train

    ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
    # This worker's latest checkpoint is set to the persisted copy before its report reaches the
    # controller, so once the controller has committed every report it is the newest checkpoint.
    return ray.train.get_checkpoint()


def save_to_directory(
    engine: DeepSpeedEngine, directory: str | os.PathLike, step: int, extra: dict[str, Any] | None = None, write_metadata_file: bool = True
) -> None:
    """This rank's part of the checkpoint of `step` in a local `directory` (what `save` reports).

    Collective like DeepSpeed's save; `write_metadata_file` on exactly one rank (rank 0).
    """
    engine.save_checkpoint(str(directory), tag=deepspeed_tag(step))
    if write_metadata_file:
        write_metadata(directory, engine, step, extra)


def write_metadata(checkpoint_dir: str | os.PathLike, engine: DeepSpeedEngine, step: int, extra: dict[str, Any] | None = None) -> None:
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


def restore(engine: DeepSpeedEngine) -> int:
    """Load the run's latest checkpoint into `engine` on every rank; returns the step to resume at.

    Returns 0 on a fresh run. The checkpoint comes from `ray.train.get_checkpoint()`: the latest
    one after a worker-group restart, or the latest of a previous run with the same name and
    storage path. Every rank must call this (DeepSpeed's load is collective).
    """
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    import pyarrow.fs as pafs

    if isinstance(checkpoint.filesystem, pafs.LocalFileSystem):
        with checkpoint.as_directory() as directory:
            return restore_from_directory(engine, directory, label=checkpoint.path)
    rank = ray.train.get_context().get_world_rank()
    with tempfile.TemporaryDirectory(prefix=f"vf3d-restore-rank{rank}-") as directory:
        fetch_rank_files(checkpoint.filesystem, checkpoint.path, directory, rank)
        return restore_from_directory(engine, directory, label=checkpoint.path)


_RANK_SHARD = re.compile(r"zero_pp_rank_(\d+)_")


def fetch_rank_files(filesystem, root: str, directory: str | os.PathLike, rank: int) -> list[str]:
    """Download the files of the checkpoint at `root` (on `filesystem`, a pyarrow filesystem) that
    rank `rank` loads into the local `directory`: every file except other ranks' ZeRO shards
    (`zero_pp_rank_<r>_...` with r ≠ rank). Returns the relative paths fetched, sorted."""
    import shutil

    import pyarrow.fs as pafs

    root = root.rstrip("/")
    fetched = []
    for info in filesystem.get_file_info(pafs.FileSelector(root, recursive=True)):
        if info.type != pafs.FileType.File:
            continue
        relative = info.path[len(root) + 1 :]
        shard = _RANK_SHARD.search(Path(relative).name)
        if shard is not None and int(shard.group(1)) != rank:
            continue
        target = Path(directory, relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        with filesystem.open_input_stream(info.path) as source, open(target, "wb") as sink:
            shutil.copyfileobj(source, sink, 8 << 20)
        fetched.append(relative)
    return sorted(fetched)


def restore_from_directory(engine: DeepSpeedEngine, directory: str | os.PathLike, label: str | None = None) -> int:
    """Load the checkpoint in local `directory` into `engine` (collective); returns its step.

    Every file DeepSpeed reads is loaded weights-only (see the module docstring); `label` names
    the checkpoint in errors (default: `directory`).
    """
    label = label or str(directory)
    metadata = read_metadata(directory)
    if metadata["zero_stage"] != engine.zero_optimization_stage():
        raise CheckpointError(
            f"checkpoint {label} was written with ZeRO stage {metadata['zero_stage']}, this run uses stage {engine.zero_optimization_stage()}"
        )
    if metadata["zero_stage"] > 0 and metadata["world_size"] != engine.world_size:
        # ZeRO shards are per rank; resharding them is not supported, so say what to do instead.
        raise CheckpointError(
            f"checkpoint {label} holds ZeRO shards of {metadata['world_size']} ranks, this run has {engine.world_size}; "
            "resume with the same number of workers, or `consolidate` it and start a new run from the weights"
        )
    # DeepSpeed reads the model states, the ZeRO optimizer shards, the scheduler and the client
    # state through its checkpoint engine, whose torch.load asks for weights_only=False: route
    # those reads through ours (which names a refused file), and force every other torch.load of
    # the restore weights-only too, should some DeepSpeed path bypass its checkpoint engine.
    deepspeed_engine = engine.checkpoint_engine
    engine.checkpoint_engine = _WeightsOnlyCheckpointEngine(deepspeed_engine)
    try:
        with weights_only_loads():
            load_path, _ = engine.load_checkpoint(str(directory), tag=metadata["tag"])
    except pickle.UnpicklingError as error:
        raise CheckpointError(_refusal(Path(directory, metadata["tag"]), error)) from error
    finally:
        engine.checkpoint_engine = deepspeed_engine
    if load_path is None:
        raise CheckpointError(f"DeepSpeed found no checkpoint {metadata['tag']!r} in {label}")
    return int(metadata["step"])


@contextlib.contextmanager
def _output_silenced(module):
    """`print` and `tqdm` inside `module` show nothing while the body runs (module globals shadow
    them). DeepSpeed's zero_to_fp32 prints a line per step of its merge and draws a progress bar
    per file group, and in a Ray Train worker print goes to the logger, so redirecting stdout
    would not quiet it."""
    original_tqdm = module.tqdm
    module.print = lambda *args, **kwargs: None
    module.tqdm = functools.partial(original_tqdm, disable=True)
    try:
        yield
    finally:
        del module.print
        module.tqdm = original_tqdm


def consolidate(checkpoint: str | os.PathLike | ray.train.Checkpoint) -> dict[str, torch.Tensor]:
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
    from deepspeed.utils import zero_to_fp32

    metadata = read_metadata(checkpoint)
    tag_dir = Path(checkpoint, metadata["tag"])
    if not tag_dir.is_dir():
        raise CheckpointError(f"{checkpoint}: DeepSpeed directory {metadata['tag']!r} is missing")
    if any(tag_dir.glob("*zero_pp_rank_*_optim_states.pt")):
        # The installed DeepSpeed's merge, not the checkpoint's copy of zero_to_fp32.py (that
        # would run whatever the checkpoint's author wrote). Its own torch.load asks for
        # weights_only=False, which the scope overrides.
        try:
            with weights_only_loads(), _output_silenced(zero_to_fp32):
                state_dict = zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag=metadata["tag"])
        except pickle.UnpicklingError as error:
            # Say which file it was (DeepSpeed's error does not): reread them, on this path only.
            for path in sorted(tag_dir.glob("*.pt")):
                load_weights_only(path)
            raise CheckpointError(_refusal(tag_dir, error)) from error
    else:
        state_dict = load_weights_only(tag_dir / "mp_rank_00_model_states.pt")["module"]
    return {name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in state_dict.items()}


def _allowed_deepspeed_globals() -> list[type]:
    """The non-builtin types DeepSpeed pickles into the checkpoints we write (ZeRO 0/2/3, fp32 or
    bf16; fp16 loss scaling, which would add DynamicLossScaler, is not a precision we offer)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [
        # ZeRO 2/3 optimizer shards: the static loss scale (its only state is a float) that
        # DeepSpeed puts back on its optimizer.
        LossScaler,
        # ZeRO 2/3 optimizer shards: the stage, an int enum (rebuilt by value lookup, no code).
        ZeroStageEnum,
        # ZeRO 2 optimizer shards: where each parameter lies in the flat partition, a dataclass of
        # two ints (rebuilt by setting its fields).
        fragment_address,
    ]


_FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
_FORCE_NO_WEIGHTS_ONLY = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
_scope_lock = threading.RLock()
_scope_depth = 0


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Within it, every torch.load of this process is weights-only, even one that asks for
    weights_only=False (DeepSpeed's loaders do), with DeepSpeed's plain types allowed.

    torch reads TORCH_FORCE_WEIGHTS_ONLY_LOAD on every call, so setting it is the one switch that
    also reaches loaders we do not call ourselves. It is process-wide: other threads' loads become
    weights-only too while a checkpoint loads (stricter, never looser), and the lock keeps two
    threads from restoring the variable out of order.
    """
    global _scope_depth
    import torch

    with _scope_lock:
        saved = {name: os.environ.pop(name, None) for name in (_FORCE_WEIGHTS_ONLY, _FORCE_NO_WEIGHTS_ONLY)}
        os.environ[_FORCE_WEIGHTS_ONLY] = "1"
        # torch's safe_globals removes its globals on exit even if an enclosing scope added them.
        allowed = torch.serialization.safe_globals(_allowed_deepspeed_globals()) if _scope_depth == 0 else contextlib.nullcontext()
        _scope_depth += 1
        try:
            with allowed:
                yield
        finally:
            _scope_depth -= 1
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def load_weights_only(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """`torch.load` of one checkpoint file that can rebuild only tensors, plain containers and
    DeepSpeed's plain types; anything else raises `CheckpointError` naming the file and global."""
    import torch

    with weights_only_loads():
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as error:
            raise CheckpointError(_refusal(path, error)) from error
        except (EOFError, RuntimeError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CheckpointError(f"{path}: not a readable checkpoint file ({first_line})") from error


class _WeightsOnlyCheckpointEngine:
    """DeepSpeed's checkpoint engine with `load` replaced by `load_weights_only`; everything else
    (saving, commit, the engine's flags) goes to the wrapped engine."""

    def __init__(self, wrapped: Any) -> None:
        self._wrapped = wrapped

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)

    def load(self, path: str, map_location: Any = None) -> Any:
        return load_weights_only(path, map_location)


def _refusal(path: str | os.PathLike, error: pickle.UnpicklingError) -> str:
    """One line for a file that weights-only unpickling refused, naming the global it wanted."""
    message = str(error)
    found = re.search(r"GLOBAL (\S+) (?:was not an allowed global|whose module \S+ is blocked)", message)
    if found:
        what = f"it pickles {found.group(1)}, which is not tensor data and could run code when loaded"
    else:
        detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", message)
        what = (
            f"weights-only unpickling failed ({detail.group(1).strip() if detail else 'it holds more than tensors and plain containers'})"
        )
    return f"{path}: refusing to load this checkpoint file: {what}"
