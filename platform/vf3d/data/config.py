"""Config of the orbit renderer of 3D assets (vf3d.data.orbit_renderer).

Import-light: standard library and `vf3d.config` only.
"""

from __future__ import annotations

from dataclasses import dataclass

from vf3d.config import ConfigBase, FieldPath, bounded


@dataclass
class OrbitRenderConfig(ConfigBase):
    """How one asset becomes an orbit: normalisation, cameras and image size."""

    num_views: int = bounded(16, ge=1)
    """Orbit frames at uniform azimuth 360°·i/V (view 0 on the +X axis)."""
    resolution: int = bounded(256, ge=16, le=4096)
    """Side of the square frames in pixels."""
    elevation_range_deg: list[float] = bounded(factory=lambda: [0.0, 45.0], gt=-90, lt=90, length=2)
    """[min, max] elevation in degrees; each asset gets one elevation drawn uniformly (seeded by its id)."""
    radius: float = bounded(1.5, gt=1)
    """Distance of the cameras from the origin (the turntable radius of cameras.py); above 1, so
    the cameras are outside the cube."""
    focal: float = bounded(0.75, gt=0)
    """Normalised focal length fx/W = fy/H (0.75 ↔ 67.4° field of view, the release's;
    docs/vfusion3d.md#intrinsics)."""
    margin: float = bounded(0.2, ge=0, lt=1)
    """The asset is centred on its bounding box and scaled so its farthest vertex lies at radius
    1 − margin: inside the reconstructor's [−1, 1]³ cube and inside every view's frame."""
    num_random_views: int = bounded(0, ge=0)
    """Extra views per asset at random positions on the sphere (reconstructor supervision)."""
    random_elevation_range_deg: list[float] = bounded(factory=lambda: [-30.0, 60.0], length=2)
    """[min, max] elevation of the extra random views."""
    ambient: float = 0.35
    """Ambient light level; the rest is a Lambertian light from the camera (shows shape)."""

    def rules(self, at: FieldPath) -> list[tuple[bool, str]]:
        (low, high), (random_low, random_high) = self.elevation_range_deg, self.random_elevation_range_deg
        return [
            (low <= high, f"{at.elevation_range_deg} must be [min, max] with min <= max"),
            (random_low <= random_high, f"{at.random_elevation_range_deg} must be [min, max] with min <= max"),
        ]
