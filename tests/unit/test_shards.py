"""Orbit-shard format: encoding, atomic idempotent writing, reading, validation, view sampling."""

import io
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from vf3d import cameras as vf3d_cameras
from vf3d.data import shards
from vf3d.data.shards import OrbitRecord, OrbitShardWriter, ShardFormatError, ViewSampler

VIEWS, SIZE = 4, 32


def random_rgba(rng: np.random.Generator, views: int = VIEWS, size: int = SIZE) -> np.ndarray:
    """uint8 [V, H, W, 4]: a noisy coloured ellipse per view with a soft edge (partial alphas)."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    images = np.zeros((views, size, size, 4), dtype=np.uint8)
    for view in range(views):
        centre = rng.uniform(0.3, 0.7, 2) * size
        radii = rng.uniform(0.15, 0.35, 2) * size
        distance = np.sqrt(((rows - centre[0]) / radii[0]) ** 2 + ((cols - centre[1]) / radii[1]) ** 2)
        images[view, ..., 3] = np.clip((1.2 - distance) * 5, 0, 1) * 255
        images[view, ..., :3] = rng.integers(0, 256, (size, size, 3))
    return images


def orbit_cameras(views: int = VIEWS, elevation: float = 20.0) -> np.ndarray:
    return vf3d_cameras.render_camera_vector(vf3d_cameras.orbit_poses(views, elevation_deg=elevation)).numpy()


def make_record(orbit_id: str, rng: np.random.Generator, views: int = VIEWS, size: int = SIZE, **overrides) -> OrbitRecord:
    fields = dict(
        id=orbit_id,
        source="render",
        prompt=f"a photo of {orbit_id}",
        asset=f"assets/{orbit_id}.glb",
        rgba=random_rgba(rng, views, size),
        cameras=orbit_cameras(views),
        num_orbit_views=views,
        elevation=20.0,
        metadata={"seed": 7},
    )
    fields.update(overrides)
    return OrbitRecord(**fields)


def white_composite_reference(rgba: np.ndarray) -> np.ndarray:
    """Independent float64 reference of rgb·a + 255·(1 − a), rounded."""
    alpha = rgba[..., 3:].astype(np.float64) / 255
    return np.rint(rgba[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)


def to_uint8(unit: torch.Tensor) -> np.ndarray:
    return torch.round(unit * 255).to(torch.uint8).numpy()


@pytest.fixture
def records():
    rng = np.random.default_rng(0)
    return [make_record(f"orbit-{index}", rng, quality=None if index else 0.75) for index in range(3)]


# ---------------------------------------------------------------------------------------------
# Round trip
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image_format", ["png", "webp"])
def test_records_round_trip_exactly(tmp_path, records, image_format):
    path = OrbitShardWriter(tmp_path).write(shards.records_to_table(records, image_format))
    assert shards.list_shard_files(tmp_path) == [path]

    table = shards.read_table(tmp_path)
    shards.validate_table(table)
    assert table.num_rows == 3
    assert table.column("id").to_pylist() == ["orbit-0", "orbit-1", "orbit-2"]
    assert table.column("prompt").to_pylist() == [record.prompt for record in records]
    assert table.column("asset").to_pylist() == [record.asset for record in records]
    assert table.column("quality").to_pylist() == [0.75, None, None]
    assert table.column("resolution").to_pylist() == [SIZE] * 3
    assert json.loads(table.column("metadata")[0].as_py()) == {"seed": 7}

    expected_magic = b"\x89PNG" if image_format == "png" else b"RIFF"
    assert table.column("frames")[0][0].as_py().startswith(expected_magic)
    assert table.column("masks")[0][0].as_py().startswith(b"\x89PNG")  # masks are always PNG

    for row, record in zip(shards.iter_records(tmp_path), records):
        assert row["id"] == record.id
        assert row["frames"].shape == (VIEWS, 3, SIZE, SIZE) and row["frames"].dtype == torch.float32
        assert row["masks"].shape == (VIEWS, 1, SIZE, SIZE)
        stored_cameras = row["cameras"].numpy()
        assert stored_cameras.dtype == np.float32
        assert np.array_equal(stored_cameras.view(np.uint32), record.cameras.astype(np.float32).view(np.uint32))  # bit-equal
        assert np.array_equal(to_uint8(row["frames"]).transpose(0, 2, 3, 1), white_composite_reference(record.rgba))
        assert np.array_equal(to_uint8(row["masks"])[:, 0], record.rgba[..., 3])


def test_composite_on_white_matches_float_reference_on_every_value_pair():
    colour, alpha = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8), indexing="ij")
    rgba = np.stack([colour, colour, colour, alpha], axis=-1)
    assert np.array_equal(shards.composite_on_white(rgba), white_composite_reference(rgba))


def test_rgb_and_mask_records_are_stored_as_given(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    mask = rng.integers(0, 256, (2, 16, 16), dtype=np.uint8)
    record = OrbitRecord(
        id="synthetic-0",
        source="synthetic",
        prompt="a red chair",
        rgb=rgb,
        mask=mask,
        cameras=orbit_cameras(2),
        elevation=10.0,
        quality=0.5,
    )
    OrbitShardWriter(tmp_path).write([record])
    (row,) = shards.iter_records(tmp_path)
    assert np.array_equal(to_uint8(row["frames"]).transpose(0, 2, 3, 1), rgb)
    assert np.array_equal(to_uint8(row["masks"])[:, 0], mask)
    assert row["source"] == "synthetic" and row["asset"] is None


def test_decode_batch_stacks_numpy_batches(records):
    table = shards.records_to_table(records)
    # Ray Data's numpy batch format: one numpy array per column (object arrays for lists).
    batch = {name: table.column(name).to_numpy() for name in table.column_names}
    decoded = shards.decode_batch(batch)
    assert decoded["frames"].shape == (3, VIEWS, 3, SIZE, SIZE) and decoded["frames"].dtype == np.float32
    assert decoded["masks"].shape == (3, VIEWS, 1, SIZE, SIZE) and decoded["masks"].dtype == np.float32
    assert decoded["cameras"].shape == (3, VIEWS, 25) and decoded["cameras"].dtype == np.float32
    assert list(decoded["id"]) == ["orbit-0", "orbit-1", "orbit-2"]
    assert list(decoded["num_orbit_views"]) == [VIEWS] * 3
    first = shards.decode_row(table.slice(0, 1).to_pylist()[0])
    assert np.array_equal(decoded["frames"][0], first["frames"].numpy())


def test_decode_batch_keeps_rows_of_different_sizes_apart():
    rng = np.random.default_rng(2)
    table = shards.records_to_table([make_record("small", rng, views=2, size=16), make_record("large", rng, views=3, size=24)])
    decoded = shards.decode_batch({name: table.column(name).to_pylist() for name in table.column_names})
    assert decoded["frames"].dtype == object and decoded["frames"].shape == (2,)
    assert decoded["frames"][0].shape == (2, 3, 16, 16) and decoded["frames"][1].shape == (3, 3, 24, 24)
    assert decoded["masks"][1].shape == (3, 1, 24, 24) and decoded["cameras"][1].shape == (3, 25)


# ---------------------------------------------------------------------------------------------
# Writer: determinism, atomicity
# ---------------------------------------------------------------------------------------------


def test_rewriting_the_same_ids_replaces_the_file(tmp_path, records):
    writer = OrbitShardWriter(tmp_path, prefix="render")
    first = writer.write(records)
    second = writer.write(list(reversed(records)))  # same ids, other order: same name
    assert first == second
    assert first.name == shards.shard_file_name(["orbit-2", "orbit-0", "orbit-1"], prefix="render")
    assert first.name.startswith("render-") and len(first.name) == len("render-") + 16 + len(".parquet")
    assert shards.list_shard_files(tmp_path) == [first]
    # Rows are sorted by id, so the same orbits give the same file whatever the input order.
    assert shards.read_table(tmp_path, columns=["id"]).column("id").to_pylist() == ["orbit-0", "orbit-1", "orbit-2"]
    assert shards.read_ids(tmp_path) == {"orbit-0", "orbit-1", "orbit-2"}


def test_different_id_sets_go_to_different_files(tmp_path, records):
    writer = OrbitShardWriter(tmp_path)
    paths = {writer.write(records[:2]), writer.write(records[2:]), writer.write(records[1:])}
    assert len(paths) == 3 and sorted(paths) == shards.list_shard_files(tmp_path)
    assert shards.read_ids(tmp_path) == {"orbit-0", "orbit-1", "orbit-2"}


def test_partial_and_foreign_files_are_ignored_then_cleaned(tmp_path, records):
    writer = OrbitShardWriter(tmp_path)
    path = writer.write(records[:1])
    # What a killed writer leaves behind: a truncated file under the partial name.
    (tmp_path / f".{shards.shard_file_name(['orbit-1'])}.0123abcd.partial").write_bytes(path.read_bytes()[:100])
    (tmp_path / "_errors").mkdir()
    (tmp_path / "_errors" / ".orbits-0123456789abcdef.parquet.ffff0000.partial").write_bytes(b"PAR1")
    (tmp_path / "notes.parquet").write_bytes(b"not a shard")

    assert shards.list_shard_files(tmp_path) == [path]
    assert shards.read_ids(tmp_path) == {"orbit-0"}
    assert shards.read_table(tmp_path).num_rows == 1
    assert [row["id"] for row in shards.iter_records(tmp_path)] == ["orbit-0"]

    assert shards.remove_partials(tmp_path) == 2
    assert shards.remove_partials(tmp_path) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, "_errors", "_ids", "notes.parquet"])


def test_a_failed_write_leaves_nothing_behind(tmp_path, records, monkeypatch):
    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as if the worker were stopped between writing and renaming

    monkeypatch.setattr(shards.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        OrbitShardWriter(tmp_path).write(records)
    assert list(tmp_path.iterdir()) == []


def test_empty_writes_create_no_files(tmp_path):
    writer = OrbitShardWriter(tmp_path / "out")
    assert writer.write([]) is None
    assert writer.write(shards.ORBIT_SCHEMA.empty_table()) is None
    assert writer.write_errors([]) is None
    assert list((tmp_path / "out").iterdir()) == []
    assert shards.read_ids(tmp_path / "out") == set()
    assert shards.read_table(tmp_path / "out", columns=["id", "prompt"]).column_names == ["id", "prompt"]
    assert shards.list_shard_files(tmp_path / "missing") == []


def test_written_files_are_small_row_group_zstd_parquet(tmp_path):
    rng = np.random.default_rng(3)
    path = OrbitShardWriter(tmp_path).write([make_record(f"orbit-{index:02d}", rng, views=1, size=8) for index in range(40)])
    metadata = pq.ParquetFile(path).metadata
    assert metadata.num_rows == 40
    assert max(metadata.row_group(group).num_rows for group in range(metadata.num_row_groups)) <= shards.ROWS_PER_ROW_GROUP
    assert metadata.row_group(0).column(0).compression == "ZSTD"


def test_writer_accepts_encoded_rows_and_rejects_unknown_columns(tmp_path, records):
    rows = [shards.encode_record(record) for record in records]
    assert shards.read_ids(tmp_path) == set()
    OrbitShardWriter(tmp_path).write(rows)
    assert shards.read_ids(tmp_path) == {"orbit-0", "orbit-1", "orbit-2"}
    with pytest.raises(ShardFormatError, match="qualty"):
        OrbitShardWriter(tmp_path).write([{**rows[0], "qualty": 0.3}])


# ---------------------------------------------------------------------------------------------
# Errors table and directory readers
# ---------------------------------------------------------------------------------------------


def test_error_rows_round_trip_in_their_own_table(tmp_path, records):
    writer = OrbitShardWriter(tmp_path)
    writer.write(records[:1])
    errors = [
        {"id": "orbit-9", "asset": "assets/orbit-9.glb", "stage": "render", "reason": "mesh has no faces"},
        {"id": "orbit-8", "stage": "filter", "reason": "quality 0.1 < 0.3"},
    ]
    path = writer.write_errors(errors)
    assert path.parent.name == shards.ERRORS_DIRNAME
    assert writer.write_errors(list(reversed(errors))) == path  # same ids, same file
    assert shards.list_shard_files(tmp_path, table="errors") == [path]
    assert shards.read_ids(tmp_path, table="errors") == {"orbit-8", "orbit-9"}
    assert shards.read_ids(tmp_path) == {"orbit-0"}  # errors never count as orbits

    table = shards.read_table(tmp_path, table="errors")
    assert table.schema.names == shards.ERROR_SCHEMA.names
    assert table.to_pylist() == [
        {"id": "orbit-8", "asset": None, "stage": "filter", "reason": "quality 0.1 < 0.3", "format_version": shards.FORMAT_VERSION},
        {
            "id": "orbit-9",
            "asset": "assets/orbit-9.glb",
            "stage": "render",
            "reason": "mesh has no faces",
            "format_version": shards.FORMAT_VERSION,
        },
    ]
    with pytest.raises(ShardFormatError, match="reason"):
        writer.write_errors([{"id": "orbit-7", "stage": "render"}])


def test_pyarrow_dataset_reads_the_directory_as_orbit_rows_only(tmp_path, records):
    writer = OrbitShardWriter(tmp_path)
    writer.write(records[:2])
    writer.write(records[2:])
    writer.write_errors([{"id": "orbit-5", "stage": "render", "reason": "timeout"}])
    (tmp_path / ".orbits-0000000000000000.parquet.1234abcd.partial").write_bytes(b"half a file")

    dataset = pads.dataset(tmp_path, format="parquet")
    table = dataset.to_table()
    assert table.num_rows == 3
    assert sorted(table.column("id").to_pylist()) == ["orbit-0", "orbit-1", "orbit-2"]
    shards.validate_table(table)
    assert dataset.to_table(columns=["id", "cameras"], filter=pc.field("id") == "orbit-1").num_rows == 1


def test_read_table_accepts_files_and_column_subsets(tmp_path, records):
    writer = OrbitShardWriter(tmp_path)
    first, second = writer.write(records[:1]), writer.write(records[1:])
    table = shards.read_table([second, first], columns=["id", "elevation"])
    assert table.column_names == ["id", "elevation"]
    assert table.column("id").to_pylist() == ["orbit-1", "orbit-2", "orbit-0"]
    assert shards.read_table(first).num_rows == 1


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def replace_column(table: pa.Table, name: str, values, data_type=None) -> pa.Table:
    field = table.schema.field(name)
    array = pa.array(values, type=data_type or field.type)
    return table.set_column(table.schema.get_field_index(name), pa.field(name, array.type, nullable=field.nullable), array)


def test_validate_rejects_views_that_disagree(records):
    table = shards.records_to_table(records)
    cameras = table.column("cameras").to_pylist()
    cameras[1] = cameras[1][:-1]
    with pytest.raises(ShardFormatError, match=r"orbit-1.*'cameras'.*3 views.*'frames' holds 4"):
        shards.validate_table(replace_column(table, "cameras", cameras))


def test_validate_rejects_duplicate_ids(records):
    table = shards.records_to_table(records)
    with pytest.raises(ShardFormatError, match=r"'id'.*'orbit-0'"):
        shards.validate_table(replace_column(table, "id", ["orbit-0", "orbit-1", "orbit-0"]))


def test_validate_rejects_unknown_format_versions(records):
    table = shards.records_to_table(records)
    with pytest.raises(ShardFormatError, match=r"orbit-2.*'format_version' is 2"):
        shards.validate_table(replace_column(table, "format_version", [1, 1, 2]))


@pytest.mark.parametrize(
    ("column", "data_type"),
    [("elevation", pa.float64()), ("cameras", pa.list_(pa.list_(pa.float64()))), ("frames", pa.list_(pa.string()))],
)
def test_validate_rejects_wrong_column_types(records, column, data_type):
    table = shards.records_to_table(records)
    values = table.column(column).to_pylist()
    if column == "frames":
        values = [[frame.decode("latin-1") for frame in frames] for frames in values]
    with pytest.raises(ShardFormatError, match=f"column '{column}' has type"):
        shards.validate_table(replace_column(table, column, values, data_type))


def test_validate_rejects_missing_columns_nulls_and_bad_sources(records):
    table = shards.records_to_table(records)
    with pytest.raises(ShardFormatError, match=r"missing \['quality'\]"):
        shards.validate_table(table.drop_columns(["quality"]))
    with pytest.raises(ShardFormatError, match=r"orbit-1.*'prompt' is null"):
        shards.validate_table(replace_column(table, "prompt", ["a", None, "c"]))
    with pytest.raises(ShardFormatError, match=r"orbit-0.*'source' is 'photo'"):
        shards.validate_table(replace_column(table, "source", ["photo", "render", "render"]))
    frames = table.column("frames").to_pylist()
    frames[2][1] = None
    with pytest.raises(ShardFormatError, match=r"orbit-2.*'frames' holds a null"):
        shards.validate_table(replace_column(table, "frames", frames))


def test_writer_validates_before_writing(tmp_path, records):
    table = replace_column(shards.records_to_table(records), "num_orbit_views", [4, 5, 4])
    with pytest.raises(ShardFormatError, match=r"orbit-1.*'num_orbit_views' is 5"):
        OrbitShardWriter(tmp_path).write(table)
    assert list(tmp_path.iterdir()) == []


def test_records_with_inconsistent_arrays_are_rejected(records):
    with pytest.raises(ShardFormatError, match=r"orbit-0.*cameras have shape \(3, 25\)"):
        shards.encode_record(make_record("orbit-0", np.random.default_rng(4), cameras=orbit_cameras(3)))
    with pytest.raises(ShardFormatError, match=r"orbit-1.*uint8"):
        shards.encode_record(make_record("orbit-1", np.random.default_rng(4), rgba=np.zeros((VIEWS, SIZE, SIZE, 4), np.float32)))
    with pytest.raises(ShardFormatError, match=r"orbit-2.*num_orbit_views=5"):
        shards.encode_record(make_record("orbit-2", np.random.default_rng(4), num_orbit_views=5))
    with pytest.raises(ShardFormatError, match=r"orbit-3.*square"):
        shards.encode_record(make_record("orbit-3", np.random.default_rng(4), rgba=np.zeros((VIEWS, SIZE, SIZE // 2, 4), np.uint8)))


@pytest.mark.parametrize(
    "corruption",
    [
        lambda data: data[: len(data) // 2],  # truncated PNG
        lambda data: b"GIF89a" + data[6:],  # neither PNG nor WebP
        lambda data: data[:40] + bytes(255 - byte for byte in data[40:]),  # PNG header, garbage body
    ],
)
def test_corrupt_images_are_reported_with_the_row_id(records, corruption):
    row = shards.encode_record(records[1])
    row["frames"][2] = corruption(row["frames"][2])
    with pytest.raises(ShardFormatError, match=r"row 'orbit-1', column 'frames', view 2"):
        shards.decode_row(row)
    batch = {name: [shards.encode_record(records[0])[name], row[name]] for name in row}
    with pytest.raises(ShardFormatError, match="orbit-1"):
        shards.decode_batch(batch)


def test_images_of_the_wrong_kind_are_rejected(records):
    row = shards.encode_record(records[0])
    buffer = io.BytesIO()
    Image.new("RGBA", (SIZE, SIZE)).save(buffer, format="PNG")
    row["frames"][0] = buffer.getvalue()
    with pytest.raises(ShardFormatError, match=r"orbit-0.*'frames', view 0: image mode is RGBA"):
        shards.decode_row(row)
    row = shards.encode_record(records[0])
    row["resolution"] = SIZE * 2
    with pytest.raises(ShardFormatError, match="'resolution'"):
        shards.decode_row(row)


# ---------------------------------------------------------------------------------------------
# View sampling
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def decoded_orbit():
    """6 views (4 orbit + 2 extra) with masks exactly 0 or 1 at known pixels and soft edges."""
    rng = np.random.default_rng(5)
    rgba = random_rgba(rng, views=6, size=24)
    rgba[:, 0, 0, 3], rgba[:, 12, 12, 3] = 0, 255
    cameras = np.concatenate(
        [
            orbit_cameras(4),
            vf3d_cameras.render_camera_vector(vf3d_cameras.random_sphere_poses(2, generator=torch.Generator().manual_seed(0))).numpy(),
        ]
    )
    record = make_record("orbit-views", rng, rgba=rgba, cameras=cameras, num_orbit_views=4)
    return shards.decode_row(shards.encode_record(record))


def test_view_sampler_picks_distinct_views_and_their_cameras(decoded_orbit):
    sampler = ViewSampler(num_target_views=3, seed=1)
    sources = set()
    for epoch in range(30):
        sample = sampler(decoded_orbit, epoch=epoch)
        source, targets = int(sample["source_view"]), sample["target_views"].tolist()
        sources.add(source)
        assert source < 4  # orbit views only
        assert len(set(targets)) == 3 and source not in targets
        assert torch.equal(sample["source_image"], decoded_orbit["frames"][source])
        assert torch.equal(sample["source_camera"], decoded_orbit["cameras"][source])
        assert torch.equal(sample["target_cameras"], decoded_orbit["cameras"][targets])
        assert torch.equal(sample["target_masks"], decoded_orbit["masks"][targets])
        assert sample["target_images"].shape == (3, 3, 24, 24) and sample["target_backgrounds"].shape == (3, 3)
    assert len(sources) > 1  # epochs differ


def test_view_sampler_can_draw_the_source_from_extra_views(decoded_orbit):
    sampler = ViewSampler(num_target_views=2, source_from_orbit_only=False)
    assert {int(sampler(decoded_orbit, epoch=epoch)["source_view"]) for epoch in range(60)} & {4, 5}


def test_view_sampler_recomposites_targets_exactly(decoded_orbit):
    colors = ((0.0, 0.0, 0.0), (0.5, 0.5, 0.5), (1.0, 1.0, 1.0))
    sampler = ViewSampler(num_target_views=5, background_colors=colors)
    seen = set()
    for epoch in range(10):
        sample = sampler(decoded_orbit, epoch=epoch)
        for target, view in enumerate(sample["target_views"].tolist()):
            background = sample["target_backgrounds"][target]
            seen.add(tuple(background.tolist()))
            image, frame = sample["target_images"][target], decoded_orbit["frames"][view]
            assert torch.equal(image[:, 0, 0], background)  # mask 0: the background colour
            assert torch.equal(image[:, 12, 12], frame[:, 12, 12])  # mask 1: unchanged
            mask = decoded_orbit["masks"][view]
            assert torch.allclose(image, frame - (1 - mask) * (1 - background[:, None, None]), atol=1e-6)
    assert seen == set(colors)


def test_view_sampler_uses_the_configured_backgrounds_only(decoded_orbit):
    sampler = ViewSampler(num_target_views=4, background_colors=[0.25, (0.1, 0.2, 0.3)])
    seen = {tuple(color) for epoch in range(10) for color in sampler(decoded_orbit, epoch=epoch)["target_backgrounds"].tolist()}
    assert seen == {(0.25, 0.25, 0.25), tuple(torch.tensor([0.1, 0.2, 0.3]).tolist())}
    with pytest.raises(ValueError, match="background_colors"):
        ViewSampler(background_colors=[])
    with pytest.raises(ValueError, match="background_colors"):
        ViewSampler(background_colors=[(0.0, 2.0, 0.0)])


def test_view_sampler_is_reproducible(decoded_orbit):
    first = ViewSampler(seed=3)(decoded_orbit)
    again = ViewSampler(seed=3)(decoded_orbit)
    for name in first:
        assert torch.equal(first[name], again[name]), name
    explicit = ViewSampler()(decoded_orbit, generator=torch.Generator().manual_seed(11))
    assert torch.equal(
        explicit["target_views"], ViewSampler(seed=99)(decoded_orbit, generator=torch.Generator().manual_seed(11))["target_views"]
    )
    others = [ViewSampler(seed=seed)(decoded_orbit) for seed in range(4, 12)]
    assert any(
        not torch.equal(first["target_views"], other["target_views"])
        or not torch.equal(first["target_backgrounds"], other["target_backgrounds"])
        for other in others
    )


def test_view_sampler_reuses_the_source_only_when_views_run_out(decoded_orbit):
    sampler = ViewSampler(num_target_views=6)
    sample = sampler(decoded_orbit)
    assert sorted(sample["target_views"].tolist()) == list(range(6))
    with pytest.raises(ValueError, match="7 distinct target views"):
        ViewSampler(num_target_views=7)(decoded_orbit)


def test_view_sampler_accepts_rows_of_decode_batch(records):
    table = shards.records_to_table(records)
    decoded = shards.decode_batch({name: table.column(name).to_numpy() for name in table.column_names})
    row = {name: decoded[name][1] for name in decoded}
    sample = ViewSampler(num_target_views=2)(row)
    assert sample["target_images"].shape == (2, 3, SIZE, SIZE)


def test_the_shard_module_imports_neither_ray_nor_deepspeed():
    # Ray Data pipelines call it inside map_batches; it must stay a plain library.
    code = "import sys, vf3d.data.shards; print(sorted(m for m in ('ray', 'deepspeed') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
