"""The synthesis stages as plain objects (no Ray): input validation, seeding, per-row error
isolation, and the filter's kept/rejected decision on real renders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from vf3d import config as config_lib
from vf3d.data import shards
from vf3d.data.config import OrbitRenderConfig
from vf3d.models.config import QualityProbeConfig
from vf3d.models.video.config import VIDEO_MODEL_PRESETS
from vf3d.synthesis.config import SYNTHESIZE_PRESETS, TRAIN_FILTER_PRESETS, SynthesizeConfig
from vf3d.synthesis.failures import FAILURES_NAME, FailureTracker, InfrastructureError, is_infrastructure_error
from vf3d.synthesis.stages import EncodeOrbits, FilterOrbits, ForegroundMasks, GenerateOrbits, derived_seed, prepare_inputs


@pytest.fixture(scope="module")
def debug_config() -> dict:
    return config_lib.to_dict(config_lib.preset(SYNTHESIZE_PRESETS, "debug"))


def _prepare(rows, debug_config, done=(), schema=None):
    table = pa.Table.from_pylist(rows, schema=schema) if schema else pa.Table.from_pylist(rows)
    return prepare_inputs(table, pa.array(sorted(done), pa.string()), debug_config, "/nonexistent").to_pylist()


def test_prepare_validates_prompts_and_elevations(debug_config):
    schema = pa.schema([("id", pa.string()), ("prompt", pa.binary()), ("elevation", pa.float64())])
    rows = [
        {"id": "ok", "prompt": b"  a   chair\n", "elevation": None},
        {"id": "given", "prompt": b"a mug", "elevation": 12.5},
        {"id": "empty", "prompt": b" ", "elevation": None},
        {"id": "utf8", "prompt": b"\xc3\x28", "elevation": None},
        {"id": "control", "prompt": b"a\x07b", "elevation": None},
        {"id": "long", "prompt": b"x" * 1001, "elevation": None},
        {"id": "null", "prompt": None, "elevation": None},
        {"id": "steep", "prompt": b"a lamp", "elevation": -90.0},
        {"id": "nan", "prompt": b"a lamp", "elevation": float("nan")},
    ]
    out = {row["id"]: row for row in _prepare(rows, debug_config, schema=schema)}
    assert out["ok"]["prompt"] == "a chair" and out["ok"]["error"] == "" and not out["ok"]["elevation_given"]
    assert 0 <= out["ok"]["elevation"] <= 30
    assert out["given"]["elevation"] == 12.5 and out["given"]["elevation_given"]
    reasons = {identifier: row["error"] for identifier, row in out.items() if row["error"]}
    assert set(reasons) == {"empty", "utf8", "control", "long", "null", "steep", "nan"}
    assert "not valid UTF-8" in reasons["utf8"] and "1001 characters" in reasons["long"] and "control characters" in reasons["control"]
    assert all(row["error_stage"] == "prepare" for row in out.values() if row["error"])


def test_prepare_drops_finished_ids_and_seeds_by_id(debug_config):
    rows = [{"id": f"i{index}", "prompt": "a cup"} for index in range(6)]
    first = _prepare(rows, debug_config, done={"i1", "i4"})
    assert [row["id"] for row in first] == ["i0", "i2", "i3", "i5"]
    again = {row["id"]: row for row in _prepare(rows[::-1], debug_config)}
    for row in first:  # same id → same seed and elevation, whatever the order or the batch
        assert (row["seed"], row["elevation"]) == (again[row["id"]]["seed"], again[row["id"]]["elevation"])
    assert len({row["seed"] for row in first}) == 4
    assert derived_seed("i0", 0) != derived_seed("i0", 1)


def test_prepare_reads_image_files_and_reports_missing_ones(debug_config, tmp_path):
    (tmp_path / "cup.png").write_bytes(b"png bytes")
    table = pa.table({"id": ["a", "b", "c"], "prompt": ["x", None, None], "image": ["cup.png", "missing.png", None]})
    rows = {row["id"]: row for row in prepare_inputs(table, pa.array([], pa.string()), debug_config, str(tmp_path)).to_pylist()}
    assert rows["a"]["image"] == b"png bytes" and rows["a"]["error"] == ""
    assert "cannot be read" in rows["b"]["error"]
    assert rows["c"]["error"] == "prompt is missing (null) and no image is given"


def test_a_failing_row_does_not_fail_its_batch(debug_config, tmp_path):
    from vf3d.models.video import build_video_pipeline

    build_video_pipeline(VIDEO_MODEL_PRESETS["debug"]()).save_pretrained(tmp_path / "video")
    stage = GenerateOrbits(debug_config, str(tmp_path), str(tmp_path / "video"))
    good = np.full((32, 32, 3), 200, np.uint8)
    first_frames = np.empty(3, dtype=object)
    first_frames[:] = [good, np.zeros((32, 32, 4), np.uint8), good]  # the middle one is RGBA: refused
    batch = {
        "id": np.array(["a", "b", "c"], dtype=object),
        "prompt": np.array(["a cup", "a cup", "a cup"], dtype=object),
        "elevation": np.array([10.0, 10.0, 20.0]),
        "seed": np.array([1, 2, 3]),
        "first_frame": first_frames,
        "error": np.array(["", "", ""], dtype=object),
        "error_stage": np.array(["", "", ""], dtype=object),
        "trace": np.array(["{}"] * 3, dtype=object),
    }
    out = stage(batch)
    assert list(out["error"][[0, 2]]) == ["", ""] and "ValueError" in out["error"][1] and out["error_stage"][1] == "generate"
    assert out["frames"].shape == (3, 16, 32, 32, 3) and out["cameras"].shape == (3, 16, 25)
    assert "first_frame" not in out
    assert all(set(json.loads(trace)) == {"generate"} for trace in out["trace"])  # failures cost time too
    # The same rows generated alone give the same orbits: a row does not depend on its batch-mates.
    alone = stage({**{key: value[[2]] for key, value in batch.items()}})
    np.testing.assert_array_equal(alone["frames"][0], out["frames"][2])


def _orbit_batch(frames: np.ndarray) -> dict[str, np.ndarray]:
    count = len(frames)
    return {
        "id": np.array([f"o{index}" for index in range(count)], dtype=object),
        "prompt": np.array(["duck"] * count, dtype=object),
        "elevation": np.full(count, 15.0),
        "elevation_given": np.zeros(count, bool),
        "seed": np.arange(count),
        "first_frame_given": np.zeros(count, bool),
        "frames": frames,
        "cameras": np.zeros((count, frames.shape[1], 25), np.float32),
        "error": np.array([""] * count, dtype=object),
        "error_stage": np.array([""] * count, dtype=object),
        "trace": np.array(["{}"] * count, dtype=object),
    }


def test_filter_keeps_a_real_orbit_and_rejects_a_static_one(debug_config, tmp_path):
    import pybullet_data

    from vf3d.data.assets import load_asset
    from vf3d.data.orbit_renderer import OrbitRenderer, render_orbit

    render = OrbitRenderConfig(num_views=16, resolution=64)
    duck = Path(pybullet_data.getDataPath()) / "duck.obj"
    orbit = render_orbit(OrbitRenderer(64), load_asset(duck, margin=render.margin), render, "duck", 0)
    real = shards.composite_on_white(orbit.rgba)
    static = np.repeat(real[:1], 16, axis=0)
    batch = _orbit_batch(np.stack([real, static]))
    batch.update(ForegroundMasks(debug_config, str(tmp_path))(batch))
    assert "probe_views" not in batch  # no probe: the mask stage prepares nothing for a GPU
    table = EncodeOrbits(debug_config, str(tmp_path), "video-model")(batch)
    rows = {row["id"]: row for row in table.to_pylist()}
    assert rows["o0"]["outcome"] == "kept" and rows["o0"]["reasons"] == []
    assert rows["o1"]["outcome"] == "rejected" and "static" in rows["o1"]["reasons"]
    assert json.loads(rows["o0"]["metadata"])["filter"]["probe_score"] is None  # heuristics only
    shards.validate_table(table.select(shards.ORBIT_SCHEMA.names))


def test_filter_applies_a_probe_whose_encoder_moved(debug_config, tmp_path):
    """A probe fitted on DINOv2 weights at one path runs where the same weights live elsewhere
    (`filter.encoder_path`); its score becomes the orbit's quality and can reject it."""
    import torch

    from vf3d.models.quality_filter import OrbitFeatureEncoder, QualityProbe
    from vf3d.models.reconstructor.encoder import ImageEncoder
    from vf3d.synthesis.quality import QualityFilter

    encoder_config = config_lib.preset(TRAIN_FILTER_PRESETS, "debug").encoder
    torch.manual_seed(0)
    ImageEncoder(encoder_config.encoder).dinov2.save_pretrained(tmp_path / "dino-here")
    encoder_config.encoder.pretrained_path = str(tmp_path / "dino-here")
    encoder = OrbitFeatureEncoder(encoder_config)
    probe = QualityProbe(QualityProbeConfig(encoder=encoder_config, feature_dim=encoder.feature_dim, threshold=0.5))
    with torch.no_grad():
        probe.feature_mean.zero_()
        probe.feature_std.fill_(1.0)
        probe.linear.weight.normal_()
        probe.linear.bias.zero_()
    QualityFilter(encoder, probe).save_pretrained(tmp_path / "probe")
    (tmp_path / "dino-here").rename(tmp_path / "dino-there")

    frames = np.stack([np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)])
    batch = _orbit_batch(frames)
    with_probe = config_lib.to_dict(
        config_lib.merge(
            config_lib.from_dict(SynthesizeConfig, debug_config),
            {"filter": {"probe_path": str(tmp_path / "probe"), "min_score": 1.0}},
        )
    )
    with pytest.raises(OSError):  # the recorded path is gone
        FilterOrbits(with_probe, str(tmp_path), "video-model")
    with_probe["filter"]["encoder_path"] = str(tmp_path / "dino-there")
    batch.update(ForegroundMasks(with_probe, str(tmp_path))(batch))
    # The GPU stage gets the probe's views ready-made (evenly spaced, as its encoder picks them).
    assert batch["probe_views"].shape == (1, encoder_config.num_views, 32, 32, 3)
    np.testing.assert_array_equal(batch["probe_views"][0][1], frames[0][16 // encoder_config.num_views])
    scored = FilterOrbits(with_probe, str(tmp_path), "video-model")(batch)
    assert "probe_views" not in scored and set(json.loads(scored["trace"][0])) == {"mask", "filter"}
    row = EncodeOrbits(with_probe, str(tmp_path), "video-model")(scored).to_pylist()[0]
    assert row["outcome"] == "rejected" and "probe_score" in row["reasons"] and 0 < row["quality"] < 1
    assert json.loads(row["metadata"])["filter"]["min_score"] == 1.0
    # A filter actor loads a transformers encoder and no diffusers model, so it never imports
    # diffusers (a fresh interpreter: this one has).
    import subprocess
    import sys

    script = (
        "import json, sys\n"
        "from vf3d.synthesis.stages import FilterOrbits\n"
        f"FilterOrbits(json.loads({json.dumps(with_probe)!r}), {str(tmp_path)!r}, 'video-model')\n"
        "print(json.dumps(sorted(name for name in ('diffusers', 'transformers') if name in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == ["transformers"]


@pytest.mark.parametrize(
    ("error", "infrastructure"),
    [
        (RuntimeError("CUDA error: an illegal memory access was encountered"), True),
        (RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"), True),
        (RuntimeError("NCCL communicator was aborted on rank 0"), True),
        (RuntimeError("uncorrectable ECC error encountered"), True),
        (OSError(5, "Input/output error"), True),
        (InfrastructureError("write: OSError"), True),
        (RuntimeError("Expected all tensors to be on the same device, but found cuda:0 and cpu"), False),
        (ValueError("first frame must be RGB"), False),
        (RuntimeError("shape mismatch"), False),
    ],
)
def test_errors_are_sorted_into_input_and_infrastructure(error, infrastructure):
    assert is_infrastructure_error(error) is infrastructure


def test_torch_gpu_errors_and_pil_decoding_errors_are_classified_by_type():
    import torch
    from PIL import Image, UnidentifiedImageError

    assert is_infrastructure_error(torch.cuda.OutOfMemoryError("out of memory"))
    assert Image is not None and not is_infrastructure_error(UnidentifiedImageError("cannot identify image file"))


def test_an_infrastructure_error_fails_the_batch_not_its_rows(debug_config, tmp_path):
    """An input error costs its row; a CUDA error raises (Ray retries the whole batch) and is
    recorded for the run summary; a later success resets the actor's count of failures in a row."""
    stage = ForegroundMasks(debug_config, str(tmp_path))
    rows = [0, 1, 2]

    def bad_input(indices):
        if 1 in indices:
            raise ValueError("model refuses row 1")
        return indices

    results, failures = stage.per_row(rows, bad_input)
    assert results == [0, None, 2] and list(failures) == [1] and "ValueError" in failures[1]

    def sick_gpu(indices):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(RuntimeError, match="CUDA error"):
        stage.per_row(rows, sick_gpu)
    tracker = FailureTracker("generate", tmp_path, max_consecutive=3, actor="a1")
    with pytest.raises(InfrastructureError, match="illegal memory access"):
        tracker.call(stage.per_row, rows, sick_gpu)
    assert tracker.consecutive == 1 and tracker.call(lambda: "ok") == "ok" and tracker.consecutive == 0
    with pytest.raises(ValueError):
        tracker.call(bad_input, [1])  # an input error escaping a stage is not counted as the machine's
    records = [json.loads(line) for line in (tmp_path / FAILURES_NAME).read_text().splitlines()]
    assert [(record["stage"], record["consecutive"], record["actor_exit"]) for record in records] == [("generate", 1, False)]


def test_parquet_reads_size_ray_datas_footer_readers_to_their_files(monkeypatch):
    """Ray Data's footer-reader pool (32 by default, each a new worker process) is sized to the
    files of the reads made inside `footer_readers_for`, read back from Ray's own indexer."""
    import os

    from ray.data._internal.datasource_v2.formats.parquet.footer_file_indexer import FooterFileIndexer

    from vf3d.synthesis.datasets import FOOTER_READERS_VARIABLE, footer_readers_for

    def pool_size() -> int:
        return FooterFileIndexer(ignore_missing_paths=False)._num_actors

    monkeypatch.delenv(FOOTER_READERS_VARIABLE, raising=False)
    # In a process whose first Parquet read was made inside footer_readers_for (a suite that ran
    # a pipeline first), Ray's default must still be its own.
    assert pool_size() == 32, "Ray Data's default changed (or was frozen by our setting): revisit MAX_FOOTER_READERS"
    for files, expected in ((1, 1), (1_000, 1), (1_001, 2), (31_500, 32), (100_000, 32)):
        with footer_readers_for(files) as readers:
            assert readers == expected == pool_size(), files
    assert FOOTER_READERS_VARIABLE not in os.environ and pool_size() == 32
    monkeypatch.setenv(FOOTER_READERS_VARIABLE, "5")  # the user's setting wins
    with footer_readers_for(1) as readers:
        assert readers == 5 == pool_size()
    assert os.environ[FOOTER_READERS_VARIABLE] == "5"


def test_a_first_parquet_read_inside_footer_readers_for_leaves_rays_default_alone():
    """Ray's module also reads the variable at import for its process-wide default; a fresh
    process whose first import of it happens inside `footer_readers_for(1)` keeps Ray's 32."""
    import subprocess
    import sys

    script = (
        "from vf3d.synthesis.datasets import footer_readers_for\n"
        "with footer_readers_for(1):\n"
        "    from ray.data._internal.datasource_v2.formats.parquet.footer_file_indexer import FooterFileIndexer\n"
        "print(FooterFileIndexer(ignore_missing_paths=False)._num_actors)\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "32"


def test_first_frames_recentre_given_images_without_importing_the_text_to_image_stack(debug_config, tmp_path):
    """An actor that only recentres given images never imports diffusers or transformers; the
    text-to-image model, and they, load on the first prompt without an image (the synthesis runs
    of tests/integration draw theirs). A fresh interpreter, so that nothing imported them before."""
    import subprocess
    import sys

    from PIL import Image
    from skimage import data

    Image.fromarray(data.chelsea()).save(tmp_path / "cat.png")
    columns = {"id": "a", "prompt": "a cat", "seed": 1, "elevation": 10.0, "error": "", "error_stage": "", "trace": "{}"}
    script = f"""
import json, sys
from pathlib import Path
import numpy as np
from vf3d.synthesis.stages import FirstFrames

stage = FirstFrames(json.loads({json.dumps(debug_config)!r}), {str(tmp_path / "out")!r}, resolution=32)
columns = {{**json.loads({json.dumps(columns)!r}), "image": Path({str(tmp_path / "cat.png")!r}).read_bytes()}}
given = stage({{name: np.array([value], dtype=object) for name, value in columns.items()}})
print(json.dumps({{"given": bool(given["first_frame_given"][0]), "shape": given["first_frame"][0].shape,
                   "imported": [name for name in ("diffusers", "transformers") if name in sys.modules]}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"given": True, "shape": [32, 32, 3], "imported": []}, report


MASK_ACTOR = """
import json, sys, tempfile
import numpy as np
from vf3d import config as config_lib
from vf3d.synthesis.config import SYNTHESIZE_PRESETS
from vf3d.synthesis.stages import ForegroundMasks

config = config_lib.to_dict(config_lib.preset(SYNTHESIZE_PRESETS, "debug"))
frames = np.full((1, 4, 16, 16, 3), 255, np.uint8)
frames[0, :, 4:12, 4:12] = 40
batch = {"id": np.array(["a"]), "frames": frames, "trace": np.array(["{}"]), "error": np.array([""]), "error_stage": np.array([""])}
out = ForegroundMasks(config, tempfile.mkdtemp())(batch)
print(json.dumps({"torch": "torch" in sys.modules, "reasons": list(map(str, out["reasons"]))}))
"""


@pytest.mark.heavy  # a fresh interpreter
def test_the_mask_stage_computes_without_importing_torch():
    """Its actors (CPU, many on a large run) start without torch: NumPy and SciPy only."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", MASK_ACTOR], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["reasons"] == ['["static"]'] and not answer["torch"], answer
