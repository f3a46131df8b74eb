"""Connecting a stage to Ray: the cluster at --address / RAY_ADDRESS, else a private local one."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def ray_cluster(address: str | None = None, num_cpus: int | None = None, log=print) -> Iterator[None]:
    """Run the body connected to Ray, shutting down only what this call started.

    Args:
        address: a cluster address ("auto", "ray://host:10001", "host:6379"); falls back to the
            RAY_ADDRESS environment variable. With neither, a new local cluster is started for
            this process alone (`address="local"`), never a stray one already on the machine.
        num_cpus: logical CPUs of that local cluster (ignored when attaching).
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
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
        log(f"started a local Ray cluster ({ray.cluster_resources().get('CPU', 0):g} CPUs)")
    try:
        yield
    finally:
        ray.shutdown()
