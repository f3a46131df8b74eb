"""Camera conventions shared by every vf3d component (those of the released VFusion3D/OpenLRM code;
docs/vfusion3d.md#cameras).

- World: +Z up; objects live inside [-1, 1]³.
- Poses are camera-to-world 4×4 matrices in the OpenGL/Blender convention: the camera looks down
  its −Z axis with +Y up. Rays are built OpenCV-style (+Z forward, +Y down) and flipped by
  diag(1, −1, −1) into the OpenGL camera frame.
- Intrinsics are normalised by image size: fx/W, fy/H, cx/W, cy/H (default 0.75, 0.75, 0.5, 0.5,
  a field of view of about 67.4°). Pixel (row i, col j) has its centre at ((j + 0.5)/W, (i + 0.5)/H).
- Source-camera vector (16-D): the 3×4 [R|t] of the pose flattened row-major, then fx, fy, cx, cy.
- Render-camera vector (25-D): the flattened 4×4 pose, then the flattened normalised 3×3 K.
- Orbits: azimuth 0 is the +X axis, azimuth grows towards +Y, elevation is measured up from the
  XY plane. The canonical source camera sits at the model's `source_camera_azimuth_deg` (0, on +X,
  for VFusion3D; −90, on −Y, for OpenLRM).

Everything here is pure torch on whatever device the inputs are on; nothing has parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

DEFAULT_INTRINSICS = (0.75, 0.75, 0.5, 0.5)
"""Normalised (fx, fy, cx, cy) of the released model's cameras."""
RENDER_RADIUS = 1.5
"""Distance of render and turntable cameras from the origin."""
CANONICAL_SOURCE_DISTANCE = 1.0
"""Translation of the canonical source camera fed to the released VFusion3D weights
(docs/vfusion3d.md#source-camera-vector)."""
WORLD_UP = (0.0, 0.0, 1.0)
OPENCV_TO_OPENGL = (1.0, -1.0, -1.0)


def look_at(camera_positions: torch.Tensor, target: torch.Tensor | None = None, up: Sequence[float] = WORLD_UP) -> torch.Tensor:
    """Camera-to-world poses of cameras at `camera_positions` looking at `target`.

    Args:
        camera_positions: [..., 3] camera centres in world coordinates.
        target: [..., 3] (or [3]) points looked at; the origin when None.
        up: world up vector (never parallel to the viewing direction).

    Returns:
        [..., 4, 4] poses whose columns are x = up × z, y = z × x, z = normalise(camera − target),
        and the camera centre.
    """
    positions = camera_positions.float()
    if target is None:
        target = torch.zeros_like(positions)
    z_axis = torch.nn.functional.normalize(positions - target, dim=-1)
    up_vector = torch.tensor(up, dtype=positions.dtype, device=positions.device).expand_as(z_axis)
    x_axis = torch.nn.functional.normalize(torch.cross(up_vector, z_axis, dim=-1), dim=-1)
    y_axis = torch.cross(z_axis, x_axis, dim=-1)
    pose = torch.zeros(*positions.shape[:-1], 4, 4, dtype=positions.dtype, device=positions.device)
    pose[..., :3, 0] = x_axis
    pose[..., :3, 1] = y_axis
    pose[..., :3, 2] = z_axis
    pose[..., :3, 3] = positions
    pose[..., 3, 3] = 1.0
    return pose


def orbit_positions(azimuths: torch.Tensor, elevations: torch.Tensor, radius: float | torch.Tensor) -> torch.Tensor:
    """Points on a sphere from azimuth/elevation in radians ([...] each, broadcast) → [..., 3]."""
    azimuths, elevations = torch.broadcast_tensors(
        torch.as_tensor(azimuths, dtype=torch.float32), torch.as_tensor(elevations, dtype=torch.float32)
    )
    return torch.stack(
        [
            radius * torch.cos(elevations) * torch.cos(azimuths),
            radius * torch.cos(elevations) * torch.sin(azimuths),
            radius * torch.sin(elevations) * torch.ones_like(azimuths),
        ],
        dim=-1,
    )


def orbit_poses(num_views: int, elevation_deg: float = 0.0, radius: float = RENDER_RADIUS, azimuth_offset_deg: float = 0.0) -> torch.Tensor:
    """`num_views` poses at uniform azimuth 2πi/V (+ offset) and one elevation → [V, 4, 4]."""
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    azimuths = torch.arange(num_views, dtype=torch.float32) * (2 * math.pi / num_views) + math.radians(azimuth_offset_deg)
    elevations = torch.full_like(azimuths, math.radians(elevation_deg))
    return look_at(orbit_positions(azimuths, elevations, radius))


