"""Orbit renderer: real pybullet meshes rasterised with headless OpenGL (Mesa llvmpipe on a CPU).

The analytic checks tie the rasteriser to cameras.py: projected vertices land on the rendered
silhouette, the OpenGL matrices reproduce `project_points`, views rotate with the azimuth as the
conventions say, and a head-on lit sphere has the brightness the shading model predicts.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pybullet_data
import pytest
import torch
import trimesh

from vf3d import cameras
from vf3d.data.assets import Asset, load_asset
from vf3d.data.config import OrbitRenderConfig
from vf3d.data.orbit_renderer import (
    EglDevice,
    OrbitRenderer,
    draw_elevation,
    list_egl_devices,
    opengl_matrices,
    orbit_cameras,
    parse_visible_devices,
    render_orbit,
    select_egl_device,
)

RESOLUTION = 128


@pytest.fixture(scope="module")
def renderer():
    """A 128² renderer with 4× multisampling (the default)."""
    with OrbitRenderer(RESOLUTION) as shared:
        yield shared


@pytest.fixture(scope="module")
def duck() -> Asset:
    """pybullet's textured duck (duck.obj + duck.mtl + duckCM.png), normalised."""
    return load_asset(Path(pybullet_data.getDataPath()) / "duck.obj")


@pytest.fixture(scope="module")
def sphere(tmp_path_factory) -> Asset:
    """A smooth untextured sphere (plain grey material)."""
    path = tmp_path_factory.mktemp("sphere") / "sphere.stl"
    trimesh.creation.icosphere(subdivisions=4).export(path)
    return load_asset(path)


def camera(
    azimuth_deg: float, elevation_deg: float, fx: float = 0.75, fy: float = 0.75, cx: float = 0.5, cy: float = 0.5, radius: float = 1.5
) -> torch.Tensor:
    """One render camera looking at the origin from `radius` → [1, 25]."""
    position = cameras.orbit_positions(torch.tensor([math.radians(azimuth_deg)]), torch.tensor([math.radians(elevation_deg)]), radius)
    return cameras.render_camera_vector(cameras.look_at(position), cameras.intrinsics_matrix(fx, fy, cx, cy))


def rotated_about_z(asset: Asset, degrees: float) -> Asset:
    """The asset turned by `degrees` about +Z (positions and normals)."""
    angle = math.radians(degrees)
    rotation = np.array(
        [[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0], [0.0, 0.0, 1.0]], dtype=np.float32
    )
    parts = [dataclasses.replace(part, positions=part.positions @ rotation.T, normals=part.normals @ rotation.T) for part in asset.parts]
    return dataclasses.replace(asset, parts=parts)


def test_duck_orbit_is_centred_non_empty_and_yellow(renderer, duck):
    frames = renderer.render(duck, orbit_cameras(OrbitRenderConfig(num_views=8, resolution=RESOLUTION), elevation_deg=20.0))
    assert frames.shape == (8, RESOLUTION, RESOLUTION, 4) and frames.dtype == np.uint8
    for frame in frames:
        alpha = frame[..., 3]
        assert 0.05 < (alpha > 0).mean() < 0.8
        rows, cols = np.nonzero(alpha)
        # The asset is centred on its bounding box, whose centre projects to the image centre.
        assert abs(cols.mean() + 0.5 - RESOLUTION / 2) < 0.15 * RESOLUTION
        assert abs(rows.mean() + 0.5 - RESOLUTION / 2) < 0.15 * RESOLUTION
        # duckCM.png is yellow (mean RGB ≈ 234, 193, 16) with an orange beak and a black-and-white eye.
        foreground = frame[alpha == 255].astype(int)
        yellow_or_orange = (foreground[:, 0] - foreground[:, 2] > 60) & (foreground[:, 1] - foreground[:, 2] > 30)
        assert yellow_or_orange.mean() > 0.9
        # Transparent black background.
        assert not frame[alpha == 0].any()


