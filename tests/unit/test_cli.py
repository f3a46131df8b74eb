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
COMMANDS = [
    "image-to-3d",
    "init-model",
    "import-checkpoint",
    "render-assets",
    "sample-assets",
    "finetune-video",
    "synthesize",
    "train-filter",
    "train-recon",
    "evaluate",
    "serve",
    "submit",
    "demo",
    "show-config",
]


def test_the_console_script_runs():
    """The installed `vf3d` script (the other tests call its `main` in-process)."""
    result = subprocess.run([VF3D, "--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "usage: vf3d" in result.stdout, result.stderr


def test_help_lists_every_command_and_each_has_its_own_help(vf3d_main):
    top = vf3d_main("--help")
    assert top.returncode == 0
    for command in COMMANDS:
        assert command in top.stdout
        sub = vf3d_main(command, "--help")
        assert sub.returncode == 0 and f"usage: vf3d {command}" in sub.stdout


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    import skimage.data

    path = tmp_path_factory.mktemp("photos") / "coffee.png"
    Image.fromarray(skimage.data.coffee()).save(path)
    return path


def test_image_to_3d_writes_a_coloured_glb_a_video_and_a_summary(tmp_path, photo, debug_model_dir, vf3d_main):
    out = tmp_path / "nested" / "mug.glb"
    video = tmp_path / "mug.mp4"
    result = vf3d_main(
        "image-to-3d",
        photo,
        "--model",
        debug_model_dir,
        "--out",
        out,
        "--video",
        video,
        "--preset",
        "debug",
        "--mesh-resolution",
        "48",
        "--mesh-iso",
        "auto",
    )
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


def test_without_a_preset_sizes_follow_the_model_and_the_cpu(tmp_path, photo, debug_model_dir, vf3d_main):
    """No --preset: the mesh at the model's recommended resolution, a turntable of the CPU's default
    length at the model's render size; the summary records what was used."""
    from vf3d.models.reconstructor.config import InferenceConfig

    out, video = tmp_path / "mug.glb", tmp_path / "mug.mp4"
    result = vf3d_main("image-to-3d", photo, "--model", debug_model_dir, "--out", out, "--video", video, "--mesh-iso", "auto")
    assert result.returncode == 0, result.stderr
    saved = json.loads((debug_model_dir / "config.json").read_text())["config"]
    views, size = InferenceConfig().cpu_turntable_views, saved["renderer"]["render_size"]
    assert f"mesh {saved['mesh_resolution']}³, turntable {views} views at {size}²" in result.stdout, result.stdout
    summary = json.loads(out.with_name("mug.glb.json").read_text())["config"]
    assert (summary["mesh_resolution"], summary["turntable_views"], summary["turntable_size"]) == (saved["mesh_resolution"], views, size)
    import imageio.v3 as iio

    assert iio.imread(video).shape[:3] == (views, size, size)


def test_seeded_runs_are_reproducible(tmp_path, photo, debug_model_dir, vf3d_main):
    outputs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.ply"
        assert (
            vf3d_main(
                "image-to-3d",
                photo,
                "--model",
                debug_model_dir,
                "--out",
                out,
                "--preset",
                "debug",
                "--mesh-resolution",
                "32",
                "--mesh-iso",
                "auto",
                "--seed",
                "5",
            ).returncode
            == 0
        )
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]


def png_header_claiming(width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def transparent_png():
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((48, 48, 4), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


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
        ("transparent.png", transparent_png(), "no foreground: the image is fully transparent"),
    ],
)
def test_bad_images_get_one_clear_line_and_exit_code_2(tmp_path, debug_model_dir, name, content, expected, vf3d_main):
    image = tmp_path / name
    image.write_bytes(content)
    out = tmp_path / "out.glb"
    result = vf3d_main("image-to-3d", image, "--model", debug_model_dir, "--out", out)
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
def test_bad_options_get_one_clear_line_and_exit_code_2(tmp_path, photo, debug_model_dir, args, expected, vf3d_main):
    result = vf3d_main("image-to-3d", photo, "--model", debug_model_dir, *args, cwd=tmp_path)
    assert result.returncode == 2 and expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_missing_model_and_bad_config_are_clear(tmp_path, photo, vf3d_main):
    result = vf3d_main("image-to-3d", photo, "--model", tmp_path / "nope", "--out", tmp_path / "o.glb")
    assert result.returncode == 2 and "model directory not found" in result.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("mesh_resolution: 64\nturntable_speed: 3\n")
    result = vf3d_main("image-to-3d", photo, "--model", tmp_path, "--out", tmp_path / "o.glb", "--config", bad)
    assert result.returncode == 2 and "turntable_speed" in result.stderr


def test_init_model_and_show_config(tmp_path, vf3d_main):
    result = vf3d_main("init-model", "--preset", "debug", "--out", tmp_path / "m")
    assert result.returncode == 0 and (tmp_path / "m" / "model.safetensors").is_file()
    shown = vf3d_main("show-config", "reconstructor", "--preset", "vfusion3d")
    config = json.loads(shown.stdout)
    assert config["transformer"]["num_layers"] == 16 and config["encoder"]["image_size"] == 512


def test_import_checkpoint_command_maps_a_released_layout(tmp_path, debug_model_dir, vf3d_main):
    import torch

    from vf3d.models.reconstructor import Reconstructor
    from vf3d.models.release_weights import export_checkpoint

    original = Reconstructor.from_pretrained(debug_model_dir)
    released = tmp_path / "model.safetensors"
    export_checkpoint(original, released, "vfusion3d")
    # Head counts and input size cannot be read from shapes: the debug model's come from --config.
    overrides = tmp_path / "heads.yaml"
    overrides.write_text(
        "transformer:\n  num_heads: 4\nencoder:\n  num_heads: 2\n  image_size: 64\nrenderer:\n  num_coarse_samples: 16\n  num_fine_samples: 16\n  render_size: 32\n"
    )
    result = vf3d_main("import-checkpoint", released, "--format", "vfusion3d", "--out", tmp_path / "imported", "--config", overrides)
    assert result.returncode == 0, result.stderr
    imported = Reconstructor.from_pretrained(tmp_path / "imported")
    for name, tensor in original.state_dict().items():
        assert torch.equal(tensor, imported.state_dict()[name]), name
    wrong = vf3d_main("import-checkpoint", released, "--format", "openlrm", "--out", tmp_path / "wrong")
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1 and not (tmp_path / "wrong").exists()


def test_train_filter_fits_a_probe_from_the_command_line_and_refuses_bad_labels(tmp_path, vf3d_main):
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
            records.append(
                shards.OrbitRecord(
                    id=f"{name}{index}",
                    source="synthetic",
                    prompt="",
                    rgb=frames,
                    mask=np.full((4, 32, 32), 255, np.uint8),
                    cameras=cameras,
                    elevation=0.0,
                )
            )
    shards.OrbitShardWriter(tmp_path / "data").write(records)
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\n" + "".join(f"good{i},good\nbad{i},bad\n" for i in range(12)))
    result = vf3d_main("train-filter", "--labels", labels, "--data", tmp_path / "data", "--out", tmp_path / "probe", "--preset", "debug")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "probe" / "filter_report.json").read_text())
    assert (tmp_path / "probe" / "model.safetensors").is_file() and report

    labels.write_text("id,label\ngood0,maybe\n")
    bad = vf3d_main("train-filter", "--labels", labels, "--data", tmp_path / "data", "--out", tmp_path / "probe2", "--preset", "debug")
    assert bad.returncode == 2 and "maybe" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    missing = vf3d_main(
        "train-filter", "--labels", labels, "--data", tmp_path / "nowhere", "--out", tmp_path / "probe2", "--preset", "debug"
    )
    assert missing.returncode == 2 and "--data directories not found" in missing.stderr
    no_encoder = vf3d_main("train-filter", "--labels", labels, "--data", tmp_path / "data", "--out", tmp_path / "probe2")
    assert no_encoder.returncode == 2 and "pretrained_path is required" in no_encoder.stderr
    assert not (tmp_path / "probe2").exists()


