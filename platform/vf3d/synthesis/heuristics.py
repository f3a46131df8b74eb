"""The cheap checks of synthetic orbits: foreground masks and heuristics, before the probe.

Generated orbit videos show an object on a white background (like our renders, which are stored
composited on white), so

- `white_background_masks` finds the object as the pixels far from white;
- `orbit_statistics` + `heuristic_reasons` reject the obvious failures cheaply: a video that does
  not move ("static"), shows nothing ("empty_foreground"), shows a scene instead of an object
  ("full_frame_foreground") or flickers ("flicker").

The subtler failures are the probe's (vf3d.synthesis.quality). NumPy and SciPy only: the synthesis
stage that runs these checks (`ForegroundMasks`, one of many CPU actors on a large run) starts
without importing torch, which would cost each actor about 2 CPU-seconds and a few hundred MB.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from vf3d.synthesis.config import HeuristicsConfig

REASONS = ("static", "empty_foreground", "full_frame_foreground", "flicker")
"""Heuristic rejection reasons, in the order `heuristic_reasons` reports them."""

# Masks are cleaned view by view: a 3-D structure with nothing above or below its middle plane
# never connects pixels of different views.
_PER_VIEW_CROSS = np.zeros((3, 3, 3), dtype=bool)
_PER_VIEW_CROSS[1] = ndimage.generate_binary_structure(2, 1)


def white_background_masks(frames: np.ndarray, threshold: float) -> np.ndarray:
    """Foreground masks of views of an object on a white background.

    A pixel is foreground when the Euclidean distance of its RGB (in [0, 1]) from white exceeds
    `threshold`. A binary opening (3×3 cross) then drops isolated speckles (compression noise, dust
    in generated backgrounds), and holes are filled, because white or specular parts inside an
    object (a white shirt, a highlight) belong to it. A hole that is really background (inside a
    mug's handle) is filled too: the price of not cutting holes into white surfaces.

    Args:
        frames: uint8 [V, H, W, 3].
        threshold: distance from white, in (0, √3).
    Returns:
        uint8 [V, H, W], 255 = object, 0 = background.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [V, H, W, 3], got {frames.dtype} {frames.shape}")
    darkness = 1.0 - frames.astype(np.float32) / 255
    foreground = np.sqrt((darkness * darkness).sum(axis=-1)) > threshold
    foreground = ndimage.binary_opening(foreground, structure=_PER_VIEW_CROSS)
    foreground = ndimage.binary_fill_holes(foreground, structure=_PER_VIEW_CROSS)
    return foreground.astype(np.uint8) * 255


def orbit_statistics(frames: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    """What the heuristics look at, for one orbit.

    Args:
        frames: uint8 [V, H, W, 3] views in orbit order.
        masks: uint8 [V, H, W] foreground masks (255 = object; > 127 counts as object).
    Returns:
        motion: mean |view_{t+1} − view_t| over pixels and channels (values in [0, 1]), over the
            V − 1 consecutive pairs of the video; the last → first pair is left out because a
            generated video need not close its loop (0 for a single view).
        foreground_mean, foreground_min, foreground_max: of the views' foreground fractions.
        flicker: median over t of |b_{t+1} − 2·b_t + b_{t−1}|, b_t the mean brightness of view t
            in [0, 1], indices taken circularly (an orbit is a loop); 0 for fewer than 3 views.
            A turning object changes brightness smoothly (small second differences), a flickering
            video jumps back and forth; the median ignores a few genuine jumps.
    """
    frames, masks = np.asarray(frames), np.asarray(masks)
    if frames.ndim != 4 or frames.shape[-1] != 3 or masks.shape != frames.shape[:3]:
        raise ValueError(f"need frames [V, H, W, 3] and masks [V, H, W], got {frames.shape} and {masks.shape}")
    views = frames.astype(np.float32) / 255
    motion = float(np.abs(np.diff(views, axis=0)).mean()) if len(views) > 1 else 0.0
    foreground = (masks > 127).mean(axis=(1, 2))
    brightness = views.mean(axis=(1, 2, 3))
    second_difference = np.abs(np.roll(brightness, -1) - 2 * brightness + np.roll(brightness, 1))
    return {
        "motion": motion,
        "foreground_mean": float(foreground.mean()),
        "foreground_min": float(foreground.min()),
        "foreground_max": float(foreground.max()),
        "flicker": float(np.median(second_difference)) if len(views) >= 3 else 0.0,
    }


def heuristic_reasons(statistics: dict[str, float], config: HeuristicsConfig) -> list[str]:
    """Why an orbit fails the heuristics (`orbit_statistics`), in `REASONS` order; [] if it passes."""
    failed = {
        "static": statistics["motion"] < config.min_motion,
        "empty_foreground": statistics["foreground_mean"] < config.min_foreground,
        "full_frame_foreground": statistics["foreground_mean"] > config.max_foreground,
        "flicker": statistics["flicker"] > config.max_flicker,
    }
    return [reason for reason in REASONS if failed[reason]]
