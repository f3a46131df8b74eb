"""`finetune-video` on local Ray: 2 workers, ZeRO-2, one real orbit, a killed worker, the diffusers export."""

from __future__ import annotations

import numpy as np
import pytest

from vf3d import config as config_lib
from vf3d.synthesis.config import RENDER_ASSETS_PRESETS
from vf3d.training.config import FINETUNE_VIDEO_PRESETS


@pytest.fixture(scope="module")
def duck_orbit(tmp_path_factory, ray_local):
    """Orbit shards of the textured pybullet duck, rendered by the real pipeline."""
    from vf3d.data.assets import gather_sample_assets
    from vf3d.synthesis.render_assets import render_assets

    assets = tmp_path_factory.mktemp("duck")
    gather_sample_assets(assets, limit=1)
    out = tmp_path_factory.mktemp("duck-orbits")
    summary = render_assets(assets, out, config_lib.preset(RENDER_ASSETS_PRESETS, "debug"))
    assert summary["orbits_total"] == 1
    return out


def debug_config(storage, max_steps, fail_at_step=None):
    config = config_lib.preset(FINETUNE_VIDEO_PRESETS, "debug")
    config.training.run.storage_path = str(storage)
    config.training.run.max_steps = max_steps
    config.training.fault_injection.fail_at_step = fail_at_step
    config.training.fault_injection.fail_rank = 1
    return config


@pytest.fixture(scope="module")
def first_run(duck_orbit, tmp_path_factory):
    """40 steps with rank 1 killed at step 15 on its first attempt (checkpoints every 10)."""
    from vf3d.training.video import finetune_video

    storage = tmp_path_factory.mktemp("runs")
    out = tmp_path_factory.mktemp("video-model")
    return finetune_video(duck_orbit, out, debug_config(storage, max_steps=40, fail_at_step=15)), storage, out


def test_overfits_one_orbit_despite_a_killed_worker(first_run):
    summary, _, _ = first_run
    assert summary["steps"] == 40
    assert summary["resumed_from"] == 10, "the restarted workers resume from the step-10 checkpoint"
    assert summary["final_eval_loss"] < 0.5 * summary["initial_eval_loss"], summary


def test_the_export_loads_with_diffusers_and_is_the_trained_model(first_run):
    """The export of the killed-and-restarted run. (Rerunning a finished run with more steps is
    `run_loop`'s, which both trainers share: tests/integration/test_training_harness.py reruns one.)"""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from vf3d.models.video import OrbitVideoModel, OrbitVideoPipeline
    from vf3d.training import consolidate

    summary, storage, out = first_run
    # The export is a diffusers pipeline directory; its parts load with diffusers' own classes.
    assert (out / "model_index.json").is_file()
    WanTransformer3DModel.from_pretrained(out, subfolder="transformer")
    AutoencoderKLWan.from_pretrained(out, subfolder="vae")
    exported = OrbitVideoPipeline.from_pretrained(out)

    # The model as trained, rebuilt in memory from the consolidated final checkpoint.
    import torch

    config = debug_config(storage, 40).model
    torch.manual_seed(0)
    in_memory = OrbitVideoModel.from_config(config)
    in_memory.load_state_dict(consolidate(summary["checkpoint"]), strict=False)
    first_frame = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    kwargs = dict(first_frame=first_frame, prompt="duck", elevation=20.0, steps=3, seed=7)
    expected = in_memory.to_pipeline().generate_orbit(**kwargs)
    got = exported.generate_orbit(**kwargs)
    assert got.frames.shape == (1, 16, 32, 32, 3)
    assert np.array_equal(got.frames, expected.frames) and np.array_equal(got.cameras, expected.cameras)


def test_a_rerun_of_the_finished_run_starts_no_workers(first_run, duck_orbit):
    """The same command again answers from the finished run's checkpoint record and export."""
    from vf3d.training.video import finetune_video

    summary, storage, out = first_run
    exported = (out / "transformer" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    lines: list[str] = []
    again = finetune_video(duck_orbit, out, debug_config(storage, max_steps=40), log=lines.append)
    assert again["already_finished"] is True and again["resumed_from"] == again["steps"] == 40
    assert again["checkpoint"] == summary["checkpoint"] and again["final_eval_loss"] == summary["final_eval_loss"]
    assert any("no workers started" in line for line in lines), lines
    assert (out / "transformer" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == exported
