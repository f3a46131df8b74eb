"""`vf3d` commands as processes of their own: started in a new session (their own local Ray
cluster, never the test session's), killed mid-run, or stopped with Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

VF3D = str(Path(sys.executable).with_name("vf3d"))
"""The installed console script of this environment."""


def start_vf3d(*args, stdout=subprocess.PIPE) -> subprocess.Popen:
    """`vf3d ARGS` in a new session, stderr merged into `stdout`; no RAY_ADDRESS, so the command
    starts a local Ray cluster of its own, which `kill_when`/`interrupt` end with it."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([VF3D, *map(str, args)], stdout=stdout, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def kill_when(process: subprocess.Popen, condition: Callable[[], bool], timeout_s: float) -> None:
    """SIGKILL `process`'s session (the driver and the Ray cluster it started) as soon as
    `condition()` holds, or after `timeout_s`; fails if the command ends on its own first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not condition():
        if process.poll() is not None:
            output = process.stdout.read()[-3000:] if process.stdout else ""
            raise AssertionError(f"the command exited ({process.returncode}) before it could be killed:\n{output}")
        time.sleep(0.2)
    _kill_with_descendants(process)


def _kill_with_descendants(process: subprocess.Popen) -> None:
    """SIGKILL the command and every process under it at once, then wait until all are gone.

    Ray's workers are not all in the command's process group: killing only the group leaves them
    alive until they notice their raylet is gone, and in that moment a writer can still publish a
    shard, so what a test reads right after the kill would not be what the rerun finds."""
    import psutil

    try:
        command = psutil.Process(process.pid)
        doomed = [command, *command.children(recursive=True)]
    except psutil.NoSuchProcess:
        doomed = []
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
