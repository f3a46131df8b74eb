"""Launch a `train_loop_per_worker` on a Ray Train worker group (driver side), and read its
`TrainingConfig` back inside the workers.

The driver passes the harness settings to the workers through the loop's config (under
`TRAINING_CONFIG_KEY`, as plain JSON-ready data), never through module globals: the workers are
separate processes, possibly on other nodes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from vf3d import storage
from vf3d.config import from_dict, to_dict
from vf3d.ray_runtime import on_own_local_cluster, verbose_ray_logs
from vf3d.training.config import TrainingConfig

if TYPE_CHECKING:
    import ray.data
    import ray.train

TRAINING_CONFIG_KEY = "training"
"""Key of the loop config under which `run_training` hands the `TrainingConfig` to the workers."""


class TrainingRunFailed(RuntimeError):
    """A training run failed for good (its worker-group restarts are used up, or an error is fatal)."""


def training_config_from(loop_config: dict[str, Any]) -> TrainingConfig:
    """The `TrainingConfig` that `run_training` placed in a worker's loop config."""
    if TRAINING_CONFIG_KEY not in loop_config:
        raise KeyError(f"the loop config has no {TRAINING_CONFIG_KEY!r} entry: launch the loop with vf3d.training.run_training")
    return from_dict(TrainingConfig, loop_config[TRAINING_CONFIG_KEY])


def _storage_uri(storage_path: str | None) -> str | None:
    # Ray Train workers run in their own working directories, so a relative local path would
    # point somewhere else in every process; URIs (s3://, gs://) pass through untouched.
    if storage_path is None or storage.is_uri(storage_path):
        return storage_path
    return os.path.abspath(os.path.expanduser(storage_path))


def _ray_storage(storage_uri: str | None) -> dict[str, Any]:
    """RunConfig's storage arguments. For an object-store URI: the filesystem vf3d.storage builds
    (endpoint, region and credentials from the standard variables, read in one place) and the
    `bucket/prefix` path inside it; Ray Train then uploads every rank's checkpoint files there
    itself and fetches them back on restore."""
    if storage_uri is None or not storage.is_uri(storage_uri):
        return {"storage_path": storage_uri}
    filesystem, path = storage.filesystem_for(storage_uri)
    return {"storage_path": path, "storage_filesystem": filesystem}


def _wants_gpu(use_gpu: bool | str) -> bool:
    import ray

    if use_gpu != "auto":
        return bool(use_gpu)
    if not ray.is_initialized():
        # Same rule as `TorchTrainer.fit`: RAY_ADDRESS if set, else a new local cluster.
        ray.init()
    return ray.cluster_resources().get("GPU", 0) > 0


OBJECT_STORE_SCHEMES = {"s3": "s3", "gcs": "gs"}
"""URI scheme of each pyarrow filesystem type `vf3d.storage` builds for an object store."""


def checkpoint_location(checkpoint: ray.train.Checkpoint) -> str:
    """A checkpoint's location as vf3d names locations: a local path, or an s3:// or gs:// URI.
    (Ray's `Checkpoint.path` is a path inside `Checkpoint.filesystem`, which on an object store is
    `bucket/key` with no scheme: neither a usable local path nor a URI.)"""
    scheme = OBJECT_STORE_SCHEMES.get(checkpoint.filesystem.type_name)
    return f"{scheme}://{checkpoint.path}" if scheme else str(checkpoint.path)


def latest_checkpoint(settings: TrainingConfig) -> tuple[str, dict[str, Any]] | None:
    """(path, metrics) of the latest checkpoint run `settings.run.name` committed under
    `run.storage_path`, read from Ray Train's record of the run (its checkpoint manager snapshot)
    without starting anything; None when the run has no checkpoint yet, no record, or keeps its
    checkpoints in Ray's default storage (no `run.storage_path`)."""
    import posixpath

    from ray.train import Result

    storage_uri = _storage_uri(settings.run.storage_path)
    if storage_uri is None:
        return None
    location = _ray_storage(storage_uri)
    run_path = posixpath.join(location["storage_path"], settings.run.name)
    # Ray logs at INFO that it found the run's snapshot, addressed to a user about to train.
    ray_train_logger = logging.getLogger("ray.train")
    level = ray_train_logger.level
    if not verbose_ray_logs():
        ray_train_logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():  # Ray 2.60 reads the snapshot with a deprecated pydantic call
            warnings.simplefilter("ignore", DeprecationWarning)
            result = Result.from_path(run_path, storage_filesystem=location.get("storage_filesystem"))
    except (RuntimeError, OSError, ValueError, KeyError):
        # No such run, or a record this Ray cannot read: the workers' own restore decides.
        return None
    finally:
        ray_train_logger.setLevel(level)
    if result.checkpoint is None:
        return None
    return checkpoint_location(result.checkpoint), dict(result.metrics or {})


