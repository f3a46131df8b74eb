"""Analytic tests of the parameter-free volume renderer."""

import math

import pytest
import torch

from vf3d import cameras
from vf3d.models.reconstructor.config import RendererConfig
from vf3d.models.reconstructor.renderer import TriplaneRenderer, intersect_box


def constant_field(density: float, color=(0.2, 0.4, 0.6), region=None):
    """Density `density` (inside `region(points) -> bool mask` when given) and a constant colour."""

    def field(points):
        values = torch.full((*points.shape[:-1], 1), density)
        if region is not None:
            values = values * region(points).unsqueeze(-1)
        return values, torch.tensor(color).expand(*points.shape[:-1], 3)

    return field


def renderer(coarse=64, fine=64, chunk=0):
    return TriplaneRenderer(RendererConfig(num_coarse_samples=coarse, num_fine_samples=fine, ray_chunk_size=chunk))


def orbit_cameras(objects=1, views=3, elevation=25.0):
    return cameras.render_camera_vector(cameras.orbit_poses(views, elevation)).expand(objects, views, 25)


def test_renderer_has_no_parameters():
    assert list(renderer().parameters()) == []


def test_empty_field_renders_the_background_colour_of_each_view():
    background = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.1, 0.2, 0.3]]])
    out = renderer()(constant_field(0.0), orbit_cameras(), 9, background=background)
    assert out.rgb.shape == (1, 3, 3, 9, 9)
    assert torch.allclose(out.rgb, background[..., None, None].expand_as(out.rgb))
    assert torch.count_nonzero(out.opacity) == 0


@pytest.mark.parametrize("fine", [0, 32])
def test_constant_density_gives_beer_lambert_opacity(fine):
    sigma = 0.7
    render_cameras = orbit_cameras(views=2)
    out = renderer(coarse=16, fine=fine)(constant_field(sigma), render_cameras, 11, deterministic=True)
    origins, directions = cameras.generate_rays(render_cameras, 11, 11)
    near, far, hit = intersect_box(origins, directions, 1.0)
    expected = torch.where(hit, 1 - torch.exp(-sigma * (far - near)), torch.zeros_like(near))
    assert torch.allclose(out.opacity.reshape(1, 2, -1), expected, atol=1e-5)
    # The centre ray crosses the whole cube through the origin.
    assert out.opacity[0, 0, 0, 5, 5].item() == pytest.approx(1 - math.exp(-sigma * 2 * 1.0 / math.cos(math.radians(25.0))), abs=1e-4)


def test_slab_opacity_matches_its_thickness():
    """A slab |z| < 0.3 seen straight down: opacity 1 − exp(−σ·0.6) (quadrature error only)."""
    sigma = 2.0
    field = constant_field(sigma, region=lambda p: (p[..., 2].abs() < 0.3).float())
    origins = torch.tensor([[[0.1, -0.2, 3.0], [0.5, 0.5, -3.0]]])
    directions = torch.tensor([[[0.0, 0.0, -1.0], [0.0, 0.0, 1.0]]])
    rgb, depth, opacity = renderer(coarse=256, fine=128).render_rays(field, origins, directions, deterministic=True)
    assert torch.allclose(opacity, torch.full_like(opacity, 1 - math.exp(-sigma * 0.6)), atol=5e-3)
    assert torch.allclose(rgb, torch.tensor([0.2, 0.4, 0.6]) * opacity + (1 - opacity), atol=1e-5)


def test_opaque_sphere_depth_and_colour():
    field = constant_field(500.0, color=(0.9, 0.1, 0.3), region=lambda p: (p.norm(dim=-1) < 0.5).float())
    origins = torch.tensor([[[2.0, 0.0, 0.0]]])
    directions = torch.tensor([[[-1.0, 0.0, 0.0]]])
    rgb, depth, opacity = renderer(coarse=64, fine=64).render_rays(
        field, origins, directions, background=torch.zeros(1, 1, 3), deterministic=True
    )
    assert opacity.item() == pytest.approx(1.0, abs=1e-4)
    assert depth.item() == pytest.approx(1.5, abs=0.02)  # importance sampling finds the surface
    assert torch.allclose(rgb[0, 0], torch.tensor([0.9, 0.1, 0.3]), atol=1e-3)


def test_rays_missing_the_box_are_transparent():
    origins = torch.tensor([[[0.0, 0.0, 5.0]]])
    directions = torch.tensor([[[1.0, 0.0, 0.0]]])
    rgb, depth, opacity = renderer().render_rays(constant_field(10.0), origins, directions, deterministic=True)
    assert opacity.item() == 0.0 and torch.equal(rgb, torch.ones(1, 1, 3))


def blob_field(points):
    density = 8.0 * torch.exp(-4.0 * (points - torch.tensor([0.2, -0.1, 0.1])).pow(2).sum(-1, keepdim=True))
    return density, (points + 1) / 2


def test_chunking_does_not_change_the_result():
    render_cameras = orbit_cameras(objects=2, views=2)
    whole = renderer(chunk=0)(blob_field, render_cameras, 10, deterministic=True)
    chunked = renderer(chunk=7)(blob_field, render_cameras, 10, deterministic=True)
    for a, b in ((whole.rgb, chunked.rgb), (whole.depth, chunked.depth), (whole.opacity, chunked.opacity)):
        assert torch.allclose(a, b, atol=1e-6)


def test_crop_renders_exactly_that_patch_of_the_full_view():
    render_cameras = orbit_cameras(views=2)
    full = renderer()(blob_field, render_cameras, 16, deterministic=True)
    offsets = torch.tensor([[[2, 7], [8, 1]]])
    patch = renderer()(blob_field, render_cameras, 16, crop_offsets=offsets, crop_size=(5, 6), deterministic=True)
    assert patch.rgb.shape == (1, 2, 3, 5, 6)
    assert torch.allclose(patch.rgb[0, 0], full.rgb[0, 0, :, 2:7, 7:13], atol=1e-5)
    assert torch.allclose(patch.opacity[0, 1], full.opacity[0, 1, :, 8:13, 1:7], atol=1e-5)


def test_deterministic_mode_is_bit_identical_and_random_mode_is_seeded():
    render_cameras = orbit_cameras()
    first = renderer()(blob_field, render_cameras, 12, deterministic=True)
    second = renderer()(blob_field, render_cameras, 12, deterministic=True)
    assert torch.equal(first.rgb, second.rgb) and torch.equal(first.depth, second.depth)
    seeded = [renderer()(blob_field, render_cameras, 12, generator=torch.Generator().manual_seed(3)).rgb for _ in range(2)]
    assert torch.equal(seeded[0], seeded[1])
    other = renderer()(blob_field, render_cameras, 12, generator=torch.Generator().manual_seed(4)).rgb
    assert not torch.equal(seeded[0], other)
    assert torch.allclose(seeded[0], first.rgb, atol=0.05)  # same image up to sampling noise


def test_batched_objects_render_like_single_objects():
    def two_objects(points):
        density, rgb = blob_field(points)
        return density * torch.tensor([1.0, 0.3]).view(2, 1, 1), rgb

    render_cameras = orbit_cameras(objects=2, views=2)
    batched = renderer()(two_objects, render_cameras, 8, deterministic=True)
    single = renderer()(lambda p: tuple(x[:1] for x in two_objects(p.expand(2, -1, -1))), render_cameras[:1], 8, deterministic=True)
    assert torch.allclose(batched.rgb[:1], single.rgb, atol=1e-6)
    assert not torch.allclose(batched.opacity[0], batched.opacity[1])
