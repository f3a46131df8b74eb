"""Failure classes of the Ray Data stages (synthesize, render-assets) and how Ray retries them.

    input error            the row's own fault: a bad prompt, an undecodable image, a model that
                           refuses the input (ValueError & co.). Permanent: the row becomes an
                           `_errors` row with its reason, its batch-mates go on.
    infrastructure error   the machine's fault: CUDA/cuDNN/NCCL/ECC errors, torch.cuda
                           .OutOfMemoryError, OSError from storage. Not the row's outcome: the
                           stage raises `InfrastructureError`, Ray retries the batch
                           (`failures.max_batch_retries`), and an actor that fails
                           `failures.max_consecutive_failures` batches in a row exits so that Ray
                           restarts it (`failures.max_actor_restarts`) on a fresh CUDA context.

Retries are finite: a batch that still fails (or keeps killing its actor) is dropped by Ray Data
within the run's error budget (`failures.max_errored_blocks` blocks), its ids stay without an
output, and a rerun retries them. Every infrastructure failure a stage sees is appended to
`FAILURES_NAME` in the output directory (one JSON line each) for the run summary.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

from vf3d import storage

FAILURES_NAME = ".stage-failures.jsonl"
REMOTE_FAILURES_DIRNAME = ".stage-failures"
"""On an object store, where nothing can be appended to: one small JSON object per failure in this
folder of the output directory, instead of a line of `FAILURES_NAME`."""
"""File in the output directory with one JSON line per infrastructure failure of a stage:
{"time", "stage", "actor", "error", "consecutive", "actor_exit"}."""
_INFRASTRUCTURE_MESSAGE = re.compile(r"CUDA|cuDNN|CUDNN|cuBLAS|CUBLAS|NCCL|\bECC\b|device-side assert")
"""RuntimeError messages that name the GPU stack (case-sensitive: "cuda:0" in a device-mismatch
message is a program error, "CUDA error: ..." is the driver)."""


class InfrastructureError(RuntimeError):
    """A batch failed for a reason outside its rows (GPU, driver, interconnect, storage): Ray
    retries the batch instead of recording its rows as failed."""


def is_infrastructure_error(error: BaseException) -> bool:
    """Whether `error` is the machine's fault rather than the input's (see the module docstring)."""
    if isinstance(error, InfrastructureError):
        return True
    if isinstance(error, OSError):
        # PIL's "cannot identify image file" is an OSError about the bytes, not the storage.
        image_error = getattr(sys.modules.get("PIL.Image"), "UnidentifiedImageError", None)
        return not (image_error is not None and isinstance(error, image_error))
    torch = sys.modules.get("torch")
    if torch is not None:
        gpu_errors = tuple(
            kind
            for kind in (
                getattr(torch.cuda, "OutOfMemoryError", None),
                getattr(torch, "AcceleratorError", None),
                getattr(getattr(torch, "distributed", None), "DistBackendError", None),
            )
            if isinstance(kind, type)
        )
        if gpu_errors and isinstance(error, gpu_errors):
            return True
    return isinstance(error, RuntimeError) and bool(_INFRASTRUCTURE_MESSAGE.search(str(error)))


def actor_name() -> str:
    """The calling Ray actor's short id, or "pid<N>" outside Ray (tests, a bare loop)."""
    import ray

    in_ray = ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None
    # An actor id is 24 unique hex digits followed by the job id: keep the unique part.
    return ray.get_runtime_context().get_actor_id()[:12] if in_ray else f"pid{os.getpid()}"


def short_error(error: BaseException) -> str:
    """One line naming the exception, bounded (CUDA errors can run to pages)."""
    return " ".join(f"{type(error).__name__}: {error}".split())[:500]


