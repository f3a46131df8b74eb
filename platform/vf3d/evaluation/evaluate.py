"""`vf3d evaluate`: reconstruct held-out orbits from one view and score them against the truth.

For every selected orbit of `--data` (all, `--ids`, or the first `limit` by id) and every model:

1. input: orbit view 0, recentred as the model sees it at inference (`data.reconstruction_views.source_inputs`);
   targets: `num_views` other orbit views spread evenly around it (`data.reconstruction_views.validation_views`,
   the same task the trainer validates on), at `resolution`;
2. encode once (`ImageTo3D.encode`: canonical source camera, bf16 autocast on CUDA), render the
   target cameras expressed in the source-canonical frame (`cameras.relative_to_source`)
   deterministically, and compare with the true views: PSNR, SSIM, LPIPS;
3. CLIP image similarity (input view ↔ predicted views) and CLIP text similarity (prompt ↔
   predicted views; skipped for an empty prompt), see `clip_metrics`;
4. when the orbit names its source asset and `--assets` holds it: extract the mesh
   (`ImageTo3D.mesh`), move it from the source-canonical frame back to the asset's
   (`geometry.source_frame_to_world`), and compute Chamfer distance and F-score against the asset
   loaded and normalised exactly as the renderer did (`data.assets.load_asset` with the orbit's margin).

Outputs in `--out`: metrics.json (per object and aggregate, the config, models, whether CLIP and
LPIPS weights are random), report.md, figures/*.png, evaluate_config.json. One process, one device;
no Ray.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from vf3d import config as config_lib
from vf3d import storage
from vf3d.atomic import write_json_atomic, write_text_atomic
from vf3d.config import ConfigError
from vf3d.data.config import OrbitRenderConfig
from vf3d.evaluation.config import EvaluateConfig

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
CONFIG_FILE = "evaluate_config.json"
FIGURES_DIRNAME = "figures"
FORMAT = "vf3d-evaluation/1"
RANDOM_CLIP_WARNING = "random CLIP weights: similarities are meaningless"
RANDOM_LPIPS_WARNING = "random LPIPS backbone: LPIPS values are not perceptual"


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def read_ids_file(path: str | os.PathLike) -> list[str]:
    """Orbit ids from a text file (a path or a URI): one per line; blank lines and lines starting
    with # skipped."""
    path = storage.local_or_uri(path)
    if not storage.is_file(path):
        raise ConfigError(f"--ids: no such file: {path}")
    ids = [line.strip() for line in storage.read_text(path).splitlines() if line.strip() and not line.strip().startswith("#")]
    if not ids:
        raise ConfigError(f"--ids: {path} lists no ids")
    return list(dict.fromkeys(ids))


