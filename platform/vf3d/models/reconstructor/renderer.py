"""Parameter-free volume renderer for fields inside a box (the triplane NeRF's renderer).

Rays are clipped to the box [−h, h]³, sampled with stratified then importance sampling, and
composited with midpoint quadrature in the released model's order: the field's *raw* densities
of the two samples bounding each interval are averaged first and the density activation is
applied to that average (softplus is convex, so activating before averaging would make every
interval that straddles a surface denser than the release's; docs/vfusion3d.md#rendering-order).
Colours are averaged the same way. An interval with an end outside the box, or on a ray that
misses it, has no density. Work is chunked over rays so memory stays bounded whatever the image
size, and batched over objects and views.

The fast path (`RendererConfig.skip_empty_space`, turned on by inference only) places samples at
exactly the exact path's depths but queries the field only where it can matter: inside an
`OccupancyGrid` built from the field once per object (and reused across views), on rays whose
transmittance has not yet fallen below `termination_transmittance` (samples are decoded front to
back, `march_segment` at a time), and for the importance pass only on rays whose coarse pass found
mass. Samples it skips take `empty_raw_density`, whose activated density is 0. Each march packs the
samples it may query into dense per-ray rows once, steps through them on the rays still alive, and
scatters the results back once; a field with a `query(points, objects)` method (inference's
FoldedTriplaneField) gets the scattered points as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from vf3d.cameras import generate_rays
from vf3d.models.reconstructor.config import RendererConfig

FieldFunction = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""points [N, P, 3] → (raw density [N, P, 1], rgb [N, P, 3]) for N objects. The raw density
becomes a density (≥ 0) through the renderer's `density_activation` after interval averaging."""

DensityActivation = Callable[[torch.Tensor], torch.Tensor]
"""Raw interval density [..., 1] → density ≥ 0 [..., 1]."""

BOX_TOLERANCE = 1e-4
"""Relative slack of the inside-the-box test: deterministic samples lie exactly on the box's faces,
where rounding alone would otherwise throw the first or last interval of a ray away."""

IMPORTANCE_WEIGHT_FLOOR = 0.01
"""Added to coarse weights before importance sampling so empty-looking space is still visited."""

OCCUPANCY_BASE_RESOLUTION = 16
"""Cells per axis of the occupancy grid's coarsest level, whose every corner is queried."""

CPU_QUERY_CHUNK = 2**15
"""Most points per object per field call of the fast path's marches on the CPU: `grid_sample` and the
decoder's layers run memory-bound, and markedly slower per point, on larger calls."""

EMPTY_RAW_DENSITY = -1e4
"""Raw density the fast path gives skipped samples when the renderer has a density activation
(softplus(−1e4 − 1) is exactly 0 in float32); without one (the field returns densities) they get 0."""


@dataclass
class RenderOutput:
    """Rendered views. rgb [N, V, 3, h, w]; depth and opacity [N, V, 1, h, w]."""

    rgb: torch.Tensor
    depth: torch.Tensor
    opacity: torch.Tensor


