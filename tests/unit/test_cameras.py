"""Camera conventions of the released VFusion3D/OpenLRM code (docs/vfusion3d.md#cameras)."""

import math

import pytest
import torch

from vf3d import cameras

RELEASED_CANONICAL = [0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0.75, 0.75, 0.5, 0.5]


def test_canonical_source_vector_equals_the_released_one():
    assert cameras.canonical_source_camera().tolist() == RELEASED_CANONICAL


# OpenLRM's `_default_source_camera(dist_to_center=2.0)` (openlrm/runners/infer/lrm.py): on −Y, +Z up.
OPENLRM_CANONICAL = [1, 0, 0, 0, 0, 0, -1, -2, 0, 1, 0, 0, 0.75, 0.75, 0.5, 0.5]


def test_canonical_source_vector_at_azimuth_minus_90_equals_openlrms():
    vector = cameras.canonical_source_camera(2.0, azimuth_deg=-90.0)
    torch.testing.assert_close(vector, torch.tensor(OPENLRM_CANONICAL, dtype=torch.float32), atol=1e-6, rtol=0)
    # Azimuth 0 is the released VFusion3D vector, bit for bit; other azimuths keep the camera at d on the orbit.
    assert cameras.canonical_source_camera(1.0, azimuth_deg=0.0).tolist() == RELEASED_CANONICAL
    centre = cameras.canonical_source_camera(1.7, azimuth_deg=30.0)[:12].reshape(3, 4)[:, 3]
    torch.testing.assert_close(centre, torch.tensor([1.7 * math.cos(math.pi / 6), 1.7 * math.sin(math.pi / 6), 0.0]), atol=1e-6, rtol=0)


def test_source_vector_layout_is_row_major_extrinsics_then_intrinsics():
    pose = cameras.look_at(torch.tensor([0.3, -1.2, 0.7]))
    vector = cameras.source_camera_vector(pose)
    assert torch.equal(vector[:12].reshape(3, 4), pose[:3, :4])
    assert vector[12:].tolist() == [0.75, 0.75, 0.5, 0.5]


@pytest.mark.parametrize("elevation", [0.0, 30.0, -20.0, 60.0])
def test_orbit_poses_are_orthonormal_and_look_at_the_origin(elevation):
    poses = cameras.orbit_poses(16, elevation_deg=elevation, radius=1.5)
    rotation = poses[:, :3, :3]
    assert torch.allclose(rotation.transpose(1, 2) @ rotation, torch.eye(3).expand(16, 3, 3), atol=1e-6)
    assert torch.allclose(torch.linalg.det(rotation), torch.ones(16), atol=1e-6)
    centres = poses[:, :3, 3]
    assert torch.allclose(centres.norm(dim=-1), torch.full((16,), 1.5), atol=1e-6)
    # OpenGL: the camera looks down its -Z axis, i.e. towards the origin.
    forward = -rotation[:, :, 2]
    assert torch.allclose(forward, -centres / 1.5, atol=1e-6)
    # +Y of the camera points up in the world (positive z component) for |elevation| < 90.
    assert (rotation[:, 2, 1] > 0).all()
    assert torch.allclose(torch.asin(centres[:, 2] / 1.5), torch.full((16,), math.radians(elevation)), atol=1e-5)


