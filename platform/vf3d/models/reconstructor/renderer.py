"""Parameter-free volume renderer for fields inside a box (the triplane NeRF's renderer).

Rays are clipped to the box [−h, h]³, sampled with stratified then importance sampling, and
composited with midpoint quadrature in the released model's order: the field's *raw* densities
of the two samples bounding each interval are averaged first and the density activation is
applied to that average (softplus is convex, so activating before averaging would make every
interval that straddles a surface denser than the release's; docs/vfusion3d.md#rendering-order).
Colours are averaged the same way. An interval with an end outside the box, or on a ray that
misses it, has no density. Work is chunked over rays so memory stays bounded whatever the image
size, and batched over objects and views.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from vf3d.cameras import generate_rays
from vf3d.config import RendererConfig

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

    def render_rays(
        self,
        field: FieldFunction,
        origins: torch.Tensor,
        directions: torch.Tensor,
        background: torch.Tensor | None = None,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Render rays of N objects, chunked over rays.

        Args:
            field: points [N, P, 3] → (raw density [N, P, 1], rgb [N, P, 3]).
            origins, directions: [N, R, 3] (directions unit length).
            background: [N, R, 3] colour behind each ray (white when None).
            deterministic: no jitter; importance samples at fixed CDF quantiles.
            generator: seeds the random sampling when not deterministic.
        Returns:
            rgb [N, R, 3] over the background, depth [N, R, 1], opacity [N, R, 1].
        """
        chunk = self.config.ray_chunk_size or origins.shape[1]
        pieces = [
            self._render_chunk(field, origins[:, start : start + chunk], directions[:, start : start + chunk], deterministic, generator)
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
    ) -> RenderOutput:
        """Render V views of each of N objects, or crops (patches) of those views.

        Args:
            cameras: [N, V, 25] render cameras.
            height, width: full view size in pixels.
            background: [N, V, 3] background colour per view (white when None).
            crop_offsets: [N, V, 2] (top, left) of the crop in each view; crop_size: (h, w).
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
        rgb, depth, opacity = self.render_rays(field, flat(origins), flat(directions), ray_background, deterministic, generator)
        image = lambda x: x.reshape(batch, views, out_h, out_w, x.shape[-1]).permute(0, 1, 4, 2, 3)  # noqa: E731
        return RenderOutput(rgb=image(rgb), depth=image(depth), opacity=image(opacity))