def run_training(
    train_loop_per_worker: Callable[[dict[str, Any]], Any],
    loop_config: dict[str, Any],
    settings: TrainingConfig,
    datasets: dict[str, ray.data.Dataset] | None = None,
) -> ray.train.Result:
    """Run `train_loop_per_worker(config)` on `settings.scaling.num_workers` Ray Train workers.

    Each worker receives `loop_config` plus the harness settings under `TRAINING_CONFIG_KEY`
    (read them with `training_config_from`). `datasets` are split across the workers
    (`ray.train.get_dataset_shard(name)`). A crashed worker group restarts from the latest
    checkpoint up to `settings.run.max_failures` times; rerunning with the same `run.name` and
    `run.storage_path` resumes the run from its latest checkpoint. Returns Ray's `Result`
    (`checkpoint`: the latest one, `metrics`: those reported with it, `best_checkpoints`: the kept
    ones with their metrics, `return_value`: what rank 0's loop returned). Raises
    `TrainingRunFailed` when the run fails for good.
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer

    settings.validate()
    if TRAINING_CONFIG_KEY in loop_config:
        raise ValueError(f"loop_config must not define {TRAINING_CONFIG_KEY!r}: run_training fills it from `settings`")
    use_gpu = _wants_gpu(settings.scaling.use_gpu)
    resources = {"CPU": settings.scaling.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = settings.scaling.gpus_per_worker
    run = settings.run
    storage_uri = _storage_uri(run.storage_path)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={**loop_config, TRAINING_CONFIG_KEY: to_dict(settings)},
        scaling_config=ScalingConfig(num_workers=settings.scaling.num_workers, use_gpu=use_gpu, resources_per_worker=resources),
        # DeepSpeed joins the process group Ray creates: NCCL between GPUs, gloo on CPUs.
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(
            name=run.name,
            **_ray_storage(storage_uri),
            failure_config=FailureConfig(max_failures=run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=settings.checkpoint.keep_last),
            # Ray Train's INFO lines (each report's TrainingReport(...), restarts) repeat what the
            # loop prints itself; `vf3d --verbose` / VF3D_VERBOSE=1 brings them back.
            logging_config=LoggingConfig(log_level="INFO" if verbose_ray_logs() else "WARNING"),
        ),
        datasets=datasets,
    )
    try:
        with _preemption_watcher_off_on_own_local_cluster(), _sigint_handler_restored():
            return trainer.fit()
    except TrainingFailedError as error:
        refused = _checkpoint_error_in(error)
        if refused is not None:
            # A refused checkpoint (unsafe or damaged files) is the user's input, not a crash:
            # surface it as itself so the CLI prints its one line.
            raise refused from None
        where = f"{storage_uri}/{run.name}" if storage_uri else f"Ray's default storage (~/ray_results/{run.name})"
        raise TrainingRunFailed(
            f"training run {run.name!r} failed (run.max_failures={run.max_failures}): {error}\n"
            f"Its checkpoints are in {where}; rerun with the same run.name and run.storage_path to resume from the latest one."
        ) from error


@contextlib.contextmanager
def _sigint_handler_restored() -> Iterator[None]:
    """Within the body, `fit` may install its Ctrl-C handler; after it, the process's own is back.

    Ray Train 2.60's `fit` installs a SIGINT handler (Ctrl-C aborts the run) whose closure holds
    the run's controller actor, and leaves it installed when the run ends. As long as that
    handler holds the handle, Ray keeps the finished run's controller and the dataset actors it
    owns (DatasetManager, the streaming split's coordinator) alive and polling, until the next
    `fit` replaces the handler or the driver exits: in a long-lived driver (a notebook, a
    pipeline that trains then evaluates, a test session) one idle run's actors for good. Putting
    the previous handler back drops the last handle, and Ray ends those actors."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # only the main thread sets handlers
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        if previous is not None:  # None: a handler installed outside Python, which we cannot put back
            signal.signal(signal.SIGINT, previous)


PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
"""Ray Train's switch for the PreemptionWatcher it starts beside every worker group."""


@contextlib.contextmanager
def _preemption_watcher_off_on_own_local_cluster() -> Iterator[None]:
    """Within the body, no PreemptionWatcher on a local cluster this process started.

    Ray Train 2.60 starts one with every worker group (at the first start and at each restart):
    an actor, so a worker process of its own (about 2 CPU-seconds to start), which polls the GCS
    for nodes being drained, e.g. spot instances a cloud takes back. A private local cluster is
    this one machine, which nothing drains. `fit` hands the variable to Ray Train's controller
    (one of the RAY_TRAIN_* variables it propagates); a value the user set is left alone, and
    on any other cluster Ray's default (on) stays."""
    if PREEMPTION_WATCHER_ENV in os.environ or not on_own_local_cluster():
        yield
        return
    os.environ[PREEMPTION_WATCHER_ENV] = "0"
    try:
        yield
    finally:
        os.environ.pop(PREEMPTION_WATCHER_ENV, None)


def _checkpoint_error_in(error: BaseException):
    """The `CheckpointError` a worker raised, if that is why the worker group failed.

    Ray Train reports worker failures as {rank: exception}, each possibly wrapped (the user
    exception with its traceback under `_base_exc`, or chained as `__cause__`)."""
    from vf3d.training.checkpointing import CheckpointError

    for failure in (getattr(error, "worker_failures", None) or {}).values():
        seen = 0
        while failure is not None and seen < 8:
            if isinstance(failure, CheckpointError):
                return failure
            failure = getattr(failure, "_base_exc", None) or failure.__cause__
            seen += 1
    return None


def batches_forever(shard, batch_size: int):
    """Training batches (numpy) from a worker's dataset shard (`ray.train.get_dataset_shard`),
    epoch after epoch, dropping each epoch's last partial batch."""
    while True:
        produced = False
        for batch in shard.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=True):
            produced = True
            yield batch
        if not produced:
            raise RuntimeError("this worker's data shard holds no full batch: use fewer workers or a smaller run.batch_size")