def main_error(capsys, *args):
    """Run the real entry point in this process; → (exit status, the stderr lines)."""
    from vf3d import cli

    status = cli.main([str(arg) for arg in args])
    return status, capsys.readouterr().err.strip().splitlines()


def assert_one_line(status, lines, command, expected):
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"vf3d {command}: error: ") and expected in lines[0], lines


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_one_line(tmp_path, capsys, photo, debug_model_dir):
    expected = "CUDA requested (--device cuda) but torch.cuda.is_available() is False"
    status, lines = main_error(
        capsys, "image-to-3d", photo, "--model", debug_model_dir, "--out", tmp_path / "o.glb", "--device", "cuda", "--preset", "debug"
    )
    assert_one_line(status, lines, "image-to-3d", expected)
    (tmp_path / "model").mkdir()
    (tmp_path / "data").mkdir()
    status, lines = main_error(
        capsys, "evaluate", "--model", tmp_path / "model", "--data", tmp_path / "data", "--out", tmp_path / "report", "--device", "cuda:0"
    )
    assert_one_line(status, lines, "evaluate", "CUDA requested (--device cuda:0) but torch.cuda.is_available() is False")
    assert not (tmp_path / "o.glb").exists() and not (tmp_path / "report").exists()


def test_unknown_device_is_one_line(tmp_path, capsys, photo, debug_model_dir):
    status, lines = main_error(
        capsys, "image-to-3d", photo, "--model", debug_model_dir, "--out", tmp_path / "o.glb", "--device", "gpu", "--preset", "debug"
    )
    assert_one_line(status, lines, "image-to-3d", "unknown device 'gpu' (--device): use auto, cpu or cuda[:N]")