class FailureTracker:
    """One actor's infrastructure failures: re-raised for Ray to retry, and after
    `max_consecutive` batches in a row, the actor's exit (Ray restarts it).

    Args:
        stage: the stage's name (recorded with each failure).
        out_dir: output directory holding `FAILURES_NAME`.
        max_consecutive: failed batches in a row after which the process exits.
        actor: the actor's short id (recorded).
    """

    def __init__(self, stage: str, out_dir: str | os.PathLike, max_consecutive: int, actor: str) -> None:
        self.stage, self.out_dir, self.max_consecutive, self.actor = stage, storage.local_or_uri(out_dir), max_consecutive, actor
        self.consecutive = 0

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """`function(*args)`; an infrastructure error goes to `failed`, anything else propagates."""
        try:
            result = function(*args)
        except Exception as error:
            if is_infrastructure_error(error):
                self.failed(error)
            raise
        self.consecutive = 0
        return result

    def failed(self, error: BaseException) -> NoReturn:
        """Record `error`; exit the process at the K-th failure in a row, else raise it as an
        `InfrastructureError` (the batch is retried on this actor)."""
        self.consecutive += 1
        exiting = self.consecutive >= self.max_consecutive
        record = {
            "time": time.time(),
            "stage": self.stage,
            "actor": self.actor,
            "error": short_error(error),
            "consecutive": self.consecutive,
            "actor_exit": exiting,
        }
        with contextlib.suppress(OSError):  # a full or failing disk must not hide the real error
            _record_failure(self.out_dir, record)
        if exiting:
            # A GPU that failed K batches in a row is likely sick (an ECC fault, a broken context):
            # leave instead of failing every batch faster than healthy actors work; Ray restarts
            # the actor (a fresh process and CUDA context) and retries the batch.
            print(
                f"[{self.stage}] actor {self.actor} exits after {self.consecutive} failed batches in a row: {record['error']}", flush=True
            )
            sys.stdout.flush()
            os._exit(1)
        raise InfrastructureError(f"{self.stage}: {record['error']}") from error


