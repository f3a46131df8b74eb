"""The shard format, id manifests, output leases, failure records and model directories on a
real S3 API (moto's server over HTTP): the same contracts as on local disks."""

from __future__ import annotations

import json
import os
import re
import socket
import time

import numpy as np
import pyarrow as pa
import pytest
from test_shards import make_record

from vf3d import storage
from vf3d.data import manifest, shards
from vf3d.synthesis import lease as lease_module
from vf3d.synthesis.config import LeaseConfig
from vf3d.synthesis.failures import failure_summary


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


def test_train_filter_reads_and_writes_object_storage(s3_bucket, tmp_path, vf3d_main):
    """`vf3d train-filter` with the labels, two shard directories (kept and _rejected/ orbits), the
    DINOv2 encoder and the probe directory on s3://; the probe loads and scores from there, and
    synthesize's filter stage takes it as `filter.probe_path`."""
    import torch
    from PIL import Image
    from skimage import data

    from vf3d import config as config_lib
    from vf3d.models.reconstructor.encoder import ImageEncoder
    from vf3d.synthesis.config import SYNTHESIZE_PRESETS, TRAIN_FILTER_PRESETS
    from vf3d.synthesis.quality import QualityFilter
    from vf3d.synthesis.stages import FilterOrbits, probe_threshold

    rng = np.random.default_rng(0)
    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    good, bad = [], []
    for photo in photos:  # good: a panned photo; bad: noise
        small = np.asarray(Image.fromarray(photo).resize((32, 32)))
        good.append(np.stack([np.roll(small, 2 * view, axis=1) for view in range(4)]))
        bad.append(rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))

    def record(identifier, frames):
        return shards.OrbitRecord(
            id=identifier,
            source="synthetic",
            prompt="",
            rgb=frames,
            mask=np.full((4, 32, 32), 255, np.uint8),
            cameras=np.zeros((4, 25), np.float32),
            elevation=0.0,
        )

    first, second = f"{s3_bucket}/kept", f"{s3_bucket}/filtered"
    shards.OrbitShardWriter(first).write([record(f"good{i}", frames) for i, frames in enumerate(good)] + [record("bad0", bad[0])])
    rejected = shards.records_to_table([record(f"bad{i}", bad[i]) for i in range(1, 4)])
    shards.OrbitShardWriter(second).write_rejected(rejected.append_column("reasons", pa.array([["static"]] * 3, pa.list_(pa.string()))))
    storage.publish_bytes(("id,label\n" + "".join(f"good{i},good\nbad{i},bad\n" for i in range(4))).encode(), f"{s3_bucket}/labels.csv")
    encoder_config = config_lib.preset(TRAIN_FILTER_PRESETS, "debug").encoder
    torch.manual_seed(0)
    ImageEncoder(encoder_config.encoder).dinov2.save_pretrained(tmp_path / "dino")
    storage.upload_tree(tmp_path / "dino", f"{s3_bucket}/dino")

    probe = f"{s3_bucket}/probe"
    result = vf3d_main(
        "train-filter",
        "--labels",
        f"{s3_bucket}/labels.csv",
        "--data",
        first,
        "--data",
        second,
        "--out",
        probe,
        "--encoder",
        f"{s3_bucket}/dino",
        "--preset",
        "debug",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert storage.walk_files(probe) == ["config.json", "filter_report.json", "model.safetensors", "train_filter_config.json"]
    report = storage.read_json(f"{probe}/filter_report.json")
    assert report["counts"]["labelled"] == 8 and report["counts"]["from_rejected"] == 3
    assert report["data_dirs"] == [first, second] and report["labels_path"] == f"{s3_bucket}/labels.csv"
    assert report["config"]["encoder"]["encoder"]["pretrained_path"] == f"{s3_bucket}/dino"

    loaded = QualityFilter.from_pretrained(probe)
    scores = loaded.score(np.stack(good + bad))
    assert scores.shape == (8,) and loaded.threshold == report["threshold"]
    config = config_lib.merge(config_lib.preset(SYNTHESIZE_PRESETS, "debug"), {"filter": {"probe_path": probe}})
    assert probe_threshold(config) == report["threshold"]
    stage = FilterOrbits(config_lib.to_dict(config), f"{s3_bucket}/synthetic", "video-model")
    np.testing.assert_allclose(stage.probe.score(np.stack(good + bad)), scores, atol=1e-6)


def test_sample_assets_publish_to_object_storage(s3_bucket, tmp_path, vf3d_main):
    """`vf3d sample-assets --out s3://...` puts the same files as a local run; a rerun keeps them."""
    out = f"{s3_bucket}/assets"
    result = vf3d_main("sample-assets", "--out", out, "--limit", "4")
    assert result.returncode == 0, result.stderr[-2000:]
    from vf3d.data.assets import gather_sample_assets

    local = tmp_path / "assets"
    gather_sample_assets(local, limit=4)
    files = storage.walk_files(out)
    assert files == storage.walk_files(local) and "captions.json" in files and any(name.endswith(".png") for name in files)
    for name in files:
        assert storage.read_bytes(f"{out}/{name}") == (local / name).read_bytes(), name
    assert vf3d_main("sample-assets", "--out", out, "--limit", "4").returncode == 0
    assert storage.walk_files(out) == files, "a rerun adds nothing"


def test_import_checkpoint_reads_a_source_on_object_storage(s3_bucket, tmp_path, debug_model_dir, vf3d_main):
    """`vf3d import-checkpoint s3://.../model.safetensors` (and a torch .pth there, loaded
    weights-only) gives the model a local source gives; a missing object is one line."""
    import torch

    from vf3d.models.reconstructor import Reconstructor
    from vf3d.models.release_weights import export_checkpoint, export_state_dict

    original = Reconstructor.from_pretrained(debug_model_dir)
    export_checkpoint(original, tmp_path / "model.safetensors", "vfusion3d")
    storage.publish_file(tmp_path / "model.safetensors", f"{s3_bucket}/release/model.safetensors")
    torch.save({"model_state_dict": export_state_dict(original, "vfusion3d")}, tmp_path / "model.pth")
    storage.publish_file(tmp_path / "model.pth", f"{s3_bucket}/release/model.pth")
    overrides = tmp_path / "heads.yaml"
    overrides.write_text(
        "transformer:\n  num_heads: 4\nencoder:\n  num_heads: 2\n  image_size: 64\nrenderer:\n  num_coarse_samples: 16\n  num_fine_samples: 16\n  render_size: 32\n"
    )
    local = vf3d_main(
        "import-checkpoint", tmp_path / "model.safetensors", "--format", "vfusion3d", "--out", tmp_path / "local", "--config", overrides
    )
    assert local.returncode == 0, local.stderr[-2000:]
    expected = Reconstructor.from_pretrained(tmp_path / "local").state_dict()
    for source in ("model.safetensors", "model.pth"):
        out = f"{s3_bucket}/imported-{source}"
        result = vf3d_main(
            "import-checkpoint", f"{s3_bucket}/release/{source}", "--format", "vfusion3d", "--out", out, "--config", overrides
        )
        assert result.returncode == 0, result.stderr[-2000:]
        imported = Reconstructor.from_pretrained(out).state_dict()
        assert imported.keys() == expected.keys() and all(torch.equal(imported[name], expected[name]) for name in expected), source
        assert storage.read_json(f"{out}/config.json")["imported_from"]["file"] == f"{s3_bucket}/release/{source}"
    missing = vf3d_main("import-checkpoint", f"{s3_bucket}/release/none.safetensors", "--format", "vfusion3d", "--out", f"{s3_bucket}/x")
    assert (
        missing.returncode == 2
        and missing.stderr.strip() == f"vf3d import-checkpoint: error: checkpoint not found: {s3_bucket}/release/none.safetensors"
    )


def test_lpips_and_clip_weights_load_from_object_storage(s3_bucket, tmp_path):
    """An s3:// LPIPS backbone file (the training loss's and evaluate's) and an s3:// open_clip
    hub directory are fetched to a local cache and load as local ones do; a missing one is a
    ConfigError naming the URI."""
    import open_clip
    import torch
    from safetensors.torch import save_file
    from test_evaluation import TINY_CLIP
    from test_losses_metrics import torchvision_state

    from vf3d.config import ConfigError
    from vf3d.evaluation.clip_metrics import ClipScorer
    from vf3d.evaluation.config import EvalClipConfig
    from vf3d.models.config import ReconLossConfig
    from vf3d.models.lpips_network import build_lpips

    state = torchvision_state("squeezenet1_1", seed=123)
    torch.save(state, tmp_path / "squeezenet1_1.pth")
    backbone = f"{s3_bucket}/weights/squeezenet1_1.pth"
    storage.publish_file(tmp_path / "squeezenet1_1.pth", backbone)
    module = build_lpips(ReconLossConfig(lpips_net="squeeze", lpips_backbone_path=backbone))
    for key, value in module.net.state_dict().items():
        _, index, rest = key.split(".", 2)  # slice<k>.<features index>.<param>
        assert torch.equal(value, state[f"features.{index}.{rest}"]), key
    with pytest.raises(ConfigError, match=re.escape(f"losses.lpips_backbone_path: no such file: {s3_bucket}/weights/absent.pth")):
        build_lpips(ReconLossConfig(lpips_net="squeeze", lpips_backbone_path=f"{s3_bucket}/weights/absent.pth"))

    torch.manual_seed(0)
    clip_state = {key: value.contiguous() for key, value in open_clip.CLIP(**TINY_CLIP).state_dict().items()}
    hub = tmp_path / "tiny-hub"
    hub.mkdir()
    (hub / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP}))
    save_file(clip_state, str(hub / "open_clip_model.safetensors"))
    storage.upload_tree(hub, f"{s3_bucket}/weights/tiny-hub")
    scorer = ClipScorer(EvalClipConfig(weights_path=f"{s3_bucket}/weights/tiny-hub"))
    assert not scorer.random and scorer.description == f"{s3_bucket}/weights/tiny-hub"
    for key, value in scorer.model.state_dict().items():
        assert torch.equal(value, clip_state[key]), key
    with pytest.raises(ConfigError, match=re.escape(f"clip.weights_path: no such file or directory: {s3_bucket}/weights/nothing")):
        ClipScorer(EvalClipConfig(weights_path=f"{s3_bucket}/weights/nothing"))
