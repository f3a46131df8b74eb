"""vf3d.storage and vf3d.atomic on a real S3 API (moto's server over HTTP) and on local disks:
URIs are never mangled into local paths, listings are one level and sorted, writes are published
whole or not at all, and bad locations are refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vf3d import atomic, storage

# The real S3 API (moto's server over HTTP) and a fresh bucket per test.


def test_uris_are_recognised_and_never_turned_into_local_paths():
    assert storage.is_uri("s3://bucket/key") and storage.is_uri("gs://bucket/key") and storage.is_uri("gcs://b/k")
    assert not storage.is_uri("/data/out") and not storage.is_uri("relative/out") and not storage.is_uri(Path("out"))
    assert storage.join("s3://bucket/prefix/", "_errors", "a.parquet") == "s3://bucket/prefix/_errors/a.parquet"
    assert storage.join("out", "_errors") == Path("out/_errors")
    assert storage.parent("s3://bucket/a/b.json") == "s3://bucket/a" and storage.parent("s3://bucket/b.json") == "s3://bucket"
    assert storage.name("gs://bucket/a/b.json") == "b.json"
    assert storage.relative_to("s3://bucket/a/b/c.png", "s3://bucket/a") == "b/c.png"
    with pytest.raises(storage.StorageError, match="went through a local Path"):
        storage.is_uri(Path("s3://bucket/key"))  # Path collapsed it to s3:/bucket/key


def test_a_training_checkpoint_on_an_object_store_is_named_by_its_uri(s3_bucket, tmp_path):
    """Ray's Checkpoint.path on S3 is `bucket/key` (a path inside its filesystem): run summaries
    and the finished-run check name it s3://bucket/key, which vf3d.storage reads back."""
    from ray.train import Checkpoint

    from vf3d.training.runner import _ray_storage, checkpoint_location

    storage.publish_bytes(b"{}", f"{s3_bucket}/runs/recon/step_00000006/vf3d_checkpoint.json")
    location = _ray_storage(f"{s3_bucket}/runs")
    on_s3 = Checkpoint(f"{location['storage_path']}/recon/step_00000006", filesystem=location["storage_filesystem"])
    assert not on_s3.path.startswith("s3://")
    named = checkpoint_location(on_s3)
    assert named == f"{s3_bucket}/runs/recon/step_00000006" and storage.read_json(storage.join(named, "vf3d_checkpoint.json")) == {}
    assert checkpoint_location(Checkpoint(str(tmp_path))) == str(tmp_path)


@pytest.mark.parametrize(
    ("uri", "message"), [("ftp://host/x", "unknown storage scheme 'ftp'"), ("s3:///key", "no bucket"), ("hdfs://nn/x", "unknown")]
)
def test_bad_uris_are_refused_by_name(uri, message):
    with pytest.raises(storage.StorageError, match=message):
        storage.filesystem_for(uri)


def test_endpoint_and_credentials_come_from_the_standard_variables(s3_bucket):
    import pyarrow.fs as pafs

    filesystem, path = storage.filesystem_for(f"{s3_bucket}/a/b")
    assert isinstance(filesystem, pafs.S3FileSystem) and path == f"{s3_bucket.removeprefix('s3://')}/a/b"
    storage.publish_bytes(b"x", f"{s3_bucket}/probe")  # reaches the local server, with the test keys
    assert storage.read_bytes(f"{s3_bucket}/probe") == b"x"


def test_a_missing_bucket_is_named(s3_bucket):
    with pytest.raises(OSError, match="vf3d-no-such-bucket"):
        atomic.write_text_atomic("s3://vf3d-no-such-bucket/out/summary.json", "{}")


def test_atomic_writes_publish_whole_objects_and_leave_no_partial_keys(s3_bucket):
    target = f"{s3_bucket}/out/summary.json"
    assert atomic.write_json_atomic(target, {"kept": 3}) == target
    assert storage.read_json(target) == {"kept": 3}
    atomic.write_bytes_atomic(f"{s3_bucket}/out/blob.bin", b"\x00" * 1000)
    with atomic.atomic_path(f"{s3_bucket}/out/table.parquet") as local:
        assert isinstance(local, Path) and local.name == "table.parquet"  # libraries that need a real file name get one
        pq.write_table(pa.table({"id": ["a", "b"]}), local)
    path, filesystem = storage.arrow_source(f"{s3_bucket}/out/table.parquet")
    assert pq.read_table(path, filesystem=filesystem).column("id").to_pylist() == ["a", "b"]
    assert storage.list_dir(f"{s3_bucket}/out") == [("blob.bin", True), ("summary.json", True), ("table.parquet", True)]


