"""Connecting a stage to Ray: the cluster at --address / RAY_ADDRESS, else a private local one."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

MIN_LOCAL_CPUS = 4
"""Logical CPUs a private local cluster advertises at least. Ray Train workers fed by Ray Data
deadlock when the workers' CPU reservations leave no whole CPU for the read and map tasks (seen on
2 cores); over-advertising on one machine only lets the OS share the cores (docs/runtime.md#ray)."""


@contextlib.contextmanager
def ray_cluster(address: str | None = None, num_cpus: int | None = None, log=print) -> Iterator[None]:
    """Run the body connected to Ray, shutting down only what this call started.

    Args:
        address: a cluster address ("auto", "ray://host:10001", "host:6379"); falls back to the
            RAY_ADDRESS environment variable. With neither, a new local cluster is started for
            this process alone (`address="local"`), never a stray one already on the machine.
        num_cpus: logical CPUs of that local cluster (ignored when attaching); default: the
            machine's cores, at least MIN_LOCAL_CPUS.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    target = address or os.environ.get("RAY_ADDRESS")
    if target:
        ray.init(address=target, log_to_driver=True)
        log(f"connected to the Ray cluster at {target}")
    else:
        ray.init(
            address="local", num_cpus=num_cpus or max(os.cpu_count() or 1, MIN_LOCAL_CPUS), include_dashboard=False, log_to_driver=True
        )
        log(f"started a local Ray cluster ({ray.cluster_resources().get('CPU', 0):g} CPUs)")
    try:
        yield
    finally:
        ray.shutdown()


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
