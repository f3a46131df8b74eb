"""The renderer's fast path (occupancy grid, empty-space skipping, early ray termination) against the
exact path it must reproduce, on real decoders and object-shaped fields; surface-only meshing against
the dense grid; batched turntables against per-view renders."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from vf3d import cameras
from vf3d.inference import ImageTo3D
from vf3d.models.reconstructor import Reconstructor
from vf3d.models.reconstructor.config import RECONSTRUCTOR_PRESETS, InferenceConfig, RendererConfig
from vf3d.models.reconstructor.decoder import activate_density
from vf3d.models.reconstructor.folded_field import FoldedTriplaneField
from vf3d.models.reconstructor.renderer import TriplaneRenderer, build_occupancy_grid

RAW_INSIDE, RAW_OUTSIDE = 30.0, -10.0


def renderers(**overrides):
    """(exact, fast) renderers with the reconstructor's density activation and the same samples."""
    config = RendererConfig(num_coarse_samples=48, num_fine_samples=48, ray_chunk_size=2048, **overrides)
    return (
        TriplaneRenderer(config, density_activation=activate_density),
        TriplaneRenderer(dataclasses.replace(config, skip_empty_space=True, fast_ray_chunk_size=2048), density_activation=activate_density),
    )


def object_density(points):
    """Raw density of a torus united with a sphere: RAW_INSIDE inside, RAW_OUTSIDE outside, a smooth
    step ~0.02 wide across the surface."""
    x, y, z = points.unbind(-1)
    torus = torch.sqrt((torch.sqrt(x**2 + y**2) - 0.5) ** 2 + (z + 0.1) ** 2) - 0.15
    sphere = torch.sqrt((x - 0.1) ** 2 + y**2 + (z - 0.3) ** 2) - 0.25
    return RAW_OUTSIDE + (RAW_INSIDE - RAW_OUTSIDE) * torch.sigmoid(-torch.minimum(torus, sphere) / 0.01)


class Counting:
    """Wraps a field function and counts the points it is asked for."""

    def __init__(self, field):
        self.field, self.points = field, 0

    def __call__(self, points):
        self.points += points.shape[0] * points.shape[1]
        return self.field(points)


def analytic_object(points):
    """Two objects: the torus + sphere, and the same shifted (raw density [N, P, 1], rgb [N, P, 3])."""
    offsets = torch.tensor([[0.0, 0.0, 0.0], [0.2, -0.1, 0.05]])[: points.shape[0], None]
    return object_density(points + offsets).unsqueeze(-1), (points + 1) / 2


