"""The LPIPS network (Zhang et al. 2018, a learned perceptual distance between images), built from
local weights: the training loss (`vf3d.training.losses`) and the metric (`vf3d.image_metrics.LpipsMetric`,
used by train-recon's validation and by `vf3d evaluate`) share this one builder.

LPIPS needs ImageNet weights for its backbone, which lpips would download from the internet. Here
they come from a torchvision state dict we name (`losses.lpips_backbone_path`: a local path, or an
object-store URI fetched once per process into a local cache); lpips' own linear heads ship inside
the package.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
from torch import nn

from vf3d import storage
from vf3d.config import ConfigError
from vf3d.models.config import ReconLossConfig
from vf3d.models.pretrained import local_weights

_TORCHVISION_ARCH = {"vgg": "vgg16", "alex": "alexnet", "squeeze": "squeezenet1_1"}
"""The torchvision model whose `features` each lpips backbone slices."""

_SLICE_KEY = re.compile(r"^slice\d+\.(\d+)\.(.+)$")
_PATH_KEY = "losses.lpips_backbone_path"


def _load_state_dict_file(path: Path, shown: str | Path | None = None) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a weights-only torch pickle (.pth/.pt/.bin); `shown`
    names the file in errors (the URI of a downloaded one; default: `path`)."""
    shown = path if shown is None else shown
    if not path.is_file():
        raise ConfigError(f"{_PATH_KEY}: no such file: {shown}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt file, a pickle of something other than tensors, ...
        raise ConfigError(f"{_PATH_KEY}: cannot read {shown} as a state dict ({type(error).__name__}: {error})") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint that wraps the state dict
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{_PATH_KEY}: {shown} does not hold a state dict of tensors")
    return state


def _backbone_state_from_torchvision(
    backbone: nn.Module, state: dict[str, torch.Tensor], net: str, path: Path | str
) -> dict[str, torch.Tensor]:
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
            f"{_PATH_KEY}: {path} is not a torchvision {arch} state dict (losses.lpips_net={net!r} needs its features.* weights): {shown}"
        )
    return mapped


def build_lpips(config: ReconLossConfig) -> nn.Module:
    """A frozen, eval-mode `lpips.LPIPS` network for `config.lpips_net`, ready to compare images.

    The linear heads are lpips' calibrated ones (shipped in the package). The backbone's ImageNet
    weights are loaded from `config.lpips_backbone_path`: a torchvision state dict of vgg16
    ("vgg"), alexnet ("alex") or squeezenet1_1 ("squeeze") as .pth (read weights-only) or
    .safetensors, e.g. torchvision's own vgg16-397923af.pth, at a local path or an object-store
    URI (downloaded once per process). Only its `features.*` entries are used. With
    `config.lpips_random_backbone` the backbone stays random and a warning says the loss is not
    perceptual (tests and debug runs).

    Call the result as lpips does: `module(x, y)` with x, y [B, 3, H, W] in [-1, 1] → [B, 1, 1, 1].

    Raises:
        ConfigError: no backbone path and no random backbone allowed, an unreadable file, or a
            file whose keys/shapes do not match the chosen backbone.
    """
    config.validate()
    if config.lpips_backbone_path is None and not config.lpips_random_backbone:
        raise ConfigError(
            f"{_PATH_KEY} is required for the LPIPS loss: set it to a torchvision "
            f"{_TORCHVISION_ARCH[config.lpips_net]} state dict (.pth or .safetensors), or set "
            "losses.lpips_random_backbone for tests and debug runs"
        )
    location = config.lpips_backbone_path
    path = local_weights(location, _PATH_KEY, file_only=True) if location is not None else None
    shown = location if location is not None and storage.is_uri(location) else path  # what errors name
    state = _load_state_dict_file(path, shown) if path is not None else None  # fail before building

    with warnings.catch_warnings():
        # lpips builds torchvision models with the deprecated `pretrained=` argument.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torchvision\..*")
        import lpips

        module = lpips.LPIPS(net=config.lpips_net, pretrained=True, pnet_rand=True, verbose=False)

    if state is not None:
        module.net.load_state_dict(_backbone_state_from_torchvision(module.net, state, config.lpips_net, shown), strict=True)
    else:
        warnings.warn(
            f"the LPIPS backbone ({config.lpips_net}) is random (losses.lpips_random_backbone): the LPIPS "
            f"term still trains but is not a perceptual loss; set {_PATH_KEY} for real runs",
            UserWarning,
            stacklevel=2,
        )
    module.requires_grad_(False)
    return module.eval()