def select_orbits(data_dir: str | os.PathLike, ids: list[str] | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """The orbits to evaluate, in order: `ids` in their order, else every orbit sorted by id;
    then the first `limit`. Each is {"id", "prompt", "asset", "source"} (no images read).

    Raises:
        ConfigError: not a directory, no orbit shards, or ids that are not in the data.
    """
    from vf3d.data import shards

    data_dir = storage.local_or_uri(data_dir)
    if not storage.is_dir(data_dir):
        raise ConfigError(f"--data: not a directory: {data_dir}")
    if not shards.list_shard_files(data_dir):
        raise ConfigError(f"--data holds no orbit shards: {data_dir} (make some with `vf3d render-assets` or `vf3d synthesize`)")
    index = {row["id"]: row for row in shards.read_table(data_dir, columns=["id", "prompt", "asset", "source"]).to_pylist()}
    if ids is not None:
        unknown = [identifier for identifier in ids if identifier not in index]
        if unknown:
            raise ConfigError(
                f"--ids: {len(unknown)} of {len(ids)} ids are not in {data_dir}: {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}"
            )
        order = list(ids)
    else:
        order = sorted(index)
    if not order:
        raise ConfigError(f"--data holds no orbits: {data_dir}")
    return [index[identifier] for identifier in order[:limit]]


def stream_records(data_dir: str | os.PathLike, wanted: set[str]) -> Iterator[dict[str, Any]]:
    """Decoded orbits (`shards.decode_row`) whose id is in `wanted`, in file order; rows that are
    not wanted are never decoded."""
    import pyarrow.parquet as pq

    from vf3d.data import shards

    for path in shards.list_shard_files(data_dir):
        with storage.open_input(path) as file, pq.ParquetFile(file) as shard:
            for batch in shard.iter_batches(batch_size=shards.ROWS_PER_ROW_GROUP):
                for row in batch.to_pylist():
                    if row["id"] in wanted:
                        yield shards.decode_row(row)


def _absolute(location: str | os.PathLike) -> str:
    """A location as the report records it: a URI as it is, a local path resolved."""
    return str(location) if storage.is_uri(location) else str(Path(location).resolve())


def model_names(model_dirs: list[Path | str]) -> list[str]:
    """Short unique names for the models: their directory names (with the parent, then an index,
    added where two would clash)."""
    names = [storage.name(_absolute(directory)) or str(directory) for directory in model_dirs]
    if len(set(names)) < len(names):
        names = [f"{storage.name(storage.parent(_absolute(directory)))}/{storage.name(_absolute(directory))}" for directory in model_dirs]
    if len(set(names)) < len(names):
        names = [f"{name}#{index + 1}" for index, name in enumerate(names)]
    return names


def _orbit_margin(record: dict[str, Any]) -> float:
    """The normalisation margin the orbit was rendered with (its metadata), else the default."""
    try:
        margin = json.loads(record.get("metadata") or "{}").get("margin")
    except (ValueError, AttributeError):
        margin = None
    return float(margin) if isinstance(margin, (int, float)) and not isinstance(margin, bool) else OrbitRenderConfig().margin


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:48] or "object"


def _json_ready(value: Any) -> Any:
    """Non-finite floats → None (strict JSON), numpy scalars → Python."""
    if isinstance(value, dict):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, Path):
        return str(value)
    return value


# ---------------------------------------------------------------------------------------------
# One object
# ---------------------------------------------------------------------------------------------


