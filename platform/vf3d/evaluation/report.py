"""The evaluation report: the metric table, metrics.json's aggregates and the Markdown page.

`aggregate` and `deltas` summarise per-object results; `markdown_report` renders the whole
document (`vf3d.evaluation.evaluate` builds it) as report.md: warnings first (random CLIP or
LPIPS weights are stated in bold, since their numbers mean nothing), the setup, a summary table
(mean ± std per model, and Δ against the first model), one row per object with a mean ± std row,
and the figures. Pure Python and numpy; no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Metric:
    """One reported metric: its key in metrics.json, its column name and which way is better."""

    key: str
    name: str
    higher_is_better: bool
    digits: int
    definition: str

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


METRICS = (
    Metric("psnr", "PSNR", True, 2, "dB, 10·log10(1/MSE) per novel view (images in [0, 1], on white), averaged over views"),
    Metric("ssim", "SSIM", True, 3, "Gaussian 11×11 σ=1.5 SSIM per view (scikit-image's definition), averaged over views"),
    Metric("lpips", "LPIPS", False, 3, "LPIPS distance per view, averaged over views"),
    Metric("clip_image", "CLIP image", True, 3, "cosine similarity of CLIP embeddings of the input view and each predicted view, averaged"),
    Metric(
        "clip_text",
        "CLIP text",
        True,
        3,
        "cosine similarity of CLIP embeddings of the orbit's prompt and each predicted view, averaged (orbits with a prompt)",
    ),
    Metric("chamfer", "Chamfer", False, 4, "½(mean pred→true + mean true→pred nearest-point distance), world units, asset frame"),
    Metric("fscore", "F-score", True, 3, "harmonic mean of precision and recall of points within τ of the other surface"),
)
METRIC_KEYS = tuple(metric.key for metric in METRICS)

REFERENCE_RESULTS = (
    ("VFusion3D (paper; prompt images)", {"clip_text": 0.253, "clip_image": 0.851}),
    ("VFusion3D (paper; synthetic → 3D fine-tune)", {"ssim": 0.842, "lpips": 0.143}),
    ("VFusion3D (third-party GSO evaluation)", {"psnr": 17.42, "ssim": 0.846, "lpips": 0.155, "chamfer": 0.161, "fscore": 0.637}),
    ("InstantMesh (same GSO evaluation)", {"psnr": 16.80, "ssim": 0.786, "lpips": 0.207, "chamfer": 0.123, "fscore": 0.737}),
)
"""Published numbers (the VFusion3D paper and a third-party GSO evaluation), for orientation only: other data, renders and definitions
(docs/vfusion3d.md#results-to-beat)."""


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and math.isfinite(float(value))


def summarise(values: list[Any]) -> dict[str, float | int | None]:
    """{"mean", "std", "count"} of the finite values (population std, ddof 0); None without any."""
    finite = [float(value) for value in values if _finite(value)]
    if not finite:
        return {"mean": None, "std": None, "count": 0}
    return {"mean": float(np.mean(finite)), "std": float(np.std(finite)), "count": len(finite)}


def aggregate(objects: list[dict[str, Any]], model_names: list[str]) -> dict[str, dict[str, dict]]:
    """{model: {metric: summarise(values over objects)}}."""
    return {
        name: {key: summarise([obj["results"].get(name, {}).get(key) for obj in objects]) for key in METRIC_KEYS} for name in model_names
    }


def object_delta(obj: dict[str, Any], model: str, baseline: str, key: str) -> float | None:
    """model − baseline for one object and metric, or None when either is missing."""
    value, reference = obj["results"].get(model, {}).get(key), obj["results"].get(baseline, {}).get(key)
    return float(value) - float(reference) if _finite(value) and _finite(reference) else None


def deltas(objects: list[dict[str, Any]], model_names: list[str]) -> dict[str, dict[str, Any]]:
    """{model: {"baseline": first model, metric: summarise(per-object model − baseline)}} for every
    model after the first (objects where both have the metric)."""
    if len(model_names) < 2:
        return {}
    baseline = model_names[0]
    return {
        name: {"baseline": baseline, **{key: summarise([object_delta(obj, name, baseline, key) for obj in objects]) for key in METRIC_KEYS}}
        for name in model_names[1:]
    }


def _format(value: Any, digits: int, signed: bool = False) -> str:
    if not _finite(value):
        return "—"
    value = float(value)
    if abs(value) < 0.5 * 10.0**-digits:
        value = 0.0  # no "-0.000"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _mean_std(summary: dict[str, Any], digits: int, signed: bool = False) -> str:
    if summary.get("mean") is None:
        return "—"
    return f"{_format(summary['mean'], digits, signed)} ± {_format(summary['std'], digits)}"


def _cell(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> list[str]:
    """Markdown table lines; columns after the first `text_columns` are right-aligned numbers."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if index < text_columns else "---:" for index in range(len(header))) + "|",
    ]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def reported_metrics(document: dict[str, Any]) -> list[Metric]:
    """The metrics with at least one value in the document (skipped ones get no column)."""
    present = {key for obj in document["objects"] for result in obj["results"].values() for key in METRIC_KEYS if _finite(result.get(key))}
    return [metric for metric in METRICS if metric.key in present]


def markdown_report(document: dict[str, Any]) -> str:
    """report.md for an evaluation document (see `vf3d.evaluation.evaluate.evaluate`)."""
    names = [model["name"] for model in document["models"]]
    metrics = reported_metrics(document)
    threshold = document["geometry"]["threshold"]
    column = {metric.key: f"{metric.name} {metric.arrow}" for metric in metrics}
    if "fscore" in column:
        column["fscore"] = f"F@{threshold:g} ↑"
    title = "Evaluation: " + (" vs ".join(f"`{_cell(name)}`" for name in names))
    lines = [f"# {title}", ""]
    for warning in document["warnings"]:
        lines += [f"> **WARNING: {warning}**", ""]

    lines += ["## Setup", ""]
    for model in document["models"]:
        lines.append(f"- model `{_cell(model['name'])}`: `{_cell(model['dir'])}` ({model['parameters']:,} parameters)")
    clip = document["clip"]
    resolution = (
        f"{document['config']['resolution']}×{document['config']['resolution']} px"
        if document["config"]["resolution"]
        else "the orbit's resolution"
    )
    lines += [
        f"- data: `{_cell(document['data'])}` — {len(document['objects'])} object{'s' if len(document['objects']) != 1 else ''}; input = orbit view 0, "
        f"{document['config']['num_views']} novel views per object spread evenly around the orbit, compared at {resolution}",
        f"- CLIP: {'skipped' if not clip['enabled'] else _cell(clip['description'])}"
        + (" — **random CLIP weights: similarities are meaningless**" if clip.get("random") else ""),
        f"- LPIPS: {document['lpips']['net']}"
        + (
            " — **random LPIPS backbone: LPIPS is not perceptual**"
            if document["lpips"]["random_backbone"]
            else f" backbone from `{_cell(document['lpips']['backbone_path'])}`"
        ),
        f"- geometry: {document['geometry']['description']}",
        f"- device: {document['device']}{' with ' + document['autocast'] + ' autocast' if document['autocast'] else ''}; {document['seconds']:.1f} s in all",
        "",
    ]

    lines += ["## Summary", ""]
    header = (
        ["metric", "definition"]
        + [f"`{_cell(name)}`" for name in names]
        + [f"Δ `{_cell(name)}` − `{_cell(names[0])}`" for name in names[1:]]
    )
    rows = []
    for metric in metrics:
        definition = metric.definition + (f"; τ = {threshold:g}" if metric.key == "fscore" else "")
        row = [column[metric.key], definition]
        row += [
            _mean_std(document["aggregate"][name][metric.key], metric.digits) + f" (n={document['aggregate'][name][metric.key]['count']})"
            for name in names
        ]
        row += [_mean_std(document["deltas"][name][metric.key], metric.digits, signed=True) for name in names[1:]]
        rows.append(row)
    lines += _table(header, rows, text_columns=2) + [
        "",
        "mean ± std over objects (population std); Δ is per object, then averaged. ↑: higher is better; ↓: lower is better.",
        "",
    ]

    lines += ["## Per object", ""]
    if len(names) > 1:
        lines += ["Each cell: " + " / ".join(f"`{_cell(name)}`" for name in names) + f" (Δ against `{_cell(names[0])}`).", ""]

    def compared(values: list[str], changes: list[str]) -> str:  # one cell for all models
        return " / ".join(values) + (f" ({', '.join(changes)})" if changes else "")

    header = ["#", "object", "prompt"] + [column[metric.key] for metric in metrics]
    rows = []
    notes = []
    for index, obj in enumerate(document["objects"], start=1):
        row = [str(index), f"`{_cell(obj['id'])}`", _cell(obj["prompt"][:40]) if obj["prompt"] else "—"]
        for metric in metrics:
            values = [_format(obj["results"].get(name, {}).get(metric.key), metric.digits) for name in names]
            changes = [_format(object_delta(obj, name, names[0], metric.key), metric.digits, signed=True) for name in names[1:]]
            row.append(compared(values, changes))
        rows.append(row)
        for name in names:
            for note in obj["results"].get(name, {}).get("notes", []):
                notes.append(f"- {index} `{_cell(obj['id'])}`" + (f" (`{_cell(name)}`)" if len(names) > 1 else "") + f": {_cell(note)}")
        for note in obj.get("notes", []):
            notes.append(f"- {index} `{_cell(obj['id'])}`: {_cell(note)}")
    summary_row = ["", "**mean ± std**", ""]
    for metric in metrics:
        values = [_mean_std(document["aggregate"][name][metric.key], metric.digits) for name in names]
        changes = [_mean_std(document["deltas"][name][metric.key], metric.digits, signed=True) for name in names[1:]]
        summary_row.append(compared(values, changes))
    lines += _table(header, rows + [summary_row], text_columns=3) + [""]
    if notes:
        lines += ["Notes (— marks a metric that could not be computed):", "", *notes, ""]

    figures = document.get("figures", {})
    if figures.get("views") or figures.get("bars"):
        lines += ["## Figures", ""]
        if figures.get("bars"):
            lines += [
                f"Per-object metrics ({'the first ' + str(figures['bar_objects']) + ' objects' if figures['bar_objects'] < len(document['objects']) else 'every object'}):",
                "",
                f"![per-object metrics]({figures['bars']})",
                "",
            ]
        for entry in figures.get("views", []):
            lines += [
                f"`{_cell(entry['id'])}` — top row: input and true views; below: "
                + ", ".join(f"`{_cell(name)}`" for name in names)
                + " (the model's input, then its predicted views)",
                "",
                f"![{_cell(entry['id'])}]({entry['path']})",
                "",
            ]

    lines += [
        "## Published numbers, for orientation",
        "",
        "Other data, renders, models and metric implementations: not directly comparable.",
        "",
    ]
    header = ["result"] + [f"{metric.name} {metric.arrow}" for metric in METRICS]
    lines += _table(
        header, [[label] + [_format(values.get(metric.key), metric.digits) for metric in METRICS] for label, values in REFERENCE_RESULTS]
    ) + [""]
    return "\n".join(lines)