def test_turntable_view_zero_faces_the_canonical_camera():
    poses = cameras.turntable_poses(160)
    assert torch.allclose(poses[0, :3, 3], torch.tensor([1.5, 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(poses[0, :3, :3], cameras.look_at(torch.tensor([1.0, 0.0, 0.0]))[:3, :3])
    assert torch.allclose(poses[40, :3, 3], torch.tensor([0.0, 1.5, 0.0]), atol=1e-5)


def test_render_vector_round_trips():
    poses = cameras.orbit_poses(4, 20.0)
    vectors = cameras.render_camera_vector(poses)
    assert vectors.shape == (4, 25)
    back_poses, intrinsics = cameras.split_render_camera(vectors)
    assert torch.equal(back_poses, poses)
    assert torch.equal(intrinsics[0], cameras.intrinsics_matrix())
    assert torch.allclose(cameras.source_from_render_camera(vectors), cameras.source_camera_vector(poses))


def test_centre_pixel_ray_passes_through_the_origin():
    render = cameras.render_camera_vector(cameras.orbit_poses(8, 35.0))
    origins, directions = cameras.generate_rays(render, 33, 33)
    centre = 16 * 33 + 16
    o, d = origins[:, centre], directions[:, centre]
    distance_to_origin = torch.linalg.cross(-o, d).norm(dim=-1)  # |(0 - o) x d| for unit d
    assert distance_to_origin.max() < 1e-6
    assert torch.allclose(directions.norm(dim=-1), torch.ones(8, 33 * 33), atol=1e-6)


def test_rays_follow_the_opencv_image_layout():
    """Top-left pixel looks up-left in the camera frame (OpenCV rows go down, flipped to OpenGL)."""
    pose = cameras.look_at(torch.tensor([2.0, 0.0, 0.0]))
    origins, directions = cameras.generate_rays(cameras.render_camera_vector(pose), 8, 8)
    top_left, bottom_right = directions[0], directions[-1]
    assert top_left[2] > 0 > bottom_right[2]  # world +Z is up
    # Camera at +X looking at -X: its right (+x_cam) is world +Y, so the left column has y < 0.
    assert top_left[1] < 0 < bottom_right[1]


def test_projection_inverts_ray_generation():
    render = cameras.render_camera_vector(cameras.orbit_poses(3, 10.0))
    origins, directions = cameras.generate_rays(render, 12, 20)
    points = origins + 0.9 * directions
    pixels, depth = cameras.project_points(points, render, 12, 20)
    rows, cols = torch.meshgrid(torch.arange(12.0), torch.arange(20.0), indexing="ij")
    expected = torch.stack([cols.reshape(-1) + 0.5, rows.reshape(-1) + 0.5], dim=-1)
    assert torch.allclose(pixels, expected.expand(3, -1, -1), atol=1e-4)
    assert (depth > 0).all()


def test_crop_rays_are_the_same_pixels_of_the_full_view():
    render = cameras.render_camera_vector(cameras.orbit_poses(2, 0.0))
    full_origins, full_directions = cameras.generate_rays(render, 16, 16)
    offsets = torch.tensor([[3, 5], [9, 0]])
    _, crop_directions = cameras.generate_rays(render, 16, 16, crop_offsets=offsets, crop_size=(4, 6))
    full = full_directions.reshape(2, 16, 16, 3)
    assert torch.allclose(crop_directions[0].reshape(4, 6, 3), full[0, 3:7, 5:11], atol=1e-6)
    assert torch.allclose(crop_directions[1].reshape(4, 6, 3), full[1, 9:13, 0:6], atol=1e-6)


def test_focal_and_field_of_view():
    assert cameras.fov_from_focal(0.75) == pytest.approx(67.38, abs=0.01)
    assert cameras.focal_from_fov(cameras.fov_from_focal(0.6)) == pytest.approx(0.6)


def test_camera_noise_keeps_rotations_orthonormal_and_is_seeded():
    poses = cameras.orbit_poses(64, 15.0)
    noisy = cameras.perturb_poses(poses, rotation_std_deg=2.0, translation_std=0.02, generator=torch.Generator().manual_seed(1))
    again = cameras.perturb_poses(poses, rotation_std_deg=2.0, translation_std=0.02, generator=torch.Generator().manual_seed(1))
    assert torch.equal(noisy, again)
    rotation = noisy[:, :3, :3]
    assert torch.allclose(rotation.transpose(1, 2) @ rotation, torch.eye(3).expand(64, 3, 3), atol=1e-5)
    shift = (noisy[:, :3, 3] - poses[:, :3, 3]).std()
    assert 0.01 < shift < 0.03
    angle = torch.rad2deg(torch.acos(((poses[:, :3, :3].transpose(1, 2) @ rotation).diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1))
    assert 1.0 < angle.mean() < 6.0  # chi(3)-distributed angle: mean ≈ 1.6·σ
    unchanged = cameras.perturb_poses(poses, 0.0, 0.0)
    assert torch.allclose(unchanged, poses, atol=1e-6)


def test_source_and_render_noise_keep_intrinsics():
    render = cameras.render_camera_vector(cameras.orbit_poses(4, 0.0))
    noisy_render = cameras.perturb_render_cameras(render, 1.0, 0.01, torch.Generator().manual_seed(0))
    assert torch.equal(noisy_render[:, 16:], render[:, 16:])
    source = cameras.canonical_source_camera().expand(4, 16)
    noisy_source = cameras.perturb_source_cameras(source, 1.0, 0.01, torch.Generator().manual_seed(0))
    assert torch.equal(noisy_source[:, 12:], source[:, 12:])
    assert not torch.equal(noisy_source[:, :12], source[:, :12])


def test_relative_to_source_puts_the_source_at_the_canonical_pose_and_keeps_the_orbit():
    poses = cameras.orbit_poses(8, elevation_deg=30.0)
    render = cameras.render_camera_vector(poses)
    relative = cameras.relative_to_source(render[3], render)
    moved, intrinsics = cameras.split_render_camera(relative)
    torch.testing.assert_close(moved[3], cameras.orbit_poses(1)[0], atol=1e-5, rtol=0)
    # A rotation about the origin: every camera stays at the radius, angles between views are kept.
    torch.testing.assert_close(moved[:, :3, 3].norm(dim=-1), torch.full((8,), 1.5), atol=1e-5, rtol=0)
    torch.testing.assert_close(moved[:, :3, 3] @ moved[:, :3, 3].T, poses[:, :3, 3] @ poses[:, :3, 3].T, atol=1e-4, rtol=0)
    torch.testing.assert_close(intrinsics, cameras.split_render_camera(render)[1])


@pytest.mark.parametrize("azimuth", [-90.0, 45.0])
def test_relative_to_source_at_an_azimuth_puts_the_source_at_that_canonical_pose(azimuth):
    poses = cameras.orbit_poses(8, elevation_deg=30.0)
    render = cameras.render_camera_vector(poses)
    relative = cameras.relative_to_source(render[3], render, azimuth_deg=azimuth)
    moved, _ = cameras.split_render_camera(relative)
    expected = cameras.look_at(1.5 * torch.tensor([math.cos(math.radians(azimuth)), math.sin(math.radians(azimuth)), 0.0]))
    torch.testing.assert_close(moved[3], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(moved[:, :3, 3] @ moved[:, :3, 3].T, poses[:, :3, 3] @ poses[:, :3, 3].T, atol=1e-4, rtol=0)
    # The canonical render pose and the source vector's camera share the direction (distances differ).
    source_centre = cameras.canonical_source_camera(1.0, azimuth_deg=azimuth)[:12].reshape(3, 4)[:, 3]
    torch.testing.assert_close(moved[3, :3, 3] / 1.5, source_centre, atol=1e-5, rtol=0)


def test_turntable_view_zero_follows_the_canonical_azimuth():
    poses = cameras.turntable_poses(160, azimuth_deg=-90.0)
    torch.testing.assert_close(poses[0, :3, 3], torch.tensor([0.0, -1.5, 0.0]), atol=1e-6, rtol=0)
    assert torch.equal(cameras.turntable_poses(160, azimuth_deg=0.0), cameras.turntable_poses(160))
