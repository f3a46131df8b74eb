"""Reconstruction benchmarks, measured side by side in one run and reported as ratios.

What it measures (sections, `--sections` picks some):
  view       One 128² and one 256² view (quick: 64², 96²) of the release-size model (`vfusion3d`
             preset, random weights, debug encoder) rendered by the exact path and by the fast path
             as `ImageTo3D` runs it (the folded field and the occupancy grid built per image and
             included in its time, empty-space skipping, early ray termination, importance pass
             where there is mass), on an object-shaped field and on a random one: time ratio, decoder
             queries and PSNR of the fast image against the exact one. Object-shaped: the triplanes
             alone are fitted (Adam, model frozen) to the pybullet duck's occupancy; random weights
             and planes fill the whole cube with surface, which no trained model does.
  mesh       256³ and 384³ (quick: 96³, 128³) meshes with vertex colours of the object field:
             `ImageTo3D.mesh` fast ("surface": seeded by the occupancy grid, whose time counts, refined
             level by level near the surface, folded field) vs exact (dense grid): time, density queries,
             vertex counts, Chamfer distance in voxels, and where the time goes (density, marching
             cubes on the CPU, colours).
  turntable  A 160-view 384² (quick: 16-view 128²) turntable of the `debug` model (`--turntable-model
             small` for the small one) fitted to the same object, fast path, many views per
             renderer call, against one view per call and the exact path, each on a few views
             and extrapolated.
  default_turntable
             The turntable `image-to-3d --video` makes by default with the release-size model on
             this device (on the CPU 48 views of 192², InferenceConfig.for_model), object field, fast
             path, against 160 views of 384² on the same path (extrapolated from 4 views).
  encode     `small` preset, one `encode` of 8 (quick: 4) images vs 8 (4) single-image calls.
  render     Exact-path throughput: rays/s and samples/s of a deterministic 4-view (quick: 1-view)
             render at the preset's render size, `debug` vs `small`, on random planes.
  memory     Peak memory of one 384² (quick: 128²) `base` view with the preset's ray chunking vs
             none. On CUDA: torch.cuda.max_memory_allocated. On the CPU: peak RSS of a fresh worker
             process per variant, whose address space is capped (--memory-cap-gb) so a render that
             needs more fails with an allocation error instead of waking the OOM killer.

Machines are noisy: every timed thing is warmed up, then the things compared take turns and each
one's median is reported (the view, mesh and turntable sections run once each: they are long);
compare ratios, not absolute times. On a CPU shared with other busy processes ratios shift too, so
read them from a quiet machine. Nothing here asserts a timing; targets are printed as information.
The CPU memory workers read /proc/self/statm, so that section needs Linux.

Run (from the repository root):
  python bench/recon.py                  # full run
  python bench/recon.py --sections view,mesh,turntable --threads 1   # issue 19's evidence, one table
  python bench/recon.py --quick --sections view,mesh,turntable --threads 1   # smoke test, a few minutes
  python bench/recon.py --device cuda --json bench-recon.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from report import BENCH_START, Row, log, markdown_table, write_json

from vf3d import cameras
from vf3d.config import merge, preset, to_dict
from vf3d.inference import ImageTo3D
from vf3d.models.reconstructor import Reconstructor
from vf3d.models.reconstructor.config import GPU_TURNTABLE_VIEWS, RECONSTRUCTOR_PRESETS, InferenceConfig, ReconstructorConfig

SEED = 0
FIT_RAW_INSIDE = 40.0
"""Raw density the object field is fitted to inside the object: density ≈ 39, opaque (99%) within
0.12 world units, about two triplane texels, as a trained surface is."""
FIT_RAW_OUTSIDE = -10.0
"""Raw density outside (density ≈ 2e-5: empty space, well under the occupancy threshold)."""
FIT_LEARNING_RATE = 0.1
FIT_PLANE_SCALE = 1.0
TARGET_RESOLUTION = 96
"""Grid of the object's soft occupancy the field is fitted to."""
VIEW_SPEEDUP_TARGET = 6.0
VIEW_PSNR_TARGET = 40.0
MESH_SPEEDUP_TARGET = 8.0
MESH_VERTEX_TOLERANCE = 0.01
RENDER_ELEVATION_DEG = 20.0
WORKER_RESULT_PREFIX = "MEMORY_WORKER_RESULT "
"""Marks the line of a memory worker's stdout that carries its JSON result."""


@dataclass
class Settings:
    """What differs between the default run and --quick."""

    view_sizes: tuple[int, ...]
    mesh_resolutions: tuple[int, ...]
    turntable_views: int
    turntable_size: int
    turntable_exact_views: int
    turntable_single_views: int
    fit_steps: int
    fit_batch: int
    encode_images: int
    render_views: int
    memory_render_size: int
    repeats: int


DEFAULT = Settings(
    view_sizes=(128, 256),
    mesh_resolutions=(256, 384),
    turntable_views=160,
    turntable_size=384,
    turntable_exact_views=2,
    turntable_single_views=16,
    fit_steps=300,
    fit_batch=2**14,
    encode_images=8,
    render_views=4,
    memory_render_size=384,
    repeats=1,
)
QUICK = Settings(
    view_sizes=(64, 96),
    mesh_resolutions=(96, 128),
    turntable_views=16,
    turntable_size=128,
    turntable_exact_views=1,
    turntable_single_views=4,
    fit_steps=100,
    fit_batch=2**13,
    encode_images=4,
    render_views=1,
    memory_render_size=128,
    repeats=1,
)
SECTIONS = ("view", "mesh", "turntable", "default_turntable", "encode", "render", "memory")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare_timings(
    candidates: dict[str, Callable[[], Any]], device: torch.device, repeats: int, warmup: bool = True
) -> dict[str, tuple[float, Any]]:
    """Median wall seconds of `repeats` calls of each candidate, and its last result.

    The candidates take turns (a, b, a, b, ...) so that load from other processes on a shared
    machine hits all of them alike; with `warmup`, each is called once untimed first.
    """
    if warmup:
        for fn in candidates.values():
            fn()
    seconds: dict[str, list[float]] = {name: [] for name in candidates}
    results: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in candidates.items():
            synchronize(device)
            start = time.perf_counter()
            results[name] = fn()
            synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    return {name: (statistics.median(seconds[name]), results[name]) for name in candidates}


