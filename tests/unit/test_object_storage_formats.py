"""The shard format, id manifests, output leases, failure records and model directories on a
real S3 API (moto's server over HTTP): the same contracts as on local disks."""

from __future__ import annotations

import json
import os
import socket
import time

import numpy as np
import pyarrow as pa
import pytest
import s3_fixtures
from test_shards import make_record

from vf3d import storage
from vf3d.data import manifest, shards
from vf3d.synthesis import lease as lease_module
from vf3d.synthesis.config import LeaseConfig
from vf3d.synthesis.failures import failure_summary

s3_server, s3_bucket = s3_fixtures.s3_server, s3_fixtures.s3_bucket


@pytest.fixture
def records():
    rng = np.random.default_rng(0)
    return [make_record(f"orbit-{index}", rng) for index in range(4)]


def test_shards_errors_and_rejects_round_trip_on_s3(s3_bucket, records):
    out = f"{s3_bucket}/orbits"
    writer = shards.OrbitShardWriter(out, prefix="synthetic")
    first = writer.write(records[:2])
    again = writer.write(records[1::-1])  # the same ids: the same file, replaced
    assert first == again and isinstance(first, str) and first.startswith(f"{out}/synthetic-")
    writer.write_errors([{"id": "bad-1", "stage": "generate", "reason": "prompt is empty"}])
    rejected = shards.records_to_table(records[2:3])
    writer.write_rejected(rejected.append_column("reasons", pa.array([["static"]], pa.list_(pa.string()))))
    assert [storage.name(path) for path in shards.list_shard_files(out)] == [storage.name(first)]
    assert len(shards.list_shard_files(out, "errors")) == len(shards.list_shard_files(out, "rejected")) == 1
    table = shards.read_table(out)
    assert sorted(table.column("id").to_pylist()) == ["orbit-0", "orbit-1"]
    decoded = list(shards.iter_records(out))
    assert decoded[0]["frames"].shape[0] == records[0].rgba.shape[0]
    index = shards.index_shards(out)
    assert index.read_from_shards == 0, "every file has a manifest entry: no shard is read to plan a resume"
    assert sorted(index.ids("orbits").to_pylist()) == ["orbit-0", "orbit-1"] and index.ids("errors").to_pylist() == ["bad-1"]
    assert index.ids("rejected").to_pylist() == ["orbit-2"]
    compacted = shards.compact_index(out, index)
    assert [storage.name(path) for path in manifest.manifest_files(out)] == compacted.manifests
    assert not [name for name, _ in storage.list_dir(out) if name.endswith(".partial")]


def test_manifest_logs_are_segments_rewritten_whole(s3_bucket, monkeypatch):
    monkeypatch.setattr(manifest, "SEGMENT_ENTRIES", 3)
    out = f"{s3_bucket}/logs"
    log = manifest.ManifestLog(out)
    for index in range(7):
        log.append("orbits", f"synthetic-{index:016x}.parquet", [f"id-{index}-a", f"id-{index}-b"])
    files = manifest.manifest_files(out)
    assert len(files) == 3, "7 entries in segments of 3"
    entries, names = manifest.read_manifests(out)
    assert entries.num_rows == 7 and len(names) == 3
    assert sorted(entries.column("file").to_pylist()) == [f"synthetic-{index:016x}.parquet" for index in range(7)]


def test_a_shard_without_a_manifest_entry_is_read_directly(s3_bucket, records):
    out = f"{s3_bucket}/unlogged"
    shards.OrbitShardWriter(out, manifest=False).write(records)
    index = shards.index_shards(out)
    assert index.read_from_shards == 1 and sorted(index.ids("orbits").to_pylist()) == [record.id for record in records]


def test_the_lease_on_s3_refuses_a_second_run_and_is_released(s3_bucket, monkeypatch):
    monkeypatch.setattr(lease_module, "REMOTE_SETTLE_SECONDS", 0.2)
    out = f"{s3_bucket}/leased"
    config = LeaseConfig(heartbeat_seconds=0.5, stale_after_seconds=5.0)
    with lease_module.OutputLease(out, config, command="synthesize"):
        assert storage.read_json(f"{out}/{lease_module.LEASE_NAME}")["command"] == "synthesize"
        with pytest.raises(lease_module.LeaseHeldError, match=r"is in use by another run \(synthesize host"):
            lease_module.OutputLease(out, config, command="synthesize").acquire()
        time.sleep(1.2)  # a heartbeat or two rewrite the object
        assert time.time() - storage.read_json(f"{out}/{lease_module.LEASE_NAME}")["heartbeat"] < 1.0
    assert not storage.exists(f"{out}/{lease_module.LEASE_NAME}")
    assert storage.list_dir(out) == []


def test_a_stale_lease_from_another_host_is_taken_over(s3_bucket, monkeypatch):
    monkeypatch.setattr(lease_module, "REMOTE_SETTLE_SECONDS", 0.2)
    out = f"{s3_bucket}/stale"
    dead = {"host": f"not-{socket.gethostname()}", "pid": 1, "started": "earlier", "heartbeat": time.time() - 60, "token": "dead"}
    storage.publish_bytes(json.dumps(dead).encode(), f"{out}/{lease_module.LEASE_NAME}")
    lines = []
    with lease_module.OutputLease(out, LeaseConfig(heartbeat_seconds=1.0, stale_after_seconds=10.0), log=lines.append) as held:
        assert storage.read_json(f"{out}/{lease_module.LEASE_NAME}")["token"] == held.token
    assert lines and "taking over a stale lease" in lines[0] and "no heartbeat for" in lines[0]