@pytest.mark.parametrize("samples", [0, 4])
@pytest.mark.parametrize(
    "render_camera",
    [
        camera(0.0, 20.0),
        camera(137.0, -25.0),
        # Longer focal lengths and off-centre principal points from farther away, to keep the duck in frame.
        camera(250.0, 55.0, fx=0.9, fy=0.9, radius=2.0),
        camera(40.0, 10.0, fx=0.8, fy=0.7, cx=0.45, cy=0.55, radius=2.0),
    ],
    ids=["orbit", "below", "focal-0.9", "principal-point-offset"],
)
def test_projected_vertices_land_on_the_silhouette(duck, samples, render_camera):
    with OrbitRenderer(RESOLUTION, samples=samples) as renderer:
        mask = renderer.render(duck, render_camera)[0, ..., 3] > 0
    pixels, depth = cameras.project_points(torch.from_numpy(duck.positions), render_camera[0], RESOLUTION)
    assert (depth > 0).all()
    columns, rows = pixels[:, 0].floor().long().numpy(), pixels[:, 1].floor().long().numpy()
    assert (columns >= 0).all() and (columns < RESOLUTION).all() and (rows >= 0).all() and (rows < RESOLUTION).all()
    dilated = mask.copy()
    for axis in (0, 1):
        for shift in (-1, 1):
            dilated |= np.roll(mask, shift, axis=axis)
    assert dilated[rows, columns].mean() >= 0.99
    mask_rows, mask_columns = np.nonzero(mask)
    silhouette_box = np.array([mask_columns.min(), mask_columns.max(), mask_rows.min(), mask_rows.max()])
    vertex_box = np.array([columns.min(), columns.max(), rows.min(), rows.max()])
    assert np.abs(silhouette_box - vertex_box).max() <= 2


def test_opengl_matrices_reproduce_project_points():
    generator = torch.Generator().manual_seed(0)
    poses = cameras.random_sphere_poses(6, generator=generator)
    intrinsics = torch.stack(
        [
            cameras.intrinsics_matrix(
                *(0.6 + 0.4 * torch.rand(2, generator=generator)).tolist(), *(0.4 + 0.2 * torch.rand(2, generator=generator)).tolist()
            )
            for _ in range(6)
        ]
    )
    render_cameras = cameras.render_camera_vector(poses, intrinsics)
    points = (torch.rand(6, 50, 3, generator=generator) * 2 - 1) * 0.57  # inside the unit ball: in front of every camera
    height, width = 96, 128
    expected_pixels, expected_depth = cameras.project_points(points, render_cameras, height, width)
    view, projection = opengl_matrices(render_cameras.numpy())
    homogeneous = np.concatenate([points.numpy(), np.ones((6, 50, 1), dtype=np.float32)], axis=-1).astype(np.float64)
    clip = np.einsum("vij,vpj->vpi", projection.astype(np.float64) @ view.astype(np.float64), homogeneous)
    ndc = clip[..., :3] / clip[..., 3:]
    columns = (ndc[..., 0] + 1) / 2 * width
    rows = (1 - ndc[..., 1]) / 2 * height
    np.testing.assert_allclose(columns, expected_pixels[..., 0].numpy(), atol=1e-3)
    np.testing.assert_allclose(rows, expected_pixels[..., 1].numpy(), atol=1e-3)
    np.testing.assert_allclose(clip[..., 3], expected_depth.numpy(), atol=1e-4)
    assert ((ndc[..., 2] > -1) & (ndc[..., 2] < 1)).all()  # every point between near and far


def test_views_follow_the_azimuth(renderer, duck):
    first = renderer.render(duck, cameras.render_camera_vector(cameras.orbit_poses(4, elevation_deg=20.0)))
    shifted = renderer.render(duck, cameras.render_camera_vector(cameras.orbit_poses(4, elevation_deg=20.0, azimuth_offset_deg=90.0)))
    for index in range(3):
        difference = np.abs(first[index + 1].astype(int) - shifted[index].astype(int))
        assert difference.mean() < 0.5 and (difference.max(axis=-1) > 32).mean() < 0.005
    # The duck is not symmetric under quarter turns: the four views differ.
    for a in range(4):
        for b in range(a + 1, 4):
            assert np.abs(first[a].astype(int) - first[b].astype(int)).mean() > 5
    # Turning the object by +90° about +Z looks like moving the camera to azimuth −90°.
    turned = renderer.render(rotated_about_z(duck, 90.0), camera(0.0, 20.0))[0]
    moved = renderer.render(duck, camera(-90.0, 20.0))[0]
    difference = np.abs(turned.astype(int) - moved.astype(int))
    assert difference.mean() < 0.5 and (difference.max(axis=-1) > 32).mean() < 0.005
    assert np.abs(turned.astype(int) - renderer.render(duck, camera(90.0, 20.0))[0].astype(int)).mean() > 5


