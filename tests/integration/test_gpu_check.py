"""A process that Ray gave GPUs but that cannot use CUDA stops at start instead of running on the CPU.

The checks run in a child process with its own local Ray cluster declaring one logical GPU (no
CUDA behind it), so the session's shared cluster stays GPU-less: trainers on it with
`use_gpu="auto"` would otherwise ask for GPUs.
"""

import json
import subprocess
import sys

import pytest

from vf3d.ray_runtime import ALLOW_LOGICAL_GPUS_ENV, require_usable_gpus

CHILD = """
import json, os, sys
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
import ray
from vf3d.ray_runtime import require_usable_gpus

ray.init(address="local", num_cpus=1, num_gpus=1, include_dashboard=False, log_to_driver=False)


@ray.remote(num_gpus=1, num_cpus=0)
class GPUStage:
    def __init__(self):
        require_usable_gpus("GPUStage")

    def gpu_ids(self):
        return ray.get_gpu_ids()


results = {}
for name, env in (("without_switch", {}), ("with_switch", {sys.argv[1]: "1"})):
    actor = GPUStage.options(runtime_env={"env_vars": env}).remote()
    try:
        results[name] = {"gpu_ids": ray.get(actor.gpu_ids.remote(), timeout=120)}
    except ray.exceptions.ActorDiedError as error:
        results[name] = {"died": str(error)}
    ray.kill(actor)
print("RESULTS " + json.dumps(results))
"""


def test_a_gpu_actor_without_cuda_fails_at_start_unless_logical_gpus_are_allowed():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the check passes here by design")
    child = subprocess.run([sys.executable, "-c", CHILD, ALLOW_LOGICAL_GPUS_ENV], capture_output=True, text=True, timeout=400)
    assert child.returncode == 0, child.stderr[-3000:]
    results = json.loads(next(line for line in child.stdout.splitlines() if line.startswith("RESULTS "))[len("RESULTS ") :])
    died = results["without_switch"].get("died", "")
    assert "GPUUnavailableError" in died and "GPUStage: Ray assigned GPU(s) [" in died, results
    assert f"{ALLOW_LOGICAL_GPUS_ENV}=1" in died
    assert len(results["with_switch"]["gpu_ids"]) == 1, results


def test_outside_ray_nothing_is_checked():
    require_usable_gpus("driver")  # no Ray in this process: no error
