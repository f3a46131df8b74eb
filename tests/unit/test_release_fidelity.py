"""Our reconstructor against independent re-implementations of the released model's arithmetic.

The released VFusion3D renderer (an EG3D/OpenLRM importance renderer) differs from textbook
NeRF compositing in two ways our renderer must reproduce for imported weights to render as
released: the decoder's raw densities of an interval's two samples are averaged *before* the
softplus(x − 1) activation, and samples outside the box [−1, 1]³ get a hugely negative raw
density (so every interval touching one has none; docs/vfusion3d.md#rendering-order). The
functions below re-derive that from the release's description, sharing no code with vf3d's
renderer.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from vf3d import cameras
from vf3d import config as config_lib
from vf3d.models.reconstructor import Reconstructor
from vf3d.models.reconstructor.config import RECONSTRUCTOR_PRESETS
from vf3d.models.reconstructor.encoder import scale_factor_interpolation
from vf3d.models.reconstructor.renderer import intersect_box

# The release's plane axes (EG3D's generate_planes after its bug fix): each plane's 3×3 basis
# (docs/vfusion3d.md#triplane-sampling).
RELEASE_PLANE_AXES = torch.tensor(
    [[[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[1, 0, 0], [0, 0, 1], [0, 1, 0]], [[0, 0, 1], [0, 1, 0], [1, 0, 0]]],
    dtype=torch.float32,
)


def release_plane_features(planes: torch.Tensor, points: torch.Tensor, box_side: float = 2.0) -> torch.Tensor:
    """planes [N, 3, C, H, W], points [N, M, 3] → [N, 3, M, C]: project with the inverse plane
    bases, keep the first two coordinates, bilinear grid_sample with zero padding."""
    n, n_planes, channels, height, width = planes.shape
    m = points.shape[1]
    coordinates = (2 / box_side) * points
    coordinates = coordinates.unsqueeze(1).expand(-1, n_planes, -1, -1).reshape(n * n_planes, m, 3)
    inverse = torch.linalg.inv(RELEASE_PLANE_AXES).unsqueeze(0).expand(n, -1, -1, -1).reshape(n * n_planes, 3, 3)
    projected = torch.bmm(coordinates, inverse)[..., :2].unsqueeze(1)
    sampled = F.grid_sample(
        planes.reshape(n * n_planes, channels, height, width).float(),
        projected.float(),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    return sampled.permute(0, 3, 2, 1).reshape(n, n_planes, m, channels)


def release_decoder(model: Reconstructor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The release's decoder: the 3 planes' features concatenated (3·C inputs), an MLP with ReLU,
    raw sigma and padded-sigmoid rgb."""
    n, n_planes, m, channels = features.shape
    x = features.permute(0, 2, 1, 3).reshape(n, m, n_planes * channels)
    layers = list(model.decoder.layers)
    for index, layer in enumerate(layers):
        x = F.linear(x, layer.weight, layer.bias)
        if index < len(layers) - 1:
            x = F.relu(x)
    return x[..., :1], torch.sigmoid(x[..., 1:]) * (1 + 2 * 0.001) - 0.001