def _record_failure(out_dir: str | Path, record: dict[str, Any]) -> None:
    """Append one failure record: a line of `FAILURES_NAME` locally, an object of
    `REMOTE_FAILURES_DIRNAME` on an object store."""
    if storage.is_uri(out_dir):
        from vf3d.atomic import write_json_atomic

        name = f"{record['time']:.6f}-{record['stage']}-{os.urandom(4).hex()}.json"
        write_json_atomic(storage.join(out_dir, REMOTE_FAILURES_DIRNAME, name), record, indent=None)
        return
    with open(Path(out_dir) / FAILURES_NAME, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def maybe_fire_fault(out_dir: str | os.PathLike, stage: str, kind: str) -> None:
    """Raise the injected error `kind` ("cuda" or "oserror") once per output directory (tests and
    fire drills): a marker file created exclusively makes exactly one actor fire it."""
    if not storage.create_exclusive(storage.join(out_dir, f".fault-{stage}-{kind}.fired")):
        return
    print(f"[fault injection] {stage} raises an injected {kind} error", flush=True)
    if kind == "cuda":
        raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
    raise OSError(5, "Input/output error (injected)")


def remote_args(failures: Any) -> dict[str, Any]:
    """Ray actor options of a stage's pool: bounded restarts and batch retries (Ray Data's default
    is to restart and retry forever, so a batch that kills its actor would never be given up)."""
    return {"max_restarts": failures.max_actor_restarts, "max_task_retries": failures.max_batch_retries}


def map_on_pool(
    dataset: Any,
    stage_class: type,
    kwargs: dict[str, Any],
    pool: Any,
    failures: Any,
    batch_size: int | None = None,
    batch_format: str = "numpy",
) -> Any:
    """`dataset.map_batches(stage_class)` on the stage's own elastic actor pool: size, CPUs and
    GPUs from `pool` (an ActorPoolConfig or WriterPoolConfig), bounded restarts and batch retries
    from `failures` (`remote_args`; Ray 2.60's actor pool reads `max_restarts` / `max_task_retries`
    only from map_batches' **ray_remote_args, which it warns are deprecated until 2.64).
    `batch_size` defaults to the pool's."""
    import warnings

    from ray.util.annotations import RayDeprecationWarning

    # Ray 2.60 has no named parameter for these two actor options yet, only **ray_remote_args,
    # which it flags as deprecated on every call; the project pins ray 2.60.*, and the pin is the
    # place to revisit this (Ray 2.64 removes **ray_remote_args).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RayDeprecationWarning)
        return _map_batches_on_pool(dataset, stage_class, kwargs, pool, failures, batch_size, batch_format)


def _map_batches_on_pool(
    dataset: Any, stage_class: type, kwargs: dict[str, Any], pool: Any, failures: Any, batch_size: int | None, batch_format: str
) -> Any:
    import ray

    return dataset.map_batches(
        stage_class,
        fn_constructor_kwargs=kwargs,
        batch_size=batch_size if batch_size is not None else pool.batch_size,
        compute=ray.data.ActorPoolStrategy(
            min_size=pool.min_actors, max_size=pool.max_actors, initial_size=getattr(pool, "initial_actors", None) or pool.min_actors
        ),
        num_cpus=pool.num_cpus,
        num_gpus=getattr(pool, "num_gpus", 0),
        batch_format=batch_format,
        **remote_args(failures),
    )


@contextlib.contextmanager
def failure_policy(failures: Any) -> Iterator[None]:
    """Datasets created inside this block retry `InfrastructureError` (and only it) and tolerate
    `failures.max_errored_blocks` failed blocks. Each Dataset copies the current DataContext when
    it is created, so the process-wide context is restored afterwards."""
    from ray.data import DataContext

    context = DataContext.get_current()
    saved = (context.actor_task_retry_on_errors, context.max_errored_blocks)
    context.actor_task_retry_on_errors = [InfrastructureError]
    context.max_errored_blocks = failures.max_errored_blocks
    try:
        yield
    finally:
        context.actor_task_retry_on_errors, context.max_errored_blocks = saved


def failure_summary(out_dir: str | os.PathLike, since: float, pending: int, finished: int, max_errored_blocks: int) -> dict[str, Any]:
    """What this run's failures cost, for the run summary.

    Args:
        out_dir: the output directory (holding `FAILURES_NAME`).
        since: the run's start (time.time()); earlier records belong to earlier runs.
        pending: ids the run set out to process; finished: ids it wrote (any table).
        max_errored_blocks: the run's error budget in blocks.
    Returns:
        {"infrastructure_failures": batches that raised one, "by_stage": {stage: count},
         "actor_exits": actors that left after K failures in a row, "ids_dropped": ids of blocks
         Ray Data gave up on (a rerun retries them), "max_errored_blocks": the budget}.
    """
    lines: list[str] = []
    if storage.is_uri(out_dir):
        folder = storage.join(out_dir, REMOTE_FAILURES_DIRNAME)
        for name, is_file in storage.list_dir(folder):
            # Names start with the failure's time: older runs' records are skipped unread.
            with contextlib.suppress(ValueError, OSError):
                if is_file and name.endswith(".json") and float(name.split("-", 1)[0]) >= since:
                    lines.append(storage.read_text(storage.join(folder, name)))
    else:
        path = Path(out_dir) / FAILURES_NAME
        if path.is_file():
            lines = path.read_text().splitlines()
    records = []
    for line in lines:
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("time", 0) >= since:
                records.append(record)
    by_stage: dict[str, int] = {}
    for record in records:
        by_stage[record["stage"]] = by_stage.get(record["stage"], 0) + 1
    return {
        "infrastructure_failures": len(records),
        "by_stage": by_stage,
        "actor_exits": sum(bool(record.get("actor_exit")) for record in records),
        "ids_dropped": max(0, pending - finished),
        "max_errored_blocks": max_errored_blocks,
    }
