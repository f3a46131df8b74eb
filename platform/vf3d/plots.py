"""Training curves, image grids and bar charts for reports, and the JSONL records they are drawn from.

Shared by train-recon (its logs, curves and validation grids) and `vf3d evaluate` (its figures),
so it sits below both. Training loops append one JSON object per logged step (`append_jsonl`), e.g.
`{"step": 100, "loss": 0.41, "lpips": 0.38, "stage": "128px"}`; `plot_curves` draws every numeric
key against "step" and marks where "stage" changes. `image_grid` lays out e.g. input | predicted views | true views, one row per
held-out object; `plot_bars` draws grouped per-object metric bars, one panel per metric. PNGs are
written atomically (`vf3d.atomic`), so a reader never sees half an image. matplotlib (Agg backend)
is imported inside the functions.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vf3d.atomic import atomic_write

STEP_KEY = "step"
STAGE_KEY = "stage"
"""A record's training stage (e.g. "32px"); `plot_curves` marks where it changes."""
METRIC_DIRECTIONS = {
    **dict.fromkeys(("psnr", "ssim", "fscore", "clip_similarity"), "↑"),
    **dict.fromkeys(("lpips", "chamfer", "loss", "mse", "opacity", "tv", "total"), "↓"),
}
"""Which way is better for each metric a report or curve shows (titles carry the arrow)."""
GRID_PADDING = 2
"""Pixels of background between grid cells and around the grid."""
_BACKGROUND = (255, 255, 255)


def _json_default(value: Any) -> Any:
    # numpy scalars/arrays and torch tensors (without importing torch) become plain JSON.
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append `record` as one JSON line to `path` (parents created). Numpy/torch scalars are
    converted; NaN/inf are written as JSON's NaN/Infinity extensions, which `read_jsonl` reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, default=_json_default) + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSONL file, in order. Blank lines are skipped, and so is an unparsable
    last line (a write cut short by a crash); an unparsable line elsewhere raises ValueError."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not JSON ({error})") from error
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: a JSONL record must be an object, got {type(record).__name__}")
        records.append(record)
    return records


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and math.isfinite(float(value))


def metric_title(key: str) -> str:
    """`key` with the arrow saying which way is better ("psnr ↑", "loss_lpips ↓"), when known:
    by its name, or for a loss term (a name starting with "loss"), lower."""
    arrow = METRIC_DIRECTIONS.get(key) or ("↓" if key.startswith("loss") else None)
    return f"{key} {arrow}" if arrow else key


def stage_switches(records: list[dict[str, Any]]) -> list[tuple[float, str]]:
    """[(step, stage)] where each stage after the first begins: the first step logged with a new
    "stage" value, in step order. Records without a stage are ignored."""
    staged = sorted(
        (float(record[STEP_KEY]), str(record[STAGE_KEY]))
        for record in records
        if _is_number(record.get(STEP_KEY)) and record.get(STAGE_KEY)
    )
    switches = []
    for (_, previous), (step, stage) in zip(staged, staged[1:]):
        if stage != previous:
            switches.append((step, stage))
    return switches


