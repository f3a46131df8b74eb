"""train-recon's Ray Data input on the session's local cluster: held-out orbits are filtered out
before anything decodes them (theirs are corrupt here), batches reach the consumer as uint8 torch
tensors, and each epoch draws other views."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from vf3d.data import shards, training_input

CORRUPT = b"\x89PNG\r\n\x1a\n but not an image"


def test_training_batches_stream_uint8_samples_without_held_out_orbits(ray_local, tmp_path):
    rng = np.random.default_rng(0)
    records = [
        shards.OrbitRecord(
            id=f"orbit-{index}",
            source="render",
            prompt="",
            rgba=rng.integers(0, 256, (6, 16, 16, 4), dtype=np.uint8),
            cameras=rng.normal(size=(6, 25)).astype(np.float32),
            elevation=0.0,
        )
        for index in range(6)
    ]
    rows = [shards.encode_record(record) for record in records]
    held_out = {"orbit-2", "orbit-5"}
    rows = [{**row, "frames": [CORRUPT] * 6, "masks": [CORRUPT] * 6} if row["id"] in held_out else row for row in rows]
    writer = shards.OrbitShardWriter(tmp_path)
    writer.write(pa.Table.from_pylist(rows[:3], schema=shards.ORBIT_SCHEMA))
    writer.write(pa.Table.from_pylist(rows[3:], schema=shards.ORBIT_SCHEMA))
    files = shards.list_shard_files(tmp_path)
    assert training_input.count_rows(files) - len(held_out) == 4

    dataset = training_input.training_dataset(
        files, exclude_ids=held_out, num_target_views=3, image_size=24, target_resolution=16, seed=1, repeats=2
    )
    batches = training_input.batches_forever(dataset.iterator(), 4, prefetch_batches=1, shuffle_buffer_size=8, seed=0)
    epochs = [[next(batches) for _ in range(2)] for _ in range(2)]  # 4 orbits × 2 repeats = 2 batches per epoch
    first = epochs[0][0]
    assert set(first) == set(training_input.SAMPLE_FIELDS)
    assert isinstance(first["target_frames"], torch.Tensor) and first["target_frames"].dtype == torch.uint8
    assert first["target_frames"].shape == (4, 3, 3, 16, 16) and first["source_images"].dtype == torch.uint8
    assert first["target_cameras"].dtype == torch.float32
    views = [sorted(map(tuple, torch.cat([batch["target_views"] for batch in epoch]).tolist())) for epoch in epochs]
    assert len(views[0]) == 8 and views[0] != views[1]


def test_start_up_counts_and_holds_out_without_decoding(ray_local, tmp_path):
    """`prepare_inputs` on orbits whose every image is corrupt: counts from the footers, held-out
    ids from the id column, datasets left lazy (decoding any image would raise)."""
    from vf3d import config as config_lib
    from vf3d.training.config import TRAIN_RECON_PRESETS
    from vf3d.training.recon import prepare_inputs

    rng = np.random.default_rng(1)
    records = [
        shards.OrbitRecord(
            id=f"orbit-{index:02d}",
            source="synthetic",
            prompt="",
            rgba=rng.integers(0, 256, (4, 8, 8, 4), dtype=np.uint8),
            cameras=np.zeros((4, 25), np.float32),
            elevation=0.0,
        )
        for index in range(20)
    ]
    rows = [{**shards.encode_record(record), "frames": [CORRUPT] * 4, "masks": [CORRUPT] * 4} for record in records]
    shards.OrbitShardWriter(tmp_path).write(pa.Table.from_pylist(rows, schema=shards.ORBIT_SCHEMA))
    config = config_lib.preset(TRAIN_RECON_PRESETS, "debug")
    for stage in config.stages:
        stage.data = "synthetic"
    config.validation.num_objects = 3
    inputs = prepare_inputs({"synthetic": tmp_path, "3d": None}, config, log=lambda line: None)
    assert inputs["counts"] == {"synthetic": 17} and len(inputs["held_out"]) == 3 and inputs["excluded"] == set(inputs["held_out"])
    assert set(inputs["datasets"]) == {"synthetic"}


def test_held_out_objects_can_come_from_the_3d_renders_while_training_starts_on_synthetic(ray_local, tmp_path):
    """`validation.held_out_from: 3d`: the held-out ids are drawn from --data-3d and removed from
    it; the synthetic orbits (the first stage's data) all train."""
    from vf3d import config as config_lib
    from vf3d.training.config import TRAIN_RECON_PRESETS
    from vf3d.training.recon import prepare_inputs

    rng = np.random.default_rng(2)
    for source, count in (("synthetic", 6), ("render", 8)):
        records = [
            shards.OrbitRecord(
                id=f"{source}-{index:02d}",
                source=source,
                prompt="",
                rgba=rng.integers(0, 256, (4, 8, 8, 4), dtype=np.uint8),
                cameras=np.zeros((4, 25), np.float32),
                elevation=0.0,
            )
            for index in range(count)
        ]
        shards.OrbitShardWriter(tmp_path / source).write(records)
    config = config_lib.preset(TRAIN_RECON_PRESETS, "debug")
    assert config.stages[0].data == "synthetic" and config.stages[-1].data == "3d"
    config.validation.num_objects = 3
    sources = {"synthetic": tmp_path / "synthetic", "3d": tmp_path / "render"}

    first_stage = prepare_inputs(sources, config, log=lambda line: None)
    assert all(identifier.startswith("synthetic-") for identifier in first_stage["held_out"])
    assert first_stage["counts"] == {"synthetic": 3, "3d": 8}

    config.validation.held_out_from = "3d"
    renders = prepare_inputs(sources, config, log=lambda line: None)
    assert len(renders["held_out"]) == 3 and all(identifier.startswith("render-") for identifier in renders["held_out"])
    assert renders["counts"] == {"synthetic": 6, "3d": 5} and renders["excluded"] == set(renders["held_out"])
    assert str(renders["validation_source"]) == str(tmp_path / "render")
