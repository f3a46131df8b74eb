"""Reconstruction benchmarks, measured side by side in one run and reported as ratios.

What it measures:
  1. Mesh extraction: `extract_mesh(method="coarse_to_fine")` vs `method="dense"` at resolution 256
     (quick: 128) on a realistic field: `base`-sized triplanes and decoder fitted to an analytic
     torus + sphere. Reports decoder density queries, seconds and vertex counts of both.
  2. Batched triplane inference: `small` preset, one `encode` of 8 (quick: 4) images vs 8 (4)
     single-image calls, and the largest difference between their outputs.
  3. Renderer throughput: rays/s and field samples/s of a deterministic 4-view (quick: 1-view)
     render at the preset's render size, `debug` vs `small`.
  4. Render memory: peak memory of one 384² (quick: 128²) `base` view with the preset's ray
     chunking vs none. On CUDA: torch.cuda.max_memory_allocated. On the CPU: peak RSS of a fresh
     worker process per variant, whose address space is capped (--memory-cap-gb) so a render
     that needs more fails with an allocation error instead of waking the OOM killer.

Machines are noisy: every timed thing is warmed up, then the things compared take turns for a
few rounds (quick: one) and each one's median is reported; compare ratios, not absolute times.
On a CPU shared with other busy processes ratios shift too, so read them from a quiet machine.
Nothing here asserts a timing; targets are printed as information. The CPU memory workers read
/proc/self/statm, so that section needs Linux.

Run (from the repository root):
  python bench/recon.py                  # full run, about 5 minutes on 2 CPU cores
  python bench/recon.py --quick          # smoke test, about 1 minute
  python bench/recon.py --device cuda --json bench-recon.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from report import BENCH_START, Row, log, markdown_table, write_json

from vf3d import cameras
from vf3d.config import RECONSTRUCTOR_PRESETS, ReconstructorConfig, merge, preset, to_dict
from vf3d.mesh import QueryFn, extract_mesh
from vf3d.models.reconstructor import Reconstructor

SEED = 0
INSIDE_DENSITY = 10.0
"""Density of the analytic shape's interior (outside is ~0); the mesh iso is half of it."""
SURFACE_WIDTH = 0.02
"""Width of the analytic density's smooth step across the surface, in world units."""
MESH_SPEEDUP_TARGET = 4.0
MESH_VERTEX_TOLERANCE = 0.02
RENDER_ELEVATION_DEG = 20.0
WORKER_RESULT_PREFIX = "MEMORY_WORKER_RESULT "
"""Marks the line of a memory worker's stdout that carries its JSON result."""


@dataclass
class Settings:
    """What differs between the default run and --quick."""

    mesh_resolution: int
    fit_steps: int
    fit_batch: int
    encode_images: int
    render_views: int
    memory_render_size: int
    repeats: int


DEFAULT = Settings(mesh_resolution=256, fit_steps=300, fit_batch=2**13, encode_images=8, render_views=4, memory_render_size=384, repeats=3)
QUICK = Settings(mesh_resolution=128, fit_steps=100, fit_batch=2**13, encode_images=4, render_views=1, memory_render_size=128, repeats=1)


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
# 1. Mesh extraction: coarse-to-fine vs dense
# ---------------------------------------------------------------------------------------------


def analytic_density(points: torch.Tensor) -> torch.Tensor:
    """Density [P] of a torus (in the z = −0.1 plane) united with a sphere above it: about
    INSIDE_DENSITY inside, about 0 outside, with a smooth step of SURFACE_WIDTH across the surface."""
    x, y, z = points.unbind(-1)
    torus = torch.sqrt((torch.sqrt(x**2 + y**2) - 0.55) ** 2 + (z + 0.1) ** 2) - 0.18
    sphere = torch.sqrt((x - 0.1) ** 2 + y**2 + (z - 0.35) ** 2) - 0.3
    signed_distance = torch.minimum(torus, sphere)
    return INSIDE_DENSITY * torch.sigmoid(-signed_distance / SURFACE_WIDTH)


