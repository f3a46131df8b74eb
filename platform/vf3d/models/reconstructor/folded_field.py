"""The triplane field with the decoder's first layer folded into the planes (inference's fast field).

The decoder's first layer is linear in the sampled features, and bilinear sampling is linear in the
planes, so `W₁ · concat(sample(plane₀), sample(plane₁), sample(plane₂)) + b₁` equals
`Σₖ sample(W₁ₖ · planeₖ) + b₁`, where W₁ₖ is the block of W₁ that reads plane k. Projecting every
texel through W₁ once per object (3·R² texels instead of one product per query point) turns the
per-point work of the first layer (3C·H multiply-adds) into a weighted sum of 12 rows of H values,
one fused `embedding_bag` (a gather of the 4 bilinear taps on each of the 3 planes). The remaining
layers run as the decoder's. The result equals `Reconstructor.query_raw` up to float rounding
(zero padding outside the planes included: a tap outside contributes nothing either way), and is
several times cheaper per point on the CPU, where `grid_sample` over 3C channels dominates.

Inference only (renderer fast path and meshing): training differentiates through `sample_triplane`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vf3d.models.reconstructor.decoder import PLANE_AXES, RGB_PADDING, TriplaneDecoder

POINTS_PER_PASS = 2**14
"""Points handled per pass of the folded layer and the MLP: keeps the [P, 12] taps and [P, H]
activations in cache on the CPU (larger passes run memory-bound and slower)."""


def folding_pays_off(decoder: TriplaneDecoder) -> bool:
    """Whether the folded field is the cheaper one for this decoder on the CPU: its per-point cost is
    a fixed gather of 12 texel rows plus bookkeeping, which beats `grid_sample` and the first layer
    only when the features are much wider than the hidden layer (3·80 against 64 in the release;
    measured: 2.5–3× cheaper per point there, about even at 3·40 against 64, dearer at 3·16 against 32)."""
    first = decoder.layers[0]
    return first.in_features > 2 * first.out_features


class FoldedTriplaneField:
    """A renderer field (points [N, P, 3] → raw density [N, P, 1], rgb [N, P, 3]) for triplanes
    [N, 3, C, R, R] and a decoder, with the decoder's first layer folded into the planes."""

    def __init__(self, planes: torch.Tensor, decoder: TriplaneDecoder, box_half_size: float = 1.0) -> None:
        batch, num_planes, channels, height, width = planes.shape
        if height != width:
            raise ValueError(f"planes must be square, got {height}×{width}")
        self.resolution = width
        first = decoder.layers[0]
        hidden = first.out_features
        blocks = first.weight.detach().float().reshape(hidden, num_planes, channels)  # [H, 3, C]: block k reads plane k
        # In float32 whatever autocast is on: the table is read by weighted sums whose weights are float32.
        with torch.no_grad(), torch.autocast(planes.device.type, enabled=False):
            # [N·3·R·R, H]: row ((n·3 + k)·R + y)·R + x is texel (y, x) of object n's plane k projected by W₁ₖ.
            self.table = torch.einsum("nkcyx,hkc->nkyxh", planes.float(), blocks).reshape(-1, hidden).contiguous()
        self.bias = first.bias.detach().float()
        self.layers = decoder.layers
        self.batch = batch
        self.box_half_size = box_half_size
        self.object_rows = num_planes * width**2  # table rows per object
        # Each plane's world axes on its width and height, and its first table row.
        self.width_axes = torch.tensor([axes[0] for axes in PLANE_AXES], device=planes.device)
        self.height_axes = torch.tensor([axes[1] for axes in PLANE_AXES], device=planes.device)
        self.plane_rows = (torch.arange(num_planes, device=planes.device) * width**2).float()[:, None, None]  # [3, 1, 1]

    def first_layer(self, points: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
        """The decoder's first layer before its ReLU at points [P, 3] of objects [P] → [P, H] (float32)."""
        size = self.resolution
        # grid_sample's align_corners=False pixel coordinate along each world axis (the planes are
        # square, so one per axis serves both planes that read it): −1 and 1 are the texels' outer
        # edges. Axis-major [3, P] rows keep every elementwise step contiguous, and a few whole-tensor
        # steps beat many small ones (each costs about as much as its memory traffic).
        pixel = ((points.float().t() / self.box_half_size + 1) * size - 1) * 0.5  # [3, P]
        low = pixel.floor()
        fraction = pixel - low
        # Per world axis, the two taps' weights (zero for a tap outside the plane: zero padding) and
        # texel indices, clamped so that even a tap of weight zero reads a valid row; the indices stay
        # in float32, exact below 2²⁴ rows.
        tap_weight = torch.stack([(1 - fraction) * ((low >= 0) & (low < size)), fraction * ((low >= -1) & (low < size - 1))], dim=1)
        tap_texel = torch.stack([low.clamp(0, size - 1), (low + 1).clamp(0, size - 1)], dim=1)  # [3 axes, 2 taps, P]
        # [3 planes, 2 (y), 2 (x), P]: outer products of each plane's height-axis and width-axis taps.
        weight = tap_weight.index_select(0, self.height_axes)[:, :, None] * tap_weight.index_select(0, self.width_axes)[:, None]
        row_y = tap_texel.index_select(0, self.height_axes).mul_(size).add_(self.plane_rows) + (objects * self.object_rows).float()
        rows = row_y[:, :, None] + tap_texel.index_select(0, self.width_axes)[:, None]
        rows, weight = rows.reshape(12, -1).t().long(), weight.reshape(12, -1).t().contiguous()
        return F.embedding_bag(rows, self.table, per_sample_weights=weight.to(self.table.dtype), mode="sum").add_(self.bias)

    def query(self, points: torch.Tensor, objects: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw density [P, 1] and rgb [P, 3] (float32) at points [P, 3] of objects [P] (any mix of objects)."""
        raw_parts, rgb_parts = [], []
        for start in range(0, points.shape[0], POINTS_PER_PASS):
            x = self.first_layer(points[start : start + POINTS_PER_PASS], objects[start : start + POINTS_PER_PASS])
            for layer in self.layers[1:]:
                x = layer(x.relu_())
            # The decoder's output head (TriplaneDecoder.forward).
            raw_parts.append(x[:, :1].float())
            rgb_parts.append(torch.sigmoid(x[:, 1:].float()) * (1 + 2 * RGB_PADDING) - RGB_PADDING)
        if not raw_parts:
            return points.new_zeros(0, 1, dtype=torch.float32), points.new_zeros(0, 3, dtype=torch.float32)
        return torch.cat(raw_parts), torch.cat(rgb_parts)

    def __call__(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """points [N, P, 3] → raw density [N, P, 1], rgb [N, P, 3], as `Reconstructor.query_raw`."""
        batch, count, _ = points.shape
        objects = torch.arange(batch, device=points.device).repeat_interleave(count)
        raw, rgb = self.query(points.reshape(-1, 3), objects)
        return raw.reshape(batch, count, 1), rgb.reshape(batch, count, 3)
