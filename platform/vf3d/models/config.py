"""Configs of the model-layer networks that are single modules: the quality filter's image encoder
and probe (vf3d.models.quality_filter) and the LPIPS network with the reconstruction loss weights
that use it (vf3d.models.lpips_network, vf3d.training.losses).

Import-light: standard library and `vf3d.config` only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vf3d.config import ConfigBase, FieldPath, bounded
from vf3d.models.reconstructor.config import EncoderConfig


@dataclass
class FilterEncoderConfig(ConfigBase):
    """The frozen image encoder whose features the quality probe reads (DINOv2, as in the paper;
    docs/vfusion3d.md#data-engine)."""

    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(image_size=224))
    """Its architecture; `encoder.pretrained_path` names a DINOv2 directory (transformers layout,
    e.g. facebook/dinov2-base; a local path or an s3:// / gs:// URI) and must match these numbers."""
    random_init: bool = False
    """Allow a randomly initialised encoder when `encoder.pretrained_path` is None (debug and tests:
    random features still separate clean orbits from garbage, but far less well than DINOv2)."""
    num_views: int = bounded(4, ge=1)
    """Views per orbit that are encoded, evenly spaced around the orbit."""
    seed: int = 0
    """Seed of a random initialisation (the probe records it: features must be reproducible)."""

    def rules(self, at: FieldPath) -> list[tuple[bool, str]]:
        return [
            (
                self.encoder.pretrained_path is not None or self.random_init,
                f"{at.encoder.pretrained_path} is required (a local DINOv2 directory); only random_init presets such as debug"
                " build a random one",
            ),
            (
                self.encoder.image_size % self.encoder.patch_size == 0,
                f"{at.encoder.image_size} must be a multiple of {at.encoder.patch_size}",
            ),
        ]


@dataclass
class QualityProbeConfig(ConfigBase):
    """A fitted quality probe (saved by `train-filter`): the encoder it reads and its decision."""

    encoder: FilterEncoderConfig = field(default_factory=FilterEncoderConfig)
    feature_dim: int = bounded(0, ge=1)
    """Length of the orbit feature vector the probe's linear layer takes (set when it is fitted)."""
    threshold: float = bounded(0.5, ge=0, le=1)
    """Scores (probability of "good") at or above this pass."""


def debug_filter_encoder() -> FilterEncoderConfig:
    """The quality filter's tiny random image encoder of the `debug` presets (runs in seconds on a CPU)."""
    encoder = EncoderConfig(hidden_size=32, num_layers=2, num_heads=2, patch_size=8, image_size=64, position_image_size=64)
    return FilterEncoderConfig(encoder=encoder, random_init=True)


LpipsNet = Literal["vgg", "alex", "squeeze"]
"""LPIPS backbones (torchvision VGG16, AlexNet, SqueezeNet 1.1); the linear heads ship with lpips."""


@dataclass
class ReconLossConfig(ConfigBase):
    """Loss terms and weights of reconstructor training (OpenLRM's defaults where the paper is
    silent; docs/vfusion3d.md#training-recipe)."""

    lpips_weight: float = bounded(1.0, ge=0)
    """LPIPS between rendered and true target crops (the only image loss on synthetic data)."""
    lpips_net: LpipsNet = "vgg"
    """LPIPS backbone: "vgg" (OpenLRM's), "alex" or "squeeze"; the linear heads ship with lpips."""
    lpips_backbone_path: str | None = None
    """Torchvision weights of that backbone (a state dict in .pth/.safetensors, loaded
    weights-only), e.g. vgg16-397923af.pth: a local path, or an s3:// / gs:// URI downloaded once
    per process. Required (checked when the loss is built) unless `lpips_random_backbone`."""
    lpips_random_backbone: bool = False
    """Use a random backbone (tests and debug only: the loss still trains, but it is not a
    perceptual metric; runs log a warning)."""
    mse_weight: float = bounded(1.0, ge=0)
    """Pixel MSE weight, applied to the stages whose `pixel_loss` is on (the 3D fine-tune)."""
    opacity_weight: float = bounded(0.5, ge=0)
    """MSE between rendered accumulated opacity and each target's foreground mask."""
    tv_weight: float = bounded(5e-4, ge=0)
    """Total variation on the triplanes (smooth fields, fewer floaters)."""
