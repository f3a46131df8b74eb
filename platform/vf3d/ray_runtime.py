"""Connecting a stage to Ray: the cluster at --address / RAY_ADDRESS, else a private local one."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

MIN_LOCAL_CPUS = 4
"""Logical CPUs a private local cluster advertises at least. Ray Train workers fed by Ray Data
deadlock when the workers' CPU reservations leave no whole CPU for the read and map tasks (seen on
2 cores); over-advertising on one machine only lets the OS share the cores (docs/runtime.md#ray)."""


VERBOSE_ENV = "VF3D_VERBOSE"
"""Set to 1 (or pass `vf3d --verbose`) to see Ray's own INFO logs: Ray Data's progress log lines,
Ray Train's controller reports, Serve's deployment messages, Ray's start-up notes."""

QUIET_WORKER_LOGGERS = {
    "ray.serve": logging.WARNING,
    # Ray 2.60's Train V2 placement-group cleaner asks the state API (which needs the dashboard,
    # off on our local clusters) once a second whether the controller lives, and warns each time
    # it cannot: a line per second of every training. It only matters if the controller dies.
    "ray.train.v2._internal.execution.controller.placement_group_cleaner": logging.ERROR,
}
"""Loggers each worker process of a quiet local cluster turns down (`quiet_worker_logging`)."""

QUIET_WORKER_WARNINGS = (
    # Ray Train's own DatasetManager still sets the option Ray Data deprecated; nothing of ours does.
    r"`ExecutionOptions\.exclude_resources` is deprecated",
    # Every training rank would repeat what the driver already printed before the run started.
    r"the LPIPS backbone \(\w+\) is random",
)
"""Python warnings (message regexes) each worker process of a quiet local cluster ignores."""

QUIET_FORWARDED_LINES = (
    # Ray warns about its own internal actors (Ray Data's map workers, Ray Train's preemption
    # watcher); nothing a user can change (ray-project/ray#53727).
    "has constructor arguments in the object store and max_restarts > 0",
    # The raylet notices more workers starting at once than the machine has cores: expected when
    # a local cluster advertises MIN_LOCAL_CPUS and actors share fractional CPUs.
    "PYTHON worker processes have been started on node",
    # serve.shutdown() kills the controller while its own graceful-shutdown task is queued.
    "Task ServeController.graceful_shutdown failed",
    # gRPC's INFO note when a replica forks (ffmpeg for the turntable video).
    "skipping fork() handlers",
)
"""Substrings of worker output and raylet notices a quiet local cluster does not print to the
terminal; they read as errors but are Ray's bookkeeping. Still in the log files."""

QUIET_WORKER_ENV = {
    # transformers' and huggingface_hub's progress bars (each rank's "Writing model shards" when a
    # checkpoint's text encoder is saved).
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}
"""Environment of every worker process of a quiet local cluster (beside Ray Data's logging file)."""

RAY_DATA_LOGGING_CONFIG_ENV = "RAY_DATA_LOGGING_CONFIG"
"""Ray Data reads its logging config (YAML) from the file this variable names, when imported."""

TRAIN_REPORT_LOGGER_MODULE = "train/v2/_internal/execution/context.py"
"""Ray Train logs each worker's `TrainingReport(...)` at INFO on a logger named after this file's
path (`logging.getLogger(__file__)`), outside the "ray.train" hierarchy its LoggingConfig sets."""


def verbose_ray_logs() -> bool:
    """Whether Ray's own INFO-level output is wanted (VF3D_VERBOSE=1 / `vf3d --verbose`)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0", "false", "False")


def quiet_worker_logging() -> None:
    """Ray `worker_process_setup_hook` of quiet local clusters: runs once in every worker process
    (tasks, actors, Ray Train's controller and its helpers) before any of its work."""
    import warnings

    import ray

    for name, level in QUIET_WORKER_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger(os.path.join(os.path.dirname(ray.__file__), TRAIN_REPORT_LOGGER_MODULE)).setLevel(logging.WARNING)
    for message in QUIET_WORKER_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


def _drop_quiet_lines(print_to_stdstream):
    """Ray's driver-side printer of worker output and raylet notices (`ray._private.worker.
    print_to_stdstream`), minus the lines in QUIET_FORWARDED_LINES."""

    def print_kept_lines(data, *args, **kwargs):
        lines = [line for line in data.get("lines", []) if not any(noise in line for noise in QUIET_FORWARDED_LINES)]
        if lines:
            print_to_stdstream({**data, "lines": lines}, *args, **kwargs)

    return print_kept_lines


@contextlib.contextmanager
def _quiet_driver() -> Iterator[None]:
    """While a quiet local cluster is connected: Ray's bookkeeping notices (QUIET_FORWARDED_LINES)
    dropped from what the driver prints for workers.

    Ray offers no filter for forwarded output short of turning all of it off (`log_to_driver`),
    which would hide our training ranks' progress lines; so the one function both of its printers
    call (worker output and raylet notices) is wrapped. Ray versions without it print everything.
    """
    import ray._private.worker as ray_worker

    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is not None:
        ray_worker.print_to_stdstream = _drop_quiet_lines(original)
    try:
        yield
    finally:
        if original is not None:
            ray_worker.print_to_stdstream = original


def quiet_ray_data_logging() -> dict[str, str]:
    """Ray Data's console output down to warnings, in this process and (through the returned
    environment variables, for the cluster's runtime_env) in every worker.

    Ray Data configures its "ray.data" logger when it is imported, from the YAML file named by
    RAY_DATA_LOGGING_CONFIG (default: its own config, console at INFO, where its progress is
    logged line by line whenever stdout is not a terminal). Ours is that default with the console
    handler at WARNING; its log file (ray-data.log in the session's logs) keeps everything.
    """
    import copy
    import hashlib
    import tempfile

    import yaml
    from ray.data._internal import logging as ray_data_logging  # also configures "ray.data" once

    config = copy.deepcopy(ray_data_logging.DEFAULT_CONFIG)
    config["handlers"]["console"]["level"] = "WARNING"
    text = yaml.safe_dump(config)
    # Named by its content, so every process (and every test) shares one file instead of leaving
    # one per process behind.
    path = os.path.join(tempfile.gettempdir(), f"vf3d-ray-data-logging-{hashlib.sha256(text.encode()).hexdigest()[:12]}.yaml")
    if not os.path.exists(path):
        from vf3d.atomic import atomic_write

        with atomic_write(path, "w") as file:
            file.write(text)
    os.environ[RAY_DATA_LOGGING_CONFIG_ENV] = path
    ray_data_logging.configure_logging()
    # Progress inside workers (Ray Train's dataset shards) goes through that logger instead of
    # Ray's distributed tqdm bars, which no logger level reaches.
    import ray.data

    ray.data.DataContext.get_current().use_ray_tqdm = False
    return {RAY_DATA_LOGGING_CONFIG_ENV: path}


LOCAL_START_ATTEMPTS = 3
"""Tries at starting a local cluster (see `start_local_ray`)."""


def start_local_ray(log=print, attempts: int = LOCAL_START_ATTEMPTS, **init_kwargs) -> None:
    """`ray.init(address="local", **init_kwargs)`, tried again when the node misses Ray's start-up
    deadline.

    Ray 2.60 gives a new node a fixed 30 s to register with its GCS and then raises a plain
    Exception ("The current node timed out during startup"). A busy machine (other clusters, a
    compile, a laptop on battery) can miss it once without anything being wrong, so a start that
    timed out is shut down and retried; any other error, and the last attempt's, propagates.
    """
    import ray

    global _local_cluster_address
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address="local", **init_kwargs)
            _local_cluster_address = ray.get_runtime_context().gcs_address
            return
        except Exception as error:
            if "timed out during startup" not in str(error) or attempt == attempts:
                raise
            ray.shutdown()
            log(
                f"the local Ray cluster missed Ray's 30 s start-up deadline (a busy machine?); starting it again ({attempt + 1}/{attempts})"
            )


_local_cluster_address: str | None = None
"""The GCS address of the last local cluster `start_local_ray` started in this process."""


def on_own_local_cluster() -> bool:
    """Whether this process is connected to a local cluster it started itself (`start_local_ray`):
    one machine, which no autoscaler grows and no cloud drains, gone when this process ends."""
    import ray

    return ray.is_initialized() and _local_cluster_address is not None and ray.get_runtime_context().gcs_address == _local_cluster_address


@contextlib.contextmanager
def ray_cluster(address: str | None = None, num_cpus: int | None = None, log=print) -> Iterator[None]:
    """Run the body connected to Ray, shutting down only what this call started.

    Args:
        address: a cluster address ("auto", "ray://host:10001", "host:6379"); falls back to the
            RAY_ADDRESS environment variable. With neither, a new local cluster is started for
            this process alone (`address="local"`), never a stray one already on the machine.
        num_cpus: logical CPUs of that local cluster (ignored when attaching); default: the
            machine's cores, at least MIN_LOCAL_CPUS.

    Unless `verbose_ray_logs()`, a local cluster is started quiet: Ray's own INFO output (start-up
    notes, Ray Data's progress log lines, Serve's deployment messages) is left to its log files
    under /tmp/ray, and our stages' own progress lines are what a person reads. Warnings and
    errors still print. On an existing cluster (a job) its settings are left alone.
    """
    import ray

    global _quiet_local_cluster
    if ray.is_initialized():
        yield
        return
    target = address or os.environ.get("RAY_ADDRESS")
    quiet = not target and not verbose_ray_logs()
    with contextlib.ExitStack() as stack:
        if target:
            ray.init(address=target, log_to_driver=True)
            log(f"connected to the Ray cluster at {target}")
        else:
            runtime_env = None
            if quiet:
                # Entered before ray.init: the driver's printer of worker output is bound there.
                stack.enter_context(_quiet_driver())
                runtime_env = {
                    "worker_process_setup_hook": f"{__name__}.quiet_worker_logging",
                    "env_vars": {**QUIET_WORKER_ENV, **quiet_ray_data_logging()},
                }
            start_local_ray(
                log=log,
                num_cpus=num_cpus or max(os.cpu_count() or 1, MIN_LOCAL_CPUS),
                include_dashboard=False,
                log_to_driver=True,
                logging_level=logging.WARNING if quiet else logging.INFO,
                runtime_env=runtime_env,
            )
            log(f"started a local Ray cluster ({ray.cluster_resources().get('CPU', 0):g} CPUs)")
        _quiet_local_cluster = quiet
        try:
            yield
        finally:
            _quiet_local_cluster = False
            ray.shutdown()


_quiet_local_cluster = False


def quiet_local_cluster() -> bool:
    """Whether this process is connected to a local cluster `ray_cluster` started quiet: Serve then
    logs at WARNING too (its driver-side logger and every replica configure their own levels when
    Serve is imported or started, so `serving.app.start_endpoint` sets them)."""
    return _quiet_local_cluster


ALLOW_LOGICAL_GPUS_ENV = "VF3D_ALLOW_LOGICAL_GPUS"
"""Set to 1 to let a process that Ray gave GPUs run without CUDA: for tests and simulations on
clusters that declare logical GPUs (e.g. `ray.init(num_gpus=4)` on a CPU machine), never in
production, where it would burn GPU-hours at CPU speed (docs/runtime.md#gpus)."""


class GPUUnavailableError(RuntimeError):
    """Ray assigned this process GPUs, but CUDA cannot use them."""


def require_usable_gpus(where: str) -> None:
    """Fail at start, with one line, when Ray gave this process GPUs that CUDA cannot use.

    A node whose driver and CUDA toolkit disagree (or whose container lacks the driver) still
    advertises its GPUs to Ray; without this check its actors silently fall back to the CPU.
    Call it in the constructor of every actor or train worker that asks for GPUs; it does
    nothing outside Ray, when no GPU was assigned, or with VF3D_ALLOW_LOGICAL_GPUS=1.
    """
    import ray

    if not ray.is_initialized():
        return
    assigned = ray.get_gpu_ids()
    if not assigned or os.environ.get(ALLOW_LOGICAL_GPUS_ENV) == "1":
        return
    import torch

    if torch.cuda.is_available():
        return
    raise GPUUnavailableError(
        f"{where}: Ray assigned GPU(s) {list(assigned)} to this process but CUDA is unavailable "
        f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}; "
        f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')!r}): check the node's NVIDIA driver "
        f"against the torch build. For tests and simulations with logical GPUs, set {ALLOW_LOGICAL_GPUS_ENV}=1."
    )
