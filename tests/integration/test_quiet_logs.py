"""Local clusters started by `vf3d` are quiet unless asked: Ray's INFO output off, warnings kept.

Each case runs in a fresh interpreter: `ray_cluster` starts a cluster only when none is connected,
and this test session's workers may already hold one (the `ray_local` fixture)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, logging, os, ray
from vf3d.ray_runtime import QUIET_WORKER_LOGGERS, TRAIN_REPORT_LOGGER_MODULE, ray_cluster

def levels():
    import ray.data  # configures its logger from RAY_DATA_LOGGING_CONFIG when set

    train_report = os.path.join(os.path.dirname(ray.__file__), TRAIN_REPORT_LOGGER_MODULE)
    return {
        "loggers": {name: logging.getLogger(name).level for name in [*QUIET_WORKER_LOGGERS, train_report]},
        # Ray Data's console handler (its SessionFileHandlers keep DEBUG, on purpose).
        "ray_data_console": [h.level for h in logging.getLogger("ray.data").handlers if type(h).__name__ == "PlainRayHandler"],
    }

def speak():
    import warnings

    # One of Ray's bookkeeping notices, then a line of our own, as a worker would print them.
    print("Actor with class name: 'X' has constructor arguments in the object store and max_restarts > 0. (probe)")
    print("probe: a line of our own")
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn("the LPIPS backbone (squeeze) is random (probe)", UserWarning)
        warnings.warn("probe: a warning of our own", UserWarning)
    return [str(warning.message) for warning in caught]

from vf3d.ray_runtime import quiet_local_cluster

with ray_cluster(num_cpus=2, log=lambda line: None):
    caught = ray.get(ray.remote(num_cpus=0)(speak).remote())
    import time

    time.sleep(3)  # the driver prints worker output asynchronously
    print(json.dumps({
        "driver": levels(), "worker": ray.get(ray.remote(num_cpus=0)(levels).remote()),
        "quiet_local_cluster": quiet_local_cluster(), "worker_warnings": caught,
    }))
print(json.dumps({"driver_after": levels(), "quiet_local_cluster_after": quiet_local_cluster()}))
"""


def probe(verbose: bool) -> dict:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "VF3D_VERBOSE": "1" if verbose else "0"}
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    *_, inside, after = result.stdout.strip().splitlines()
    return {**json.loads(inside), **json.loads(after), "output": result.stdout + result.stderr}


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_local_clusters_turn_rays_info_output_down_unless_verbose(verbose):
    import logging

    from vf3d.ray_runtime import QUIET_WORKER_LOGGERS

    levels = probe(verbose)
    worker, driver, output = levels["worker"], levels["driver"], levels["output"]
    assert "probe: a line of our own" in output and levels["worker_warnings"][-1] == "probe: a warning of our own"
    # The driver's loggers are as they were once the cluster is gone.
    assert all(level == logging.NOTSET for level in levels["driver_after"]["loggers"].values()), levels
    assert not levels["quiet_local_cluster_after"]
    if verbose:
        assert all(level == logging.NOTSET for level in worker["loggers"].values()), levels
        assert all(level <= logging.INFO for level in worker["ray_data_console"] + driver["ray_data_console"]), levels
        assert "constructor arguments in the object store" in output
        assert len(levels["worker_warnings"]) == 2 and not levels["quiet_local_cluster"]
    else:
        assert list(worker["loggers"].values()) == [*QUIET_WORKER_LOGGERS.values(), logging.WARNING], levels
        assert all(level == logging.NOTSET for level in driver["loggers"].values()), "the driver's own loggers are not touched"
        for side in (worker, driver):
            assert side["ray_data_console"] and set(side["ray_data_console"]) == {logging.WARNING}, levels
        assert "constructor arguments in the object store" not in output, "Ray's bookkeeping notice reached the terminal"
        assert levels["worker_warnings"] == ["probe: a warning of our own"] and levels["quiet_local_cluster"]


def test_verbose_flag_sets_the_switch_for_this_process(monkeypatch, vf3d_main, tmp_path):
    from vf3d.ray_runtime import VERBOSE_ENV, verbose_ray_logs

    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    assert not verbose_ray_logs()
    # Any command reads the flag before it runs; this one stops at its input check, before Ray.
    missing = tmp_path / "missing.parquet"
    result = vf3d_main("--verbose", "synthesize", "--prompts", missing, "--video-model", tmp_path, "--out", tmp_path / "out")
    assert result.returncode == 2 and "not a diffusers pipeline directory" in result.stderr
    assert verbose_ray_logs() and os.environ[VERBOSE_ENV] == "1"