def field_only_config(name: str) -> ReconstructorConfig:
    """Preset `name` with the `debug` image encoder and transformer.

    Rendering, point queries and meshing only touch the triplanes, decoder and renderer, which
    keep the preset's sizes; the small encoder/transformer just make the model quick to build and
    keep it out of the memory measurements.
    """
    debug = preset(RECONSTRUCTOR_PRESETS, "debug")
    return merge(preset(RECONSTRUCTOR_PRESETS, name), {"encoder": to_dict(debug.encoder), "transformer": to_dict(debug.transformer)})


def random_planes(config: ReconstructorConfig, device: torch.device) -> torch.Tensor:
    """Triplanes [1, 3, C, R, R] of the config's size. The renderer's cost does not depend on the
    field's values (no early ray termination or empty-space skipping), so random ones will do."""
    triplane = config.triplane
    return torch.randn(1, 3, triplane.channels, triplane.resolution, triplane.resolution, device=device)


def orbit_cameras(num_views: int, device: torch.device) -> torch.Tensor:
    """Render cameras [1, V, 25] evenly around the object."""
    return cameras.render_camera_vector(cameras.orbit_poses(num_views, RENDER_ELEVATION_DEG)).unsqueeze(0).to(device)


def format_count(value: float) -> str:
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= threshold:
            return f"{value / threshold:.2f}{suffix}"
    return f"{value:.0f}"


def format_bytes(value: float) -> str:
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.0f} MiB"


# ---------------------------------------------------------------------------------------------
# Object-shaped fields: triplanes fitted to a real mesh's occupancy
# ---------------------------------------------------------------------------------------------


@dataclass
class ObjectTarget:
    """A real mesh's soft occupancy on a grid over the box, and what the field is fitted to.

    occupancy: [1, 1, R, R, R] in [0, 1], indexed [z, y, x] (F.grid_sample's order, align_corners);
    surface: [S, 3] world points of grid samples near the surface (0.02 < occupancy < 0.98).
    """

    name: str
    occupancy: torch.Tensor
    surface: torch.Tensor

    def at(self, points: torch.Tensor) -> torch.Tensor:
        """Occupancy [P] at world points [P, 3] (trilinear)."""
        grid = points.reshape(1, 1, 1, -1, 3).to(self.occupancy.dtype)
        return F.grid_sample(self.occupancy, grid, mode="bilinear", align_corners=True).reshape(-1)


def object_target(resolution: int, device: torch.device) -> ObjectTarget:
    """The pybullet duck (vf3d.data.assets.gather_sample_assets), +Z up, centred, longest side 1.5,
    voxelised and filled at `resolution`³ over the box and blurred by a voxel into a soft occupancy."""
    import tempfile

    import numpy as np
    import trimesh
    from scipy import ndimage

    from vf3d.data.assets import gather_sample_assets

    with tempfile.TemporaryDirectory() as directory:
        path = gather_sample_assets(directory, limit=1)[0]
        mesh = trimesh.load(path, force="mesh")
    mesh.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))  # OBJ's +Y up → +Z up
    mesh.apply_translation(-mesh.bounds.mean(axis=0))
    mesh.apply_scale(1.5 / mesh.extents.max())
    pitch = 2.0 / (resolution - 1)
    filled = mesh.voxelized(pitch=pitch).fill()
    axis = np.linspace(-1, 1, resolution)
    points = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    inside = filled.is_filled(points).reshape(resolution, resolution, resolution).astype(np.float32)  # [x, y, z]
    soft = np.clip(ndimage.gaussian_filter(inside, sigma=1.0), 0.0, 1.0)
    near_surface = points[((soft > 0.02) & (soft < 0.98)).reshape(-1)]
    occupancy = torch.from_numpy(np.ascontiguousarray(soft.transpose(2, 1, 0)))[None, None].to(device)
    return ObjectTarget(path.stem, occupancy, torch.from_numpy(near_surface).float().to(device))


def object_colour(points: torch.Tensor) -> torch.Tensor:
    """A smooth, varied albedo [P, 3] in [0.1, 0.9] to fit the field's colour to."""
    return 0.5 + 0.4 * torch.sin(torch.stack([3.0 * points[:, 0] + 1.0, 4.0 * points[:, 1], 5.0 * points[:, 2] - 1.0], dim=-1))