def turntable_poses(num_views: int, radius: float = RENDER_RADIUS, elevation_deg: float = 0.0, azimuth_deg: float = 0.0) -> torch.Tensor:
    """Turntable of `num_views` poses; view 0 at `azimuth_deg`, facing a canonical source camera there
    (+X by default) → [V, 4, 4]."""
    return orbit_poses(num_views, elevation_deg=elevation_deg, radius=radius, azimuth_offset_deg=azimuth_deg)


def random_sphere_poses(
    num_views: int,
    radius: float = RENDER_RADIUS,
    min_elevation_deg: float = -30.0,
    max_elevation_deg: float = 60.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Poses at uniformly random azimuth and area-uniform elevation in a band → [V, 4, 4]."""
    azimuths = torch.rand(num_views, generator=generator) * 2 * math.pi
    low, high = math.sin(math.radians(min_elevation_deg)), math.sin(math.radians(max_elevation_deg))
    elevations = torch.asin(low + (high - low) * torch.rand(num_views, generator=generator))
    return look_at(orbit_positions(azimuths, elevations, radius))


def intrinsics_matrix(
    fx: float = DEFAULT_INTRINSICS[0],
    fy: float = DEFAULT_INTRINSICS[1],
    cx: float = DEFAULT_INTRINSICS[2],
    cy: float = DEFAULT_INTRINSICS[3],
) -> torch.Tensor:
    """Normalised 3×3 intrinsics [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] → [3, 3]."""
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def focal_from_fov(fov_deg: float) -> float:
    """Normalised focal length for a full field of view in degrees (0.75 ↔ ~67.38°)."""
    return 0.5 / math.tan(math.radians(fov_deg) / 2)


def fov_from_focal(focal: float) -> float:
    """Full field of view in degrees for a normalised focal length."""
    return math.degrees(2 * math.atan(0.5 / focal))


def source_camera_vector(poses: torch.Tensor, intrinsics: Sequence[float] = DEFAULT_INTRINSICS) -> torch.Tensor:
    """16-D source conditioning: [R|t] row-major (12) + (fx, fy, cx, cy). [..., 4, 4] → [..., 16]."""
    extrinsics = poses[..., :3, :4].reshape(*poses.shape[:-2], 12)
    intr = torch.tensor(list(intrinsics), dtype=poses.dtype, device=poses.device).expand(*poses.shape[:-2], 4)
    return torch.cat([extrinsics, intr], dim=-1)


def _cos_sin_deg(angle_deg: float) -> tuple[float, float]:
    """(cos, sin) of an angle in degrees, exact (0 and ±1) at multiples of 90°."""
    quarters, rest = divmod(float(angle_deg), 90.0)
    if rest == 0.0:
        return ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))[int(quarters) % 4]
    return math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))


def canonical_source_camera(
    distance: float = CANONICAL_SOURCE_DISTANCE, azimuth_deg: float = 0.0, intrinsics: Sequence[float] = DEFAULT_INTRINSICS
) -> torch.Tensor:
    """The source camera a reconstructor always sees: at (d·cos a, d·sin a, 0) looking at the origin, +Z up.

    With the defaults (VFusion3D) this is exactly [0,0,1,1, 1,0,0,0, 0,1,0,0, 0.75,0.75,0.5,0.5];
    with distance 2 and azimuth −90° it is OpenLRM's [1,0,0,0, 0,0,-1,-2, 0,1,0,0, 0.75,0.75,0.5,0.5] → [16].
    """
    cos, sin = _cos_sin_deg(azimuth_deg)
    pose = look_at(torch.tensor([distance * cos, distance * sin, 0.0]))
    return source_camera_vector(pose, intrinsics)


def model_source_camera(config) -> torch.Tensor:
    """The canonical source-camera vector of a reconstructor with this `ReconstructorConfig` (its
    `source_camera_distance` and `source_camera_azimuth_deg`) → [16]."""
    return canonical_source_camera(config.source_camera_distance, config.source_camera_azimuth_deg)


def render_camera_vector(poses: torch.Tensor, intrinsics: torch.Tensor | None = None) -> torch.Tensor:
    """25-D render conditioning: flattened pose (16) + flattened normalised K (9).

    Args:
        poses: [..., 4, 4] camera-to-world.
        intrinsics: [..., 3, 3] or [3, 3] normalised K; the default intrinsics when None.
    Returns:
        [..., 25].
    """
    if intrinsics is None:
        intrinsics = intrinsics_matrix()
    intrinsics = intrinsics.to(dtype=poses.dtype, device=poses.device).expand(*poses.shape[:-2], 3, 3)
    return torch.cat([poses.reshape(*poses.shape[:-2], 16), intrinsics.reshape(*poses.shape[:-2], 9)], dim=-1)


def split_render_camera(cameras: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `render_camera_vector`: [..., 25] → poses [..., 4, 4], intrinsics [..., 3, 3]."""
    if cameras.shape[-1] != 25:
        raise ValueError(f"render cameras must have 25 values in the last dimension, got {tuple(cameras.shape)}")
    return cameras[..., :16].reshape(*cameras.shape[:-1], 4, 4), cameras[..., 16:].reshape(*cameras.shape[:-1], 3, 3)


def source_from_render_camera(cameras: torch.Tensor) -> torch.Tensor:
    """16-D source vector of the same camera as a 25-D render vector: [..., 25] → [..., 16]."""
    poses, intrinsics = split_render_camera(cameras)
    normalised = torch.stack([intrinsics[..., 0, 0], intrinsics[..., 1, 1], intrinsics[..., 0, 2], intrinsics[..., 1, 2]], dim=-1)
    return torch.cat([poses[..., :3, :4].reshape(*poses.shape[:-2], 12), normalised], dim=-1)


def generate_rays(
    cameras: torch.Tensor,
    height: int,
    width: int | None = None,
    crop_offsets: torch.Tensor | None = None,
    crop_size: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """World-space rays through pixel centres of an H×W image, or of a crop of it.

    Args:
        cameras: [..., 25] render-camera vectors.
        height, width: full image size in pixels (width defaults to height).
        crop_offsets: [..., 2] (top, left) pixel offsets of a crop per camera; requires crop_size.
        crop_size: (h, w) of the crop; the rays then cover pixels top..top+h, left..left+w of the
            full image, so a crop renders exactly those pixels of the full render.

    Returns:
        origins [..., h·w, 3] and unit directions [..., h·w, 3], pixels in row-major order.
    """
    width = height if width is None else width
    poses, intrinsics = split_render_camera(cameras)
    device, dtype = cameras.device, cameras.dtype
    rows_out, cols_out = crop_size if crop_size is not None else (height, width)
    rows = torch.arange(rows_out, device=device, dtype=dtype)
    cols = torch.arange(cols_out, device=device, dtype=dtype)
    grid_rows, grid_cols = torch.meshgrid(rows, cols, indexing="ij")
    grid_rows = grid_rows.reshape(-1).expand(*cameras.shape[:-1], rows_out * cols_out)
    grid_cols = grid_cols.reshape(-1).expand(*cameras.shape[:-1], rows_out * cols_out)
    if crop_offsets is not None:
        if crop_size is None:
            raise ValueError("crop_offsets needs crop_size")
        grid_rows = grid_rows + crop_offsets[..., 0:1].to(dtype)
        grid_cols = grid_cols + crop_offsets[..., 1:2].to(dtype)
    u = (grid_cols + 0.5) / width
    v = (grid_rows + 0.5) / height
    fx, fy = intrinsics[..., 0, 0, None], intrinsics[..., 1, 1, None]
    cx, cy = intrinsics[..., 0, 2, None], intrinsics[..., 1, 2, None]
    flip = torch.tensor(OPENCV_TO_OPENGL, device=device, dtype=dtype)
    directions_camera = torch.stack([(u - cx) / fx, (v - cy) / fy, torch.ones_like(u)], dim=-1) * flip
    directions = torch.einsum("...ij,...pj->...pi", poses[..., :3, :3], directions_camera)
    directions = torch.nn.functional.normalize(directions, dim=-1)
    origins = poses[..., None, :3, 3].expand_as(directions)
    return origins, directions


def project_points(points: torch.Tensor, cameras: torch.Tensor, height: int, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world points into pixel coordinates (inverse of `generate_rays`).

    Args:
        points: [..., P, 3] world points.
        cameras: [..., 25] render cameras.
    Returns:
        pixels [..., P, 2] as continuous (x = column, y = row) with pixel j's centre at j + 0.5,
        and depths [..., P] along the viewing axis (positive in front of the camera).
    """
    width = height if width is None else width
    poses, intrinsics = split_render_camera(cameras)
    rotation, centre = poses[..., :3, :3], poses[..., None, :3, 3]
    local = torch.einsum("...ji,...pj->...pi", rotation, points - centre)
    flip = torch.tensor(OPENCV_TO_OPENGL, device=points.device, dtype=points.dtype)
    opencv = local * flip
    depth = opencv[..., 2]
    u = intrinsics[..., 0, 0, None] * opencv[..., 0] / depth + intrinsics[..., 0, 2, None]
    v = intrinsics[..., 1, 1, None] * opencv[..., 1] / depth + intrinsics[..., 1, 2, None]
    return torch.stack([u * width, v * height], dim=-1), depth


def _axis_angle_to_matrix(rotation_vectors: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula: [..., 3] axis·angle (radians) → [..., 3, 3] rotation matrices."""
    angles = rotation_vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    axes = rotation_vectors / angles
    x, y, z = axes.unbind(-1)
    zeros = torch.zeros_like(x)
    skew = torch.stack([zeros, -z, y, z, zeros, -x, -y, x, zeros], dim=-1).reshape(*axes.shape[:-1], 3, 3)
    sin, cos = torch.sin(angles)[..., None], torch.cos(angles)[..., None]
    eye = torch.eye(3, dtype=rotation_vectors.dtype, device=rotation_vectors.device)
    return eye + sin * skew + (1 - cos) * (skew @ skew)


def perturb_poses(
    poses: torch.Tensor, rotation_std_deg: float, translation_std: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Camera noise: rotate each camera about its own centre and shift it, both Gaussian.

    Args:
        poses: [..., 4, 4] camera-to-world.
        rotation_std_deg: standard deviation of each axis-angle component, degrees.
        translation_std: standard deviation of each translation component, world units.
    Returns:
        [..., 4, 4] perturbed poses (rotations stay orthonormal).
    """
    noise_shape = (*poses.shape[:-2], 3)
    rotation_noise = torch.randn(noise_shape, generator=generator, dtype=poses.dtype, device="cpu").to(poses.device)
    translation_noise = torch.randn(noise_shape, generator=generator, dtype=poses.dtype, device="cpu").to(poses.device)
    perturbed = poses.clone()
    perturbed[..., :3, :3] = poses[..., :3, :3] @ _axis_angle_to_matrix(rotation_noise * math.radians(rotation_std_deg))
    perturbed[..., :3, 3] = poses[..., :3, 3] + translation_noise * translation_std
    return perturbed


def perturb_render_cameras(
    cameras: torch.Tensor, rotation_std_deg: float, translation_std: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """`perturb_poses` applied to 25-D render cameras ([..., 25] → [..., 25])."""
    poses, intrinsics = split_render_camera(cameras)
    return render_camera_vector(perturb_poses(poses, rotation_std_deg, translation_std, generator), intrinsics)


def perturb_source_cameras(
    cameras: torch.Tensor, rotation_std_deg: float, translation_std: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """`perturb_poses` applied to 16-D source cameras ([..., 16] → [..., 16])."""
    pose = torch.eye(4, dtype=cameras.dtype, device=cameras.device).repeat(*cameras.shape[:-1], 1, 1)
    pose[..., :3, :4] = cameras[..., :12].reshape(*cameras.shape[:-1], 3, 4)
    perturbed = perturb_poses(pose, rotation_std_deg, translation_std, generator)
    return torch.cat([perturbed[..., :3, :4].reshape(*cameras.shape[:-1], 12), cameras[..., 12:]], dim=-1)


def relative_to_source(
    source_cameras: torch.Tensor, target_cameras: torch.Tensor, radius: float = RENDER_RADIUS, azimuth_deg: float = 0.0
) -> torch.Tensor:
    """Express target cameras in the frame where the source camera is the canonical one.

    The reconstructor always sees the canonical source camera (at the model's azimuth `azimuth_deg`,
    +X by default, elevation 0), so in training every view of a sample is moved by the rigid
    transform M = C · S⁻¹ that takes the source pose S to the canonical render pose C at `radius`
    and `azimuth_deg`. For cameras looking at the origin from `radius` (every orbit view), M is a
    rotation about the origin: the object stays centred and inside the cube.

    Args:
        source_cameras: [..., 25] render vectors of the source views.
        target_cameras: [..., k, 25] render vectors of the target views of the same samples.
        azimuth_deg: the model's `source_camera_azimuth_deg` (0 for VFusion3D, −90 for OpenLRM).
    Returns:
        [..., k, 25] the targets in the source-canonical frame (intrinsics unchanged).
    """
    source_poses, _ = split_render_camera(source_cameras)
    target_poses, target_intrinsics = split_render_camera(target_cameras)
    canonical = orbit_poses(1, elevation_deg=0.0, radius=radius, azimuth_offset_deg=azimuth_deg)[0]
    canonical = canonical.to(dtype=source_poses.dtype, device=source_poses.device)
    transform = canonical @ torch.linalg.inv(source_poses)  # [..., 4, 4]
    return render_camera_vector(transform.unsqueeze(-3) @ target_poses, target_intrinsics)