@pytest.mark.parametrize(
    "name, make, expected",
    [
        ("missing.safetensors", lambda path: None, "checkpoint not found: "),
        ("folder", lambda path: path.mkdir(), "is a directory without model.safetensors"),
        ("empty.safetensors", lambda path: path.write_bytes(b""), "is an empty file"),
        (
            "garbage.safetensors",
            lambda path: path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json"),
            "is not a readable safetensors file",
        ),
        (
            "garbage.pt",
            lambda path: path.write_bytes(np.random.default_rng(0).bytes(4096)),
            "cannot be loaded with torch.load(weights_only=True)",
        ),
    ],
)
def test_import_checkpoint_of_a_bad_source_is_one_line(tmp_path, capsys, name, make, expected):
    source = tmp_path / name
    make(source)
    status, lines = main_error(capsys, "import-checkpoint", source, "--format", "vfusion3d", "--out", tmp_path / "imported")
    assert_one_line(status, lines, "import-checkpoint", expected)
    assert not (tmp_path / "imported").exists()


def test_paths_of_the_wrong_kind_are_named_as_such(tmp_path, capsys, photo):
    folder, file, missing = tmp_path / "folder", tmp_path / "notes.txt", tmp_path / "missing"
    folder.mkdir()
    file.write_text("not what was asked for\n")
    out = tmp_path / "out"
    cases = [
        (["image-to-3d", folder, "--model", folder, "--out", tmp_path / "o.glb"], f"{folder} is a directory, not an image file"),
        (["image-to-3d", photo, "--model", file, "--out", tmp_path / "o.glb"], f"--model: {file} is a file, not a model directory"),
        (["image-to-3d", photo, "--model", missing, "--out", tmp_path / "o.glb"], f"--model: model directory not found: {missing}"),
        (["render-assets", "--assets", file, "--out", out], f"--assets: {file} is a file, not a directory of meshes"),
        (["render-assets", "--assets", missing, "--out", out], f"--assets: directory of meshes not found: {missing}"),
        (["finetune-video", "--data", file, "--out", out], f"--data: {file} is a file, not a shard directory"),
        (["finetune-video", "--data", missing, "--out", out], f"--data: shard directory not found: {missing}"),
        (
            ["synthesize", "--prompts", file, "--video-model", file, "--out", out],
            f"--video-model: {file} is a file, not a video model directory",
        ),
        (
            ["train-filter", "--labels", folder, "--data", folder, "--out", out, "--preset", "debug"],
            f"--labels: {folder} is a directory, not a labels file",
        ),
        (
            ["train-filter", "--labels", file, "--data", file, "--out", out, "--preset", "debug"],
            f"--data: {file} is a file, not a shard directory",
        ),
        (["train-recon", "--data", file, "--data-3d", folder, "--out", out], f"--data: {file} is a file, not a shard directory"),
        (
            ["train-recon", "--data", folder, "--data-3d", folder, "--init", file, "--out", out],
            f"--init: {file} is a file, not a model directory",
        ),
        (["evaluate", "--model", folder, "--data", folder, "--out", out, "--ids", folder], f"--ids: {folder} is a directory, not a file"),
        (["show-config", "inference", "--config", folder], f"--config: {folder} is a directory, not a YAML/JSON file"),
    ]
    for args, expected in cases:
        status, lines = main_error(capsys, *args)
        assert_one_line(status, lines, args[0], expected)
    assert not out.exists() and not (tmp_path / "o.glb").exists()
