"""The `vf3d` command: help for every command, image-to-3d end to end, and bad input."""

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

VF3D = str(Path(sys.executable).with_name("vf3d"))
COMMANDS = ["image-to-3d", "init-model", "import-checkpoint", "render-assets", "sample-assets", "finetune-video", "synthesize", "train-filter", "train-recon", "evaluate", "serve", "submit", "demo", "show-config"]


def run(*args, **kwargs):
    return subprocess.run([VF3D, *map(str, args)], capture_output=True, text=True, timeout=300, **kwargs)


def test_help_lists_every_command_and_each_has_its_own_help():
    top = run("--help")
    assert top.returncode == 0
    for command in COMMANDS:
        assert command in top.stdout
        sub = run(command, "--help")
        assert sub.returncode == 0 and f"usage: vf3d {command}" in sub.stdout


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    import skimage.data

    path = tmp_path_factory.mktemp("photos") / "coffee.png"
    Image.fromarray(skimage.data.coffee()).save(path)
    return path


def test_image_to_3d_writes_a_coloured_glb_a_video_and_a_summary(tmp_path, photo, debug_model_dir):
    out = tmp_path / "nested" / "mug.glb"
    video = tmp_path / "mug.mp4"
    result = run("image-to-3d", photo, "--model", debug_model_dir, "--out", out, "--video", video, "--preset", "debug", "--mesh-resolution", "48", "--mesh-iso", "auto")
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout and str(video) in result.stdout
    mesh = trimesh.load(out, force="mesh")
    assert len(mesh.vertices) > 0 and len(mesh.faces) > 0
    colors = np.asarray(mesh.visual.vertex_colors)
    assert colors.shape == (len(mesh.vertices), 4) and colors[:, :3].std() > 0
    import imageio.v3 as iio

    frames = iio.imread(video)
    assert frames.shape[0] == 16 and frames.shape[-1] == 3
    summary = json.loads(out.with_name("mug.glb.json").read_text())
    assert summary["vertices"] == len(mesh.vertices) and summary["config"]["mesh_resolution"] == 48


def test_seeded_runs_are_reproducible(tmp_path, photo, debug_model_dir):
    outputs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.ply"
        assert run("image-to-3d", photo, "--model", debug_model_dir, "--out", out, "--preset", "debug", "--mesh-resolution", "32", "--mesh-iso", "auto", "--seed", "5").returncode == 0
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]


def png_header_claiming(width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def truncated_png():
    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("notes.png", b"this is not an image at all", "not a decodable image"),
        ("empty.png", b"", "empty"),
        ("truncated.png", truncated_png(), "truncated"),
        ("huge.png", png_header_claiming(50000, 50000), "pixels"),
    ],
)
def test_bad_images_get_one_clear_line_and_exit_code_2(tmp_path, debug_model_dir, name, content, expected):
    image = tmp_path / name
    image.write_bytes(content)
    out = tmp_path / "out.glb"
    result = run("image-to-3d", image, "--model", debug_model_dir, "--out", out)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vf3d image-to-3d: error:") and expected in lines[0], result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--out", "x.stl"], "--out must end in one of"),
        (["--out", "x.glb", "--video", "x.gif"], "--video must end in .mp4"),
        (["--out", "x.glb", "--mesh-iso", "deep"], "--mesh-iso must be a number"),
        (["--out", "x.glb", "--mesh-resolution", "3"], "mesh_resolution must be between"),
    ],
)
def test_bad_options_get_one_clear_line_and_exit_code_2(tmp_path, photo, debug_model_dir, args, expected):
    result = run("image-to-3d", photo, "--model", debug_model_dir, *args, cwd=tmp_path)
    assert result.returncode == 2 and expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_missing_model_and_bad_config_are_clear(tmp_path, photo):
    result = run("image-to-3d", photo, "--model", tmp_path / "nope", "--out", tmp_path / "o.glb")
    assert result.returncode == 2 and "model directory not found" in result.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("mesh_resolution: 64\nturntable_speed: 3\n")
    result = run("image-to-3d", photo, "--model", tmp_path, "--out", tmp_path / "o.glb", "--config", bad)
    assert result.returncode == 2 and "turntable_speed" in result.stderr