def test_a_failed_write_leaves_the_old_object_and_nothing_else(s3_bucket):
    target = f"{s3_bucket}/out/summary.json"
    atomic.write_json_atomic(target, {"version": 1})
    with pytest.raises(RuntimeError, match="serialiser died"):
        with atomic.atomic_write(target, "w") as file:
            file.write('{"version": 2, "half')
            raise RuntimeError("serialiser died")
    with pytest.raises(TypeError):
        atomic.write_json_atomic(target, {"not json": object()})
    assert storage.read_json(target) == {"version": 1}
    assert storage.list_dir(f"{s3_bucket}/out") == [("summary.json", True)]


def test_partial_keys_left_by_a_killed_writer_are_hidden_and_removed(s3_bucket):
    directory = f"{s3_bucket}/shards"
    atomic.write_bytes_atomic(f"{directory}/orbits-0123456789abcdef.parquet", b"done")
    # What a writer killed between its upload and its copy leaves behind.
    storage.publish_bytes(b"half", storage.partial_key(f"{directory}/orbits-fedcba9876543210.parquet", ".partial"))
    names = [name for name, _ in storage.list_dir(directory)]
    assert len(names) == 2 and any(name.startswith(".orbits-fedcba9876543210.parquet.") and name.endswith(".partial") for name in names)
    assert atomic.remove_partials(directory) == 1
    assert storage.list_dir(directory) == [("orbits-0123456789abcdef.parquet", True)]


def test_listing_is_one_level_and_sorted(s3_bucket):
    for key in ("d/b.txt", "d/a.txt", "d/sub/deep/c.txt", "d/_errors/e.txt"):
        atomic.write_text_atomic(f"{s3_bucket}/{key}", key)
    assert storage.list_dir(f"{s3_bucket}/d") == [("_errors", False), ("a.txt", True), ("b.txt", True), ("sub", False)]
    assert storage.list_dir(f"{s3_bucket}/nothing-here") == []
    assert storage.is_dir(f"{s3_bucket}/d") and storage.is_file(f"{s3_bucket}/d/a.txt") and not storage.exists(f"{s3_bucket}/d/z")
    assert storage.walk_files(f"{s3_bucket}/d") == ["_errors/e.txt", "a.txt", "b.txt", "sub/deep/c.txt"]


def test_moves_markers_and_local_copies(s3_bucket, tmp_path):
    atomic.write_text_atomic(f"{s3_bucket}/m/a.json", json.dumps({"a": 1}))
    storage.move(f"{s3_bucket}/m/a.json", f"{s3_bucket}/m/_retried/a.json")
    assert storage.list_dir(f"{s3_bucket}/m") == [("_retried", False)]
    assert storage.create_exclusive(f"{s3_bucket}/m/.fired") and not storage.create_exclusive(f"{s3_bucket}/m/.fired")
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"w" * 100)
    (model / "sub" / "x.json").write_text("{}")
    (model / "config.json").write_text("{}")
    storage.upload_tree(model, f"{s3_bucket}/models/m1", last=("config.json",))
    assert storage.walk_files(f"{s3_bucket}/models/m1") == ["config.json", "model.safetensors", "sub/x.json"]
    with storage.local_copy(f"{s3_bucket}/models/m1") as local:
        assert (local / "model.safetensors").read_bytes() == b"w" * 100 and (local / "sub" / "x.json").is_file()
    cached = storage.cached_local_copy(f"{s3_bucket}/models/m1")
    assert cached == storage.cached_local_copy(f"{s3_bucket}/models/m1") and (cached / "config.json").is_file()


def test_local_paths_keep_partial_and_rename(tmp_path):
    target = tmp_path / "out.json"
    assert atomic.write_json_atomic(target, [1]) == target and json.loads(target.read_text()) == [1]
    assert storage.list_dir(tmp_path) == [("out.json", True)]
    assert storage.arrow_source(target) == (str(target), None)  # pyarrow's local fast path
    storage.makedirs(tmp_path / "a" / "b")
    assert storage.is_dir(tmp_path / "a" / "b")