def release_render(model: Reconstructor, planes: torch.Tensor, origins: torch.Tensor, directions: torch.Tensor, depths: torch.Tensor):
    """The release's coarse pass + ray march on given depths [N, R, S, 1] → rgb [N, R, 3] over
    white, depth [N, R, 1], opacity [N, R, 1]."""
    n, rays, samples, _ = depths.shape
    points = (origins.unsqueeze(-2) + depths * directions.unsqueeze(-2)).reshape(n, -1, 3)
    # The release tests -1 <= p <= 1 exactly; deterministic samples lie exactly on the faces, so
    # both sides allow the same rounding slack there (vf3d's BOX_TOLERANCE, written out).
    inside = ((-1.0001 <= points) & (points <= 1.0001)).all(-1)
    sigma, rgb = release_decoder(model, release_plane_features(planes, points))
    colors = torch.zeros(n, rays * samples, 3)
    densities = torch.nan_to_num(torch.full((n, rays * samples, 1), -float("inf"))) / 3
    colors[inside], densities[inside] = rgb[inside], sigma[inside]
    colors = colors.reshape(n, rays, samples, 3)
    densities = densities.reshape(n, rays, samples, 1)
    # MipRayMarcher2: midpoints of raw values, then the activation, then alpha compositing.
    deltas = depths[:, :, 1:] - depths[:, :, :-1]
    colors_mid = (colors[:, :, :-1] + colors[:, :, 1:]) / 2
    densities_mid = F.softplus((densities[:, :, :-1] + densities[:, :, 1:]) / 2 - 1)
    depths_mid = (depths[:, :, :-1] + depths[:, :, 1:]) / 2
    alpha = 1 - torch.exp(-densities_mid * deltas)
    shifted = torch.cat([torch.ones_like(alpha[:, :, :1]), 1 - alpha + 1e-10], -2)
    weights = alpha * torch.cumprod(shifted, -2)[:, :, :-1]
    total = weights.sum(2)
    depth = torch.nan_to_num(torch.sum(weights * depths_mid, -2) / total, float("inf"))
    depth = torch.clamp(depth, depths.min(), depths.max())
    return torch.sum(weights * colors_mid, -2) + 1 - total, depth, total


def imported_layout_model(samples: int) -> Reconstructor:
    """A small model with the released decoder/renderer settings (uniform samples, no
    importance pass) and random weights scaled so raw densities cross the activation's bend."""
    config = RECONSTRUCTOR_PRESETS["debug"]()
    config.renderer.num_coarse_samples = samples
    config.renderer.num_fine_samples = 0
    torch.manual_seed(0)
    model = Reconstructor(config).eval()
    with torch.no_grad():
        model.decoder.layers[-1].weight[0] *= 60.0
        model.decoder.layers[-1].bias[0] = -4.0
    return model


def object_planes() -> torch.Tensor:
    """Triplanes [1, 3, 16, 16, 16] with features only in their central quarter: an object in
    the middle of the box, empty space around it (zero features)."""
    torch.manual_seed(1)
    planes = torch.zeros(1, 3, 16, 16, 16)
    planes[..., 4:12, 4:12] = torch.randn(1, 3, 16, 8, 8) * 6
    return planes


@pytest.mark.parametrize("samples", [16, 64])
def test_renders_match_the_released_ray_marcher_on_fixed_samples(samples):
    model = imported_layout_model(samples)
    planes = object_planes()
    # Two views from the render radius and one from far away, where some rays miss the box.
    poses = torch.cat([cameras.orbit_poses(2, 20.0), cameras.orbit_poses(1, 40.0, radius=4.0)])
    render_cameras = cameras.render_camera_vector(poses).unsqueeze(0)
    size = 12
    with torch.no_grad():
        ours = model.render(planes, render_cameras, size, deterministic=True)
        origins, directions = cameras.generate_rays(render_cameras, size, size)
        origins, directions = origins.reshape(1, -1, 3), directions.reshape(1, -1, 3)
        near, far, hit = intersect_box(origins, directions, 1.0)
        # Our deterministic samples: linspace(near, far) per ray (all at 0 for rays that miss).
        steps = torch.linspace(0.0, 1.0, samples)
        depths = (near[..., None] + (far - near)[..., None] * steps).unsqueeze(-1)
        rgb, depth, opacity = release_render(model, planes, origins, directions, depths)
    image = lambda x: x.reshape(1, 3, size, size, -1).permute(0, 1, 4, 2, 3)  # noqa: E731
    assert (~hit).any() and (opacity > 0.5).any() and (opacity < 0.05).any(), "want misses, surfaces and empty space"
    assert torch.allclose(ours.rgb, image(rgb), atol=1e-5), (ours.rgb - image(rgb)).abs().max()
    assert torch.allclose(ours.opacity, image(opacity), atol=1e-5), (ours.opacity - image(opacity)).abs().max()
    covered = image(opacity) > 1e-3
    assert torch.allclose(ours.depth[covered], image(depth)[covered], atol=1e-4)


