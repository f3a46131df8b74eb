"""A process that Ray gave GPUs but that cannot use CUDA stops at start instead of running on the CPU."""

import pytest

from vf3d.synthesis.cluster import ALLOW_LOGICAL_GPUS_ENV, GPUUnavailableError, require_usable_gpus


def _gpu_actor(ray, env_vars: dict[str, str]):
    @ray.remote(num_gpus=1, num_cpus=0)
    class GPUStage:
        def __init__(self) -> None:
            require_usable_gpus("GPUStage")

        def gpu_ids(self):
            return ray.get_gpu_ids()

    return GPUStage.options(runtime_env={"env_vars": env_vars}).remote()


def test_gpu_actor_without_cuda_fails_at_start_with_one_line(ray_local):
    import ray
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the check passes here by design")
    actor = _gpu_actor(ray, {})
    with pytest.raises(ray.exceptions.ActorDiedError) as raised:
        ray.get(actor.gpu_ids.remote(), timeout=120)
    message = str(raised.value)
    assert GPUUnavailableError.__name__ in message and "GPUStage: Ray assigned GPU(s) [" in message
    assert f"{ALLOW_LOGICAL_GPUS_ENV}=1" in message
    ray.kill(actor)


def test_logical_gpus_are_allowed_with_the_switch(ray_local):
    import ray

    actor = _gpu_actor(ray, {ALLOW_LOGICAL_GPUS_ENV: "1"})
    assert len(ray.get(actor.gpu_ids.remote(), timeout=120)) == 1
    ray.kill(actor)


def test_outside_ray_or_without_gpus_nothing_is_checked():
    require_usable_gpus("driver")  # no Ray here (or no GPU assigned to the driver): no error