def fit_triplanes(model: Reconstructor, device: torch.device, settings: Settings) -> tuple[torch.Tensor, float]:
    """Fit triplanes and decoder by Adam so the model's density matches `analytic_density`.

    Returns the fitted planes [1, 3, C, R, R] and the final MSE on fresh uniform points.
    """
    planes = torch.nn.Parameter(0.1 * random_planes(model.config, device))
    optimizer = torch.optim.Adam([planes, *model.decoder.parameters()], lr=1e-2)
    for _ in range(settings.fit_steps):
        points = torch.rand(1, settings.fit_batch, 3, device=device) * 2 - 1
        density, _ = model.query_points(planes, points)
        loss = F.mse_loss(density[0, :, 0], analytic_density(points[0]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        points = torch.rand(1, 2**16, 3, device=device) * 2 - 1
        density, _ = model.query_points(planes, points)
        final_mse = F.mse_loss(density[0, :, 0], analytic_density(points[0])).item()
    return planes.detach(), final_mse


def check_iso_crossing(query: QueryFn, iso: float, device: torch.device) -> tuple[float, float, float]:
    """(min density, max density, fraction of a 48³ grid above iso): the surface must exist."""
    axis = torch.linspace(-1, 1, 48, device=device)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    with torch.no_grad():
        density, _ = query(grid)
    low, high = density.min().item(), density.max().item()
    if not low < iso < high:
        raise RuntimeError(f"fitted field does not cross iso {iso}: densities in [{low:.3g}, {high:.3g}]")
    return low, high, (density > iso).float().mean().item()


def bench_mesh(device: torch.device, settings: Settings) -> tuple[list[Row], dict[str, Any]]:
    resolution, iso = settings.mesh_resolution, INSIDE_DENSITY / 2
    model = Reconstructor(field_only_config("base")).to(device)
    log(
        f"mesh: fitting base-size triplanes {tuple(random_planes(model.config, device).shape)} to a torus + sphere "
        f"({settings.fit_steps} Adam steps of {settings.fit_batch} points)"
    )
    start = time.perf_counter()
    planes, fit_mse = fit_triplanes(model, device, settings)
    fit_seconds = time.perf_counter() - start
    model.eval()

    # The same query function the CLI builds (vf3d.inference.ImageTo3D.mesh), in fp32.
    def query(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        density, rgb = model.query_points(planes, points.unsqueeze(0))
        return density[0, :, 0], rgb[0].clamp(0, 1)

    low, high, inside_fraction = check_iso_crossing(query, iso, device)
    log(
        f"mesh: fit took {fit_seconds:.1f}s, MSE {fit_mse:.3f}; densities in [{low:.2f}, {high:.2f}], "
        f"{inside_fraction:.1%} of the box above iso {iso}"
    )

    methods = ("dense", "coarse_to_fine")
    for method in methods:
        # A small extraction first pays one-time costs (allocator, code paths) outside the timing.
        extract_mesh(query, resolution=32, iso=iso, method=method, device=device)
    timings = compare_timings(
        {method: partial(extract_mesh, query, resolution=resolution, iso=iso, method=method, device=device) for method in methods},
        device,
        settings.repeats,
        warmup=False,
    )
    results = {}
    for method, (seconds, result) in timings.items():
        results[method] = {
            "seconds": seconds,
            "density_queries": result.num_queries,
            "color_queries": result.num_color_queries,
            "vertices": len(result.mesh.vertices),
            "faces": len(result.mesh.faces),
        }
        log(
            f"mesh: {method} @ {resolution}: {seconds:.2f}s, {format_count(result.num_queries)} density queries, "
            f"{len(result.mesh.vertices)} vertices"
        )

    dense, coarse = results["dense"], results["coarse_to_fine"]
    speedup = dense["seconds"] / coarse["seconds"]
    vertex_difference = abs(coarse["vertices"] - dense["vertices"]) / dense["vertices"]
    speed_met = "met" if speedup >= MESH_SPEEDUP_TARGET else "NOT met"
    vertices_met = "met" if vertex_difference <= MESH_VERTEX_TOLERANCE else "NOT met"
    rows = [
        Row(
            f"mesh density queries @{resolution}³ (dense vs coarse-to-fine)",
            format_count(dense["density_queries"]),
            format_count(coarse["density_queries"]),
            f"{dense['density_queries'] / coarse['density_queries']:.2f}×",
            "—",
        ),
        Row(
            f"mesh extraction seconds @{resolution}³ (dense vs coarse-to-fine)",
            f"{dense['seconds']:.2f}",
            f"{coarse['seconds']:.2f}",
            f"{speedup:.2f}×",
            f"≥{MESH_SPEEDUP_TARGET:.0f}× ({speed_met})",
        ),
        Row(
            f"mesh vertices @{resolution}³ (dense vs coarse-to-fine)",
            str(dense["vertices"]),
            str(coarse["vertices"]),
            f"{vertex_difference:.2%} diff",
            f"≤{MESH_VERTEX_TOLERANCE:.0%} ({vertices_met})",
        ),
    ]
    details = {
        "resolution": resolution,
        "iso": iso,
        "fit_seconds": fit_seconds,
        "fit_mse": fit_mse,
        "density_range": [low, high],
        "inside_fraction": inside_fraction,
        **results,
    }
    return rows, details


# ---------------------------------------------------------------------------------------------
# 2. Batched triplane inference
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
# 3. Renderer throughput
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
# 4. Peak memory of one base render, chunked vs unchunked
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
    parser.add_argument("--memory-cap-gb", type=float, default=14.0, help="address-space cap of the CPU memory workers")
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
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else torch.device(args.device)
    settings = QUICK if args.quick else DEFAULT
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    # Other busy processes skew even ratios; the load average at both ends shows whether they ran.
    load_start = os.getloadavg()[0]
    log(
        f"vf3d reconstruction benchmark ({'quick' if args.quick else 'default'} mode) on {device} ({hardware}), "
        f"torch {torch.__version__}, median of {settings.repeats} runs, 1-min load average {load_start:.2f}"
    )

    sections = {
        "mesh": partial(bench_mesh, device, settings),
        "encode": partial(bench_encode, device, settings),
        "render": partial(bench_render, device, settings),
        "memory": partial(bench_memory, device, settings, args.memory_cap_gb),
    }
    rows: list[Row] = []
    details: dict[str, Any] = {}
    for section, run in sections.items():
        section_rows, details[section] = run()
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
