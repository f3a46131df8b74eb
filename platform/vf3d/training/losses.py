"""Losses of reconstructor training: LPIPS, pixel MSE, opacity vs mask, and TV on the triplanes.

The recipe (docs/vfusion3d.md#training-recipe): on synthetic orbits only LPIPS (plus opacity and TV), because
generated views are not pixel-consistent; on real 3D renders LPIPS + pixel MSE. Weights come from
`ReconLossConfig`; whether the MSE term is on is a property of the training stage
(`ReconStage.pixel_loss`), so it is an argument of `ReconstructionLoss.forward`.

The LPIPS network itself, with its backbone weights from a local file, comes from
`vf3d.models.lpips_network.build_lpips`.
"""

from __future__ import annotations

import torch
from torch import nn

from vf3d.models.config import ReconLossConfig
from vf3d.models.lpips_network import build_lpips


def total_variation(planes: torch.Tensor) -> torch.Tensor:
    """Total variation of triplanes as OpenLRM's trainer defines it (its weight 5e-4 was tuned for
    this form; docs/vfusion3d.md#training-recipe): the mean squared difference of neighbouring texels along the plane's first axis
    plus the same along its second axis.

    Args:
        planes: [..., H, W] (e.g. triplanes [N, 3, C, H, W]).
    Returns:
        A scalar: mean(p[..., i+1, j] − p[..., i, j])² + mean(p[..., i, j+1] − p[..., i, j])².
        A plane a·i + b·j gives a² + b²; a constant plane gives 0.
    """
    along_h = (planes[..., 1:, :] - planes[..., :-1, :]).square().mean()
    along_w = (planes[..., :, 1:] - planes[..., :, :-1]).square().mean()
    return along_h + along_w


class ReconstructionLoss(nn.Module):
    """Weighted sum of LPIPS, pixel MSE, opacity MSE and triplane TV, from a `ReconLossConfig`.

    Terms with weight 0 are skipped (not computed, not reported); with `lpips_weight == 0` no
    LPIPS network is built. The LPIPS network stays frozen and in eval mode even when the loss
    module is put in train mode (its linear heads have dropout).
    """

    def __init__(self, config: ReconLossConfig, lpips_module: nn.Module | None = None) -> None:
        """`lpips_module`: an already built LPIPS network to share (e.g. with an evaluation
        metric); built with `build_lpips(config)` when None and the LPIPS weight is positive."""
        super().__init__()
        self.config = config.validate()
        if config.lpips_weight > 0 and lpips_module is None:
            lpips_module = build_lpips(config)
        self.lpips = lpips_module.requires_grad_(False).eval() if config.lpips_weight > 0 else None

    def train(self, mode: bool = True) -> ReconstructionLoss:
        super().train(mode)
        if self.lpips is not None:
            self.lpips.eval()
        return self

    def forward(
        self,
        rendered_rgb: torch.Tensor,
        rendered_opacity: torch.Tensor,
        target_rgb: torch.Tensor,
        target_mask: torch.Tensor,
        triplanes: torch.Tensor,
        pixel_loss: bool,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The total loss and its unweighted terms.

        Args:
            rendered_rgb: [N, V, 3, h, w] in [0, 1], the renderer's views (or crops of them).
            rendered_opacity: [N, V, 1, h, w], accumulated opacity of the same rays.
            target_rgb: [N, V, 3, h, w] in [0, 1], the true views (same crops).
            target_mask: [N, V, 1, h, w] in [0, 1], foreground masks of the true views.
            triplanes: [N, 3, C, H, W], the planes the views were rendered from.
            pixel_loss: add the MSE term (stages on real 3D renders; off on synthetic data).
        Returns:
            (total, terms): total is a scalar tensor (Σ weight · term) to backpropagate; terms maps
            "lpips" (mean over views), "mse", "opacity", "tv" (those computed) and "total" to floats.
        """
        if rendered_rgb.shape != target_rgb.shape or rendered_rgb.dim() != 5:
            raise ValueError(
                f"rendered_rgb {tuple(rendered_rgb.shape)} and target_rgb {tuple(target_rgb.shape)} must both be [N, V, 3, h, w]"
            )
        if rendered_opacity.shape != target_mask.shape:
            raise ValueError(f"rendered_opacity {tuple(rendered_opacity.shape)} and target_mask {tuple(target_mask.shape)} differ")
        config = self.config
        weighted: list[tuple[str, float, torch.Tensor]] = []
        if self.lpips is not None:
            flat_pred = rendered_rgb.flatten(0, 1) * 2 - 1  # lpips expects [-1, 1]
            flat_true = target_rgb.flatten(0, 1).to(rendered_rgb.dtype) * 2 - 1
            weighted.append(("lpips", config.lpips_weight, self.lpips(flat_pred, flat_true).mean()))
        if pixel_loss and config.mse_weight > 0:
            weighted.append(("mse", config.mse_weight, torch.nn.functional.mse_loss(rendered_rgb, target_rgb.to(rendered_rgb.dtype))))
        if config.opacity_weight > 0:
            weighted.append(
                ("opacity", config.opacity_weight, torch.nn.functional.mse_loss(rendered_opacity, target_mask.to(rendered_opacity.dtype)))
            )
        if config.tv_weight > 0:
            weighted.append(("tv", config.tv_weight, total_variation(triplanes)))
        if not weighted:
            total = rendered_rgb.sum() * 0.0  # keeps the graph: every weight is 0 for this stage
            return total, {"total": 0.0}
        total = sum(weight * term.float() for _, weight, term in weighted)
        # One device→host copy for all terms (a .item() per term would sync once per term).
        values = torch.stack([term.detach().float() for _, _, term in weighted] + [total.detach()]).tolist()
        terms = {name: value for (name, _, _), value in zip(weighted, values)}
        terms["total"] = values[-1]
        return total, terms