def plot_curves(records: list[dict[str, Any]], out_png: str | os.PathLike, keys: list[str] | None = None) -> Path:
    """Plot each key against "step", one subplot per key, into `out_png`; a dashed line, labelled
    with the stage's name, marks each step where the records' "stage" changes, and each title
    carries the arrow of the better direction (`metric_title`).

    Args:
        records: dicts with a numeric "step" (records without one are ignored); a key missing from
            a record, or non-numeric/non-finite there, is skipped for that step.
        out_png: where the PNG goes (parents created; written atomically).
        keys: what to plot, in order; by default every key (except "step") that is numeric in at
            least one record, sorted. A key with no values gets an empty "no data" panel.
    Returns:
        out_png as a Path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_png = Path(out_png)
    stepped = [record for record in records if _is_number(record.get(STEP_KEY))]
    if keys is None:
        keys = sorted({key for record in stepped for key, value in record.items() if key != STEP_KEY and _is_number(value)})
    panels = max(len(keys), 1)
    columns = min(3, panels)
    rows = math.ceil(panels / columns)
    # A Figure on an Agg canvas (not pyplot): no global backend switch, no GUI, safe in workers.
    figure = Figure(figsize=(4.0 * columns, 2.8 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[len(keys) :]:
        ax.set_axis_off()
    if not keys:
        axes[0].set_axis_on()
        axes[0].text(0.5, 0.5, "no data", ha="center", va="center", transform=axes[0].transAxes)
    switches = stage_switches(stepped)
    for ax, key in zip(axes, keys):
        points = sorted((float(record[STEP_KEY]), float(record[key])) for record in stepped if _is_number(record.get(key)))
        ax.set_title(metric_title(key))
        ax.set_xlabel(STEP_KEY)
        ax.grid(True, alpha=0.3)
        if not points:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            continue
        steps, values = zip(*points)
        ax.plot(steps, values, marker="." if len(points) < 50 else None, linewidth=1.2)
        for step, stage in switches:
            ax.axvline(step, color="tab:gray", linestyle="--", linewidth=1.0)
            # At the top of the panel whatever its values: x in data, y in axes coordinates.
            ax.text(step, 0.98, f" {stage}", color="tab:gray", fontsize=8, va="top", ha="left", transform=ax.get_xaxis_transform())
    out_png.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_png) as file:
        figure.savefig(file, format="png")
    return out_png


def plot_bars(panels: dict[str, dict[str, Sequence[float | None]]], categories: Sequence[str], out_png: str | os.PathLike) -> Path:
    """Grouped bar charts, one panel per key of `panels`, into `out_png` (written atomically).

    Args:
        panels: {panel title: {series name: one value per category}}; e.g. {"PSNR ↑": {"model A":
            [per object], "model B": [...]}}. A None or non-finite value draws no bar.
        categories: the x-axis labels (e.g. object ids), shared by every panel.
    Returns:
        out_png as a Path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_png = Path(out_png)
    titles = list(panels) or ["no data"]
    columns = min(3, len(titles))
    rows = math.ceil(len(titles) / columns)
    width = max(4.0, 0.35 * len(categories) * max((len(series) for series in panels.values()), default=1) + 1.5)
    figure = Figure(figsize=(width * columns, 3.0 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[len(titles) :]:
        ax.set_axis_off()
    positions = np.arange(len(categories))
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        series = panels.get(title, {})
        bar_width = 0.8 / max(len(series), 1)
        drawn = False
        for index, (name, values) in enumerate(series.items()):
            if len(values) != len(categories):
                raise ValueError(f"{title!r}/{name!r}: {len(values)} values for {len(categories)} categories")
            keep = [i for i, value in enumerate(values) if value is not None and _is_number(value)]
            if keep:
                ax.bar(
                    positions[keep] + (index - (len(series) - 1) / 2) * bar_width,
                    [float(values[i]) for i in keep],
                    width=bar_width,
                    label=name,
                )
                drawn = True
        ax.set_xticks(positions, [str(category)[:14] for category in categories], rotation=45, ha="right", fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
        if not drawn:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        elif len(series) > 1:
            ax.legend(fontsize=8)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_png) as file:
        figure.savefig(file, format="png")
    return out_png


def _to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """[H, W], [H, W, 1|3|4] uint8 or float in [0, 1] → [H, W, 3] uint8 (alpha over white)."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"images must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {array.shape}")
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    else:
        array = np.clip(np.nan_to_num(array.astype(np.float32)), 0.0, 1.0)
    if array.shape[-1] == 4:
        array = array[..., :3] * array[..., 3:] + (1.0 - array[..., 3:])
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return (array * 255.0 + 0.5).astype(np.uint8)


def image_grid(
    rows: Sequence[Sequence[np.ndarray]],
    out_png: str | os.PathLike,
    row_labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
) -> Path:
    """Lay images out in a grid and write it as a PNG (atomically, parents created).

    Args:
        rows: rows of images, each [H, W] or [H, W, 1|3|4], uint8 or float in [0, 1]; sizes may
            differ (every cell is as large as the largest image, smaller ones are centred) and rows
            may be ragged (missing cells stay blank).
        row_labels: one per row, drawn left of the rows; column_labels: one per column, above.
    Returns:
        out_png as a Path. Without labels the PNG is exactly
        (columns · (cell_w + p) + p) × (rows · (cell_h + p) + p) pixels with p = GRID_PADDING;
        labels add a margin on the left and/or at the top.
    """
    from PIL import Image, ImageDraw, ImageFont

    out_png = Path(out_png)
    images = [[_to_rgb_uint8(image) for image in row] for row in rows]
    if not images or not any(images):
        raise ValueError("image_grid needs at least one image")
    if row_labels is not None and len(row_labels) != len(images):
        raise ValueError(f"{len(row_labels)} row labels for {len(images)} rows")
    n_columns = max(len(row) for row in images)
    if column_labels is not None and len(column_labels) > n_columns:
        raise ValueError(f"{len(column_labels)} column labels for {n_columns} columns")
    cell_h = max(image.shape[0] for row in images for image in row)
    cell_w = max(image.shape[1] for row in images for image in row)

    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_size(text: str) -> tuple[int, int]:
        left, top, right, bottom = measure.textbbox((0, 0), text, font=font)
        return right - left, bottom - top

    pad = GRID_PADDING
    left_margin = max((text_size(label)[0] for label in row_labels), default=0) + 2 * pad if row_labels else 0
    top_margin = max((text_size(label)[1] for label in column_labels), default=0) + 2 * pad if column_labels else 0
    width = left_margin + n_columns * (cell_w + pad) + pad
    height = top_margin + len(images) * (cell_h + pad) + pad
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(images):
        cell_top = top_margin + pad + r * (cell_h + pad)
        for c, image in enumerate(row):
            cell_left = left_margin + pad + c * (cell_w + pad)
            offset = (cell_left + (cell_w - image.shape[1]) // 2, cell_top + (cell_h - image.shape[0]) // 2)
            canvas.paste(Image.fromarray(image), offset)
        if row_labels:
            text_h = text_size(row_labels[r])[1]
            draw.text((pad, cell_top + (cell_h - text_h) // 2), row_labels[r], fill=(0, 0, 0), font=font)
    for c, label in enumerate(column_labels or []):
        text_w = text_size(label)[0]
        draw.text((left_margin + pad + c * (cell_w + pad) + (cell_w - text_w) // 2, pad), label, fill=(0, 0, 0), font=font)

    out_png.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_png) as file:
        canvas.save(file, format="PNG")
    return out_png