def intersect_box(origins: torch.Tensor, directions: torch.Tensor, half_size: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slab test of rays against the box [−h, h]³.

    Args:
        origins, directions: [..., 3] (directions need not be unit; t is in their units).
    Returns:
        near [...], far [...] (clamped to start at 0) and hit [...] (bool: the ray crosses the box).
    """
    safe = torch.where(directions.abs() < 1e-9, torch.full_like(directions, 1e-9), directions)
    t0 = (-half_size - origins) / safe
    t1 = (half_size - origins) / safe
    near = torch.minimum(t0, t1).amax(dim=-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(dim=-1)
    hit = far > near
    return torch.where(hit, near, torch.zeros_like(near)), torch.where(hit, far, torch.zeros_like(far)), hit


def stratified_depths(
    near: torch.Tensor, far: torch.Tensor, num_samples: int, deterministic: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """`num_samples` depths per ray from near to far, jittered within their strata unless deterministic.

    Deterministic depths are exactly linspace(near, far), so the samples span the whole segment.
    near, far: [R] → [R, S].
    """
    steps = torch.linspace(0.0, 1.0, num_samples, device=near.device, dtype=near.dtype)
    if not deterministic:
        jitter = torch.rand(
            (near.shape[0], num_samples), generator=generator, device="cpu" if generator is None else generator.device, dtype=near.dtype
        ).to(near.device)
        steps = (steps + (jitter - 0.5) / (num_samples - 1)).clamp(0.0, 1.0)
    return near[:, None] + (far - near)[:, None] * steps


def importance_depths(
    depths: torch.Tensor, weights: torch.Tensor, num_samples: int, deterministic: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Inverse-CDF samples from piecewise-constant weights on the intervals between `depths`.

    Args:
        depths: [R, S] sorted sample depths; weights: [R, S−1] per-interval weights.
    Returns:
        [R, num_samples] depths inside [depths[:, 0], depths[:, −1]] (no gradient).
    """
    weights = weights.detach() + IMPORTANCE_WEIGHT_FLOOR
    pdf = weights / weights.sum(dim=-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), pdf.cumsum(dim=-1)], dim=-1).clamp(max=1.0)  # [R, S]
    if deterministic:
        u = ((torch.arange(num_samples, device=depths.device, dtype=depths.dtype) + 0.5) / num_samples).expand(depths.shape[0], num_samples)
    else:
        u = torch.rand(
            (depths.shape[0], num_samples), generator=generator, device="cpu" if generator is None else generator.device, dtype=depths.dtype
        ).to(depths.device)
    u = u.contiguous()
    upper = torch.searchsorted(cdf.contiguous(), u, right=True).clamp(1, cdf.shape[-1] - 1)
    lower = upper - 1
    cdf_lower, cdf_upper = cdf.gather(-1, lower), cdf.gather(-1, upper)
    depth_lower, depth_upper = depths.detach().gather(-1, lower), depths.detach().gather(-1, upper)
    fraction = ((u - cdf_lower) / (cdf_upper - cdf_lower).clamp_min(1e-8)).clamp(0.0, 1.0)
    return depth_lower + fraction * (depth_upper - depth_lower)


