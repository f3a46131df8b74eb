"""Image → triplanes → mesh and turntable video, on one device (CLI and endpoint share this).

The pipeline: `prepare_image` (mask, recentre to 80%, white composite, resize) → `encode` with
the canonical source camera (batched over images) → coarse-to-fine density grid → marching cubes
→ vertex-coloured mesh; and a turntable of views rendered in bounded chunks of views.

Unless `InferenceConfig.exact`, rendering uses the renderer's fast path (an occupancy grid built once
per object and shared by all its views, empty-space skipping, early ray termination), meshes query
the density grid only near the surface, and both query the field with the decoder's first layer
folded into the planes (FoldedTriplaneField, the same field up to float rounding, several times
cheaper per point); `exact: true` renders every sample and queries the dense grid through the
model's own `query_raw`, the references the fast paths are tested against.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from vf3d import cameras
from vf3d.mesh import MeshResult, extract_mesh, save_mesh, write_video
from vf3d.models.reconstructor import Reconstructor
from vf3d.models.reconstructor.config import InferenceConfig
from vf3d.models.reconstructor.decoder import activate_density
from vf3d.models.reconstructor.folded_field import FoldedTriplaneField, folding_pays_off
from vf3d.models.reconstructor.renderer import FieldFunction, OccupancyGrid, RenderOutput, TriplaneRenderer
from vf3d.preprocess import prepare_image

EXACT_TURNTABLE_VIEWS_PER_CALL = 8
"""Views per renderer call on the exact path: bounds the frames held at once (users of the release
hit out-of-memory on 24 GB cards rendering all 160 views at once; docs/vfusion3d.md#meshes-and-turntables).
The fast path takes `InferenceConfig.turntable_views_per_call`: its renderer chunks rays and packs
only the samples it queries, so its memory is bounded by its chunk sizes, not by the views."""


def resolve_device(name: str) -> torch.device:
    """ "auto" → CUDA when available, else CPU; anything else is passed to torch.device.

    Raises:
        ConfigError: a name torch does not know, or a CUDA device this machine does not have
            (torch would only fail later, deep inside the first allocation, with a traceback).
    """
    from vf3d.config import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r} (--device): use auto, cpu or cuda[:N]") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"CUDA requested (--device {name}) but torch.cuda.is_available() is False (no usable GPU or driver, or a CPU-only torch build): use --device cpu or auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"CUDA device {device.index} requested (--device {name}) but this machine has {torch.cuda.device_count()} (indices 0..{torch.cuda.device_count() - 1})"
            )
    return device


def resolve_autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for inference: bf16 on CUDA when supported; None (fp32) on the CPU."""
    if device.type != "cuda" or name == "fp32":
        return None
    if name == "fp16":
        return torch.float16
    if name == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def otsu_iso(model: Reconstructor, planes: torch.Tensor, grid_resolution: int = 48) -> float:
    """A data-driven iso level: Otsu's threshold of the density on a coarse grid.

    For fields whose scale is unknown (an untrained or foreign model) this separates "inside"
    from "outside" without a magic number; trained VFusion3D models use their fixed `mesh_iso`.
    """
    from skimage.filters import threshold_otsu

    axis = torch.linspace(-1, 1, grid_resolution, device=planes.device)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(1, -1, 3)
    with torch.no_grad():
        density, _ = model.query_points(planes, points)
    return float(threshold_otsu(density.float().cpu().numpy().ravel()))


@dataclass
class ImageTo3DResult:
    """What `ImageTo3D.run` produced: the mesh result, output paths and timings in seconds."""

    mesh: MeshResult
    mesh_path: Path | str
    """Where the mesh went: a Path, or the object-store URI."""
    video_path: Path | str | None
    iso: float
    timings: dict[str, float]


class ImageTo3D:
    """A loaded reconstructor with the inference settings that turn images into meshes/videos."""

    def __init__(self, model: Reconstructor, config: InferenceConfig | None = None) -> None:
        config = (config or InferenceConfig()).validate()
        self.device = resolve_device(config.device)
        # Unset mesh and turntable sizes follow the model's recommendation and this device.
        self.config = config.for_model(model.config, self.device.type)
        self.model = model.to(self.device).eval()
        self.autocast_dtype = resolve_autocast_dtype(self.config.dtype, self.device)
        # The model's own renderer stays exact (training needs every sample); inference renders with
        # a copy of its settings that has the fast path on, unless `exact`.
        self.renderer = (
            model.renderer
            if self.config.exact
            else TriplaneRenderer(replace(model.config.renderer, skip_empty_space=True), density_activation=activate_density)
        )

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, config: InferenceConfig | None = None) -> ImageTo3D:
        """Load a reconstructor directory (config.json + model.safetensors)."""
        config = (config or InferenceConfig()).validate()
        return cls(Reconstructor.from_pretrained(model_dir, device=resolve_device(config.device)), config)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _generator(self, seed: int | None = None) -> torch.Generator | None:
        if seed is None and self.config.deterministic:
            return None
        return torch.Generator(device=self.device).manual_seed(self.config.seed if seed is None else seed)

    def prepare(self, image) -> torch.Tensor:
        """An image (path, bytes or PIL image) → [3, S, S] model input in [0, 1]."""
        return prepare_image(
            image,
            self.model.config.encoder.image_size,
            self.config.foreground_ratio,
            self.config.mask_method,
            mode=self.config.preprocessing,
        )

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Prepared images [N, 3, S, S] → triplanes [N, 3, C, R, R] (float32), one batched pass."""
        source = cameras.model_source_camera(self.model.config).to(self.device).expand(images.shape[0], 16)
        with self._autocast():
            return self.model.encode(images.to(self.device), source).float()

    def iso_level(self, planes: torch.Tensor) -> float:
        """The configured iso, the model's own when unset, or Otsu's when set to "auto"."""
        iso = self.config.mesh_iso if self.config.mesh_iso is not None else self.model.config.mesh_iso
        return otsu_iso(self.model, planes) if iso == "auto" else float(iso)

    def field(self, planes: torch.Tensor) -> FieldFunction:
        """The renderer's field of triplanes [N, 3, C, R, R] (raw densities): the model's own on the exact
        path and for decoders too narrow for folding to pay off, else the folded one (built here, once
        per call: a few milliseconds)."""
        if self.config.exact or not folding_pays_off(self.model.decoder):
            return self.model.field(planes)
        return FoldedTriplaneField(planes, self.model.decoder, self.model.config.renderer.box_half_size)

    @torch.no_grad()
    def mesh(
        self, planes: torch.Tensor, iso: float | None = None, resolution: int | None = None, occupancy: OccupancyGrid | None = None
    ) -> MeshResult:
        """One object's triplanes [1, 3, C, R, R] → vertex-coloured mesh in world coordinates.

        `resolution` (grid samples per axis) overrides the config's `mesh_resolution` for this call.
        The "surface" method is seeded by the renderer's occupancy grid (`occupancy`, built here when
        not given and the iso level lies above the grid's threshold; its time counts in the "density" stage).
        """
        started = time.perf_counter()
        iso = self.iso_level(planes) if iso is None else iso
        field = self.field(planes)

        def query(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with self._autocast():
                raw_density, rgb = field(points.unsqueeze(0))
            return activate_density(raw_density[0, :, 0]), rgb[0].float().clamp(0, 1)

        method = "dense" if self.config.exact else self.config.mesh_method
        occupied = None
        if method == "surface" and iso > self.renderer.config.occupancy_threshold:
            occupied = (occupancy if occupancy is not None else self.occupancy(planes)).occupied[0]
        grid_seconds = time.perf_counter() - started
        result = extract_mesh(
            query, resolution=resolution or self.config.mesh_resolution, iso=iso, method=method, device=self.device, occupied=occupied
        )
        result.stages["density"] += grid_seconds
        result.seconds += grid_seconds
        return result

    @torch.no_grad()
    def occupancy(self, planes: torch.Tensor) -> OccupancyGrid | None:
        """The fast renderer's occupancy grid of triplanes [N, 3, C, R, R] (None on the exact path):
        build it once per object and pass it to every `render` of that object."""
        if self.config.exact:
            return None
        with self._autocast():
            return self.renderer.occupancy_grid(self.field(planes), planes.shape[0], self.device)

    @torch.no_grad()
    def render(
        self,
        planes: torch.Tensor,
        render_cameras: torch.Tensor,
        render_size: int | None = None,
        deterministic: bool | None = None,
        generator: torch.Generator | None = None,
        occupancy: OccupancyGrid | None = None,
    ) -> RenderOutput:
        """Views of triplanes [N, 3, C, R, R] from cameras [N, V, 25] → RenderOutput (rgb [N, V, 3, h, w]),
        by the fast path unless `exact` (the occupancy grid is built when not given)."""
        size = render_size or self.model.config.renderer.render_size
        deterministic = self.config.deterministic if deterministic is None else deterministic
        with self._autocast():
            return self.renderer(
                self.field(planes), render_cameras, size, size, deterministic=deterministic, generator=generator, occupancy=occupancy
            )

    @torch.no_grad()
    def turntable(
        self,
        planes: torch.Tensor,
        seed: int | None = None,
        occupancy: OccupancyGrid | None = None,
        progress: Callable[[int], object] | None = None,
    ) -> np.ndarray:
        """One object's triplanes [1, 3, C, R, R] → uint8 frames [M, H, W, 3] of a full revolution.

        With `seed`, rays are sampled randomly from that seed; without, per the config. `occupancy`: the
        object's grid when already built (`occupancy`), else built here once for all the views.
        `progress` is called with the number of views each renderer call finished (a tqdm's `update`).
        """
        config = self.config
        size = config.turntable_size
        poses = cameras.turntable_poses(
            config.turntable_views,
            radius=config.turntable_radius,
            elevation_deg=config.turntable_elevation_deg,
            azimuth_deg=self.model.config.source_camera_azimuth_deg,
        )
        render_cameras = cameras.render_camera_vector(poses).to(self.device)
        generator = self._generator(seed)
        deterministic = config.deterministic and seed is None
        occupancy = occupancy if occupancy is not None else self.occupancy(planes)  # once for all the views
        per_call = EXACT_TURNTABLE_VIEWS_PER_CALL if config.exact else config.turntable_views_per_call
        frames = []
        for start in range(0, len(render_cameras), per_call):
            chunk = render_cameras[start : start + per_call].unsqueeze(0)
            views = self.render(planes, chunk, size, deterministic, generator, occupancy)
            frames.append((views.rgb[0].float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu())
            if progress is not None:
                progress(chunk.shape[1])
        return torch.cat(frames).numpy()

    def run(
        self,
        image,
        mesh_path: str | os.PathLike,
        video_path: str | os.PathLike | None = None,
        progress: Callable[[int], object] | None = None,
    ) -> ImageTo3DResult:
        """Image → mesh file (format from the suffix) and optionally a turntable MP4; each output a local
        path or an object-store URI (`progress`: see `turntable`)."""
        timings: dict[str, float] = {}
        start = time.perf_counter()
        prepared = self.prepare(image)
        timings["preprocess"] = time.perf_counter() - start
        start = time.perf_counter()
        planes = self.encode(prepared.unsqueeze(0))
        timings["triplanes"] = time.perf_counter() - start
        start = time.perf_counter()
        iso = self.iso_level(planes)
        occupancy = self.occupancy(planes)  # shared by the mesh and the turntable
        mesh = self.mesh(planes, iso, occupancy=occupancy)
        mesh_path = save_mesh(mesh.mesh, mesh_path)
        timings["mesh"] = time.perf_counter() - start
        if video_path is not None:
            start = time.perf_counter()
            frames = self.turntable(planes, occupancy=occupancy, progress=progress)
            video_path = write_video(frames, video_path, fps=self.config.turntable_fps)
            timings["video"] = time.perf_counter() - start
        return ImageTo3DResult(mesh=mesh, mesh_path=mesh_path, video_path=video_path, iso=iso, timings=timings)
