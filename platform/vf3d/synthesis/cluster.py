"""Connecting a stage to Ray: the cluster at --address / RAY_ADDRESS, else a private local one."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

MIN_LOCAL_CPUS = 4
"""Logical CPUs a private local cluster advertises at least. Ray Train workers fed by Ray Data
deadlock when the workers' CPU reservations leave no whole CPU for the read and map tasks (seen on
2 cores); over-advertising on one machine only lets the OS share the cores."""


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
        ray.init(address="local", num_cpus=num_cpus or max(os.cpu_count() or 1, MIN_LOCAL_CPUS), include_dashboard=False, log_to_driver=True)
        log(f"started a local Ray cluster ({ray.cluster_resources().get('CPU', 0):g} CPUs)")
    try:
        yield
    finally:
        ray.shutdown()
