"""`vf3d` commands as processes of their own: started in a new session (their own local Ray
cluster, or a driver on the test session's), killed mid-run, or stopped with Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sized
from pathlib import Path

VF3D = str(Path(sys.executable).with_name("vf3d"))
"""The installed console script of this environment."""


def start_vf3d(*args, stdout=subprocess.PIPE, ray_address: str | None = None) -> subprocess.Popen:
    """`vf3d ARGS` in a new session, stderr merged into `stdout`. Without `ray_address` the command
    starts a local Ray cluster of its own, which `kill_when`/`interrupt` end with it; with it
    (RAY_ADDRESS), the command is a driver on that running cluster, as a job on a user's cluster
    is, and `kill_when` kills the driver and its job's actors together."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    return subprocess.Popen([VF3D, *map(str, args)], stdout=stdout, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def kill_when(process: subprocess.Popen, condition: Callable[[], bool], timeout_s: float) -> None:
    """SIGKILL the command, and everything of its run, as soon as `condition()` holds, or after
    `timeout_s`; fails if the command ends on its own first. "Everything": the processes under it
    (the local cluster it started) or, when it is a driver on this process's Ray cluster
    (`start_vf3d(ray_address=...)`), its job's actors on that cluster."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not condition():
        if process.poll() is not None:
            output = process.stdout.read()[-3000:] if process.stdout else ""
            raise AssertionError(f"the command exited ({process.returncode}) before it could be killed:\n{output}")
        time.sleep(0.2)
    _kill_with_descendants(process, also=_other_jobs_actors())
    wait_until_gone(_other_jobs_actors, timeout_s=60, what="the killed run's actors")


def _other_jobs_actors() -> dict[str, int]:
    """{actor id: pid} of the live, non-detached actors that another driver than this process
    created on the Ray cluster this process is connected to (none when it is not connected).
    A killed driver's actors die when Ray notices that their owner is gone, a moment later."""
    import ray

    if not ray.is_initialized():
        return {}
    ours = ray.get_runtime_context().get_job_id()
    return {
        actor["ActorID"]: actor["Pid"]
        for actor in ray._private.state.actors().values()
        if actor["State"] == "ALIVE" and not actor["IsDetached"] and actor["JobID"] != ours and actor["Pid"]
    }


def wait_until_gone(alive: Callable[[], Sized], timeout_s: float, what: str) -> None:
    """Poll `alive()` (the actors still running, as any sized collection) until it is empty;
    fails naming `what` after `timeout_s`. Ray ends an actor a moment after it is released or
    its owner dies, so a check right away would race it."""
    deadline = time.monotonic() + timeout_s
    while alive():
        if time.monotonic() > deadline:
            raise AssertionError(f"Ray still reports {what} alive after {timeout_s} s: {alive()}")
        time.sleep(0.2)


def _kill_with_descendants(process: subprocess.Popen, also: dict[str, int] | None = None) -> None:
    """SIGKILL the command, every process under it and the pids in `also` ({name: pid}) at once,
    then wait until all are gone.

    Ray's workers are not all in the command's process group, and a killed driver's actors live
    on until Ray reaps them: left alone, a writer could still publish a shard in that moment, so
    what a test reads right after the kill would not be what the rerun finds."""
    import psutil

    doomed = []
    for pid in [process.pid, *(also or {}).values()]:
        try:
            each = psutil.Process(pid)
            doomed += [each, *each.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    os.killpg(process.pid, signal.SIGKILL)
    for each in doomed:
        try:
            each.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait(timeout=60)
    psutil.wait_procs(doomed, timeout=60)


def interrupt(process: subprocess.Popen, timeout_s: float = 90) -> None:
    """Ctrl-C `process` and wait for it to shut down; after `timeout_s` SIGKILL it and every process under it."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_with_descendants(process)
