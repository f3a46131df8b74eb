"""Triplane feature sampling and the decoder MLP that turns features into density and colour."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vf3d.models.reconstructor.config import DecoderConfig

# Plane axes: plane k is indexed by (first, second) world coordinates, first on the width axis
# (the release's planes: docs/vfusion3d.md#triplane-sampling).
PLANE_AXES = ((0, 1), (0, 2), (2, 1))
DENSITY_SHIFT = 1.0
"""density = softplus(raw − 1), as in the released model (see `activate_density`;
docs/vfusion3d.md#decoder)."""
RGB_PADDING = 0.001
"""rgb = sigmoid(x)·(1 + 2·padding) − padding, so pure black and white stay reachable."""


def sample_triplane(planes: torch.Tensor, points: torch.Tensor, box_half_size: float = 1.0) -> torch.Tensor:
    """Bilinearly sample the three planes at 3-D points and concatenate their features.

    Args:
        planes: [N, 3, C, H, W] triplane features.
        points: [N, P, 3] world points; the box [−h, h]³ maps onto the planes' extent.
    Returns:
        [N, P, 3·C] features (plane 0's channels, then plane 1's, then plane 2's); zero outside.
    """
    batch, _, channels, height, width = planes.shape
    normalised = points / box_half_size
    coordinates = torch.stack([normalised[..., list(axes)] for axes in PLANE_AXES], dim=1)  # [N, 3, P, 2]
    sampled = F.grid_sample(
        planes.reshape(batch * 3, channels, height, width),
        coordinates.reshape(batch * 3, 1, -1, 2).to(planes.dtype),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )  # [N·3, C, 1, P]
    return sampled.reshape(batch, 3, channels, -1).permute(0, 3, 1, 2).reshape(batch, -1, 3 * channels)


def activate_density(raw_density: torch.Tensor) -> torch.Tensor:
    """Raw decoder density [..., 1] → density ≥ 0: softplus(raw − 1), as in the released model.

    Kept apart from the decoder because the renderer must apply it to the *average* of the raw
    densities of an interval's two samples (the release's order, docs/vfusion3d.md#rendering-order), while density grids for
    meshing apply it per point.
    """
    return F.softplus(raw_density.float() - DENSITY_SHIFT)


class TriplaneDecoder(torch.nn.Module):
    """MLP: 3·C features → (raw density, rgb ∈ [−0.001, 1.001]); no view dependence.

    The density is returned raw (unbounded); `activate_density` turns it into a density ≥ 0.
    """

    def __init__(self, in_features: int, config: DecoderConfig) -> None:
        super().__init__()
        widths = [in_features] + [config.hidden_width] * (config.num_layers - 1) + [4]
        self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features: [..., 3·C] → raw density [..., 1] (float32), rgb [..., 3]."""
        x = features
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = torch.relu(x)
        rgb = torch.sigmoid(x[..., 1:].float()) * (1 + 2 * RGB_PADDING) - RGB_PADDING
        return x[..., :1].float(), rgb
