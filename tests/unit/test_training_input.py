"""train-recon's input pipeline without Ray: only the chosen views are decoded, samples stay uint8
until the worker converts them, counts come from Parquet footers, and the validator's read
touches only its held-out ids. Views that must not be read hold corrupt bytes, so touching one
fails the test."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from vf3d import config as config_lib
from vf3d.data import shards, training_input
from vf3d.data.shards import OrbitRecord, OrbitShardWriter, ShardFormatError
from vf3d.training.config import TRAIN_RECON_PRESETS, ReconStage

VIEWS = 8
CORRUPT = b"\x89PNG\r\n\x1a\n but not an image"


def _records(count: int, resolution: int = 16) -> list[OrbitRecord]:
    rng = np.random.default_rng(0)
    return [
        OrbitRecord(
            id=f"orbit-{index:03d}",
            source="render",
            prompt="",
            rgba=rng.integers(0, 256, (VIEWS, resolution, resolution, 4), dtype=np.uint8),
            cameras=rng.normal(size=(VIEWS, 25)).astype(np.float32),
            num_orbit_views=6,
            elevation=10.0,
        )
        for index in range(count)
    ]


def _corrupt_views(row: dict, keep: set[int]) -> dict:
    """The row with every view outside `keep` replaced by undecodable bytes (frames and masks)."""
    return {
        **row,
        "frames": [data if view in keep else CORRUPT for view, data in enumerate(row["frames"])],
        "masks": [data if view in keep else CORRUPT for view, data in enumerate(row["masks"])],
    }


def test_decode_row_decodes_only_the_chosen_views_and_can_stay_uint8():
    record = _records(1)[0]
    row = shards.encode_record(record)
    corrupt = _corrupt_views(row, keep={1, 5})
    with pytest.raises(ShardFormatError, match="view 0"):
        shards.decode_row(corrupt)
    decoded = shards.decode_row(corrupt, views=[5, 1], dtype=torch.uint8)
    assert decoded["frames"].dtype == torch.uint8 and decoded["frames"].shape == (2, 3, 16, 16)
    assert decoded["masks"].shape == (2, 1, 16, 16)
    full = shards.decode_row(row)
    torch.testing.assert_close(decoded["frames"].float() / 255, full["frames"][[5, 1]])
    torch.testing.assert_close(decoded["masks"].float() / 255, full["masks"][[5, 1]])
    torch.testing.assert_close(decoded["cameras"], full["cameras"][[5, 1]])
    with pytest.raises(ShardFormatError, match="views"):
        shards.decode_row(row, views=[VIEWS])


def test_view_sampler_choose_draws_what_call_samples():
    row = shards.decode_row(shards.encode_record(_records(1)[0]))
    sampler = shards.ViewSampler(3, seed=4)
    source, targets, backgrounds = sampler.choose(row["id"], VIEWS, 6, epoch=2)
    sample = sampler(row, epoch=2)
    assert (
        source == int(sample["source_view"])
        and torch.equal(targets, sample["target_views"])
        and torch.equal(backgrounds, sample["target_backgrounds"])
    )


def _sampled(table: pa.Table, epoch: int, repeats: int = 1) -> dict[str, np.ndarray]:
    return training_input.sample_views(table, num_target_views=3, image_size=32, target_resolution=12, seed=7, repeats=repeats, epoch=epoch)


def test_sample_views_decodes_only_the_views_it_chose_and_sends_uint8():
    records = _records(3)
    sampler = shards.ViewSampler(3, seed=7)
    rows = []
    for record in records:
        source, targets, _ = sampler.choose(record.id, VIEWS, 6, epoch=0)
        rows.append(_corrupt_views(shards.encode_record(record), keep={source, *targets.tolist()}))
    table = pa.Table.from_pylist(rows, schema=shards.ORBIT_SCHEMA)
    samples = _sampled(table, epoch=0)
    assert samples["source_images"].dtype == np.uint8 and samples["source_images"].shape == (3, 3, 32, 32)
    assert samples["target_frames"].dtype == np.uint8 and samples["target_frames"].shape == (3, 3, 3, 12, 12)
    assert samples["target_masks"].dtype == np.uint8 and samples["target_masks"].shape == (3, 3, 1, 12, 12)
    assert samples["target_cameras"].shape == (3, 3, 25) and samples["source_cameras"].shape == (3, 25)
    full = shards.decode_row(shards.encode_record(records[0]))
    np.testing.assert_array_equal(samples["source_cameras"][0], full["cameras"][samples["source_views"][0]].numpy())
    assert all(view < 6 for view in samples["source_views"])  # sources come from the orbit views
    # Another epoch chooses other views, which are corrupt in this table.
    with pytest.raises(ShardFormatError):
        for epoch in range(1, 6):
            _sampled(table, epoch=epoch)


def test_sample_views_depends_on_seed_epoch_and_id_only():
    table = shards.records_to_table(_records(4))
    first, again = _sampled(table, epoch=3, repeats=2), _sampled(table, epoch=3, repeats=2)
    for name in training_input.SAMPLE_FIELDS:
        np.testing.assert_array_equal(first[name], again[name])
    # Rows sampled alone or in another order get the same views; repeats differ from each other.
    reordered = _sampled(table.take([3, 2, 1, 0]), epoch=3, repeats=2)
    np.testing.assert_array_equal(reordered["target_views"].reshape(4, 2, 3)[::-1], first["target_views"].reshape(4, 2, 3))
    assert not np.array_equal(first["target_views"][0], first["target_views"][1]) or first["source_views"][0] != first["source_views"][1]
    epochs = [_sampled(table, epoch=epoch)["target_views"] for epoch in range(4)]
    assert any(not np.array_equal(epochs[0], other) for other in epochs[1:])


def test_samples_turn_into_floats_on_the_worker():
    from vf3d.training.recon import batch_from_samples

    samples = {name: torch.from_numpy(value) for name, value in _sampled(shards.records_to_table(_records(2)), epoch=0).items()}
    assert samples["target_frames"].dtype == torch.uint8
    config = config_lib.preset(TRAIN_RECON_PRESETS, "debug")
    stage = ReconStage(render_resolution=12, crop_size=12)
    batch = batch_from_samples(samples, stage, config, torch.Generator().manual_seed(0))
    assert batch["source_images"].dtype == torch.float32 and batch["source_images"].shape == (2, 3, 64, 64)
    frames, masks = samples["target_frames"].float() / 255, samples["target_masks"].float() / 255
    expected = (frames - (1 - masks) * (1 - samples["target_backgrounds"][..., None, None])).clamp(0, 1)
    torch.testing.assert_close(batch["target_images"], expected)  # the crop is the whole 12 px target


def test_count_rows_reads_parquet_footers_not_images(tmp_path):
    rows = [_corrupt_views(shards.encode_record(record), keep=set()) for record in _records(5)]
    OrbitShardWriter(tmp_path).write(pa.Table.from_pylist(rows[:2], schema=shards.ORBIT_SCHEMA))
    OrbitShardWriter(tmp_path).write(pa.Table.from_pylist(rows[2:], schema=shards.ORBIT_SCHEMA))
    assert training_input.count_rows(shards.list_shard_files(tmp_path)) == 5


def test_the_validator_reads_only_its_held_out_ids(tmp_path):
    records = _records(40)
    held_out = ["orbit-031", "orbit-007"]
    rows = [
        shards.encode_record(record) if record.id in held_out else _corrupt_views(shards.encode_record(record), keep=set())
        for record in records
    ]
    OrbitShardWriter(tmp_path).write(pa.Table.from_pylist(rows, schema=shards.ORBIT_SCHEMA))
    read = training_input.read_orbits_by_id(tmp_path, held_out + ["missing"])
    assert [record["id"] for record in read] == held_out
    assert read[0]["frames"].shape == (VIEWS, 3, 16, 16)
    torch.testing.assert_close(read[1]["frames"], shards.decode_row(shards.encode_record(records[7]))["frames"])