def fit_object_planes(
    model: Reconstructor, target: ObjectTarget, steps: int, batch: int, device: torch.device
) -> tuple[torch.Tensor, float]:
    """Fit the triplanes only (the model stays frozen, random weights are fine) so that the field's
    raw density is at least FIT_RAW_INSIDE inside the object, at most FIT_RAW_OUTSIDE outside and
    blends between them across the blurred surface, and its colour is `object_colour` where it is
    dense. Half of each batch lies near the surface, jittered by a voxel; Adam with a cosine decay.

    Returns planes [1, 3, C, R, R] and the IoU of {density > mesh iso} with the object on fresh points.
    """
    triplane = model.config.triplane
    generator = torch.Generator(device="cpu").manual_seed(SEED)
    planes = torch.nn.Parameter(
        0.1 * torch.randn(1, 3, triplane.channels, triplane.resolution, triplane.resolution, generator=generator).to(device)
    )
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    optimizer = torch.optim.Adam([planes], lr=FIT_LEARNING_RATE)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, eta_min=FIT_LEARNING_RATE / 20)
    voxel = 2.0 / (target.occupancy.shape[-1] - 1)
    span = FIT_RAW_INSIDE - FIT_RAW_OUTSIDE
    for _ in range(steps):
        uniform = torch.rand(batch // 2, 3, device=device) * 2 - 1
        near = target.surface[torch.randint(len(target.surface), (batch - batch // 2,), device=device)]
        points = torch.cat([uniform, near + (torch.rand_like(near) - 0.5) * 2 * voxel]).clamp(-1, 1)
        occupancy = target.at(points)
        raw, rgb = model.query_raw(planes, points.unsqueeze(0))
        # One-sided away from the surface: empty space only has to be empty enough, solid only solid enough.
        error = raw[0, :, 0] - (FIT_RAW_OUTSIDE + span * occupancy)
        error = torch.where(occupancy < 0.02, error.clamp_min(0), torch.where(occupancy > 0.98, error.clamp_max(0), error))
        density_loss = (error**2).mean() / span**2
        colour_loss = (occupancy.unsqueeze(-1) * (rgb[0] - object_colour(points)) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        (density_loss + colour_loss).backward()
        optimizer.step()
        schedule.step()
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    with torch.no_grad():
        points = torch.rand(2**16, 3, device=device) * 2 - 1
        density, _ = model.query_points(planes.detach(), points.unsqueeze(0))
        solid, inside = density[0, :, 0] > model.config.mesh_iso, target.at(points) > 0.5
        iou = ((solid & inside).sum() / (solid | inside).sum().clamp_min(1)).item()
    return planes.detach(), iou


def variance_preserving_decoder(model: Reconstructor) -> Reconstructor:
    """Redraw the decoder's random weights He-normal (std √(2/fan-in), zero biases), in place.

    PyTorch's default Linear init shrinks the signal at every layer, so a random decoder's raw
    density barely moves (std ≈ 0.02 for unit features) and no triplane a few hundred Adam steps away
    makes a surface; a trained decoder has gain, and so do these weights. Still random, still frozen.
    """
    generator = torch.Generator(device="cpu").manual_seed(SEED + 2)
    with torch.no_grad():
        for layer in model.decoder.layers:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * math.sqrt(2.0 / layer.in_features))
            layer.bias.zero_()
    return model


def random_field_planes(config: ReconstructorConfig, device: torch.device) -> torch.Tensor:
    """Random triplanes [1, 3, C, R, R]: with random weights their surface fills the whole cube."""
    generator = torch.Generator(device="cpu").manual_seed(SEED + 1)
    triplane = config.triplane
    return torch.randn(1, 3, triplane.channels, triplane.resolution, triplane.resolution, generator=generator).to(device)


class CountingField:
    """A renderer field that counts the points it is asked for."""

    def __init__(self, field: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None) -> None:
        self.field, self.points = field, 0

    def reset(self, field: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]) -> CountingField:
        """Count `field`'s points from now on (the counts add up across resets)."""
        self.field = field
        return self

    def __call__(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.points += points.shape[0] * points.shape[1]
        return self.field(points)


class CountingScatteredField(CountingField):
    """A `CountingField` of a field that also takes scattered points (FoldedTriplaneField.query)."""

    def query(self, points: torch.Tensor, objects: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.points += points.shape[0]
        return self.field.query(points, objects)


def psnr(image: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR in dB of images in [0, 1] (inf when identical)."""
    mse = (image.float().clamp(0, 1) - reference.float().clamp(0, 1)).pow(2).mean().item()
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


def chamfer(a: Any, b: Any) -> float:
    """Symmetric mean nearest-neighbour distance between two vertex sets [V, 3] (world units)."""
    from scipy.spatial import cKDTree

    return 0.5 * (cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean())


@dataclass
class FittedField:
    name: str
    model: Reconstructor
    planes: torch.Tensor
    note: str


def release_fields(device: torch.device, settings: Settings, target: ObjectTarget, cache: Path | None = None) -> list[FittedField]:
    """The release-size model (`vfusion3d`, random variance-preserving decoder weights, debug encoder)
    with an object-shaped field (planes fitted to `target`, or read from `cache`, which a fit with
    the same settings wrote) and a random one (random planes)."""
    model = variance_preserving_decoder(Reconstructor(field_only_config("vfusion3d"))).to(device)
    start = time.perf_counter()
    key = {"fit_steps": settings.fit_steps, "fit_batch": settings.fit_batch, "target": target.name}
    if cache is not None and cache.exists() and (saved := torch.load(cache, map_location=device))["key"] == key:
        planes, iou = saved["planes"], saved["iou"]
    else:
        planes, iou = fit_object_planes(model, target, settings.fit_steps, settings.fit_batch, device)
        if cache is not None:
            torch.save({"key": key, "planes": planes.cpu(), "iou": iou}, cache)
    log(
        f"fields: fitted vfusion3d-size triplanes {tuple(planes.shape)} to the {target.name} in {time.perf_counter() - start:.1f}s, IoU {iou:.3f}"
    )
    model.eval()
    return [
        FittedField("object", model, planes, f"{target.name}, IoU {iou:.2f}"),
        FittedField("random", model, random_field_planes(model.config, device), "random planes"),
    ]


def fast_pipeline(model: Reconstructor, device: torch.device, **settings: Any) -> ImageTo3D:
    """Inference as it runs by default (fast paths on: occupancy grid, empty-space skipping, early ray
    termination, the folded field, surface-only meshes)."""
    return ImageTo3D(model, InferenceConfig(device=str(device), **settings))


def bench_default_turntable(
    device: torch.device, fields: list[FittedField], release_sample_views: int = 4
) -> tuple[list[Row], dict[str, Any]]:
    """The turntable `vf3d image-to-3d --video` makes by default with the release-size model on this
    device (views and size follow the device: InferenceConfig.for_model), against the release's
    160 views at 384² on the same fast path (extrapolated from a few views)."""
    fitted = fields[0]  # the object-shaped field
    pipeline = fast_pipeline(fitted.model, device)
    views, size = pipeline.config.turntable_views, pipeline.config.turntable_size
    start = time.perf_counter()
    pipeline.turntable(fitted.planes)
    synchronize(device)
    default_seconds = time.perf_counter() - start
    release = fast_pipeline(fitted.model, device, turntable_views=release_sample_views, turntable_size=384)
    start = time.perf_counter()
    release.turntable(fitted.planes)
    synchronize(device)
    release_seconds = (time.perf_counter() - start) * GPU_TURNTABLE_VIEWS / release_sample_views
    log(
        f"default turntable: {views} views of {size}² in {default_seconds:.1f}s on {device.type} vs {GPU_TURNTABLE_VIEWS} views of 384² "
        f"≈{release_seconds:.0f}s (from {release_sample_views} views), both on the fast path"
    )
    rows = [
        Row(
            f"vfusion3d default turntable seconds on {device.type} ({views}×{size}², vs {GPU_TURNTABLE_VIEWS}×384² extrapolated)",
            f"≈{release_seconds:.0f}",
            f"{default_seconds:.1f}",
            f"{release_seconds / default_seconds:.1f}×",
            f"{fitted.note}; informational",
        )
    ]
    return rows, {"views": views, "size": size, "seconds": default_seconds, "release_size_seconds_extrapolated": release_seconds}


# ---------------------------------------------------------------------------------------------
# 1. One view: fast path vs exact path, release-size model
# ---------------------------------------------------------------------------------------------


def render_fast(
    pipeline: ImageTo3D, counter: CountingField, planes: torch.Tensor, render_camera: torch.Tensor, size: int, device: torch.device
) -> tuple:
    """One fast-path view as inference renders it: the (folded) field and the occupancy grid of the
    image first (timed apart too), then the view; `counter` counts the field's points. Returns
    (RenderOutput, grid seconds, grid)."""
    start = time.perf_counter()
    field = counter.reset(pipeline.field(planes))
    grid = pipeline.renderer.occupancy_grid(field, 1, device)
    synchronize(device)
    grid_seconds = time.perf_counter() - start
    return pipeline.renderer(field, render_camera, size, deterministic=True, occupancy=grid), grid_seconds, grid


def bench_view(device: torch.device, settings: Settings, fields: list[FittedField]) -> tuple[list[Row], dict[str, Any]]:
    rows, details = [], {}
    render_camera = orbit_cameras(1, device)
    with torch.no_grad():
        for fitted in fields:
            model, pipeline = fitted.model, fast_pipeline(fitted.model, device)
            # One-time costs (allocator, code paths) outside the timings.
            model.renderer(model.field(fitted.planes), render_camera, 32, deterministic=True)
            pipeline.render(fitted.planes, render_camera, 32)
            for size in settings.view_sizes:
                exact_field, fast_field = CountingField(model.field(fitted.planes)), CountingScatteredField(None)
                timings = compare_timings(
                    {
                        "exact": partial(model.renderer, exact_field, render_camera, size, deterministic=True),
                        "fast": partial(render_fast, pipeline, fast_field, fitted.planes, render_camera, size, device),
                    },
                    device,
                    settings.repeats,
                    warmup=False,
                )
                (exact_seconds, exact), (fast_seconds, (fast, grid_seconds, grid)) = timings["exact"], timings["fast"]
                quality = psnr(fast.rgb, exact.rgb)
                max_error = (fast.rgb - exact.rgb).abs().max().item()
                speedup = exact_seconds / fast_seconds
                queries = (exact_field.points / settings.repeats, fast_field.points / settings.repeats)
                key = f"{fitted.name}_{size}"
                details[key] = {
                    "field": fitted.note,
                    "size": size,
                    "exact_seconds": exact_seconds,
                    "fast_seconds": fast_seconds,
                    "grid_seconds": grid_seconds,
                    "occupied_fraction": grid.occupied_fraction,
                    "exact_queries": queries[0],
                    "fast_queries": queries[1],
                    "psnr_db": quality,
                    "max_abs_error": max_error,
                    "coverage": (exact.opacity > 0.5).float().mean().item(),
                }
                log(
                    f"view: {fitted.name} field ({fitted.note}), {size}²: exact {exact_seconds:.2f}s vs fast {fast_seconds:.2f}s "
                    f"(grid {grid_seconds:.2f}s, {grid.occupied_fraction:.1%} occupied) = {speedup:.1f}×; queries "
                    f"{format_count(queries[0])} vs {format_count(queries[1])}; PSNR {quality:.1f} dB, max |diff| {max_error:.1e}"
                )
                target = fitted.name == "object"
                rows.append(
                    Row(
                        f"vfusion3d {size}² view seconds, {fitted.name} field (exact vs fast)",
                        f"{exact_seconds:.2f}",
                        f"{fast_seconds:.2f}",
                        f"{speedup:.1f}×",
                        (
                            f"≥{VIEW_SPEEDUP_TARGET:.0f}× ({'met' if speedup >= VIEW_SPEEDUP_TARGET else 'NOT met'})"
                            if target
                            else "informational"
                        ),
                    )
                )
                rows.append(
                    Row(
                        f"vfusion3d {size}² view PSNR fast vs exact, {fitted.name} field (queries exact vs fast)",
                        format_count(queries[0]),
                        format_count(queries[1]),
                        f"{quality:.1f} dB",
                        f"≥{VIEW_PSNR_TARGET:.0f} dB ({'met' if quality >= VIEW_PSNR_TARGET else 'NOT met'})",
                    )
                )
    return rows, details


# ---------------------------------------------------------------------------------------------
# 2. Mesh with colours: surface-only vs dense, release-size model
# ---------------------------------------------------------------------------------------------


def bench_mesh(device: torch.device, settings: Settings, fields: list[FittedField]) -> tuple[list[Row], dict[str, Any]]:
    fitted = next(field for field in fields if field.name == "object")
    rows, details = [], {}
    pipelines = {
        "dense": ImageTo3D(fitted.model, InferenceConfig(device=str(device), exact=True, mesh_method="dense")),
        "fast": ImageTo3D(fitted.model, InferenceConfig(device=str(device))),
    }
    iso = fitted.model.config.mesh_iso
    for pipeline in pipelines.values():
        pipeline.mesh(fitted.planes, iso, resolution=32)  # one-time costs outside the timings
    for resolution in settings.mesh_resolutions:
        timings = compare_timings(
            {name: partial(pipeline.mesh, fitted.planes, iso, resolution) for name, pipeline in pipelines.items()}, device, 1, warmup=False
        )
        (dense_seconds, dense), (fast_seconds, fast) = timings["dense"], timings["fast"]
        voxel = 2.0 / (resolution - 1)
        distance = chamfer(fast.mesh.vertices, dense.mesh.vertices)
        vertex_difference = abs(len(fast.mesh.vertices) - len(dense.mesh.vertices)) / len(dense.mesh.vertices)
        speedup = dense_seconds / fast_seconds
        details[str(resolution)] = {
            "dense": {"seconds": dense_seconds, "queries": dense.num_queries, "vertices": len(dense.mesh.vertices), "stages": dense.stages},
            "fast": {"seconds": fast_seconds, "queries": fast.num_queries, "vertices": len(fast.mesh.vertices), "stages": fast.stages},
            "chamfer": distance,
            "voxel": voxel,
        }
        stages = lambda result: ", ".join(f"{name} {seconds:.2f}s" for name, seconds in result.stages.items())  # noqa: E731
        log(
            f"mesh @{resolution}³: dense {dense_seconds:.2f}s ({stages(dense)}; {format_count(dense.num_queries)} density queries, "
            f"{len(dense.mesh.vertices)} vertices) vs fast {fast_seconds:.2f}s ({stages(fast)}; {format_count(fast.num_queries)} "
            f"density queries, {len(fast.mesh.vertices)} vertices); Chamfer {distance / voxel:.3f} voxel"
        )
        rows += [
            Row(
                f"mesh+colours seconds @{resolution}³, object field (dense vs fast)",
                f"{dense_seconds:.2f}",
                f"{fast_seconds:.2f}",
                f"{speedup:.1f}×",
                f"≥{MESH_SPEEDUP_TARGET:.0f}× ({'met' if speedup >= MESH_SPEEDUP_TARGET else 'NOT met'})",
            ),
            Row(
                f"mesh vertices @{resolution}³ (dense vs fast)",
                str(len(dense.mesh.vertices)),
                str(len(fast.mesh.vertices)),
                f"{vertex_difference:.2%} diff",
                f"≤{MESH_VERTEX_TOLERANCE:.0%} ({'met' if vertex_difference <= MESH_VERTEX_TOLERANCE else 'NOT met'})",
            ),
            Row(
                f"mesh Chamfer @{resolution}³ fast vs dense (density queries dense vs fast)",
                format_count(dense.num_queries),
                format_count(fast.num_queries),
                f"{distance / voxel:.3f} voxel",
                f"≤0.5 voxel ({'met' if distance <= 0.5 * voxel else 'NOT met'})",
            ),
            Row(
                f"mesh stages @{resolution}³: density / marching cubes (CPU) / colours, seconds (dense vs fast)",
                " / ".join(f"{dense.stages[name]:.2f}" for name in ("density", "marching_cubes", "colors")),
                " / ".join(f"{fast.stages[name]:.2f}" for name in ("density", "marching_cubes", "colors")),
                f"{dense.stages['density'] / fast.stages['density']:.1f}× density",
                f"{fast.num_color_queries} colour queries (one per vertex)",
            ),
        ]
    return rows, details


# ---------------------------------------------------------------------------------------------
# 3. Turntable: debug (or small) model, many views per call
# ---------------------------------------------------------------------------------------------


def bench_turntable(device: torch.device, settings: Settings, target: ObjectTarget, preset_name: str) -> tuple[list[Row], dict[str, Any]]:
    model = variance_preserving_decoder(Reconstructor(field_only_config(preset_name))).to(device)
    planes, iou = fit_object_planes(model, target, settings.fit_steps, settings.fit_batch, device)
    model.eval()
    views, size = settings.turntable_views, settings.turntable_size
    common = {"device": str(device), "turntable_views": views, "turntable_size": size}
    fast = ImageTo3D(model, InferenceConfig(**common))
    log(f"turntable: {preset_name} model fitted to the {target.name} (IoU {iou:.2f}); {views} views of {size}², fast path")
    start = time.perf_counter()
    frames = fast.turntable(planes)
    synchronize(device)
    fast_seconds = time.perf_counter() - start
    # One view per renderer call (and per decoder forward) on a few views, extrapolated.
    single_views = min(settings.turntable_single_views, views)
    single = ImageTo3D(model, InferenceConfig(**{**common, "turntable_views": single_views}, turntable_views_per_call=1))
    start = time.perf_counter()
    single.turntable(planes)
    synchronize(device)
    single_seconds = (time.perf_counter() - start) * views / single_views
    # The exact path on a few of the same views, extrapolated: all of them would take too long.
    sample_views = settings.turntable_exact_views
    poses = cameras.turntable_poses(views, radius=fast.config.turntable_radius, azimuth_deg=model.config.source_camera_azimuth_deg)
    render_cameras = cameras.render_camera_vector(poses[:sample_views]).unsqueeze(0).to(device)
    start = time.perf_counter()
    with torch.no_grad():
        reference = model.render(planes, render_cameras, render_size=size, deterministic=True)
    synchronize(device)
    exact_seconds = (time.perf_counter() - start) * views / sample_views
    reference_frames = (reference.rgb[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
    quality = psnr(torch.from_numpy(frames[:sample_views]).float() / 255, reference_frames.float() / 255)
    per_call = fast.config.turntable_views_per_call
    log(
        f"turntable: fast {fast_seconds:.1f}s ({fast_seconds / views * 1000:.0f} ms/view, {per_call} views per call) vs one view per "
        f"call ≈{single_seconds:.0f}s (from {single_views} views) vs exact ≈{exact_seconds:.0f}s (from {sample_views} views); "
        f"PSNR of the first {sample_views} frames {quality:.1f} dB"
    )
    rows = [
        Row(
            f"{preset_name} {views}-view {size}² turntable seconds (exact, extrapolated from {sample_views} views, vs fast)",
            f"≈{exact_seconds:.0f}",
            f"{fast_seconds:.1f}",
            f"{exact_seconds / fast_seconds:.1f}×",
            f"{device.type}; PSNR {quality:.1f} dB on {sample_views} frames",
        ),
        Row(
            f"{preset_name} {views}-view {size}² turntable seconds (fast, 1 view per call, extrapolated from {single_views}, vs {per_call} per call)",
            f"≈{single_seconds:.0f}",
            f"{fast_seconds:.1f}",
            f"{single_seconds / fast_seconds:.2f}×",
            f"{device.type}; informational",
        ),
    ]
    return rows, {
        "model": preset_name,
        "views": views,
        "size": size,
        "fast_seconds": fast_seconds,
        "views_per_call": per_call,
        "single_view_seconds_extrapolated": single_seconds,
        "exact_seconds_extrapolated": exact_seconds,
        "psnr_db": quality,
        "iou": iou,
    }


# ---------------------------------------------------------------------------------------------
# 4. Batched triplane inference
# ---------------------------------------------------------------------------------------------


def bench_encode(device: torch.device, settings: Settings) -> tuple[list[Row], dict[str, Any]]:
    config = preset(RECONSTRUCTOR_PRESETS, "small")
    model = Reconstructor(config).to(device).eval()
    size = config.encoder.image_size
    count = settings.encode_images
    images = torch.rand(count, 3, size, size, device=device)
    source = cameras.model_source_camera(config).to(device).expand(count, 16)
    log(f"encode: small preset, {count} images of {size}² batched vs one at a time")
    with torch.no_grad():
        timings = compare_timings(
            {
                "batched": lambda: model.encode(images, source),
                "single": lambda: torch.cat([model.encode(images[i : i + 1], source[i : i + 1]) for i in range(count)]),
            },
            device,
            settings.repeats,
        )
    (batched_seconds, batched), (single_seconds, single) = timings["batched"], timings["single"]
    max_difference = (batched - single).abs().max().item()
    scale = single.abs().max().item()
    speedup = single_seconds / batched_seconds
    log(
        f"encode: batched {batched_seconds:.2f}s, singles {single_seconds:.2f}s ({speedup:.2f}×), "
        f"max |diff| {max_difference:.2e} (outputs up to {scale:.2f})"
    )
    rows = [
        Row(
            f"encode {count} images seconds, small ({count}×single vs batched)",
            f"{single_seconds:.2f}",
            f"{batched_seconds:.2f}",
            f"{speedup:.2f}×",
            ">1× (informational)",
        ),
        Row(
            "encode outputs max abs(batched − single)",
            f"{max_difference:.2e}",
            f"max abs(planes) {scale:.2f}",
            f"{max_difference / scale:.1e} rel",
            "≈0 (float rounding)",
        ),
    ]
    details = {
        "batch": count,
        "image_size": size,
        "batched_seconds": batched_seconds,
        "single_seconds": single_seconds,
        "max_abs_difference": max_difference,
        "max_abs_output": scale,
    }
    return rows, details


# ---------------------------------------------------------------------------------------------
# 5. Renderer throughput (exact path)
# ---------------------------------------------------------------------------------------------


def bench_render(device: torch.device, settings: Settings) -> tuple[list[Row], dict[str, Any]]:
    presets, views, renders = ("debug", "small"), settings.render_views, {}
    for name in presets:
        config = field_only_config(name)
        model = Reconstructor(config).to(device).eval()
        renders[name] = partial(
            model.render,
            random_planes(config, device),
            orbit_cameras(views, device),
            render_size=config.renderer.render_size,
            deterministic=True,
        )
    log(f"render: {views} deterministic view(s) at each preset's render size, {' vs '.join(presets)}")
    with torch.no_grad():
        timings = compare_timings(renders, device, settings.repeats)
    details = {}
    for name in presets:
        renderer, seconds = field_only_config(name).renderer, timings[name][0]
        rays = views * renderer.render_size**2
        samples = rays * (renderer.num_coarse_samples + renderer.num_fine_samples)
        details[name] = {
            "render_size": renderer.render_size,
            "views": views,
            "rays": rays,
            "samples": samples,
            "seconds": seconds,
            "rays_per_second": rays / seconds,
            "samples_per_second": samples / seconds,
        }
        log(
            f"render: {name}, {views} view(s) of {renderer.render_size}²: {seconds:.3f}s, "
            f"{format_count(rays / seconds)} rays/s, {format_count(samples / seconds)} samples/s"
        )
    debug, small = details["debug"], details["small"]
    rows = [
        Row(
            "render rays/s (debug vs small)",
            format_count(debug["rays_per_second"]),
            format_count(small["rays_per_second"]),
            f"{debug['rays_per_second'] / small['rays_per_second']:.2f}×",
            "—",
        ),
        Row(
            "render samples/s (debug vs small)",
            format_count(debug["samples_per_second"]),
            format_count(small["samples_per_second"]),
            f"{debug['samples_per_second'] / small['samples_per_second']:.2f}×",
            "—",
        ),
    ]
    return rows, details


# ---------------------------------------------------------------------------------------------
# 6. Peak memory of one base render, chunked vs unchunked
# ---------------------------------------------------------------------------------------------


def memory_config(variant: str) -> ReconstructorConfig:
    config = field_only_config("base")
    return config if variant == "chunked" else merge(config, {"renderer": {"ray_chunk_size": 0}})


def estimated_field_bytes(config: ReconstructorConfig, rays: int) -> int:
    """Rough fp32 peak of the largest field call (a coarse pass) over `rays` rays at once.

    Per sample, at the worst moment, either `sample_triplane` holds the sampled features and their
    concatenated copy (2·3C floats) or the decoder holds its input features and a layer's output
    and activation (3C + 2W floats); add the sample point (3) and the outputs (4).
    """
    channels, hidden = 3 * config.triplane.channels, config.decoder.hidden_width
    floats_per_sample = max(2 * channels, channels + 2 * hidden) + 3 + 4
    return rays * config.renderer.num_coarse_samples * floats_per_sample * 4


def address_space_and_rss_bytes() -> tuple[int, int]:
    """This process's mapped address space (what RLIMIT_AS caps) and resident set, now."""
    with open("/proc/self/statm") as statm:
        size_pages, resident_pages = statm.read().split()[:2]
    page = os.sysconf("SC_PAGE_SIZE")
    return int(size_pages) * page, int(resident_pages) * page


def is_allocation_failure(error: BaseException) -> bool:
    return isinstance(error, MemoryError) or "can't allocate memory" in str(error) or "out of memory" in str(error).lower()


def render_one_view(variant: str, size: int, device: torch.device) -> Callable[[], Any]:
    """A closure rendering one deterministic `size`² view of random base-size triplanes."""
    config = memory_config(variant)
    model = Reconstructor(config).to(device).eval()
    planes, render_cameras = random_planes(config, device), orbit_cameras(1, device)

    def render() -> Any:
        with torch.no_grad():
            return model.render(planes, render_cameras, render_size=size, deterministic=True)

    return render


def memory_worker(variant: str, size: int, cap_gb: float) -> None:
    """Runs in a fresh process (CPU only): prints the render's peak RSS increase as JSON."""
    torch.manual_seed(SEED)
    render = render_one_view(variant, size, torch.device("cpu"))
    cap = int(cap_gb * 2**30)
    # Capping the address space turns "needs more than the cap" into a clean allocation error.
    resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
    address_space_before, rss_before = address_space_and_rss_bytes()
    result = {"variant": variant, "size": size, "cap_bytes": cap, "address_space_before": address_space_before, "rss_before": rss_before}
    try:
        render()
        result["status"] = "ok"
    except (RuntimeError, MemoryError) as error:
        if not is_allocation_failure(error):
            raise
        result["status"] = "allocation_failed"
        result["error"] = str(error).splitlines()[0][:200]
    # ru_maxrss is in KiB on Linux.
    result["peak_increase"] = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before, 0)
    print(WORKER_RESULT_PREFIX + json.dumps(result), flush=True)


def measure_memory_cpu(variant: str, size: int, cap_gb: float) -> dict[str, Any]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--memory-worker",
        variant,
        "--memory-render-size",
        str(size),
        "--memory-cap-gb",
        str(cap_gb),
    ]
    completed = subprocess.run(command, capture_output=True, text=True)
    for line in completed.stdout.splitlines():
        if line.startswith(WORKER_RESULT_PREFIX):
            return json.loads(line[len(WORKER_RESULT_PREFIX) :])
    raise RuntimeError(f"memory worker {variant} exited with {completed.returncode} and no result:\n{completed.stderr[-2000:]}")


def measure_memory_cuda(variant: str, size: int, device: torch.device) -> dict[str, Any]:
    render = render_one_view(variant, size, device)
    synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    allocated_before = torch.cuda.memory_allocated(device)
    result = {"variant": variant, "size": size, "allocated_before": allocated_before}
    try:
        render()
        synchronize(device)
        result["status"] = "ok"
    except torch.cuda.OutOfMemoryError as error:
        result["status"] = "allocation_failed"
        result["error"] = str(error).splitlines()[0][:200]
    result["peak_increase"] = torch.cuda.max_memory_allocated(device) - allocated_before
    torch.cuda.empty_cache()
    return result


def describe_memory(result: dict[str, Any], device: torch.device) -> str:
    if result["status"] == "ok":
        return format_bytes(result["peak_increase"])
    limit = "cap" if device.type == "cpu" else "GPU memory"
    return f"> {limit} (allocation failed after +{format_bytes(result['peak_increase'])})"


def bench_memory(device: torch.device, settings: Settings, cap_gb: float) -> tuple[list[Row], dict[str, Any]]:
    size = settings.memory_render_size
    what = "peak RSS increase, fresh worker per variant" if device.type == "cpu" else "torch.cuda.max_memory_allocated increase"
    log(f"memory: one base view of {size}², chunked ({memory_config('chunked').renderer.ray_chunk_size} rays) vs unchunked; {what}")
    results = {}
    for variant in ("chunked", "unchunked"):
        results[variant] = measure_memory_cpu(variant, size, cap_gb) if device.type == "cpu" else measure_memory_cuda(variant, size, device)
        result = results[variant]
        context = (
            f" (address-space cap {format_bytes(result['cap_bytes'])}, {format_bytes(result['address_space_before'])} "
            f"already mapped before the render)"
            if device.type == "cpu"
            else ""
        )
        log(f"memory: {variant}: {describe_memory(result, device)}{context}")
    chunked, unchunked = results["chunked"], results["unchunked"]
    both_ok = chunked["status"] == unchunked["status"] == "ok"
    ratio = f"{unchunked['peak_increase'] / chunked['peak_increase']:.1f}×" if both_ok else "—"
    rays = size * size
    config = memory_config("chunked")
    estimate_chunked = estimated_field_bytes(config, min(config.renderer.ray_chunk_size, rays))
    estimate_unchunked = estimated_field_bytes(config, rays)
    label = "peak RSS" if device.type == "cpu" else "peak CUDA alloc"
    rows = [
        Row(
            f"{label} one base {size}² render (chunked vs unchunked)",
            describe_memory(chunked, device),
            describe_memory(unchunked, device),
            ratio,
            "chunked bounded",
        ),
        Row(
            f"ESTIMATE largest field call {size}² (chunked vs unchunked)",
            format_bytes(estimate_chunked),
            format_bytes(estimate_unchunked),
            f"{estimate_unchunked / estimate_chunked:.1f}×",
            "estimate only",
        ),
    ]
    details = {
        "render_size": size,
        "cap_gb": cap_gb if device.type == "cpu" else None,
        **results,
        "estimate_chunked_bytes": estimate_chunked,
        "estimate_unchunked_bytes": estimate_unchunked,
    }
    return rows, details


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (smoke test)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")
    parser.add_argument("--json", type=Path, help="also write the summary and raw numbers as JSON here")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--turntable-views", type=int, help="override the turntable's view count (default 160, quick 16)")
    parser.add_argument("--turntable-size", type=int, help="override the turntable's frame size (default 384, quick 128)")
    parser.add_argument(
        "--turntable-model",
        default="debug",
        choices=("debug", "small"),
        help="preset of the turntable's model (default debug: on 2 CPU cores the small model's 160 views of 384² take ~13 min)",
    )
    parser.add_argument("--memory-cap-gb", type=float, default=14.0, help="address-space cap of the CPU memory workers")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; 1 on a shared machine)")
    parser.add_argument("--view-sizes", help="override the view sizes, comma-separated (default 128,256; quick 64,96)")
    parser.add_argument("--mesh-resolutions", help="override the mesh resolutions, comma-separated (default 256,384; quick 96,128)")
    parser.add_argument(
        "--fit-cache",
        type=Path,
        help="reuse the release-size object field fitted by an earlier run with the same settings (saved here when missing)",
    )
    # Internal: how the CPU memory section re-invokes this script in a fresh process.
    parser.add_argument("--memory-worker", choices=("chunked", "unchunked"), help=argparse.SUPPRESS)
    parser.add_argument("--memory-render-size", type=int, default=DEFAULT.memory_render_size, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.memory_worker:
        memory_worker(args.memory_worker, args.memory_render_size, args.memory_cap_gb)
        return
    torch.manual_seed(SEED)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else torch.device(args.device)
    settings = QUICK if args.quick else DEFAULT
    settings = replace(
        settings,
        turntable_views=args.turntable_views or settings.turntable_views,
        turntable_size=args.turntable_size or settings.turntable_size,
        view_sizes=tuple(int(size) for size in args.view_sizes.split(",")) if args.view_sizes else settings.view_sizes,
        mesh_resolutions=tuple(int(size) for size in args.mesh_resolutions.split(","))
        if args.mesh_resolutions
        else settings.mesh_resolutions,
    )
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    # Other busy processes skew even ratios; the load average at both ends shows whether they ran.
    load_start = os.getloadavg()[0]
    log(
        f"vf3d reconstruction benchmark ({'quick' if args.quick else 'default'} mode) on {device} ({hardware}), "
        f"torch {torch.__version__}, median of {settings.repeats} runs, 1-min load average {load_start:.2f}"
    )

    chosen = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    target = fields = None
    if {"view", "mesh", "turntable", "default_turntable"} & set(chosen):
        target = object_target(TARGET_RESOLUTION, device)
    if {"view", "mesh", "default_turntable"} & set(chosen):
        fields = release_fields(device, settings, target, args.fit_cache)
    sections = {
        "view": lambda: bench_view(device, settings, fields),
        "mesh": lambda: bench_mesh(device, settings, fields),
        "turntable": lambda: bench_turntable(device, settings, target, args.turntable_model),
        "default_turntable": lambda: bench_default_turntable(device, fields),
        "encode": partial(bench_encode, device, settings),
        "render": partial(bench_render, device, settings),
        "memory": partial(bench_memory, device, settings, args.memory_cap_gb),
    }
    rows: list[Row] = []
    details: dict[str, Any] = {}
    for section in chosen:
        section_rows, details[section] = sections[section]()
        rows += section_rows

    wall_seconds, load_end = time.perf_counter() - BENCH_START, os.getloadavg()[0]
    print(
        f"\n## vf3d reconstruction benchmark ({'quick' if args.quick else 'default'}, {device}: {hardware}, "
        f"{wall_seconds:.0f}s, load average {load_start:.2f} → {load_end:.2f})\n\n{markdown_table(rows)}\n",
        flush=True,
    )
    if args.json:
        write_json(
            args.json,
            {
                "mode": "quick" if args.quick else "default",
                "device": str(device),
                "hardware": hardware,
                "torch": torch.__version__,
                "wall_seconds": wall_seconds,
                "load_average": [load_start, load_end],
                "settings": asdict(settings),
                "details": details,
            },
            rows,
        )


if __name__ == "__main__":
    main()
