"""Orbit views as the reconstructor takes them, shared by train-recon (its batches and its
validator) and `vf3d evaluate`, so that training validates on exactly the task evaluation scores:

- `source_inputs`: source views recentred as the model sees them at inference (`vf3d.preprocess`:
  cropped to the mask's box, spanning 80% of a white square, resized); float pixels. The uint8 twin
  used inside Ray Data map stages is `vf3d.data.training_input.recentred_source`.
- `validation_views`: a held-out orbit's novel-view task (orbit view 0 as the source, evenly spread
  orbit views as targets).

Torch is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


def source_inputs(frames: torch.Tensor, masks: torch.Tensor, image_size: int) -> torch.Tensor:
    """Source views as the model sees them at inference: cropped to the mask's box, rescaled so it
    spans 80% of a white square canvas, resized. frames [B, 3, H, W], masks [B, 1, H, W] → [B, 3, S, S]."""
    import torch

    from vf3d.preprocess import recenter

    images = []
    for frame, mask in zip(frames, masks):
        canvas = recenter(frame.permute(1, 2, 0).cpu().numpy(), mask[0].cpu().numpy())
        tensor = torch.from_numpy(canvas).permute(2, 0, 1)[None]
        size = (image_size, image_size)
        resized = torch.nn.functional.interpolate(tensor, size=size, mode="bilinear", antialias=True, align_corners=False)
        images.append(resized[0].clamp(0, 1))
    return torch.stack(images)


def validation_views(record: dict[str, Any], num_views: int, resolution: int):
    """A held-out orbit's validation task: source = orbit view 0; targets = `num_views` other orbit
    views spread evenly around it. Returns (source image [3, H, W], source mask [1, H, W], source
    camera [25], target frames [n, 3, r, r] on white, target cameras [n, 25])."""
    import torch

    orbit_views = int(record["num_orbit_views"])
    picks = np.linspace(0, orbit_views, num_views + 1, endpoint=False)[1:].round().astype(int) % orbit_views
    frames = torch.as_tensor(record["frames"])
    targets = frames[picks]
    if targets.shape[-1] != resolution:
        size = (resolution, resolution)
        targets = torch.nn.functional.interpolate(targets, size=size, mode="bilinear", antialias=True, align_corners=False)
        targets = targets.clamp(0, 1)
    cameras = torch.as_tensor(record["cameras"])
    return frames[0], torch.as_tensor(record["masks"])[0], cameras[0], targets, cameras[picks]