def test_stage_failures_are_one_object_each_on_s3(s3_bucket):
    from vf3d.synthesis.failures import FailureTracker, InfrastructureError

    out = f"{s3_bucket}/failures"
    started = time.time()
    tracker = FailureTracker("generate", out, max_consecutive=5, actor="actor-1")
    for _ in range(2):
        with pytest.raises(InfrastructureError):
            tracker.failed(OSError(5, "Input/output error"))
    summary = failure_summary(out, since=started, pending=4, finished=4, max_errored_blocks=0)
    assert summary["infrastructure_failures"] == 2 and summary["by_stage"] == {"generate": 2}


def test_model_directories_save_to_and_load_from_s3(s3_bucket):
    import torch

    from vf3d import config as config_lib
    from vf3d.models.reconstructor import Reconstructor
    from vf3d.models.reconstructor.config import RECONSTRUCTOR_PRESETS

    torch.manual_seed(0)
    model = Reconstructor(config_lib.preset(RECONSTRUCTOR_PRESETS, "debug"))
    uri = f"{s3_bucket}/models/recon"
    assert model.save_pretrained(uri) == uri
    assert storage.walk_files(uri) == ["config.json", "model.safetensors"]
    loaded = Reconstructor.from_pretrained(uri)
    for (name, expected), (_, actual) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(expected, actual), name
    from vf3d.models.pretrained import ModelDirectoryError

    with pytest.raises(ModelDirectoryError, match="model directory not found"):
        Reconstructor.load_config(f"{s3_bucket}/models/missing")


def test_image_to_3d_reads_and_writes_object_storage(s3_bucket, tmp_path):
    """`vf3d init-model` and `vf3d image-to-3d` (their Python API: the same specs) with the photo,
    the model directory, the mesh, the turntable and the summary all on s3://."""
    import imageio.v3 as iio
    import skimage.data
    import trimesh
    from PIL import Image

    from vf3d.specs import ImageTo3D, InitModel, execute

    model = f"{s3_bucket}/models/debug"
    execute(InitModel(out=model, preset="debug", seed=0), log=lambda line: None)  # `vf3d init-model --out s3://...`
    assert storage.walk_files(model) == ["config.json", "model.safetensors"]
    Image.fromarray(skimage.data.coffee()).save(tmp_path / "coffee.png")
    storage.upload_tree(tmp_path, f"{s3_bucket}/photos")
    out = f"{s3_bucket}/results/mug.glb"
    spec = ImageTo3D(
        image=f"{s3_bucket}/photos/coffee.png", model=model, out=out, video=f"{s3_bucket}/results/mug.mp4", preset="debug", mesh_iso="auto"
    )
    execute(spec, log=lambda line: None)

    assert sorted(storage.walk_files(f"{s3_bucket}/results")) == ["mug.glb", "mug.glb.json", "mug.mp4"]
    mesh = trimesh.load(trimesh.util.wrap_as_stream(storage.read_bytes(out)), file_type="glb", force="mesh")
    summary = storage.read_json(f"{out}.json")
    assert len(mesh.vertices) == summary["vertices"] > 0 and summary["mesh"] == out
    assert iio.imread(storage.read_bytes(f"{s3_bucket}/results/mug.mp4"), extension=".mp4").shape[0] == 16


def test_tensorboard_event_files_are_published_to_an_object_store_directory(s3_bucket, tmp_path, monkeypatch):
    """Rank 0's tracker with an s3:// `tensorboard_dir` writes locally and publishes the event files
    there while training (every upload interval) and on close; TensorBoard reads them back."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vf3d.training import tracking
    from vf3d.training.config import TrainingConfig

    training = TrainingConfig()
    training.tracking.tensorboard_dir = f"{s3_bucket}/run/tensorboard"
    monkeypatch.setattr(tracking, "TENSORBOARD_UPLOAD_INTERVAL_S", 0.0)  # publish at every log call
    tracker = tracking.ScalarTracker(training, "regression")
    tracker.log(4, {"loss": 0.5}, 1e-3, steps_per_second=2.0, samples_per_second=16.0)
    published = storage.walk_files(training.tracking.tensorboard_dir)
    assert len(published) == 1 and published[0].startswith("events.out.tfevents."), "published while the run goes on"
    tracker.log(8, {"loss": 0.25}, 1e-3, steps_per_second=2.0, samples_per_second=16.0)
    scratch = tracker.writer.log_dir
    tracker.close()
    assert not os.path.exists(scratch), "the local scratch directory is removed on close"

    local = tmp_path / "tensorboard"
    local.mkdir()
    (local / published[0]).write_bytes(storage.read_bytes(f"{training.tracking.tensorboard_dir}/{published[0]}"))
    events = EventAccumulator(str(local))
    events.Reload()
    assert [(event.step, event.value) for event in events.Scalars("loss/loss")] == [(4, 0.5), (8, 0.25)]
