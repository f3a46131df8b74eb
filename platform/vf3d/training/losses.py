"""Losses of reconstructor training: LPIPS, pixel MSE, opacity vs mask, and TV on the triplanes.

The recipe (reference §4): on synthetic orbits only LPIPS (plus opacity and TV), because
generated views are not pixel-consistent; on real 3D renders LPIPS + pixel MSE. Weights come from
`ReconLossConfig`; whether the MSE term is on is a property of the training stage
(`ReconStage.pixel_loss`), so it is an argument of `ReconstructionLoss.forward`.

LPIPS needs ImageNet weights for its backbone, which lpips would download from the internet. Here
they come from a local torchvision state dict (`losses.lpips_backbone_path`); lpips' own linear
heads ship inside the package.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
from torch import nn

from vf3d.config import ConfigError, ReconLossConfig

_TORCHVISION_ARCH = {"vgg": "vgg16", "alex": "alexnet", "squeeze": "squeezenet1_1"}
"""The torchvision model whose `features` each lpips backbone slices."""

_SLICE_KEY = re.compile(r"^slice\d+\.(\d+)\.(.+)$")
_PATH_KEY = "losses.lpips_backbone_path"


def _load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a weights-only torch pickle (.pth/.pt/.bin)."""
    if not path.is_file():
        raise ConfigError(f"{_PATH_KEY}: no such file: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt file, a pickle of something other than tensors, ...
        raise ConfigError(f"{_PATH_KEY}: cannot read {path} as a state dict ({type(error).__name__}: {error})") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint that wraps the state dict
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{_PATH_KEY}: {path} does not hold a state dict of tensors")
    return state


def _backbone_state_from_torchvision(backbone: nn.Module, state: dict[str, torch.Tensor], net: str, path: Path) -> dict[str, torch.Tensor]:
    """Map torchvision `features.<i>.<param>` keys onto lpips' `slice<k>.<i>.<param>` keys.

    lpips' backbones (lpips/pretrained_networks.py) copy the modules of torchvision's
    `<arch>.features` into `slice1..sliceK` under their original index, so `features.7.weight`
    becomes `slice<k>.7.weight` for whichever slice holds index 7. The classifier is unused.
    """
    state = {key.removeprefix("module."): value for key, value in state.items()}
    arch = _TORCHVISION_ARCH[net]
    expected = backbone.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    for key, reference in expected.items():
        match = _SLICE_KEY.match(key)
        if match is None:  # lpips' backbones hold only slices; anything else is a new lpips layout
            raise ConfigError(f"{_PATH_KEY}: unexpected lpips backbone parameter {key!r} (lpips version not supported)")
        source_key = f"features.{match.group(1)}.{match.group(2)}"
        if source_key not in state:
            problems.append(f"missing {source_key}")
        elif tuple(state[source_key].shape) != tuple(reference.shape):
            problems.append(f"{source_key} has shape {tuple(state[source_key].shape)}, expected {tuple(reference.shape)}")
        else:
            mapped[key] = state[source_key].to(reference.dtype)
    used = {f"features.{_SLICE_KEY.match(key).group(1)}.{_SLICE_KEY.match(key).group(2)}" for key in expected}
    unused = sorted(key for key in state if key.startswith("features.") and key not in used)
    if unused:
        problems.append(f"unexpected {', '.join(unused[:4])}{' ...' if len(unused) > 4 else ''}")
    if problems:
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise ConfigError(
            f"{_PATH_KEY}: {path} is not a torchvision {arch} state dict "
            f"(losses.lpips_net={net!r} needs its features.* weights): {shown}"
        )
    return mapped


def build_lpips(config: ReconLossConfig) -> nn.Module:
    """A frozen, eval-mode `lpips.LPIPS` network for `config.lpips_net`, ready to compare images.

    The linear heads are lpips' calibrated ones (shipped in the package). The backbone's ImageNet
    weights are loaded from `config.lpips_backbone_path`: a torchvision state dict of vgg16
    ("vgg"), alexnet ("alex") or squeezenet1_1 ("squeeze") as .pth (read weights-only) or
    .safetensors, e.g. torchvision's own vgg16-397923af.pth. Only its `features.*` entries are
    used. With `config.lpips_random_backbone` the backbone stays random and a warning says the
    loss is not perceptual (tests and debug runs).

    Call the result as lpips does: `module(x, y)` with x, y [B, 3, H, W] in [-1, 1] → [B, 1, 1, 1].

    Raises:
        ConfigError: no backbone path and no random backbone allowed, an unreadable file, or a
            file whose keys/shapes do not match the chosen backbone.
    """
    config.validate()
    if config.lpips_backbone_path is None and not config.lpips_random_backbone:
        raise ConfigError(
            f"{_PATH_KEY} is required for the LPIPS loss: set it to a local torchvision "
            f"{_TORCHVISION_ARCH[config.lpips_net]} state dict (.pth or .safetensors), or set "
            "losses.lpips_random_backbone for tests and debug runs"
        )
    path = Path(config.lpips_backbone_path).expanduser() if config.lpips_backbone_path is not None else None
    state = _load_state_dict_file(path) if path is not None else None  # fail before building

    with warnings.catch_warnings():
        # lpips builds torchvision models with the deprecated `pretrained=` argument.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torchvision\..*")
        import lpips

        module = lpips.LPIPS(net=config.lpips_net, pretrained=True, pnet_rand=True, verbose=False)

    if state is not None:
        module.net.load_state_dict(_backbone_state_from_torchvision(module.net, state, config.lpips_net, path), strict=True)
    else:
        warnings.warn(
            f"the LPIPS backbone ({config.lpips_net}) is random (losses.lpips_random_backbone): the LPIPS "
            f"term still trains but is not a perceptual loss; set {_PATH_KEY} for real runs",
            UserWarning,
            stacklevel=2,
        )
    module.requires_grad_(False)
    return module.eval()


def total_variation(planes: torch.Tensor) -> torch.Tensor:
    """Total variation of triplanes as OpenLRM's trainer defines it (its weight 5e-4 was tuned for
    this form): the mean squared difference of neighbouring texels along the plane's first axis
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

    def train(self, mode: bool = True) -> "ReconstructionLoss":
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
            raise ValueError(f"rendered_rgb {tuple(rendered_rgb.shape)} and target_rgb {tuple(target_rgb.shape)} must both be [N, V, 3, h, w]")
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
            weighted.append(("opacity", config.opacity_weight, torch.nn.functional.mse_loss(rendered_opacity, target_mask.to(rendered_opacity.dtype))))
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