@pytest.fixture(scope="module")
def fitted():
    """A debug-architecture reconstructor whose triplanes (only) are fitted to `object_density` by
    Adam, so the decoder is real and the field object-shaped. Returns (model, planes [1, 3, C, R, R])."""
    torch.manual_seed(0)
    config = RECONSTRUCTOR_PRESETS["debug"]()
    config = dataclasses.replace(config, triplane=dataclasses.replace(config.triplane, token_resolution=16))
    model = Reconstructor(config).eval()
    with torch.no_grad():  # a decoder with gain, so a few steps of the planes reach the target range
        for layer in model.decoder.layers:
            layer.weight.normal_(0, math.sqrt(2 / layer.in_features))
            layer.bias.zero_()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    planes = torch.nn.Parameter(torch.randn(1, 3, config.triplane.channels, config.triplane.resolution, config.triplane.resolution))
    optimizer = torch.optim.Adam([planes], lr=0.1)
    for _ in range(80):
        points = torch.rand(1, 2048, 3) * 2 - 1
        raw, _ = model.query_raw(planes, points)
        loss = ((raw[..., 0] - object_density(points)) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, planes.detach()


def orbit(objects=1, views=2, elevation=20.0):
    return cameras.render_camera_vector(cameras.orbit_poses(views, elevation)).expand(objects, views, 25)


def psnr(a, b):
    return -10 * math.log10(max((a - b).pow(2).mean().item(), 1e-20))


def test_fast_render_matches_exact_and_skips_most_queries_on_a_fitted_decoder(fitted):
    model, planes = fitted
    exact, fast = renderers()
    exact_field, fast_field = Counting(model.field(planes)), Counting(model.field(planes))
    with torch.no_grad():
        grid = fast.occupancy_grid(model.field(planes), 1, "cpu")
        reference = exact(exact_field, orbit(), 40, deterministic=True)
        result = fast(fast_field, orbit(), 40, deterministic=True, occupancy=grid)
    assert result.rgb.shape == reference.rgb.shape and result.depth.shape == reference.depth.shape
    assert (reference.opacity > 0.5).float().mean() > 0.05  # the object is in view
    assert psnr(result.rgb, reference.rgb) >= 40.0
    assert (result.opacity - reference.opacity).abs().max() < 0.01
    solid = reference.opacity > 0.99
    assert (result.depth - reference.depth)[solid].abs().max() < 0.01
    # Once the image's grid is built, a view queries well under half of what the exact path does.
    assert fast_field.points < 0.5 * exact_field.points


def test_fast_render_matches_exact_on_batched_analytic_objects():
    exact, fast = renderers()
    exact_field, fast_field = Counting(analytic_object), Counting(analytic_object)
    grid = fast.occupancy_grid(analytic_object, 2, "cpu")
    reference = exact(exact_field, orbit(objects=2, views=3), 32, deterministic=True)
    result = fast(fast_field, orbit(objects=2, views=3), 32, deterministic=True, occupancy=grid)
    assert psnr(result.rgb, reference.rgb) >= 50.0
    assert (result.rgb - reference.rgb).abs().max() < 0.01
    assert not torch.allclose(result.opacity[0], result.opacity[1])  # two different objects
    assert fast_field.points < 0.35 * exact_field.points


def test_empty_field_renders_background_with_only_the_grid_queried():
    exact, fast = renderers()
    empty = Counting(lambda points: (torch.full((*points.shape[:-1], 1), RAW_OUTSIDE), torch.zeros(*points.shape[:-1], 3)))
    background = torch.tensor([[[0.2, 0.3, 0.4], [1.0, 1.0, 1.0]]])
    reference = exact(empty.field, orbit(), 16, background=background, deterministic=True)
    result = fast(empty, orbit(), 16, background=background, deterministic=True)
    # The exact path composites the field's faint density (≈ 2e-5); the fast path skips it.
    assert torch.allclose(result.rgb, reference.rgb, atol=1e-4)
    assert result.opacity.max() == 0 and reference.opacity.max() < 1e-4
    grid_queries = 17**3  # the base grid's corners: nothing dense, so nothing refined and no sample queried
    assert empty.points == grid_queries


def test_seeded_random_sampling_matches_the_exact_path_draw_for_draw(fitted):
    model, planes = fitted
    exact, fast = renderers()
    with torch.no_grad():
        reference = exact(model.field(planes), orbit(), 24, generator=torch.Generator().manual_seed(5))
        result = fast(model.field(planes), orbit(), 24, generator=torch.Generator().manual_seed(5))
    assert psnr(result.rgb, reference.rgb) >= 40.0


def test_early_termination_saves_queries(fitted):
    model, planes = fitted
    counts = {}
    for name, overrides in {"both": {}, "no termination": {"termination_transmittance": 0.0}}.items():
        _, fast = renderers(**overrides)
        field = Counting(model.field(planes))
        grid = fast.occupancy_grid(field, 1, "cpu")
        field.points = 0
        with torch.no_grad():
            fast(field, orbit(), 32, deterministic=True, occupancy=grid)
        counts[name] = field.points
    assert counts["both"] < 0.9 * counts["no termination"]
    assert 0 < grid.occupied_fraction < 0.5


def test_occupancy_grid_is_conservative():
    """Every point whose density exceeds the threshold lies in an occupied cell."""
    grid = build_occupancy_grid(analytic_object, 2, 64, 1.0, 1e-3, activate_density, "cpu")
    assert grid.occupied.shape == (2, 64, 64, 64)
    points = torch.rand(2, 20000, 3) * 2 - 1
    dense = activate_density(analytic_object(points)[0])[..., 0] > 1e-3
    objects = torch.arange(2).unsqueeze(1).expand(2, 20000)
    assert grid.lookup(points, objects)[dense].all()
    assert grid.occupied_fraction < 0.4


@pytest.fixture(scope="module")
def pipelines(fitted):
    model, planes = fitted
    common = {"device": "cpu", "turntable_views": 6, "turntable_size": 24, "mesh_iso": 1.0}
    return (
        ImageTo3D(model, InferenceConfig(**common, exact=True)),
        ImageTo3D(model, InferenceConfig(**common, turntable_views_per_call=4)),
        planes,
    )


def test_batched_turntable_equals_per_view_renders(pipelines):
    exact, fast, planes = pipelines
    frames = fast.turntable(planes)
    assert frames.shape == (6, 24, 24, 3) and frames.dtype == np.uint8
    poses = cameras.turntable_poses(6, radius=fast.config.turntable_radius, azimuth_deg=fast.model.config.source_camera_azimuth_deg)
    render_cameras = cameras.render_camera_vector(poses)
    grid = fast.occupancy(planes)
    for view in range(6):
        single = fast.render(planes, render_cameras[view : view + 1].unsqueeze(0), 24, occupancy=grid)
        expected = (single.rgb[0, 0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        assert np.abs(frames[view].astype(int) - expected.astype(int)).max() <= 1
    reference = exact.turntable(planes)
    assert np.abs(frames.astype(int) - reference.astype(int)).mean() < 0.5


@pytest.mark.parametrize("layers", [2, 4])
def test_folded_field_equals_the_model_field(layers):
    config = RECONSTRUCTOR_PRESETS["debug"]()
    config = dataclasses.replace(config, decoder=dataclasses.replace(config.decoder, num_layers=layers))
    torch.manual_seed(1)
    model = Reconstructor(config).eval()
    planes = torch.randn(2, 3, config.triplane.channels, config.triplane.resolution, config.triplane.resolution)
    points = torch.rand(2, 5000, 3) * 2.4 - 1.2  # some outside the box, where the planes are zero-padded
    points[:, :8] = torch.tensor([-1.0, 1.0, 0.0])  # the box's edges: bilinear taps half outside
    with torch.no_grad():
        raw, rgb = model.query_raw(planes, points)
        folded = FoldedTriplaneField(planes, model.decoder, config.renderer.box_half_size)
        folded_raw, folded_rgb = folded(points)
        # Scattered points of mixed objects, as the renderer's fast path passes them.
        objects = torch.tensor([1, 0, 1])
        scattered_raw, _ = folded.query(points[objects, torch.tensor([3, 4, 5])], objects)
    assert torch.allclose(folded_raw, raw, atol=1e-4, rtol=1e-4) and torch.allclose(folded_rgb, rgb, atol=1e-5)
    assert torch.allclose(scattered_raw[:, 0], raw[objects, torch.tensor([3, 4, 5]), 0], atol=1e-4, rtol=1e-4)


def test_inference_render_matches_the_exact_path(pipelines):
    exact, fast, planes = pipelines
    assert not isinstance(exact.field(planes), FoldedTriplaneField)
    with torch.no_grad():
        reference = exact.render(planes, orbit(views=3), 40)
        result = fast.render(planes, orbit(views=3), 40)
    assert (reference.opacity > 0.5).float().mean() > 0.05
    assert psnr(result.rgb, reference.rgb) >= 40.0
    assert (result.opacity - reference.opacity).abs().max() < 0.01


def test_surface_only_mesh_matches_the_dense_mesh(pipelines):
    exact, fast, planes = pipelines
    # 127 cells: a base grid of 64 cells (queried only where the occupancy grid is occupied), one level.
    dense, surface = exact.mesh(planes, resolution=128), fast.mesh(planes, resolution=128)
    assert dense.num_queries == 128**3
    assert surface.num_queries < 0.25 * dense.num_queries
    count, reference = len(surface.mesh.vertices), len(dense.mesh.vertices)
    assert abs(count - reference) <= 0.01 * reference
    voxel = 2 / 127
    distance = 0.5 * (
        cKDTree(dense.mesh.vertices).query(surface.mesh.vertices)[0].mean()
        + cKDTree(surface.mesh.vertices).query(dense.mesh.vertices)[0].mean()
    )
    assert distance <= 0.1 * voxel
    assert surface.num_color_queries == count  # colours once per output vertex
    assert set(surface.stages) == {"density", "marching_cubes", "colors"}
