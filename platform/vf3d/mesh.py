"""Mesh extraction from a neural density/colour field, mesh export and turntable videos.

The field lives in the cube [-1, 1]^3 of a +Z-up world and is given as a callable
``query_fn(points[P, 3]) -> (density[P], rgb[P, 3])``. A regular grid of
``resolution`` samples per axis (``linspace(-1, 1, resolution)`` along x, y, z,
arrays indexed ``[ix, iy, iz]``) is thresholded at ``iso`` with marching cubes;
the solid is where density > iso.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import trimesh
from scipy import ndimage
from skimage import measure

from vf3d import storage
from vf3d.atomic import PARTIAL_SUFFIX, atomic_path, write_bytes_atomic

QueryFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

SURFACE_BASE_CELLS = 48
"""Fewest cells per axis of the "surface" method's base grid (whose corners are all queried, or those
in occupied cells): features thinner than a base cell that touch no base corner may be missed, as with
"coarse_to_fine"."""

MESH_CONTENT_TYPES = {"glb": "model/gltf-binary", "obj": "model/obj", "ply": "application/ply"}

# glTF is +Y up, the world is +Z up: (x, y, z) -> (x, z, -y), a -90 degree turn about X.
_Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


class EmptyMeshError(ValueError):
    """No surface crosses the iso level anywhere in the sampled grid."""


@dataclass
class MeshResult:
    """An extracted mesh and what it cost.

    ``mesh`` has world-space vertices in [-1, 1]^3 and RGBA uint8 vertex colours;
    ``num_queries`` counts density samples, ``num_color_queries`` colour samples (one per output
    vertex). ``stages`` splits ``seconds``: ``density`` (field queries and building the grid, on the
    query device for "surface", then copied to the CPU),
    ``marching_cubes`` (on the CPU) and ``colors`` (colour queries and assembling the mesh).
    """

    mesh: trimesh.Trimesh
    num_queries: int
    num_color_queries: int
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)


def _grid_coordinates(index: np.ndarray, resolution: int) -> np.ndarray:
    return -1.0 + 2.0 * index / (resolution - 1)


@torch.no_grad()
def _query_densities(query_fn: QueryFn, grid_index: np.ndarray, resolution: int, chunk_size: int, device: str | torch.device) -> np.ndarray:
    """Densities float32[K] at fine grid points with integer indices [K, 3] into [R, R, R]."""
    densities = np.empty(len(grid_index), dtype=np.float32)
    for start in range(0, len(grid_index), chunk_size):
        index = torch.from_numpy(grid_index[start : start + chunk_size]).to(device)
        density, _ = query_fn(index.to(torch.float32) * (2.0 / (resolution - 1)) - 1.0)
        densities[start : start + len(index)] = density.reshape(-1).float().cpu().numpy()
    return densities


@torch.no_grad()
def _query_colors(query_fn: QueryFn, points: np.ndarray, chunk_size: int, device: str | torch.device) -> np.ndarray:
    """RGBA uint8[V, 4] at world points float[V, 3]; alpha is opaque."""
    rgba = np.full((len(points), 4), 255, dtype=np.uint8)
    for start in range(0, len(points), chunk_size):
        chunk = torch.as_tensor(points[start : start + chunk_size], dtype=torch.float32, device=device)
        _, rgb = query_fn(chunk)
        rgb = torch.nan_to_num(rgb.float(), nan=0.0).clamp(0.0, 1.0)
        rgba[start : start + len(chunk), :3] = (rgb * 255.0).round().to(torch.uint8).cpu().numpy()
    return rgba


def _query_grid(
    query_fn: QueryFn,
    volume: np.ndarray,
    needed: np.ndarray | None,
    offset: np.ndarray,
    resolution: int,
    chunk_size: int,
    device: str | torch.device,
) -> int:
    """Fill ``volume`` float32[X, Y, Z], the fine grid from index ``offset`` int[3] on, where
    ``needed`` bool[X, Y, Z] is set (everywhere if None); returns the number of queries.

    Works a few x-planes at a time so the index arrays stay small.
    """
    plane = volume.shape[1] * volume.shape[2]
    planes_per_step = max(chunk_size // plane, 1)
    num_queries = 0
    for x_begin in range(0, volume.shape[0], planes_per_step):
        block_shape = (min(planes_per_step, volume.shape[0] - x_begin),) + volume.shape[1:]
        flat = np.arange(np.prod(block_shape)) if needed is None else np.flatnonzero(needed[x_begin : x_begin + block_shape[0]])
        grid_index = np.stack(np.unravel_index(flat, block_shape), -1) + offset + [x_begin, 0, 0]
        volume.reshape(-1)[flat + x_begin * plane] = _query_densities(query_fn, grid_index, resolution, chunk_size, device)
        num_queries += len(flat)
    return num_queries


def _coarse_indices(resolution: int, coarse_resolution: int) -> np.ndarray:
    """Fine-grid indices of the coarse samples along one axis, always including both ends.

    The stride is the divisor of ``resolution - 1`` closest to the requested one, so the
    coarse cells tile the fine grid exactly. When no divisor is within a factor 1.5
    (e.g. ``resolution - 1`` is prime) the requested stride is kept and the last coarse
    cell along each axis is shorter; everything downstream handles uneven cells.
    """
    cells = resolution - 1
    wanted = max(cells / max(coarse_resolution - 1, 1), 1.0)
    divisors = [d for d in range(1, cells + 1) if cells % d == 0]
    best = min(divisors, key=lambda d: abs(np.log(d / wanted)))
    stride = best if abs(np.log(best / wanted)) <= np.log(1.5) else max(round(wanted), 1)
    return np.unique(np.r_[np.arange(0, cells, stride), cells])


def _coarse_lookup(coarse_idx: np.ndarray, fine: np.ndarray) -> tuple[np.ndarray, ...]:
    """For fine indices int[F] along one axis: the nearest coarse sample, and the coarse
    cells before and after (the same cell unless the fine point is a coarse sample)."""
    n_coarse = len(coarse_idx)
    right = np.minimum(np.searchsorted(coarse_idx, fine, side="right"), n_coarse - 1)
    nearest = np.where(coarse_idx[right] - fine < fine - coarse_idx[right - 1], right, right - 1)
    cell_after = np.minimum(np.searchsorted(coarse_idx, fine, side="right") - 1, n_coarse - 2)
    cell_before = np.maximum(np.searchsorted(coarse_idx, fine, side="left") - 1, 0)
    return nearest, cell_before, cell_after


def _coarse_to_fine_volume(
    query_fn: QueryFn, resolution: int, iso: float, coarse_resolution: int, chunk_size: int, device: str | torch.device
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Densities near the surface.

    Returns the fine grid float32[X, Y, Z] over the bounding box of the refined cells
    (nothing outside it can hold a surface), the bool[X, Y, Z] mask of points holding
    field values rather than fill values,
    the box's first fine index int[3], and the number of density queries.
    """
    coarse_idx = _coarse_indices(resolution, coarse_resolution)
    n_coarse = len(coarse_idx)
    coarse_grid_index = np.stack(np.meshgrid(coarse_idx, coarse_idx, coarse_idx, indexing="ij"), -1)
    coarse = _query_densities(query_fn, coarse_grid_index.reshape(-1, 3), resolution, chunk_size, device)
    coarse = coarse.reshape(n_coarse, n_coarse, n_coarse)

    corners = np.stack(
        [coarse[a : n_coarse - 1 + a, b : n_coarse - 1 + b, c : n_coarse - 1 + c] for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    )
    # Inside means density > iso, as in marching cubes. Cells with an unknown (NaN) corner
    # are refined too, so the fine samples decide.
    straddling = ((corners.min(0) <= iso) & (corners.max(0) > iso)) | np.isnan(corners).any(0)
    if not straddling.any():
        raise EmptyMeshError(
            f"no surface at iso={iso}: the {n_coarse}^3 coarse grid saw densities in "
            f"[{np.nanmin(coarse):.4g}, {np.nanmax(coarse):.4g}]"
            " (use method='dense' or a larger coarse_resolution for features thinner than a coarse cell)"
        )
    # Surfaces can bulge through a cell face without touching a coarse corner of that cell.
    active = ndimage.binary_dilation(straddling, structure=np.ones((3, 3, 3), dtype=bool))

    offset, lookups, box_samples = [], [], []
    for axis in range(3):
        cells = np.flatnonzero(active.any(axis=tuple(a for a in range(3) if a != axis)))
        offset.append(coarse_idx[cells[0]])
        lookups.append(_coarse_lookup(coarse_idx, np.arange(offset[-1], coarse_idx[cells[-1] + 1] + 1)))
        box_samples.append(np.arange(cells[0], cells[-1] + 2))
    (near_x, before_x, after_x), (near_y, before_y, after_y), (near_z, before_z, after_z) = lookups
    offset = np.array(offset)

    # Outside active cells all coarse corners lie on one side, so a clear value on that side
    # (from the nearest coarse sample) yields no spurious surface. Gathering from the last
    # axis to the first makes the only full-size gather copy whole [Y, Z] planes.
    side_value = np.where(coarse > iso, iso + 1.0, iso - 1.0).astype(np.float32)
    volume = side_value[:, :, near_z][:, near_y][near_x]
    # A fine point needs the field when it lies in the closed box of an active cell; a point
    # on a coarse cell boundary belongs to the cells on both sides. The test separates per axis.
    known = active[:, :, before_z] | active[:, :, after_z]
    known = known[:, before_y] | known[:, after_y]
    known = known[before_x] | known[after_x]
    # Coarse samples are fine grid points whose densities are already known.
    samples_in_box = np.ix_(*(coarse_idx[samples] - first for samples, first in zip(box_samples, offset)))
    volume[samples_in_box] = coarse[np.ix_(*box_samples)]
    known[samples_in_box] = False
    num_queries = coarse.size + _query_grid(query_fn, volume, known, offset, resolution, chunk_size, device)
    known[samples_in_box] = True
    return volume, known, offset, num_queries


def _cell_extremes(corners: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Corner values [n+1, n+1, n+1] → the smallest and largest of each cell's 8 corners, [n, n, n] each."""
    largest = torch.nn.functional.max_pool3d(corners[None, None], 2, stride=1)[0, 0]
    smallest = -torch.nn.functional.max_pool3d(-corners[None, None], 2, stride=1)[0, 0]
    return smallest, largest


def _dilate_cells(cells: torch.Tensor) -> torch.Tensor:
    """bool [n, n, n] → bool [n, n, n]: set within one cell (a 3×3×3 cube) of a set cell."""
    return torch.nn.functional.max_pool3d(cells[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0


def _corners_of_children(cells: torch.Tensor) -> torch.Tensor:
    """bool [n, n, n] cells → bool [2n+1, 2n+1, 2n+1]: the corners of the set cells' 8 children.

    A point of the finer grid lies in the closed box of a cell exactly when it does along every axis,
    so the test separates: along one axis, odd point 2c+1 is inside cell c only, even point 2c is on
    the faces of cells c−1 and c.
    """
    for dim in range(3):
        count = cells.shape[dim]
        shape = list(cells.shape)
        shape[dim] = 2 * count + 1
        finer = cells.new_zeros(shape)
        finer.narrow(dim, 1, 2 * count - 1)[(slice(None),) * dim + (slice(None, None, 2),)] = cells  # odd points
        even = finer[(slice(None),) * dim + (slice(None, None, 2),)]  # a view: points 0, 2, …, 2n
        even.narrow(dim, 0, count).copy_(cells)
        even.narrow(dim, 1, count).logical_or_(cells)
        cells = finer
    return cells


def _base_cells_meeting(occupied: torch.Tensor, count: int, stride: int, cells: int) -> torch.Tensor:
    """The base cells (``count`` per axis, ``stride`` fine cells each, the fine grid having ``cells``)
    whose closed box meets an occupied cell of ``occupied`` bool [G, G, G] (cells of the box [−1, 1]³):
    bool [count, count, count].

    "Meets any cell of a box of cells" separates by axis, so it is a difference of prefix sums per axis.
    """
    size = occupied.shape[0]
    edges = torch.arange(count + 1, device=occupied.device, dtype=torch.float64) * (stride / cells)  # fractions of the box
    edges = edges.clamp(max=1.0) * size
    first = (edges[:-1] - 1e-6).floor().long().clamp(0, size - 1)  # occupancy cells touching each base cell
    last = (edges[1:] + 1e-6).floor().long().clamp(0, size - 1)
    meets = occupied.to(torch.int32)
    for dim in range(3):
        prefix = torch.cat([torch.zeros_like(meets.narrow(dim, 0, 1)), meets.cumsum(dim)], dim=dim)
        meets = ((prefix.index_select(dim, last + 1) - prefix.index_select(dim, first)) > 0).to(torch.int32)
    return meets.bool()


@torch.no_grad()
def _surface_volume(
    query_fn: QueryFn,
    resolution: int,
    iso: float,
    coarse_resolution: int,
    chunk_size: int,
    device: str | torch.device,
    occupied: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Densities near the surface, refined level by level on ``device``.

    The grid's ``resolution - 1`` cells are covered by a base grid of power-of-two cells of ``stride``
    fine cells (at least ``coarse_resolution`` of them per axis), whose corners are queried (only those
    of base cells meeting an ``occupied`` cell when given: elsewhere the density is below ``iso``). At
    each level the cells whose corners straddle ``iso`` (or hold NaN), dilated by a cell, are split in
    8 and only their new corners queried; every other point takes the trilinear interpolation of its
    parent cell's corners, which lie on one side of ``iso``, so no surface can appear there. Sample
    indices past the last (when the cells do not divide evenly) read the box's face (clamped), so
    cropping to the grid changes nothing. Only the final volume leaves the device (for marching cubes).

    Returns the fine grid float32[R, R, R], the bool[R, R, R] mask of points holding field values, and
    the number of density queries.
    """
    cells = resolution - 1
    stride = 1
    while math.ceil(cells / (2 * stride)) >= coarse_resolution:
        stride *= 2
    count = math.ceil(cells / stride)  # cells per axis of the current level

    def densities(index: torch.Tensor, level_stride: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Densities [K] (NaN replaced below iso) and NaN flags [K] at level corners int[K, 3]."""
        fine = (index * level_stride).clamp_(max=cells).to(torch.float32) * (2.0 / cells) - 1.0
        parts = [query_fn(fine[start : start + chunk_size])[0].reshape(-1).float() for start in range(0, len(fine), chunk_size)]
        values = torch.cat(parts) if parts else fine.new_zeros(0)
        unknown = values.isnan()
        return values.masked_fill(unknown, iso - 1.0), unknown

    side = count + 1
    if occupied is None:
        known = torch.ones(side, side, side, dtype=torch.bool, device=device)
    else:  # the corners of the base cells that may hold density above iso
        candidates = _base_cells_meeting(occupied.to(device), count, stride, cells)
        known = torch.nn.functional.max_pool3d(candidates[None, None].float(), 2, stride=1, padding=1)[0, 0] > 0
    index = known.nonzero()
    values, flags = densities(index, stride)
    density = torch.full((side, side, side), iso - 1.0, device=device)
    unknown = torch.zeros_like(known)
    density[known], unknown[known] = values, flags
    num_queries = index.shape[0]
    while stride > 1:
        smallest, largest = _cell_extremes(density)
        straddling = ((smallest <= iso) & (largest > iso)) | (_cell_extremes(unknown.float())[1] > 0)
        if not straddling.any():
            raise EmptyMeshError(
                f"no surface at iso={iso}: the {side}^3 level-{stride} grid saw densities in "
                f"[{density.min().item():.4g}, {density.max().item():.4g}]"
                " (use method='dense' or a larger coarse_resolution for features thinner than a coarse cell)"
            )
        # Surfaces can bulge through a cell face without touching a corner of that cell.
        refine = _dilate_cells(straddling)
        stride, count, side = stride // 2, 2 * count, 2 * count + 1
        density = torch.nn.functional.interpolate(density[None, None], size=(side,) * 3, mode="trilinear", align_corners=True)[0, 0]
        # The children's corners; the even ones are the previous level's corners, known or not.
        needed = _corners_of_children(refine)
        needed[::2, ::2, ::2] = False
        coarser_known, coarser_unknown = known, unknown
        known = needed.clone()
        known[::2, ::2, ::2] = coarser_known
        unknown = torch.zeros_like(needed)
        unknown[::2, ::2, ::2] = coarser_unknown
        index = needed.nonzero()
        values, flags = densities(index, stride)
        density[needed], unknown[needed] = values, flags
        num_queries += index.shape[0]
    crop = (slice(0, resolution),) * 3
    return density[crop].cpu().numpy(), known[crop].cpu().numpy(), num_queries


def extract_mesh(
    query_fn: QueryFn,
    resolution: int = 256,
    iso: float = 1.0,
    method: str = "coarse_to_fine",
    coarse_resolution: int | None = None,
    chunk_size: int = 2**18,
    device: str | torch.device = "cpu",
    occupied: torch.Tensor | None = None,
) -> MeshResult:
    """Marching-cubes mesh of ``{p : density(p) > iso}`` with vertex colours from the field.

    Args:
        query_fn: ``points float32[P, 3] in [-1, 1]^3 -> (density[P], rgb[P, 3] in [0, 1])``,
            called under ``torch.no_grad()`` with at most ``chunk_size`` points on ``device``.
        resolution: grid samples per axis R; vertex ``i`` along an axis sits at ``-1 + 2i/(R-1)``.
        iso: density level of the surface.
        method: ``"dense"`` queries all R^3 points; ``"surface"`` queries a base grid of at least
            ``coarse_resolution`` (default 48) power-of-two cells per axis and then, level by level on
            ``device``, only the corners of cells within one cell of the surface (``_surface_volume``);
            ``"coarse_to_fine"`` queries a coarse grid (about ``coarse_resolution`` per axis, default
            ``max(R // 4, 16)``) and the fine grid in coarse cells within one cell of the surface. Both
            give the dense surface except for features that fit between coarse samples without
            touching any; "surface" queries a thinner band (a few voxels rather than a coarse cell).
        coarse_resolution: base cells ("surface") or coarse samples ("coarse_to_fine", see
            ``_coarse_indices``) per axis.
        chunk_size: most points per ``query_fn`` call.
        device: device the query points are created on.
        occupied: bool [G, G, G] cells of the box [−1, 1]³ (indexed [x, y, z]) outside which the density
            is below ``iso`` (the renderer's occupancy grid when ``iso`` exceeds its threshold); seeds the
            "surface" method, whose base grid is then queried only in cells meeting occupied ones.

    Returns:
        MeshResult whose mesh has outward-facing triangles and RGBA uint8 vertex colours.

    Raises:
        EmptyMeshError: nothing crosses ``iso`` (empty or all-solid field).
    """
    started = time.perf_counter()
    if resolution < 2:
        raise ValueError(f"resolution must be at least 2, got {resolution}")
    if method == "dense":
        volume = np.empty((resolution,) * 3, dtype=np.float32)
        known, offset = None, np.zeros(3, dtype=np.int64)
        num_queries = _query_grid(query_fn, volume, None, offset, resolution, chunk_size, device)
    elif method == "surface":
        volume, known, num_queries = _surface_volume(
            query_fn, resolution, iso, coarse_resolution or SURFACE_BASE_CELLS, chunk_size, device, occupied
        )
        offset = np.zeros(3, dtype=np.int64)
    elif method == "coarse_to_fine":
        volume, known, offset, num_queries = _coarse_to_fine_volume(
            query_fn, resolution, iso, coarse_resolution or max(resolution // 4, 16), chunk_size, device
        )
    else:
        raise ValueError(f"unknown method {method!r}; expected 'surface', 'coarse_to_fine' or 'dense'")

    density_done = time.perf_counter()
    # Unknown densities count as empty space rather than poisoning marching cubes.
    volume[np.isnan(volume)] = iso - 1.0
    low, high = float(volume.min()), float(volume.max())
    if not low <= iso < high:
        raise EmptyMeshError(f"no surface at iso={iso}: densities seen lie in [{low:.4g}, {high:.4g}]")
    # Cells whose lower corner holds a fill value cannot start a surface; skipping them is
    # most of marching cubes' cost.
    vertex_idx, faces, _, _ = measure.marching_cubes(volume, level=iso, gradient_direction="descent", allow_degenerate=False, mask=known)
    del volume, known
    marching_done = time.perf_counter()
    # skimage winds triangles clockwise seen from outside; trimesh and glTF expect
    # counter-clockwise, i.e. normals pointing out of the solid.
    faces = np.ascontiguousarray(faces[:, ::-1])
    vertices = _grid_coordinates(vertex_idx.astype(np.float64) + offset, resolution)
    colors = _query_colors(query_fn, vertices, chunk_size, device)
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, vertex_colors=colors, process=False)
    finished = time.perf_counter()
    stages = {"density": density_done - started, "marching_cubes": marching_done - density_done, "colors": finished - marching_done}
    return MeshResult(mesh=mesh, num_queries=int(num_queries), num_color_queries=len(vertices), seconds=finished - started, stages=stages)


def export_mesh(mesh: trimesh.Trimesh, fmt: str, y_up: bool = True) -> bytes:
    """Serialise a vertex-coloured mesh as ``"glb"``, ``"obj"`` or ``"ply"`` bytes.

    ``y_up`` applies to GLB only: glTF is +Y up, so the +Z-up world is turned -90 degrees
    about X, ``(x, y, z) -> (x, z, -y)``. OBJ and PLY keep world coordinates. Vertex
    colours become glTF ``COLOR_0``, OBJ ``v x y z r g b`` lines and PLY vertex properties.
    """
    if fmt not in MESH_CONTENT_TYPES:
        raise ValueError(f"unknown mesh format {fmt!r}; expected one of {sorted(MESH_CONTENT_TYPES)}")
    if fmt == "glb" and y_up:
        mesh = mesh.copy()
        mesh.apply_transform(_Z_UP_TO_Y_UP)
    data = mesh.export(file_type=fmt)
    return data.encode() if isinstance(data, str) else bytes(data)


def save_mesh(mesh: trimesh.Trimesh, path: str | Path) -> Path | str:
    """Write ``mesh`` to ``path`` (a local path or an object-store URI) in the format named by its
    suffix (.glb, .obj, .ply); returns it as written (a Path, or the URI)."""
    path = storage.local_or_uri(path)
    name = storage.name(path)
    fmt = Path(name).suffix.lower().lstrip(".")
    if fmt not in MESH_CONTENT_TYPES:
        allowed = ", ".join(f".{name}" for name in sorted(MESH_CONTENT_TYPES))
        raise ValueError(f"cannot tell the mesh format from {name!r}; use one of {allowed}")
    data = export_mesh(mesh, fmt)
    storage.makedirs(storage.parent(path))
    return write_bytes_atomic(path, data)


def _video_frames(frames: np.ndarray | torch.Tensor | Sequence[np.ndarray]) -> np.ndarray:
    """Frames as uint8[M, H, W, 3] from uint8[M, H, W, 3], a list of uint8[H, W, 3] or
    float torch[M, 3, H, W] in [0, 1]."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu()
        if frames.is_floating_point():
            frames = (frames.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
        frames = frames.permute(0, 2, 3, 1).numpy() if frames.ndim == 4 else frames.numpy()
    elif not isinstance(frames, np.ndarray):
        frames = np.stack([np.asarray(frame) for frame in frames]) if len(frames) else np.empty((0,))
    if frames.size == 0:
        raise ValueError("write_video needs at least one frame")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [M, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    return frames


def write_video(frames: np.ndarray | torch.Tensor | Sequence[np.ndarray], path: str | Path, fps: int = 30) -> Path | str:
    """Write frames (uint8[M, H, W, 3], a list of uint8[H, W, 3], or float torch[M, 3, H, W]
    in [0, 1]) as an H.264 MP4 at `path` (a local path or an object-store URI), creating parent
    directories.

    H.264 in yuv420p needs even sizes, so an odd height or width gains one edge-copied row
    or column.
    """
    frames = _video_frames(frames)
    _, height, width, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    path = storage.local_or_uri(path)
    import imageio.v2 as imageio  # the ffmpeg plugin is only needed when writing videos

    storage.makedirs(storage.parent(path))
    # ffmpeg picks the container from the file name, so the partial file keeps the real suffix last
    # (on object storage the staged local file does too, then it is published to the URI).
    with atomic_path(path, partial_suffix=f"{PARTIAL_SUFFIX}{Path(storage.name(path)).suffix}") as partial:
        with imageio.get_writer(partial, fps=fps, codec="libx264", quality=8, macro_block_size=1) as writer:
            for frame in frames:
                writer.append_data(frame)
    return path
