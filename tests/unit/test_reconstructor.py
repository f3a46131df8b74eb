"""The reconstructor model: shapes, determinism, batching, gradients and house rules."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vf3d import cameras
from vf3d.models.reconstructor import Reconstructor
from vf3d.models.reconstructor.decoder import sample_triplane

MODELS_DIR = Path(__file__).resolve().parents[2] / "platform" / "vf3d" / "models"
REPO_ROOT = Path(__file__).resolve().parents[2]


def inputs(batch=2, views=3, size=64):
    generator = torch.Generator().manual_seed(7)
    images = torch.rand(batch, 3, size, size, generator=generator)
    source = cameras.canonical_source_camera().expand(batch, 16)
    render = cameras.render_camera_vector(cameras.orbit_poses(views, 20.0)).expand(batch, views, 25)
    return images, source, render


@pytest.fixture
def model(debug_config):
    torch.manual_seed(0)
    return Reconstructor(debug_config).eval()


def test_output_shapes(model, debug_config):
    images, source, render = inputs()
    with torch.no_grad():
        planes, views = model(images, source, render)
    side = debug_config.triplane.resolution
    assert planes.shape == (2, 3, debug_config.triplane.channels, side, side)
    size = debug_config.renderer.render_size
    assert views.rgb.shape == (2, 3, 3, size, size)
    assert views.depth.shape == views.opacity.shape == (2, 3, 1, size, size)
    assert ((views.opacity >= 0) & (views.opacity <= 1)).all()


def test_wrong_image_size_is_rejected(model):
    with pytest.raises(ValueError, match=r"images must be \[N, 3, 64, 64\]"):
        model.encode(torch.rand(1, 3, 32, 32), cameras.canonical_source_camera()[None])


def test_deterministic_inference_is_bit_identical_across_runs_and_instances(debug_config):
    images, source, render = inputs(batch=1, views=2)
    outputs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = Reconstructor(debug_config).eval()
        with torch.no_grad():
            for _ in range(2):
                outputs.append(model(images, source, render, deterministic=True))
    for planes, views in outputs[1:]:
        assert torch.equal(planes, outputs[0][0])
        assert torch.equal(views.rgb, outputs[0][1].rgb) and torch.equal(views.depth, outputs[0][1].depth)


def test_batched_encoding_matches_one_image_at_a_time(model):
    images, source, _ = inputs(batch=4)
    with torch.no_grad():
        batched = model.encode(images, source)
        single = torch.cat([model.encode(images[i : i + 1], source[i : i + 1]) for i in range(4)])
    assert torch.allclose(batched, single, atol=1e-5)


def test_every_parameter_gets_a_gradient(model):
    model.train()
    images, source, render = inputs(batch=1, views=2)
    _, views = model(images, source, render, render_size=16)
    (views.rgb.mean() + views.opacity.mean()).backward()
    # DINOv2's mask token only serves masked-image pretraining; nothing else may be left out.
    missing = [
        name for name, p in model.named_parameters() if (p.grad is None or not p.grad.abs().sum() > 0) and not name.endswith("mask_token")
    ]
    assert not missing, f"parameters without gradient: {missing}"


def test_gradient_checkpointing_gives_the_same_gradients(debug_config):
    from vf3d import config as config_lib

    images, source, render = inputs(batch=1, views=1)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        config = config_lib.merge(debug_config, {"transformer": {"gradient_checkpointing": checkpointing}})
        model = Reconstructor(config).train()
        _, views = model(images, source, render, render_size=8, deterministic=True)
        views.rgb.sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_triplane_sampling_uses_the_released_plane_axes():
    """Plane 0 is indexed by (x, y), plane 1 by (x, z), plane 2 by (z, y); x on the width axis."""
    planes = torch.zeros(1, 3, 1, 4, 4)
    planes[0, 0, 0, 0, 3] = 1.0  # row 0 (y = -), column 3 (x = +)
    planes[0, 1, 0, 3, 0] = 2.0  # row 3 (z = +), column 0 (x = -)
    planes[0, 2, 0, 0, 3] = 3.0  # row 0 (y = -), column 3 (z = +)
    # Cell centres of a 4-wide plane with align_corners=False sit at ±0.25 and ±0.75.
    points = torch.tensor([[[0.75, -0.75, 0.0], [-0.75, 0.0, 0.75], [0.0, -0.75, 0.75]]])
    features = sample_triplane(planes, points)
    assert features[0, 0, 0] == 1.0 and features[0, 1, 1] == 2.0 and features[0, 2, 2] == 3.0


@pytest.mark.heavy  # a fresh interpreter importing torch, diffusers and transformers
def test_models_import_no_ray_deepspeed_or_distributed():
    forbidden = ("ray", "deepspeed", "torch.distributed")
    for path in MODELS_DIR.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                assert not any(name == f or name.startswith(f + ".") for f in forbidden), f"{path} imports {name}"
    code = "import sys, vf3d.models.reconstructor, vf3d.models.video, vf3d.inference; print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'deepspeed')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_platform_source_root_does_not_shadow_the_stdlib():
    assert not (REPO_ROOT / "platform" / "__init__.py").exists()
    code = "import platform, sys; assert hasattr(platform, 'python_version'), platform.__file__; print(platform.__file__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert "platform/platform" not in result.stdout and result.stdout.strip().endswith("platform.py")
