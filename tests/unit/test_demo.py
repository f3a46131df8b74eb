"""The demo's data plumbing: the held-out split kept from the video model and the synthesis inputs
started from other views of the training renders."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from vf3d.data import shards
from vf3d.demo import split_held_out, write_view_inputs
from vf3d.training.recon import holdout_ids


def write_orbits(directory, count=6, views=16):
    rng = np.random.default_rng(0)
    records = [
        shards.OrbitRecord(
            id=f"object-{index}",
            source="render",
            prompt=f"thing {index}",
            rgba=rng.integers(0, 256, (views, 8, 8, 4), dtype=np.uint8),
            cameras=np.zeros((views, 25), np.float32),
            elevation=float(index),
        )
        for index in range(count)
    ]
    shards.OrbitShardWriter(directory).write(records)


def test_the_held_out_split_is_train_recons_and_the_video_model_never_sees_it(tmp_path):
    write_orbits(tmp_path / "orbits")
    held_out = split_held_out(tmp_path / "orbits", tmp_path / "training", 2, seed=7)
    assert held_out == holdout_ids([f"object-{index}" for index in range(6)], 2, 7)
    assert shards.read_ids(tmp_path / "training") == {f"object-{index}" for index in range(6)} - set(held_out)


def test_synthesis_inputs_start_from_other_views_with_the_orbits_elevation(tmp_path):
    write_orbits(tmp_path / "orbits", count=2)
    rows = pq.read_table(write_view_inputs(tmp_path / "orbits", tmp_path / "inputs.parquet", views=(4, 8))).to_pylist()
    assert [row["id"] for row in rows] == [
        "object-0-from-view-04",
        "object-0-from-view-08",
        "object-1-from-view-04",
        "object-1-from-view-08",
    ]
    assert [row["elevation"] for row in rows] == [0.0, 0.0, 1.0, 1.0] and rows[2]["prompt"] == "thing 1"
    record = next(record for record in shards.iter_records(tmp_path / "orbits") if record["id"] == "object-1")
    image = np.asarray(Image.open(io.BytesIO(rows[3]["image"])))
    assert image.shape == (8, 8, 3)
    np.testing.assert_array_equal(image, (record["frames"][8].numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8))


def test_the_shipped_vae_loads_into_the_debug_video_model():
    from vf3d import config as config_lib
    from vf3d.demo import DEMO_VAE_DIR
    from vf3d.models.video import build_video_pipeline
    from vf3d.models.video.config import VIDEO_MODEL_PRESETS

    config = config_lib.preset(VIDEO_MODEL_PRESETS, "debug")
    config.vae_path = str(DEMO_VAE_DIR)
    pipeline = build_video_pipeline(config)
    assert pipeline.vae.config.base_dim == 16 and pipeline.vae.config.z_dim == 8
    assert pipeline.vae.config.latents_std != [1.0] * 8, "the fit records its latents' statistics"
    assert pipeline.transformer.config.out_channels == 8