def composite(
    depths: torch.Tensor,
    raw_density: torch.Tensor,
    rgb: torch.Tensor,
    density_activation: DensityActivation | None = None,
    sample_valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Midpoint-quadrature volume rendering along each ray, in the released model's order.

    Each interval's density is `density_activation(mean of its two raw densities)`; an interval
    with an invalid end (outside the box, or on a ray that misses it) has density 0.

    Args:
        depths: [R, S] sorted; raw_density: [R, S, 1]; rgb: [R, S, 3].
        density_activation: raw → density ≥ 0 (identity when None: the values are densities).
        sample_valid: [R, S] bool, False for samples that must not contribute.
    Returns:
        rgb [R, 3] (not yet over a background), depth [R, 1] (expected depth given the ray
        terminates; the last sample when it does not), opacity [R, 1], interval weights [R, S−1].
    """
    deltas = (depths[:, 1:] - depths[:, :-1]).unsqueeze(-1)
    density_mid = 0.5 * (raw_density[:, 1:] + raw_density[:, :-1])
    if density_activation is not None:
        density_mid = density_activation(density_mid)
    if sample_valid is not None:
        density_mid = density_mid * (sample_valid[:, 1:] & sample_valid[:, :-1]).unsqueeze(-1)
    rgb_mid = 0.5 * (rgb[:, 1:] + rgb[:, :-1])
    depth_mid = 0.5 * (depths[:, 1:] + depths[:, :-1]).unsqueeze(-1)
    alpha = 1.0 - torch.exp(-density_mid * deltas)
    transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha[:, :-1] + 1e-10], dim=1), dim=1)
    weights = alpha * transmittance
    opacity = weights.sum(dim=1)
    composite_rgb = (weights * rgb_mid).sum(dim=1)
    expected_depth = (weights * depth_mid).sum(dim=1) / opacity.clamp_min(1e-8)
    expected_depth = torch.where(opacity > 1e-6, expected_depth, depths[:, -1:])
    return composite_rgb, expected_depth, opacity, weights.squeeze(-1)


@dataclass
class OccupancyGrid:
    """Which cells of the box [−h, h]³ may hold density, per object.

    occupied: [N, G, G, G] bool indexed [x, y, z]; cell (i, j, k) spans [−h + i·2h/G, −h + (i+1)·2h/G]
    along x, and likewise along y and z. num_queries: field points queried to build it.
    """

    occupied: torch.Tensor
    half_size: float
    num_queries: int = 0

    def lookup(self, points: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
        """points [..., 3] of objects [...] (indices into N) → bool [...]: the point's cell is occupied.
        Points outside the box read the nearest face cell; the renderer masks them as invalid anyway."""
        size = self.occupied.shape[-1]
        # Cell indices in float: exact for G³ < 2²⁴, and one integer conversion instead of three.
        cell = ((points + self.half_size) * (size / (2 * self.half_size))).floor_().clamp_(0, size - 1)
        flat = (cell[..., 0] * size + cell[..., 1]) * size + cell[..., 2]
        return self.occupied.reshape(-1)[flat.long() + objects * size**3]

    @property
    def occupied_fraction(self) -> float:
        """Share of occupied cells over all objects."""
        return self.occupied.float().mean().item()


def query_sparse(
    field: FieldFunction, batch: int, objects: torch.Tensor, points: torch.Tensor, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The field at scattered points of N objects.

    A field with a `query(points [K, 3], objects [K])` method (FoldedTriplaneField) takes them as
    they are; any other is called on dense per-object rows (objects with fewer points padded to the
    largest count).

    Args:
        objects: [K] object index of each point, ascending; points: [K, 3].
        chunk_size: most points per object per field call (bounds memory).
    Returns:
        raw density [K, 1] and rgb [K, 3] (float32) in the points' order, and the number of points the
        field saw (K, or N · largest count when padded).
    """
    if objects.shape[0] == 0:
        return points.new_zeros(0, 1), points.new_zeros(0, 3), 0
    scattered = getattr(field, "query", None)
    if callable(scattered):
        step = chunk_size * batch
        parts = [scattered(points[start : start + step], objects[start : start + step]) for start in range(0, points.shape[0], step)]
        return torch.cat([raw for raw, _ in parts]).float(), torch.cat([rgb for _, rgb in parts]).float(), points.shape[0]
    counts = torch.bincount(objects, minlength=batch)
    slot = torch.arange(objects.shape[0], device=points.device) - (torch.cumsum(counts, 0) - counts)[objects]
    width = int(counts.max())
    packed = points.new_zeros(batch, width, 3)
    packed[objects, slot] = points
    raw_parts, rgb_parts = [], []
    for start in range(0, width, chunk_size):
        raw, rgb = field(packed[:, start : start + chunk_size])
        raw_parts.append(raw.float())
        rgb_parts.append(rgb.float())
    raw, rgb = torch.cat(raw_parts, dim=1), torch.cat(rgb_parts, dim=1)
    return raw[objects, slot], rgb[objects, slot], batch * width


def _dilate(mask: torch.Tensor) -> torch.Tensor:
    """bool [N, G, G, G] → bool [N, G, G, G]: set within one cell (a 3×3×3 cube) of a set cell."""
    return torch.nn.functional.max_pool3d(mask[:, None].float(), 3, stride=1, padding=1)[:, 0] > 0


def _cell_max(corners: torch.Tensor) -> torch.Tensor:
    """Corner values [N, G+1, G+1, G+1] → the largest of each cell's 8 corners [N, G, G, G]."""
    return torch.nn.functional.max_pool3d(corners[:, None], 2, stride=1)[:, 0]


def _upsample(cells: torch.Tensor) -> torch.Tensor:
    """[N, c, c, c] → [N, 2c, 2c, 2c]: each cell becomes its 8 children."""
    return cells.repeat_interleave(2, 1).repeat_interleave(2, 2).repeat_interleave(2, 3)


def build_occupancy_grid(
    field: FieldFunction,
    batch: int,
    resolution: int,
    half_size: float,
    threshold: float,
    density_activation: DensityActivation | None,
    device: torch.device | str,
    chunk_size: int = 2**18,
) -> OccupancyGrid:
    """Occupancy of the field's N objects on a G³ grid of cells, built coarse to fine so that only
    cells near the boundary of the occupied region cost queries at the finer levels.

    G is `resolution` rounded up to OCCUPANCY_BASE_RESOLUTION · 2^k. The density (activated per point)
    is read at every corner of the base grid; at each level, a cell whose corners all exceed
    `threshold` is occupied outright (with all its descendants), and the cells whose largest corner
    does, dilated by a cell, are split in 8 and their new corners queried. At the finest level a cell
    is occupied when its largest corner exceeds `threshold`, dilated by a cell, since the density
    between corners can exceed the corners' (the decoder is non-linear). NaN counts as dense. Marking
    a cell occupied only costs queries; marking it empty lets the renderer skip its samples.

    Returns:
        OccupancyGrid with occupied [N, G, G, G].
    """

    def densities(points: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Activated densities at points [N, M, 3] where mask [N, M]: [K] in mask.nonzero() order."""
        where = mask.nonzero()
        raw, _, queries = query_sparse(field, batch, where[:, 0], points[where[:, 0], where[:, 1]], chunk_size)
        density = raw[:, 0] if density_activation is None else density_activation(raw)[:, 0]
        return torch.nan_to_num(density.float(), nan=float("inf")), queries

    def corner_points(cells: int) -> torch.Tensor:
        axis = torch.linspace(-half_size, half_size, cells + 1, device=device)
        return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(1, -1, 3).expand(batch, -1, -1)

    cells = OCCUPANCY_BASE_RESOLUTION
    side = cells + 1
    known = torch.ones(batch, side, side, side, dtype=torch.bool, device=device)  # corners whose density is read
    density, queries = densities(corner_points(cells), known.reshape(batch, -1))
    density = density.reshape(batch, side, side, side)
    full = torch.zeros(batch, cells, cells, cells, dtype=torch.bool, device=device)
    refine = torch.ones_like(full)  # cells whose corners are all known and which may hold the boundary
    while True:
        dense_somewhere = (_cell_max(density) > threshold) & refine
        if cells >= resolution:
            occupied = _dilate(dense_somewhere) | full
            return OccupancyGrid(occupied=occupied, half_size=half_size, num_queries=queries)
        full |= refine & (-_cell_max(-density) > threshold)  # every corner dense
        refine = _dilate(dense_somewhere) & refine & ~full
        cells, side = 2 * cells, 2 * cells + 1
        full, refine = _upsample(full), _upsample(refine)
        # Corners of the cells to refine; the even ones are the previous level's corners.
        needed = torch.nn.functional.max_pool3d(refine[:, None].float(), 2, stride=1, padding=1)[:, 0] > 0
        finer = torch.zeros(batch, side, side, side, device=device)
        finer[:, ::2, ::2, ::2] = density
        needed[:, ::2, ::2, ::2] = False
        new_density, new_queries = densities(corner_points(cells), needed.reshape(batch, -1))
        finer.reshape(batch, -1)[needed.reshape(batch, -1)] = new_density
        density, queries = finer, queries + new_queries


def _near_occupied(occupied: torch.Tensor) -> torch.Tensor:
    """[R, S] bool → [R, S]: the sample or a neighbour along its ray is occupied. An interval with a
    skipped end then has both ends outside occupied cells, so its density is below the threshold."""
    near = occupied.clone()
    near[:, 1:] |= occupied[:, :-1]
    near[:, :-1] |= occupied[:, 1:]
    return near


def _samples_at(
    depths: torch.Tensor,
    origins: torch.Tensor,
    directions: torch.Tensor,
    hit: torch.Tensor,
    objects: torch.Tensor,
    grid: OccupancyGrid,
    limit: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Samples at depths [R, S] along rays (origins, directions [R, 3]; hit and objects [R]) → points
    [R, S, 3], valid [R, S] (as the exact path's `_evaluate`) and which samples are near an occupied one [R, S]."""
    points = origins.unsqueeze(1) + directions.unsqueeze(1) * depths.unsqueeze(-1)
    valid = hit.unsqueeze(-1) & (points.abs() <= limit).all(dim=-1)
    return points, valid, _near_occupied(grid.lookup(points, objects.unsqueeze(-1)) & valid)


class TriplaneRenderer(torch.nn.Module):
    """Renders any field over the box (the triplane decoder in practice); has no parameters.

    `density_activation` turns the field's raw densities into densities after they are averaged
    over each interval (the reconstructor passes its decoder's `activate_density`); without one
    the field's values are used as densities directly, as the analytic tests do.
    """

    def __init__(self, config: RendererConfig, density_activation: DensityActivation | None = None) -> None:
        super().__init__()
        self.config = config
        self.density_activation = density_activation

    def _evaluate(
        self, field: FieldFunction, origins: torch.Tensor, directions: torch.Tensor, depths: torch.Tensor, hit: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Field at depths [N, r, S] along rays [N, r, 3] → raw density [N, r, S, 1], rgb [N, r, S, 3]
        and validity [N, r, S] (the ray hits the box [r] and the sample lies inside it)."""
        batch, rays, samples = depths.shape
        points = origins.unsqueeze(2) + directions.unsqueeze(2) * depths.unsqueeze(-1)
        limit = self.config.box_half_size * (1 + BOX_TOLERANCE)
        valid = hit.unsqueeze(-1) & (points.abs() <= limit).all(dim=-1)
        raw_density, rgb = field(points.reshape(batch, rays * samples, 3))
        return raw_density.reshape(batch, rays, samples, 1).float(), rgb.reshape(batch, rays, samples, 3).float(), valid

    def _composite(
        self, depths: torch.Tensor, raw_density: torch.Tensor, rgb: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """`composite` over rays of N objects: [N, r, S] inputs → rgb [N·r, 3], depth and opacity
        [N·r, 1], weights [N·r, S−1]."""
        samples = depths.shape[-1]
        return composite(
            depths.reshape(-1, samples),
            raw_density.reshape(-1, samples, 1),
            rgb.reshape(-1, samples, 3),
            self.density_activation,
            valid.reshape(-1, samples),
        )

    def _render_chunk(
        self, field: FieldFunction, origins: torch.Tensor, directions: torch.Tensor, deterministic: bool, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, rays, _ = origins.shape
        near, far, hit = intersect_box(origins, directions, self.config.box_half_size)
        coarse = stratified_depths(near.reshape(-1), far.reshape(-1), self.config.num_coarse_samples, deterministic, generator).reshape(
            batch, rays, -1
        )
        raw_density, rgb, valid = self._evaluate(field, origins, directions, coarse, hit)
        depths = coarse
        if self.config.num_fine_samples > 0:
            _, _, _, weights = self._composite(coarse, raw_density, rgb, valid)
            fine = importance_depths(
                coarse.reshape(batch * rays, -1), weights, self.config.num_fine_samples, deterministic, generator
            ).reshape(batch, rays, -1)
            fine_density, fine_rgb, fine_valid = self._evaluate(field, origins, directions, fine, hit)
            depths, order = torch.cat([coarse, fine], dim=-1).sort(dim=-1)
            raw_density = torch.cat([raw_density, fine_density], dim=2).gather(2, order.unsqueeze(-1))
            rgb = torch.cat([rgb, fine_rgb], dim=2).gather(2, order.unsqueeze(-1).expand(-1, -1, -1, 3))
            valid = torch.cat([valid, fine_valid], dim=2).gather(2, order)
        color, depth, opacity, _ = self._composite(depths, raw_density, rgb, valid)
        return color.reshape(batch, rays, 3), depth.reshape(batch, rays, 1), opacity.reshape(batch, rays, 1)

    def occupancy_grid(self, field: FieldFunction, batch: int, device: torch.device | str) -> OccupancyGrid:
        """The fast path's occupancy grid of the field's `batch` objects (build it once per object and
        pass it to every render of that object: `forward(..., occupancy=grid)`)."""
        config = self.config
        return build_occupancy_grid(
            field,
            batch,
            config.occupancy_resolution,
            config.box_half_size,
            config.occupancy_threshold,
            self.density_activation,
            device,
            self._query_chunk_size(torch.device(device)),
        )

    def _query_chunk_size(self, device: torch.device | None = None) -> int:
        """Most points per object per field call on the fast path: what one exact coarse pass sees, and
        on the CPU at most CPU_QUERY_CHUNK (the field's activations then stay in cache)."""
        chunk = max(self.config.ray_chunk_size, 1024) * self.config.num_coarse_samples
        return min(chunk, CPU_QUERY_CHUNK) if device is not None and device.type == "cpu" else chunk

    def _march(
        self,
        field: FieldFunction,
        batch: int,
        points: torch.Tensor,
        depths: torch.Tensor,
        raw_density: torch.Tensor,
        rgb: torch.Tensor,
        valid: torch.Tensor,
        needed: torch.Tensor,
        evaluated: torch.Tensor,
        objects: torch.Tensor,
    ) -> None:
        """Query the needed samples front to back, `march_segment` needed samples per ray at a time,
        dropping a ray once its transmittance is below `termination_transmittance`.

        All [R, S] over R rays of N objects: points [R, S, 3], depths, valid, needed; objects [R] (each
        ray's object, ascending). Fills raw_density [R, S, 1], rgb [R, S, 3] and evaluated [R, S] in place.
        """
        segment, threshold = self.config.march_segment, self.config.termination_transmittance
        where = needed.nonzero()  # [M, 2] (ray, sample), row-major: each ray's samples front to back
        if where.shape[0] == 0:
            return
        # Pack each ray's needed samples into a dense row, front to back: step k handles packed columns
        # [k·segment, (k+1)·segment) of the rays still alive, so a ray is checked after every `segment`
        # samples it needs, wherever its surface lies, and a step touches only [alive rays, segment]
        # slices rather than the [R, S] arrays (all gathers and scatters happen once, here and at the end).
        rays, line = torch.unique_consecutive(where[:, 0], return_inverse=True)  # rays with needed samples [L]; row of each in [L]
        counts = torch.bincount(line, minlength=rays.shape[0])
        slot = torch.arange(where.shape[0], device=depths.device) - (torch.cumsum(counts, 0) - counts)[line]
        width = int(counts.max())
        packed_shape = (rays.shape[0], width)
        present = torch.zeros(packed_shape, dtype=torch.bool, device=depths.device)
        present[line, slot] = True
        ray, sample = where[:, 0], where[:, 1]
        packed_points = points.new_zeros((*packed_shape, 3))
        packed_points[line, slot] = points[ray, sample]
        packed_raw = raw_density.new_zeros((*packed_shape, 1))
        packed_raw[line, slot] = raw_density[ray, sample]
        packed_rgb = rgb.new_zeros((*packed_shape, 3))
        packed_rgb[line, slot] = rgb[ray, sample]
        todo = torch.zeros_like(present)
        todo[line, slot] = ~evaluated[ray, sample]
        if threshold > 0:
            packed_depth = depths.new_zeros(packed_shape)
            packed_depth[line, slot] = depths[ray, sample]
            # An interval between consecutive packed samples counts only when they are adjacent samples of
            # the ray and both valid; any other interval has an end away from occupied cells, hence both,
            # and a density under the threshold. `opens[:, j]` says so of the interval ending at column j.
            sample_valid = valid[ray, sample]
            follows = (ray[1:] == ray[:-1]) & (sample[1:] == sample[:-1] + 1) & sample_valid[1:] & sample_valid[:-1]
            opens = torch.zeros_like(present)
            opens[line[1:], slot[1:]] = follows
        alive = torch.arange(rays.shape[0], device=depths.device)  # packed rows still marching
        transmittance = torch.ones(rays.shape[0], device=depths.device)  # of the alive rows
        for start in range(0, width, segment):
            end = min(start + segment, width)
            step = todo[alive, start:end].nonzero()
            if step.shape[0] > 0:
                row, column = alive[step[:, 0]], step[:, 1] + start
                raw, color, _ = query_sparse(
                    field, batch, objects[rays[row]], packed_points[row, column], self._query_chunk_size(depths.device)
                )
                packed_raw[row, column] = raw
                packed_rgb[row, column] = color
                todo[row, column] = False
            if threshold > 0 and end < width:
                # The intervals ending at columns [max(start, 1), end) are final now.
                first = max(start, 1)
                raw = packed_raw[alive, first - 1 : end, 0]
                mid = 0.5 * (raw[:, 1:] + raw[:, :-1])
                density = mid if self.density_activation is None else self.density_activation(mid)
                span = packed_depth[alive, first - 1 : end]
                optical_depth = (density * opens[alive, first:end] * (span[:, 1:] - span[:, :-1])).sum(dim=1)
                transmittance = transmittance * torch.exp(-optical_depth)
                keep = transmittance > threshold
                alive, transmittance = alive[keep], transmittance[keep]
                if alive.shape[0] == 0:
                    break
        queried = ~todo[line, slot] & ~evaluated[ray, sample]
        ray, sample, line, slot = ray[queried], sample[queried], line[queried], slot[queried]
        raw_density[ray, sample] = packed_raw[line, slot]
        rgb[ray, sample] = packed_rgb[line, slot]
        evaluated[ray, sample] = True

    def _render_chunk_fast(
        self,
        field: FieldFunction,
        origins: torch.Tensor,
        directions: torch.Tensor,
        deterministic: bool,
        generator: torch.Generator | None,
        grid: OccupancyGrid,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`_render_chunk` at the same sample depths, querying only the samples that can matter (module
        docstring). origins, directions [N, r, 3] → rgb [N, r, 3], depth and opacity [N, r, 1]."""
        config = self.config
        batch, rays, _ = origins.shape
        near, far, hit = intersect_box(origins, directions, config.box_half_size)
        origins, directions, hit = origins.reshape(-1, 3), directions.reshape(-1, 3), hit.reshape(-1)
        objects = torch.arange(batch, device=origins.device).repeat_interleave(rays)  # [R]
        limit = config.box_half_size * (1 + BOX_TOLERANCE)
        empty = 0.0 if self.density_activation is None else EMPTY_RAW_DENSITY

        depths = stratified_depths(near.reshape(-1), far.reshape(-1), config.num_coarse_samples, deterministic, generator)
        points, valid, needed = _samples_at(depths, origins, directions, hit, objects, grid, limit)
        raw_density = torch.full((*depths.shape, 1), empty, device=depths.device)
        rgb = torch.zeros((*depths.shape, 3), device=depths.device)
        evaluated = torch.zeros_like(valid)
        self._march(field, batch, points, depths, raw_density, rgb, valid, needed, evaluated, objects)
        color, depth, opacity, weights = composite(depths, raw_density, rgb, self.density_activation, valid)
        if config.num_fine_samples > 0:
            # The importance pass only where the coarse pass found mass: elsewhere its samples would
            # add less opacity than the termination threshold, and those rays keep their coarse result.
            selected = (opacity[:, 0] > config.termination_transmittance).nonzero()[:, 0]
            if deterministic:
                fine = importance_depths(depths[selected], weights[selected], config.num_fine_samples, True)
            else:  # the same random draws as the exact path: one per sample of every ray
                fine = importance_depths(depths, weights, config.num_fine_samples, False, generator)[selected]
            merged = self._render_fine_fast(
                field, batch, rays, grid, selected, fine, depths, raw_density, rgb, evaluated, origins, directions, hit
            )
            color, depth, opacity = (whole.index_copy(0, selected, part) for whole, part in zip((color, depth, opacity), merged))
        return color.reshape(batch, rays, 3), depth.reshape(batch, rays, 1), opacity.reshape(batch, rays, 1)

    def _render_fine_fast(
        self,
        field: FieldFunction,
        batch: int,
        rays: int,
        grid: OccupancyGrid,
        selected: torch.Tensor,
        fine: torch.Tensor,
        depths: torch.Tensor,
        raw_density: torch.Tensor,
        rgb: torch.Tensor,
        evaluated: torch.Tensor,
        origins: torch.Tensor,
        directions: torch.Tensor,
        hit: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The importance pass of the selected rays [K] (indices into the R = N·r rays): their fine depths
        [K, F] merged with the coarse samples (depths [R, S], raw_density, rgb and evaluated of all rays),
        then queried front to back (origins, directions [R, 3] and hit [R] of all rays). Returns rgb
        [K, 3], depth [K, 1] and opacity [K, 1]."""
        config = self.config
        empty = 0.0 if self.density_activation is None else EMPTY_RAW_DENSITY
        fine_count = fine.shape[1]
        depths, order = torch.cat([depths[selected], fine], dim=-1).sort(dim=-1)
        raw_density = torch.cat([raw_density[selected], raw_density.new_full((len(selected), fine_count, 1), empty)], dim=1)
        raw_density = raw_density.gather(1, order.unsqueeze(-1))
        rgb = torch.cat([rgb[selected], rgb.new_zeros(len(selected), fine_count, 3)], dim=1).gather(
            1, order.unsqueeze(-1).expand(-1, -1, 3)
        )
        evaluated = torch.cat([evaluated[selected], evaluated.new_zeros(len(selected), fine_count)], dim=1).gather(1, order)
        objects = selected // rays
        limit = config.box_half_size * (1 + BOX_TOLERANCE)
        points, valid, needed = _samples_at(depths, origins[selected], directions[selected], hit[selected], objects, grid, limit)
        # Coarse samples a ray skipped past its coarse termination are queried here if the merged
        # samples' transmittance still needs them.
        self._march(field, batch, points, depths, raw_density, rgb, valid, needed, evaluated, objects)
        color, depth, opacity, _ = composite(depths, raw_density, rgb, self.density_activation, valid)
        return color, depth, opacity

    def render_rays(
        self,
        field: FieldFunction,
        origins: torch.Tensor,
        directions: torch.Tensor,
        background: torch.Tensor | None = None,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
        occupancy: OccupancyGrid | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Render rays of N objects, chunked over rays.

        Args:
            field: points [N, P, 3] → (raw density [N, P, 1], rgb [N, P, 3]).
            origins, directions: [N, R, 3] (directions unit length).
            background: [N, R, 3] colour behind each ray (white when None).
            deterministic: no jitter; importance samples at fixed CDF quantiles.
            generator: seeds the random sampling when not deterministic.
            occupancy: the fast path's grid for these N objects (built from `field` when None); ignored
                by the exact path.
        Returns:
            rgb [N, R, 3] over the background, depth [N, R, 1], opacity [N, R, 1].

        The fast path draws the same random numbers as the exact path when both use the same ray
        chunks (`fast_ray_chunk_size` = `ray_chunk_size`); deterministic renders match either way.
        """
        if self.config.skip_empty_space:
            grid = occupancy if occupancy is not None else self.occupancy_grid(field, origins.shape[0], origins.device)
            chunk = self.config.fast_ray_chunk_size or origins.shape[1]
            render_chunk = lambda o, d: self._render_chunk_fast(field, o, d, deterministic, generator, grid)  # noqa: E731
        else:
            chunk = self.config.ray_chunk_size or origins.shape[1]
            render_chunk = lambda o, d: self._render_chunk(field, o, d, deterministic, generator)  # noqa: E731
        pieces = [
            render_chunk(origins[:, start : start + chunk], directions[:, start : start + chunk])
            for start in range(0, origins.shape[1], chunk)
        ]
        rgb, depth, opacity = (torch.cat(parts, dim=1) for parts in zip(*pieces))
        if background is None:
            background = torch.ones_like(rgb)
        return rgb + (1.0 - opacity) * background.to(rgb.dtype), depth, opacity

    def forward(
        self,
        field: FieldFunction,
        cameras: torch.Tensor,
        height: int,
        width: int | None = None,
        background: torch.Tensor | None = None,
        crop_offsets: torch.Tensor | None = None,
        crop_size: tuple[int, int] | None = None,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
        occupancy: OccupancyGrid | None = None,
    ) -> RenderOutput:
        """Render V views of each of N objects, or crops (patches) of those views.

        Args:
            cameras: [N, V, 25] render cameras.
            height, width: full view size in pixels.
            background: [N, V, 3] background colour per view (white when None).
            crop_offsets: [N, V, 2] (top, left) of the crop in each view; crop_size: (h, w).
            occupancy: the fast path's grid of the N objects (see `render_rays`).
        Returns:
            RenderOutput with rgb [N, V, 3, h, w], depth and opacity [N, V, 1, h, w], where
            (h, w) is crop_size when cropping, else (height, width).
        """
        width = height if width is None else width
        batch, views, _ = cameras.shape
        out_h, out_w = crop_size if crop_size is not None else (height, width)
        origins, directions = generate_rays(cameras.float(), height, width, crop_offsets, crop_size)  # [N, V, h·w, 3]
        flat = lambda x: x.reshape(batch, views * out_h * out_w, 3)  # noqa: E731
        ray_background = None if background is None else flat(background.float()[:, :, None, :].expand(batch, views, out_h * out_w, 3))
        rgb, depth, opacity = self.render_rays(field, flat(origins), flat(directions), ray_background, deterministic, generator, occupancy)
        image = lambda x: x.reshape(batch, views, out_h, out_w, x.shape[-1]).permute(0, 1, 4, 2, 3)  # noqa: E731
        return RenderOutput(rgb=image(rgb), depth=image(depth), opacity=image(opacity))
