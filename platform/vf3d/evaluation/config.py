"""Config of `vf3d evaluate` (novel-view, CLIP, LPIPS and geometry metrics), with presets.

Import-light: standard library and config modules only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vf3d.config import ConfigBase, bounded
from vf3d.models.config import LpipsNet
from vf3d.models.reconstructor.config import InferenceConfig


@dataclass
class EvalClipConfig(ConfigBase):
    """CLIP image/text similarity (open_clip); weights come from a path or an object-store URI,
    never a hub."""

    enabled: bool = True
    """Compute CLIP similarities (false skips them: no weights needed)."""
    model: str = "ViT-B-32"
    """open_clip architecture name of the weights (e.g. "ViT-B-32-quickgelu" for OpenAI's
    ViT-B/32, "ViT-L-14"); ignored when `weights_path` is a directory with open_clip_config.json."""
    weights_path: str | None = None
    """open_clip weights: a checkpoint file (.safetensors/.bin/.pt/.pth) for `model`, or a
    directory holding open_clip_config.json and its weights (the hub layout, downloaded once); a
    local path, or an s3:// / gs:// URI downloaded once per process."""
    allow_random: bool = False
    """Without `weights_path`, build `model` with random weights (tests only: the similarities
    are then meaningless, and the report says so in bold)."""
    batch_size: int = bounded(32, ge=1)
    """Images per CLIP forward pass."""


@dataclass
class EvalLpipsConfig(ConfigBase):
    """LPIPS of predicted vs true views (the metric usually uses AlexNet features)."""

    net: LpipsNet = "alex"
    """Backbone: "alex" (the LPIPS paper's metric), "vgg" or "squeeze"."""
    backbone_path: str | None = None
    """Torchvision state dict of that backbone (alexnet/vgg16/squeezenet1_1 weights, .pth or
    .safetensors): a local path, or an s3:// / gs:// URI downloaded once per process. Required
    unless `random_backbone`."""
    random_backbone: bool = False
    """Use a random backbone (tests only: LPIPS is then not perceptual; the report says so)."""


@dataclass
class EvalGeometryConfig(ConfigBase):
    """Chamfer distance and F-score between the extracted mesh and the true asset mesh."""

    enabled: bool = True
    """Compute geometry metrics for orbits whose `asset` is found under `--assets`."""
    num_points: int = bounded(100_000, ge=100)
    """Points sampled (area-uniformly, seeded) on each surface."""
    fscore_threshold: float = bounded(0.05, gt=0)
    """Distance τ (world units; the asset fits in a sphere of radius 1 − margin = 0.8, inside the
    [−1, 1]³ box) under which a point counts as matched, for precision, recall and F-score."""
    alignment: Literal["none", "bbox"] = "none"
    """"none" (compare in the asset's frame, as reconstructed) or "bbox" (first move and uniformly
    scale the predicted mesh so its bounding box has the true one's centre and diagonal)."""


@dataclass
class EvaluateConfig(ConfigBase):
    """`vf3d evaluate`: reconstruct each held-out orbit from its view 0 and score the result."""

    num_views: int = bounded(8, ge=1)
    """Novel views per object, spread evenly around the orbit (view 0, the input, excluded)."""
    resolution: int | None = bounded(None, ge=16, le=4096)
    """Side of the compared views in pixels (true views are resized to it; SSIM needs at least 11);
    None = the orbit's."""
    limit: int | None = bounded(None, ge=1)
    """Evaluate at most this many orbits (the first ones by id, or by the order of `--ids`)."""
    figure_objects: int = bounded(8, ge=0)
    """Objects drawn in the view grids and the per-object bar chart (the first ones)."""
    seed: int = 0
    """Seed of the surface point sampling."""
    clip: EvalClipConfig = field(default_factory=EvalClipConfig)
    lpips: EvalLpipsConfig = field(default_factory=EvalLpipsConfig)
    geometry: EvalGeometryConfig = field(default_factory=EvalGeometryConfig)
    inference: InferenceConfig = field(default_factory=lambda: InferenceConfig(mesh_resolution=256))
    """Device, dtype (bf16 autocast on CUDA), mesh resolution and iso of the reconstruction."""


def _evaluate_debug() -> EvaluateConfig:
    # Seconds on a CPU: random CLIP and LPIPS backbones (flagged in the report), few small views,
    # few points, a coarse mesh at Otsu's iso (debug models are often random).
    return EvaluateConfig(
        num_views=4,
        resolution=32,
        figure_objects=4,
        clip=EvalClipConfig(model="ViT-S-32", allow_random=True, batch_size=16),
        lpips=EvalLpipsConfig(net="squeeze", random_backbone=True),
        geometry=EvalGeometryConfig(num_points=4000),
        inference=InferenceConfig(mesh_resolution=48, mesh_iso="auto"),
    )


EVALUATE_PRESETS = {
    "debug": _evaluate_debug,
    "full": EvaluateConfig,
}