def test_activating_before_averaging_would_differ():
    """The check above can fail: the old order (activate each sample, then average) is denser."""
    model = imported_layout_model(16)
    planes = object_planes()
    points = torch.rand(1, 200, 3) - 0.5
    with torch.no_grad():
        raw, _ = model.query_raw(planes, points)
        density, _ = model.query_points(planes, points)
    pairs_raw = (raw[:, ::2] + raw[:, 1::2]) / 2
    activated_then_averaged = (density[:, ::2] + density[:, 1::2]) / 2
    assert torch.all(F.softplus(pairs_raw - 1) <= activated_then_averaged + 1e-6)  # convexity
    assert (activated_then_averaged - F.softplus(pairs_raw - 1)).max() > 0.1


# --------------------------------------------------------------------------------------------
# Encoder position embeddings as transformers <= 4.45 interpolated them
# --------------------------------------------------------------------------------------------


def transformers_445_interpolation(position_embeddings: torch.Tensor, height: int, width: int, patch_size: int) -> torch.Tensor:
    """transformers 4.45's Dinov2Embeddings.interpolate_pos_encoding, written out: the grid is
    resized with `scale_factor` = (h + 0.1)/√N, (w + 0.1)/√N (bicubic, align_corners=False)."""
    num_positions = position_embeddings.shape[1] - 1
    class_embedding, patch_embedding = position_embeddings[:, :1], position_embeddings[:, 1:]
    dim = position_embeddings.shape[-1]
    side = int(math.sqrt(num_positions))
    h, w = height // patch_size + 0.1, width // patch_size + 0.1
    grid = patch_embedding.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(
        grid.float(),
        scale_factor=(float(h / math.sqrt(num_positions)), float(w / math.sqrt(num_positions))),
        mode="bicubic",
        align_corners=False,
    )
    assert grid.shape[-2:] == (int(h), int(w))
    return torch.cat([class_embedding, grid.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


def test_release_position_interpolation_pins_the_transformers_445_formula():
    torch.manual_seed(0)
    table = torch.randn(1, 1 + 37 * 37, 24)
    ours = scale_factor_interpolation(table, 512, 512, 14)
    expected = transformers_445_interpolation(table, 512, 512, 14)
    assert ours.shape == (1, 1 + 36 * 36, 24)
    assert torch.equal(ours, expected)
    # A grid resized by output size (transformers >= 4.46) samples other positions.
    by_size = F.interpolate(table[:, 1:].reshape(1, 37, 37, 24).permute(0, 3, 1, 2), size=(36, 36), mode="bicubic", align_corners=False)
    assert not torch.allclose(ours[:, 1:], by_size.permute(0, 2, 3, 1).reshape(1, -1, 24), atol=1e-3)
    # The same size needs no interpolation.
    assert torch.equal(scale_factor_interpolation(table, 518, 518, 14), table)


def test_release_interpolation_switch_changes_the_encoder_output():
    config = RECONSTRUCTOR_PRESETS["debug"]()
    config.encoder.image_size, config.encoder.position_image_size = 56, 64  # 7 patches from a grid of 8
    torch.manual_seed(0)
    modern = Reconstructor(config).eval()
    legacy_config = config_lib.merge(config, {"encoder": {"position_interpolation": "scale_factor"}})
    legacy = Reconstructor(legacy_config).eval()
    legacy.load_state_dict(modern.state_dict())
    images = torch.rand(2, 3, 56, 56)
    with torch.no_grad():
        a, b = modern.encoder(images), legacy.encoder(images)
        table = legacy.encoder.dinov2.embeddings.position_embeddings
        expected = transformers_445_interpolation(table, 56, 56, 8)
        used = legacy.encoder.dinov2.embeddings.interpolate_pos_encoding(torch.zeros(1, 50, 32), 56, 56)
    assert torch.equal(used, expected)
    assert a.shape == b.shape and not torch.allclose(a, b, atol=1e-6)
