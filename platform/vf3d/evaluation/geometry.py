"""Geometry metrics: Chamfer distance and F-score between a reconstructed and a true surface.

Definitions (points sampled area-uniformly on each surface, `num_points` each, seeded):

    d(p, Q)    = min over q in Q of ‖p − q‖₂            (Euclidean, world units, not squared)
    Chamfer    = ½ · (mean_{p∈P} d(p, Q) + mean_{q∈Q} d(q, P))
    precision  = fraction of p ∈ P with d(p, Q) < τ        (predicted surface near the truth)
    recall     = fraction of q ∈ Q with d(q, P) < τ        (true surface covered by the prediction)
    F-score@τ  = 2 · precision · recall / (precision + recall)   (0 when both are 0)

P is the prediction, Q the truth. Two surfaces that are the same give 0 and 1 exactly when
sampled with the same seed. A unit sphere moved by d ≤ 1 has Chamfer d/2 to the original and,
for τ < d, F-score τ/d (nearest-point distances |‖p − c‖ − 1| have density r/2d on [1 − d, 1 + d]).

Frames. Orbit renders place the asset normalised by `data.assets.load_asset` (bounding-box centre
at the origin, farthest vertex at radius 1 − margin) in a +Z-up world; the true mesh is loaded the
same way. The reconstructor, however, always sees its input from the canonical source camera, so
its field lives in the source-canonical frame of `cameras.relative_to_source`: a world point p is
at M·p there, with M = C·S⁻¹ (S the input view's camera-to-world pose, C the canonical render
pose at `cameras.RENDER_RADIUS` at the model's `source_camera_azimuth_deg`: on +X for VFusion3D, on −Y
for OpenLRM). `source_frame_to_world` returns M⁻¹ = S·C⁻¹, which takes the extracted mesh back into the
asset's frame before it is compared.

numpy, scipy and trimesh (torch only for the camera helpers); no ray.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ALIGNMENTS = ("none", "bbox")


@dataclass
class GeometryScores:
    """Chamfer distance, F-score and its parts at `threshold` (see the module docstring)."""

    chamfer: float
    fscore: float
    precision: float
    recall: float
    threshold: float

    def as_dict(self) -> dict[str, float]:
        return {"chamfer": self.chamfer, "fscore": self.fscore, "precision": self.precision, "recall": self.recall}


def sample_points(mesh, count: int, seed: int = 0) -> np.ndarray:
    """`count` points area-uniformly on a trimesh.Trimesh's surface → float64 [count, 3].

    The same mesh, count and seed give the same points. Raises ValueError for a mesh without area.
    """
    import trimesh

    if len(mesh.faces) == 0 or not mesh.area > 0:
        raise ValueError("cannot sample points on a mesh without surface area")
    points, _ = trimesh.sample.sample_surface(mesh, count, seed=seed)
    return np.asarray(points, dtype=np.float64)


def chamfer_fscore(predicted: np.ndarray, truth: np.ndarray, threshold: float) -> GeometryScores:
    """Chamfer distance and F-score@threshold between point sets predicted [P, 3] and truth [Q, 3]."""
    from scipy.spatial import cKDTree

    predicted, truth = np.asarray(predicted, np.float64), np.asarray(truth, np.float64)
    if predicted.ndim != 2 or truth.ndim != 2 or predicted.shape[1] != 3 or truth.shape[1] != 3 or not len(predicted) or not len(truth):
        raise ValueError(f"point sets must be non-empty [N, 3], got {predicted.shape} and {truth.shape}")
    to_truth, _ = cKDTree(truth).query(predicted)
    to_predicted, _ = cKDTree(predicted).query(truth)
    precision = float(np.mean(to_truth < threshold))
    recall = float(np.mean(to_predicted < threshold))
    fscore = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    chamfer = 0.5 * (float(np.mean(to_truth)) + float(np.mean(to_predicted)))
    return GeometryScores(chamfer=chamfer, fscore=fscore, precision=precision, recall=recall, threshold=threshold)


def asset_mesh(asset):
    """The normalised triangles of a `data.assets.Asset` (every part) as one trimesh.Trimesh, in
    the frame the orbit renderer drew them in."""
    import trimesh

    corners = asset.positions.astype(np.float64)
    return trimesh.Trimesh(vertices=corners, faces=np.arange(len(corners)).reshape(-1, 3), process=False)


def source_frame_to_world(source_camera, azimuth_deg: float = 0.0) -> np.ndarray:
    """The transform taking the reconstructor's source-canonical frame back to the world (asset)
    frame of an orbit: S·C⁻¹, the inverse of the M that `cameras.relative_to_source` applies.

    Args:
        source_camera: [25] render-camera vector of the input view (torch or numpy).
        azimuth_deg: the model's canonical source-camera azimuth (`source_camera_azimuth_deg`).
    Returns:
        float64 [4, 4].
    """
    import torch

    from vf3d import cameras

    pose, _ = cameras.split_render_camera(torch.as_tensor(source_camera, dtype=torch.float64).reshape(25))
    canonical = cameras.orbit_poses(1, elevation_deg=0.0, radius=cameras.RENDER_RADIUS, azimuth_offset_deg=azimuth_deg)[0].to(torch.float64)
    return (pose @ torch.linalg.inv(canonical)).numpy()


def align_bbox(mesh, reference):
    """A copy of `mesh` moved and uniformly scaled so its bounding box has `reference`'s centre and
    diagonal length."""
    aligned = mesh.copy()
    low, high = aligned.bounds
    ref_low, ref_high = reference.bounds
    diagonal = float(np.linalg.norm(high - low))
    scale = float(np.linalg.norm(ref_high - ref_low)) / diagonal if diagonal > 0 else 1.0
    aligned.apply_translation(-(low + high) / 2)
    aligned.apply_scale(scale)
    aligned.apply_translation((ref_low + ref_high) / 2)
    return aligned


def geometry_scores(
    predicted_mesh,
    source_camera,
    truth_points: np.ndarray,
    truth_mesh,
    num_points: int,
    threshold: float,
    alignment: str = "none",
    seed: int = 0,
    azimuth_deg: float = 0.0,
) -> GeometryScores:
    """Score a reconstructed mesh against the true surface.

    Args:
        predicted_mesh: trimesh.Trimesh in the reconstructor's source-canonical frame (what
            `ImageTo3D.mesh` returns for that input).
        source_camera: [25] render camera of the input view (its frame → world).
        truth_points: [Q, 3] points sampled on the true surface (world frame).
        truth_mesh: the true trimesh (only its bounds are used, for "bbox" alignment).
        num_points, seed: points sampled on the prediction.
        threshold: F-score distance τ.
        alignment: "none" or "bbox" (see `align_bbox`).
        azimuth_deg: the model's canonical source-camera azimuth (see `source_frame_to_world`).
    """
    if alignment not in ALIGNMENTS:
        raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
    world = predicted_mesh.copy()
    world.apply_transform(source_frame_to_world(source_camera, azimuth_deg))
    if alignment == "bbox":
        world = align_bbox(world, truth_mesh)
    return chamfer_fscore(sample_points(world, num_points, seed), truth_points, threshold)