def test_init_model_and_show_config(tmp_path):
    result = run("init-model", "--preset", "debug", "--out", tmp_path / "m")
    assert result.returncode == 0 and (tmp_path / "m" / "model.safetensors").is_file()
    shown = run("show-config", "reconstructor", "--preset", "vfusion3d")
    config = json.loads(shown.stdout)
    assert config["transformer"]["num_layers"] == 16 and config["encoder"]["image_size"] == 512


def test_import_checkpoint_command_maps_a_released_layout(tmp_path, debug_model_dir):
    import torch

    from vf3d.checkpoints import export_checkpoint
    from vf3d.models.reconstructor import Reconstructor

    original = Reconstructor.from_pretrained(debug_model_dir)
    released = tmp_path / "model.safetensors"
    export_checkpoint(original, released, "vfusion3d")
    # Head counts and input size cannot be read from shapes: the debug model's come from --config.
    overrides = tmp_path / "heads.yaml"
    overrides.write_text("transformer:\n  num_heads: 4\nencoder:\n  num_heads: 2\n  image_size: 64\nrenderer:\n  num_coarse_samples: 16\n  num_fine_samples: 16\n  render_size: 32\n")
    result = run("import-checkpoint", released, "--format", "vfusion3d", "--out", tmp_path / "imported", "--config", overrides)
    assert result.returncode == 0, result.stderr
    imported = Reconstructor.from_pretrained(tmp_path / "imported")
    for name, tensor in original.state_dict().items():
        assert torch.equal(tensor, imported.state_dict()[name]), name
    wrong = run("import-checkpoint", released, "--format", "openlrm", "--out", tmp_path / "wrong")
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1 and not (tmp_path / "wrong").exists()


def test_train_filter_fits_a_probe_from_the_command_line_and_refuses_bad_labels(tmp_path):
    from skimage import data

    from vf3d.data import shards

    rng = np.random.default_rng(0)
    cameras = np.zeros((4, 25), np.float32)
    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    records = []
    for index in range(12):  # good: a (panned) photo; bad: noise
        photo = np.asarray(Image.fromarray(photos[index % 4]).resize((32, 32)))
        good = np.stack([np.roll(photo, 2 * view, axis=1) for view in range(4)])
        noise = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
        for name, frames in (("good", good), ("bad", noise)):
            records.append(shards.OrbitRecord(id=f"{name}{index}", source="synthetic", prompt="", rgb=frames, mask=np.full((4, 32, 32), 255, np.uint8), cameras=cameras, elevation=0.0))
    shards.OrbitShardWriter(tmp_path / "data").write(records)
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\n" + "".join(f"good{i},good\nbad{i},bad\n" for i in range(12)))
    result = run("train-filter", "--labels", labels, "--data", tmp_path / "data", "--out", tmp_path / "probe", "--preset", "debug")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "probe" / "filter_report.json").read_text())
    assert (tmp_path / "probe" / "model.safetensors").is_file() and report

    labels.write_text("id,label\ngood0,maybe\n")
    bad = run("train-filter", "--labels", labels, "--data", tmp_path / "data", "--out", tmp_path / "probe2", "--preset", "debug")
    assert bad.returncode == 2 and "maybe" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    missing = run("train-filter", "--labels", labels, "--data", tmp_path / "nowhere", "--out", tmp_path / "probe2", "--preset", "debug")
    assert missing.returncode == 2 and "--data directories not found" in missing.stderr
    no_encoder = run("train-filter", "--labels", labels, "--data", tmp_path / "data", "--out", tmp_path / "probe2")
    assert no_encoder.returncode == 2 and "pretrained_path is required" in no_encoder.stderr
    assert not (tmp_path / "probe2").exists()