def reconstruct_views(pipeline, record: dict[str, Any], num_views: int, resolution: int) -> dict[str, Any]:
    """Reconstruct one orbit from its view 0 and render the target views (see the module docstring).

    Returns:
        {"input": model input [3, S, S], "source": view 0 [3, H, W], "source_camera": [25],
        "planes": [1, 3, C, R, R], "predicted": [n, 3, r, r] in [0, 1], "truth": [n, 3, r, r]},
        tensors on the pipeline's device (planes, predicted, truth) or the CPU.
    """
    import torch

    from vf3d import cameras
    from vf3d.data.reconstruction_views import source_inputs, validation_views

    source, mask, source_camera, truth, target_cameras = validation_views(record, num_views, resolution)
    image = source_inputs(source[None], mask[None], pipeline.model.config.encoder.image_size)
    planes = pipeline.encode(image)
    azimuth = pipeline.model.config.source_camera_azimuth_deg
    relative = cameras.relative_to_source(source_camera[None], target_cameras[None], azimuth_deg=azimuth).to(pipeline.device)
    autocast = (
        torch.autocast(pipeline.device.type, dtype=pipeline.autocast_dtype)
        if pipeline.autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with torch.no_grad(), autocast:
        predicted = pipeline.model.render(planes, relative, render_size=resolution, deterministic=True).rgb[0]
    return {
        "input": image[0],
        "source": source,
        "source_camera": source_camera,
        "planes": planes,
        "predicted": predicted.float().clamp(0, 1),
        "truth": truth.to(pipeline.device),
    }


class _TruthSurface:
    """The true mesh of one orbit (loaded lazily, once for all models) and points on it."""

    def __init__(self, record: dict[str, Any], assets_dir: Path | str | None, config: EvaluateConfig) -> None:
        self.record, self.assets_dir, self.config = record, assets_dir, config
        self._loaded: tuple[Any, np.ndarray] | None = None
        self.skip_reason: str | None = None
        asset = record.get("asset")
        if not config.geometry.enabled:
            self.skip_reason = "geometry metrics disabled"
        elif not asset:
            self.skip_reason = "the orbit names no source asset (synthetic?)"
        elif assets_dir is None:
            self.skip_reason = "no --assets given"
        elif not storage.is_file(storage.join(assets_dir, asset)):
            self.skip_reason = f"true mesh not found: {storage.join(assets_dir, asset)}"

    def get(self) -> tuple[Any, np.ndarray]:
        """(trimesh, points [num_points, 3]) in the asset's normalised frame; AssetError if unreadable."""
        if self._loaded is None:
            from vf3d.data.assets import load_asset
            from vf3d.evaluation.geometry import asset_mesh, sample_points

            if storage.is_uri(self.assets_dir):  # a temporary local copy of the asset and the files it refers to
                import tempfile

                from vf3d.data.assets import local_asset_copy

                with tempfile.TemporaryDirectory(prefix="vf3d-asset-") as scratch:
                    local = local_asset_copy(str(self.assets_dir), self.record["asset"], scratch)
                    mesh = asset_mesh(load_asset(local, margin=_orbit_margin(self.record)))
            else:
                mesh = asset_mesh(load_asset(self.assets_dir / self.record["asset"], margin=_orbit_margin(self.record)))
            # Its own seed stream, so the truth and a prediction never share sample positions by design.
            self._loaded = (mesh, sample_points(mesh, self.config.geometry.num_points, seed=self.config.seed + 1))
        return self._loaded


def score_object(
    pipeline, record: dict[str, Any], truth_surface: _TruthSurface, config: EvaluateConfig, lpips_metric, clip_scorer
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every metric of one model on one orbit → (result for metrics.json, views for the figures)."""
    from vf3d.data.assets import AssetError
    from vf3d.evaluation.geometry import geometry_scores
    from vf3d.image_metrics import psnr, ssim
    from vf3d.mesh import EmptyMeshError

    started = time.perf_counter()
    orbit_views = int(record["num_orbit_views"])
    num_views = min(config.num_views, orbit_views - 1)
    resolution = config.resolution or int(record["frames"].shape[-1])
    views = reconstruct_views(pipeline, record, num_views, resolution)
    predicted, truth = views["predicted"], views["truth"]
    result: dict[str, Any] = {
        "psnr": float(psnr(predicted, truth).mean()),
        "ssim": float(ssim(predicted, truth).mean()),
        "lpips": float(lpips_metric(predicted, truth).mean()),
        "clip_image": None,
        "clip_text": None,
        "chamfer": None,
        "fscore": None,
    }
    notes: list[str] = []
    if clip_scorer is not None:
        image_similarity, text_similarity = clip_scorer.similarities(
            views["source"], predicted, (record.get("prompt") or "").strip() or None
        )
        result["clip_image"] = float(image_similarity.mean())
        result["clip_text"] = float(text_similarity.mean()) if text_similarity is not None else None
    if truth_surface.skip_reason is None:
        try:
            truth_mesh, truth_points = truth_surface.get()
            iso = pipeline.iso_level(views["planes"])
            mesh = pipeline.mesh(views["planes"], iso).mesh
            scores = geometry_scores(
                mesh,
                views["source_camera"],
                truth_points,
                truth_mesh,
                config.geometry.num_points,
                config.geometry.fscore_threshold,
                config.geometry.alignment,
                seed=config.seed,
                azimuth_deg=pipeline.model.config.source_camera_azimuth_deg,
            )
            result.update(scores.as_dict(), iso=iso, mesh_vertices=len(mesh.vertices), mesh_faces=len(mesh.faces))
        except EmptyMeshError as error:
            notes.append(f"no mesh, so no Chamfer/F-score ({error})")
        except AssetError as error:
            notes.append(f"true mesh unreadable: {error}")
        except ValueError as error:  # e.g. a mesh without area
            notes.append(f"no Chamfer/F-score: {error}")
    result["seconds"] = round(time.perf_counter() - started, 3)
    if notes:
        result["notes"] = notes
    return result, views


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def _build_lpips(config: EvaluateConfig, device):
    import warnings

    from vf3d.image_metrics import LpipsMetric
    from vf3d.models.config import ReconLossConfig
    from vf3d.models.lpips_network import build_lpips

    settings = config.lpips
    loss_config = ReconLossConfig(
        lpips_net=settings.net, lpips_backbone_path=settings.backbone_path, lpips_random_backbone=settings.random_backbone
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the random-backbone warning: the report states it
            module = build_lpips(loss_config)
    except ConfigError as error:
        message = (
            str(error)
            .replace("losses.lpips_backbone_path", "lpips.backbone_path")
            .replace("losses.lpips_random_backbone", "lpips.random_backbone")
            .replace("losses.lpips_net", "lpips.net")
        )
        raise ConfigError(message + ("" if settings.backbone_path else " (or give --lpips-backbone PATH)")) from None
    return LpipsMetric(module).to(device)


def _write_views_figure(out_png: Path, views_by_model: dict[str, dict[str, Any]]) -> None:
    from vf3d.plots import image_grid

    def to_image(tensor) -> np.ndarray:
        return (tensor.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)

    first = next(iter(views_by_model.values()))
    rows = [[to_image(first["source"])] + [to_image(view) for view in first["truth"]]]
    rows += [[to_image(views["input"])] + [to_image(view) for view in views["predicted"]] for views in views_by_model.values()]
    columns = ["input"] + [f"view {index + 1}" for index in range(len(first["truth"]))]
    image_grid(rows, out_png, row_labels=["true"] + [name[:16] for name in views_by_model], column_labels=columns)


def _write_bars_figure(out_png: Path, objects: list[dict[str, Any]], names: list[str], threshold: float) -> None:
    from vf3d.evaluation.report import METRICS
    from vf3d.plots import plot_bars

    panels = {}
    for metric in METRICS:
        series = {name: [obj["results"].get(name, {}).get(metric.key) for obj in objects] for name in names}
        if any(value is not None for values in series.values() for value in values):
            title = f"F@{threshold:g} ↑" if metric.key == "fscore" else f"{metric.name} {metric.arrow}"
            panels[title] = series
    plot_bars(panels, [obj["id"] for obj in objects], out_png)


def evaluate(
    model_dirs: list[str | os.PathLike],
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: EvaluateConfig,
    assets_dir: str | os.PathLike | None = None,
    ids: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Evaluate one or more reconstructors on the orbits of `data_dir`; write the report into `out_dir`.

    Every location may be a local path or an object-store URI (vf3d.storage). An object-store
    `out_dir` gets the report once it is complete: it is written to a local staging directory
    (matplotlib and the report writers need local files) and every file is then published,
    metrics.json last.

    Args:
        model_dirs: reconstructor directories; with two or more, the report compares them with the
            first (Δ columns).
        data_dir: orbit shards (every orbit is held out: evaluate on data the models never saw).
        out_dir: where metrics.json, report.md, figures/ and evaluate_config.json go.
        config: the settings (`EVALUATE_PRESETS`).
        assets_dir: the root the shards' `asset` paths are relative to (geometry metrics need it).
        ids: evaluate these orbits, in this order (else all, sorted by id); `config.limit` applies after.
    Returns:
        the metrics.json document.
    Raises:
        ConfigError: bad inputs (missing directories, no orbits, unknown ids, CLIP/LPIPS weights);
        ModelDirectoryError: a model directory that is not a reconstructor.
    """
    import torch

    from vf3d import __version__
    from vf3d.evaluation import report
    from vf3d.inference import ImageTo3D, resolve_device
    from vf3d.models.reconstructor import Reconstructor

    if storage.is_uri(out_dir):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="vf3d-evaluate-") as staging:
            document = evaluate(model_dirs, data_dir, staging, config, assets_dir, ids, log)
            storage.upload_tree(staging, str(out_dir), last=(METRICS_FILE,))
        log(f"report published to {out_dir}")
        return document
    started = time.perf_counter()
    config = config.validate()
    if not model_dirs:
        raise ConfigError("give at least one --model directory")
    model_dirs = [storage.local_or_uri(directory) for directory in model_dirs]
    assets_dir = storage.local_or_uri(assets_dir) if assets_dir is not None else None
    if assets_dir is not None and not storage.is_dir(assets_dir):
        raise ConfigError(f"--assets: not a directory: {assets_dir}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out exists and is not a directory: {out_dir}")
    orbits = select_orbits(data_dir, ids, config.limit)
    for directory in model_dirs:
        Reconstructor.load_config(directory)  # a wrong directory fails before anything heavy loads

    # Metric networks before the reconstructors: a missing weights file fails in seconds.
    device = resolve_device(config.inference.device)
    torch.manual_seed(config.seed)  # random metric weights (debug) are the same in every run
    lpips_metric = _build_lpips(config, device)
    clip_scorer = None
    if config.clip.enabled:
        from vf3d.evaluation.clip_metrics import ClipScorer

        clip_scorer = ClipScorer(config.clip, device)
    names = model_names(model_dirs)
    pipelines = {name: ImageTo3D.from_pretrained(directory, config.inference) for name, directory in zip(names, model_dirs)}
    first = next(iter(pipelines.values()))
    warnings_list = []
    if clip_scorer is not None and clip_scorer.random:
        warnings_list.append(RANDOM_CLIP_WARNING)
    if config.lpips.random_backbone:
        warnings_list.append(RANDOM_LPIPS_WARNING)
    with_asset = sum(1 for orbit in orbits if orbit.get("asset"))
    if config.geometry.enabled and assets_dir is None and with_asset:
        warnings_list.append(
            f"no --assets given: Chamfer distance and F-score skipped for the {with_asset} orbit{'s' if with_asset != 1 else ''} that name{'' if with_asset != 1 else 's'} an asset"
        )
    for warning in warnings_list:
        log(f"WARNING: {warning}")
    autocast = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(first.autocast_dtype) if first.autocast_dtype is not None else None
    log(
        f"evaluating {', '.join(names)} on {len(orbits)} orbits from {data_dir} on {device}{' (' + autocast + ' autocast)' if autocast else ''}"
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    figures_dir = out_dir / FIGURES_DIRNAME
    position = {orbit["id"]: index for index, orbit in enumerate(orbits)}
    objects: dict[str, dict[str, Any]] = {}
    view_figures = []
    done = 0
    for record in stream_records(data_dir, set(position)):
        identifier = record["id"]
        if identifier in objects:  # the same id in two shards: evaluated once
            continue
        done += 1
        entry = {
            "id": identifier,
            "prompt": record.get("prompt") or "",
            "asset": record.get("asset"),
            "source": record.get("source"),
            "results": {},
        }
        if int(record["num_orbit_views"]) < 2:
            entry["notes"] = ["skipped: the orbit has fewer than 2 views"]
            objects[identifier] = entry
            log(f"[evaluate] {done}/{len(orbits)} {identifier}: skipped (fewer than 2 orbit views)")
            continue
        truth_surface = _TruthSurface(record, assets_dir, config)
        entry["num_views"] = min(config.num_views, int(record["num_orbit_views"]) - 1)
        entry["resolution"] = config.resolution or int(record["frames"].shape[-1])
        if assets_dir is not None and config.geometry.enabled and record.get("asset") and truth_surface.skip_reason:
            entry["notes"] = [f"no Chamfer/F-score: {truth_surface.skip_reason}"]
        views_by_model = {}
        for name, pipeline in pipelines.items():
            result, views = score_object(pipeline, record, truth_surface, config, lpips_metric, clip_scorer)
            entry["results"][name] = result
            views_by_model[name] = views
            shown = " ".join(
                f"{metric.name} {result[metric.key]:.{metric.digits}f}" for metric in report.METRICS if result.get(metric.key) is not None
            )
            log(f"[evaluate] {done}/{len(orbits)} {identifier}{' ' + name if len(names) > 1 else ''}: {shown} ({result['seconds']:.1f}s)")
        if position[identifier] < config.figure_objects:
            path = figures_dir / f"views-{position[identifier]:03d}-{_safe_name(identifier)}.png"
            _write_views_figure(path, views_by_model)
            view_figures.append({"id": identifier, "position": position[identifier], "path": path.relative_to(out_dir).as_posix()})
        objects[identifier] = entry
    ordered = [objects[orbit["id"]] for orbit in orbits if orbit["id"] in objects]

    figures: dict[str, Any] = {"views": sorted(view_figures, key=lambda item: item["position"])}
    shown_objects = ordered[: config.figure_objects]
    if shown_objects:
        bars = figures_dir / "metrics_per_object.png"
        _write_bars_figure(bars, shown_objects, names, config.geometry.fscore_threshold)
        figures.update(bars=bars.relative_to(out_dir).as_posix(), bar_objects=len(shown_objects))

    geometry_description = "skipped (geometry.enabled is false)"
    if config.geometry.enabled:
        geometry_description = (
            f"{config.geometry.num_points:,} surface points each; τ = {config.geometry.fscore_threshold:g} world units "
            f"(objects fit in a sphere of radius 0.8 inside the [-1, 1]³ box); compared in the asset's frame "
            f"(predicted mesh moved by S·C⁻¹ out of the source-canonical frame){'; bbox-aligned first' if config.geometry.alignment == 'bbox' else ', no alignment'}; "
            f"mesh: {f'{config.inference.mesh_resolution}³' if config.inference.mesh_resolution else 'the model’s'} grid, iso {config.inference.mesh_iso if config.inference.mesh_iso is not None else 'of the model'}"
        )
    document = {
        "format": FORMAT,
        "vf3d_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": _absolute(data_dir),
        "assets": _absolute(assets_dir) if assets_dir is not None else None,
        "models": [
            {"name": name, "dir": _absolute(directory), "parameters": sum(p.numel() for p in pipelines[name].model.parameters())}
            for name, directory in zip(names, model_dirs)
        ],
        "device": str(device),
        "autocast": autocast,
        "clip": {
            "enabled": config.clip.enabled,
            "model": config.clip.model,
            "weights_path": config.clip.weights_path,
            "random": bool(clip_scorer.random) if clip_scorer else None,
            "description": clip_scorer.description if clip_scorer else None,
        },
        "lpips": {"net": config.lpips.net, "backbone_path": config.lpips.backbone_path, "random_backbone": config.lpips.random_backbone},
        "geometry": {
            "enabled": config.geometry.enabled,
            "threshold": config.geometry.fscore_threshold,
            "num_points": config.geometry.num_points,
            "alignment": config.geometry.alignment,
            "frame": "asset (load_asset-normalised, +Z up); prediction moved by S·C⁻¹",
            "description": geometry_description,
        },
        "metrics": [
            {"key": metric.key, "name": metric.name, "higher_is_better": metric.higher_is_better, "definition": metric.definition}
            for metric in report.METRICS
        ],
        "warnings": warnings_list,
        "config": config_lib.to_dict(config),
        "objects": ordered,
        "aggregate": report.aggregate(ordered, names),
        "deltas": report.deltas(ordered, names),
        "figures": figures,
        "seconds": round(time.perf_counter() - started, 2),
    }
    document = _json_ready(document)
    config_lib.save_json(config, out_dir / CONFIG_FILE)
    write_json_atomic(out_dir / METRICS_FILE, document, ensure_ascii=False)
    write_text_atomic(out_dir / REPORT_FILE, report.markdown_report(document))
    summary = "; ".join(
        f"{name}: "
        + ", ".join(
            f"{metric.name} {document['aggregate'][name][metric.key]['mean']:.{metric.digits}f}"
            for metric in report.METRICS
            if document["aggregate"][name][metric.key]["mean"] is not None
        )
        for name in names
    )
    log(f"evaluate: {len(ordered)} objects in {document['seconds']:.1f}s — {summary}")
    log(f"report: {out_dir / REPORT_FILE}; metrics: {out_dir / METRICS_FILE}; figures: {figures_dir}")
    return document