def test_headlight_shading_shows_shape(sphere):
    ambient = 0.35
    with OrbitRenderer(RESOLUTION, ambient=ambient) as renderer:
        frame = renderer.render(sphere, camera(30.0, 10.0))[0]
    middle_row = frame[RESOLUTION // 2]
    covered = np.nonzero(middle_row[:, 3] == 255)[0]
    centre = middle_row[RESOLUTION // 2, :3].astype(float)
    rim = middle_row[covered.min() + 1, :3].astype(float)
    # Head-on the normal points at the light: grey 0.75 × (ambient + (1 − ambient)·1).
    np.testing.assert_allclose(centre, 0.75 * 255, atol=3)
    assert rim.mean() < centre.mean() - 40
    assert rim.mean() >= 0.75 * 255 * ambient - 3  # ambient light reaches grazing surfaces too


def test_back_faces_are_lit_like_front_faces(tmp_path):
    # One-sided square in the YZ plane, wound to face +X; many real assets have flipped triangles.
    vertices = [[0, -1, -1], [0, 1, -1], [0, 1, 1], [0, -1, 1]]
    trimesh.Trimesh(vertices, [[0, 1, 2], [0, 2, 3]]).export(tmp_path / "square.ply")
    square = load_asset(tmp_path / "square.ply")
    assert (square.parts[0].normals[:, 0] > 0.99).all()
    with OrbitRenderer(RESOLUTION) as renderer:
        front, back = renderer.render(square, torch.cat([camera(0.0, 0.0), camera(180.0, 0.0)]))
    for frame in (front, back):
        np.testing.assert_allclose(frame[RESOLUTION // 2, RESOLUTION // 2, :3], 0.75 * 255, atol=3)


def test_edges_have_straight_alpha(sphere):
    # With ambient 1 every covered sample has the same colour, so after un-premultiplying the
    # multisample resolve, partially covered pixels keep it too (they do not fade to black).
    with OrbitRenderer(RESOLUTION, ambient=1.0, samples=4) as renderer:
        frame = renderer.render(sphere, camera(0.0, 0.0))[0]
    alpha = frame[..., 3]
    partial = (alpha >= 64) & (alpha < 255)
    assert partial.sum() > 50
    np.testing.assert_allclose(frame[partial][:, :3], 0.75 * 255, atol=4)
    np.testing.assert_allclose(frame[alpha == 255][:, :3], 0.75 * 255, atol=1)


def test_renders_are_deterministic(renderer, duck):
    render_cameras = orbit_cameras(OrbitRenderConfig(num_views=3, resolution=RESOLUTION), elevation_deg=30.0)
    np.testing.assert_array_equal(renderer.render(duck, render_cameras), renderer.render(duck, render_cameras))


def test_render_orbit_draws_per_asset_cameras(renderer, duck):
    config = OrbitRenderConfig(num_views=4, resolution=RESOLUTION, num_random_views=2, elevation_range_deg=[5.0, 40.0])
    orbit = render_orbit(renderer, duck, config, asset_id="duck", seed=3)
    assert orbit.rgba.shape == (6, RESOLUTION, RESOLUTION, 4) and orbit.cameras.shape == (6, 25)
    assert orbit.cameras.dtype == np.float32 and orbit.num_orbit_views == 4
    assert 5.0 <= orbit.elevation_deg <= 40.0 and orbit.elevation_deg == draw_elevation("duck", config, seed=3)
    again = render_orbit(renderer, duck, config, asset_id="duck", seed=3)
    np.testing.assert_array_equal(orbit.rgba, again.rgba)
    np.testing.assert_array_equal(orbit.cameras, again.cameras)
    # The orbit views are the configured ones at the drawn elevation; random views lie elsewhere.
    expected = orbit_cameras(config, orbit.elevation_deg)[:4].numpy()
    np.testing.assert_allclose(orbit.cameras[:4], expected, atol=1e-6)
    positions = orbit.cameras[:, [3, 7, 11]]
    np.testing.assert_allclose(np.linalg.norm(positions, axis=1), config.radius, atol=1e-5)
    np.testing.assert_allclose(np.degrees(np.arcsin(positions[:4, 2] / config.radius)), orbit.elevation_deg, atol=1e-3)
    other = render_orbit(renderer, duck, config, asset_id="duck", seed=4)
    assert other.elevation_deg != orbit.elevation_deg
    assert not np.allclose(other.cameras[4:], orbit.cameras[4:])
    elevations = [draw_elevation(f"asset-{index}", config) for index in range(50)]
    assert min(elevations) >= 5.0 and max(elevations) <= 40.0 and np.std(elevations) > 5
    with pytest.raises(ValueError, match="resolution"):
        render_orbit(renderer, duck, OrbitRenderConfig(resolution=64), asset_id="duck")


def test_renders_from_a_thread_other_than_the_creating_one():
    """Ray Data runs actor UDFs in a worker thread: the EGL context must follow the caller."""
    import threading

    import trimesh

    from vf3d.data.assets import Asset, AssetPart

    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    corners = sphere.vertices[sphere.faces].reshape(-1, 3).astype(np.float32)
    part = AssetPart(positions=corners, normals=corners / 0.5, colors=np.ones((len(corners), 4), np.float32), uvs=None, texture=None)
    asset = Asset(parts=[part], scale=1.0, center=np.zeros(3, np.float32), source="sphere")
    renderer = OrbitRenderer(32)
    views = cameras.render_camera_vector(cameras.orbit_poses(2, 10.0))
    results = []
    threads = [threading.Thread(target=lambda: results.append(renderer.render(asset, views))) for _ in range(2)]
    for thread in threads:
        thread.start()
        thread.join()
    results.append(renderer.render(asset, views))
    assert len(results) == 3 and all(np.array_equal(results[0], other) for other in results[1:])
    assert (results[0][..., 3] > 0).mean() > 0.1
    renderer.close()


@pytest.mark.heavy  # a subprocess that renders, then imports triton and transformers
def test_a_process_that_rendered_can_still_import_triton_and_transformers():
    """Mesa's llvmpipe and triton both bundle LLVM; the renderer orders their loading."""
    import subprocess
    import sys

    code = (
        "from vf3d.data.orbit_renderer import OrbitRenderer\n"
        "renderer = OrbitRenderer(16)\n"
        "import transformers.models.dinov2, torch._dynamo\n"
        "print('survived')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "survived" in result.stdout, result.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# EGL device selection: each render actor draws on its own GPU (pure mapping, no GPU needed)
# ---------------------------------------------------------------------------------------------

# An 8-GPU node as NVIDIA's EGL shows it (EGL order = PCI order), plus Mesa's software device.
NVIDIA_8 = [EglDevice(index=i) for i in range(8)] + [EglDevice(index=8, software=True)]


def with_cuda(devices, ordinals):
    """The devices with EGL_CUDA_DEVICE_NV ordinals (None where CUDA does not see the GPU)."""
    return [dataclasses.replace(device, cuda_ordinal=ordinals.get(device.index)) for device in devices]


def test_parse_visible_devices():
    assert parse_visible_devices(None) is None
    assert parse_visible_devices("") == []
    assert parse_visible_devices("3") == ["3"]
    assert parse_visible_devices(" 2, 5 ,") == ["2", "5"]


@pytest.mark.parametrize("gpu", range(8))
def test_each_assigned_gpu_gets_its_own_egl_device(gpu):
    """Without CUDA ordinals, Ray's GPU id g is the g-th hardware EGL device (not device 0)."""
    assert select_egl_device([gpu], NVIDIA_8, visible_devices=[str(gpu)]) == gpu
    assert select_egl_device([str(gpu)], NVIDIA_8) == gpu


def test_software_devices_are_skipped_when_counting_gpus():
    devices = [EglDevice(index=0, software=True), EglDevice(index=1), EglDevice(index=2)]
    assert select_egl_device([0], devices) == 1
    assert select_egl_device([1], devices) == 2


def test_cuda_ordinals_decide_when_the_driver_reports_them():
    """NVIDIA's EGL reports the CUDA ordinal as this process numbers devices: with
    CUDA_VISIBLE_DEVICES=5 (Ray gave GPU 5), GPU 5 is CUDA device 0 and the others have none."""
    devices = with_cuda(NVIDIA_8, {3: 0})  # EGL order differs from Ray's numbering here
    assert select_egl_device([5], devices, visible_devices=["5"]) == 3
    # Two GPUs given: the renderer draws on the first.
    devices = with_cuda(NVIDIA_8, {6: 0, 7: 1})
    assert select_egl_device(["2", "4"], devices, visible_devices=["2", "4"]) == 6
    # CUDA_VISIBLE_DEVICES unset: the CUDA ordinal is the id itself.
    assert select_egl_device([1], with_cuda(NVIDIA_8, {i: 7 - i for i in range(8)}), visible_devices=None) == 6


def test_no_gpu_assigned_uses_a_software_device():
    assert select_egl_device([], NVIDIA_8, visible_devices=[]) == 8
    assert select_egl_device([], NVIDIA_8[:8]) is None  # no software device: EGL's default
    assert select_egl_device(None, NVIDIA_8) is None  # unknown assignment: EGL's default, as before
    assert select_egl_device([0], []) is None  # nothing enumerated: leave it to glcontext


def test_an_assigned_gpu_that_egl_does_not_see_is_an_error():
    software_only = [EglDevice(index=0, software=True)]
    with pytest.raises(LookupError, match="GPU 0"):
        select_egl_device([0], software_only, visible_devices=["0"])
    with pytest.raises(LookupError, match="GPU 9"):
        select_egl_device([9], NVIDIA_8)
    with pytest.raises(LookupError, match="CUDA device 0"):
        select_egl_device([2], with_cuda(NVIDIA_8, {}) + [EglDevice(index=9, cuda_ordinal=4)], visible_devices=["2"])
    with pytest.raises(LookupError, match="not in CUDA_VISIBLE_DEVICES"):
        select_egl_device([2], with_cuda(NVIDIA_8, {0: 0}), visible_devices=["3"])


def test_this_machine_lists_its_egl_devices():
    devices = list_egl_devices()
    assert devices, "no EGL device enumerated (the renderer needs EGL_EXT_device_enumeration)"
    assert [device.index for device in devices] == list(range(len(devices)))


def test_renderer_without_a_gpu_renders_on_a_software_device(monkeypatch, sphere):
    """An actor Ray gave no GPU (CUDA_VISIBLE_DEVICES="") keeps rendering on the CPU."""
    software = [device.index for device in list_egl_devices() if device.software]
    if not software:
        pytest.skip("no software EGL device here (a GPU machine without Mesa)")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with OrbitRenderer(32, gpu_ids=None) as renderer:
        assert renderer.device_index == software[0]
        frames = renderer.render(sphere, camera(0.0, 0.0))
    assert (frames[..., 3] > 0).mean() > 0.1


def test_renderer_given_a_gpu_egl_cannot_see_fails_unless_logical(monkeypatch, sphere):
    if any(not device.software for device in list_egl_devices()):
        pytest.skip("this machine has a hardware EGL device")
    monkeypatch.delenv("VF3D_ALLOW_LOGICAL_GPUS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(RuntimeError, match="graphics"):
        OrbitRenderer(32, gpu_ids=[0])
    # Logical GPUs (tests, simulations on CPU machines): fall back to the software device.
    monkeypatch.setenv("VF3D_ALLOW_LOGICAL_GPUS", "1")
    with OrbitRenderer(32, gpu_ids=[0]) as renderer:
        assert (renderer.render(sphere, camera(0.0, 0.0))[..., 3] > 0).mean() > 0.1
