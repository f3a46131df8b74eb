"""The quality filter's probe, for the failures the cheap checks (vf3d.synthesis.heuristics) miss.

`QualityFilter` scores identity drift and smeared or noisy views with a logistic-regression probe
on frozen DINOv2 features, as VFusion3D did with a linear SVM on DINO features of ~2K hand-labelled
videos (docs/vfusion3d.md#data-engine). `train_filter` fits it from a labels file and orbit shards.

Pure numpy/torch (the Ray Data stages that call this live in stages.py); no ray import.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from vf3d import config as config_lib
from vf3d import storage
from vf3d.atomic import write_json_atomic
from vf3d.data import shards
from vf3d.models.config import FilterEncoderConfig, QualityProbeConfig
from vf3d.models.pretrained import CONFIG_NAME, ModelDirectoryError
from vf3d.models.quality_filter import OrbitFeatureEncoder, QualityProbe
from vf3d.synthesis.config import TrainFilterConfig

LABEL_VALUES = {"good": True, "keep": True, "1": True, "true": True, "bad": False, "reject": False, "0": False, "false": False}
"""Accepted spellings of a label (compared case-insensitively, surrounding spaces ignored)."""
FINGERPRINT_KEY = "encoder_fingerprint"
"""Key of `OrbitFeatureEncoder.fingerprint()` (weights + preprocessing) in a saved filter's config.json."""
REPORT_NAME = "filter_report.json"
"""What `train_filter` measured (counts, accuracies, ROC AUC, threshold, config), in its out_dir."""
CONFIG_FILE_NAME = "train_filter_config.json"
"""The resolved `TrainFilterConfig`, next to the filter it produced."""


class LabelsError(ValueError):
    """A labels file (or what it names) cannot be used; the one-line message names the file and
    the row or id."""


# ---------------------------------------------------------------------------------------------
# The probe filter
# ---------------------------------------------------------------------------------------------


class QualityFilter:
    """A frozen orbit-feature encoder + the quality probe fitted on its features.

    A saved filter is a `QualityProbe` directory whose config.json also records the fingerprint of
    the encoder it was fitted on; loading rebuilds the encoder from the probe's config (or the one
    given) and refuses it when the fingerprint differs, since the probe's weights mean nothing on
    another encoder's features.
    """

    def __init__(self, encoder: OrbitFeatureEncoder, probe: QualityProbe) -> None:
        if encoder.feature_dim != probe.config.feature_dim:
            raise ValueError(f"the probe reads {probe.config.feature_dim} features but the encoder makes {encoder.feature_dim}")
        self.encoder = encoder
        self.probe = probe

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, device: str | torch.device = "cpu", encoder: FilterEncoderConfig | None = None
    ) -> QualityFilter:
        """Load a filter written by `train_filter` / `save_pretrained`.

        Args:
            directory: the probe directory (a local path or an object-store URI).
            device: where encoder and probe run.
            encoder: build this encoder instead of the recorded one (e.g. the same DINOv2 weights
                at another path on this machine); it must have the same fingerprint.
        Raises:
            ModelDirectoryError: not a probe directory, no recorded fingerprint, or an encoder
                whose weights or preprocessing differ from those the probe was fitted on.
        """
        directory = storage.local_or_uri(directory)
        probe = QualityProbe.from_pretrained(directory, device=device)
        recorded = json.loads(storage.read_text(storage.join(directory, CONFIG_NAME))).get(FINGERPRINT_KEY)
        if not recorded:
            raise ModelDirectoryError(
                f"{directory}: no {FINGERPRINT_KEY} in {CONFIG_NAME}; save filters with train_filter or QualityFilter.save_pretrained"
            )
        encoder_config = encoder or probe.config.encoder
        orbit_encoder = OrbitFeatureEncoder(encoder_config)
        actual = orbit_encoder.fingerprint()
        if actual != recorded:
            source = encoder_config.encoder.pretrained_path or f"random init, seed {encoder_config.seed}"
            raise ModelDirectoryError(
                f"{directory}: the probe was fitted on an encoder with fingerprint {recorded[:12]}…, but the encoder built here ({source}) "
                f"has {actual[:12]}…; a probe only works with the exact encoder weights and preprocessing it was trained on"
            )
        return cls(orbit_encoder.to(device), probe)

    def save_pretrained(self, directory: str | os.PathLike) -> Path | str:
        """Write the probe (atomically; a local directory or an object-store URI) with the
        encoder's fingerprint in its config.json."""
        return self.probe.save_pretrained(directory, metadata={FINGERPRINT_KEY: self.encoder.fingerprint()})

    @property
    def threshold(self) -> float:
        """Scores at or above this pass (chosen on the training labels)."""
        return self.probe.config.threshold

    def score(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        """frames: uint8 [B, V, H, W, 3] orbits (views in orbit order) → float32 [B] P(good)."""
        features = self.encoder(torch.as_tensor(frames))
        device = next(self.probe.parameters()).device
        # The probe is tiny: run it in float32 even under a caller's bf16 autocast, so scores do not
        # move by the standardisation's rounding.
        with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
            scores = self.probe.score(features.to(device=device, dtype=torch.float32))
        return scores.cpu().numpy().astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------


def read_labels(path: str | os.PathLike) -> dict[str, bool]:
    """Read a labels file (a local path or an object-store URI): {orbit id: True for good, False for bad}.

    Formats (by suffix): .csv with a header; .jsonl/.ndjson/.json with one JSON object per line
    (a .json file holding one array of objects works too); .parquet. Each row needs `id` and
    `label`; labels are good/bad, keep/reject, 1/0 or true/false, case-insensitive. An id may
    repeat with the same label.

    Raises:
        LabelsError naming the file and the line, row or id: unreadable or empty file, a missing
        column, an empty id, an unknown label, or an id labelled both ways.
    """
    path = storage.local_or_uri(path)
    if not storage.is_file(path):
        raise LabelsError(f"labels file not found: {path}")
    suffix = Path(storage.name(path)).suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson", ".json", ".parquet", ".pq"):
        raise LabelsError(f"{path}: unsupported labels format {suffix!r}; use .csv, .jsonl or .parquet")
    data = storage.read_bytes(path)
    if suffix == ".csv":
        rows = _csv_rows(path, data)
    elif suffix in (".jsonl", ".ndjson", ".json"):
        rows = _json_rows(path, data)
    else:
        rows = _parquet_rows(path, data)

    labels: dict[str, bool] = {}
    labelled_where: dict[str, str] = {}
    for where, raw_id, raw_label in rows:
        identifier = "" if raw_id is None else str(raw_id).strip()
        if not identifier:
            raise LabelsError(f"{path}: {where}: empty id")
        label = _parse_label(raw_label)
        if label is None:
            raise LabelsError(
                f"{path}: {where} (id {identifier!r}): unknown label {raw_label!r}; use good/bad, keep/reject, 1/0 or true/false"
            )
        if identifier in labels and labels[identifier] != label:
            raise LabelsError(
                f"{path}: id {identifier!r} is labelled {_label_name(labels[identifier])} at {labelled_where[identifier]} and {_label_name(label)} at {where}"
            )
        labels[identifier] = label
        labelled_where.setdefault(identifier, where)
    if not labels:
        raise LabelsError(f"{path}: no labels (the file has no rows)")
    return labels


def _label_name(label: bool) -> str:
    return "good" if label else "bad"


def _parse_label(value: Any) -> bool | None:
    """A label value → True (good) / False (bad), or None when it is none of the accepted ones."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        return LABEL_VALUES.get(value.strip().lower())
    return None


def _missing_columns(path: Path | str, where: str, present: Sequence[str]) -> LabelsError:
    missing = [name for name in ("id", "label") if name not in present]
    return LabelsError(
        f"{path}: {where}: missing column(s) {', '.join(repr(name) for name in missing)} (found {', '.join(map(repr, present)) or 'none'})"
    )


def _csv_rows(path: Path | str, data: bytes) -> Iterator[tuple[str, Any, Any]]:
    """(where, id, label) per data row of a CSV file with a header (`data`, the content of `path`)."""
    with io.StringIO(data.decode("utf-8-sig"), newline="") as file:  # -sig: spreadsheets write a BOM
        reader = csv.DictReader(file)
        if reader.fieldnames is None:
            raise LabelsError(f"{path}: no labels (the file is empty)")
        reader.fieldnames = [name.strip() for name in reader.fieldnames]
        if not {"id", "label"} <= set(reader.fieldnames):
            raise _missing_columns(path, "header", reader.fieldnames)
        for row in reader:
            yield f"line {reader.line_num}", row["id"], row["label"]


def _json_rows(path: Path | str, data: bytes) -> Iterator[tuple[str, Any, Any]]:
    """(where, id, label) per object of a JSON-lines file (or of one JSON array)."""
    text = data.decode("utf-8-sig")
    if text.lstrip().startswith("["):
        try:
            items = [(f"item {number}", item) for number, item in enumerate(json.loads(text), start=1)]
        except json.JSONDecodeError as error:
            raise LabelsError(f"{path}: line {error.lineno}: not valid JSON ({error.msg})") from None
    else:
        items = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    items.append((f"line {number}", json.loads(line)))
                except json.JSONDecodeError as error:
                    raise LabelsError(f"{path}: line {number}: not valid JSON ({error.msg})") from None
    for where, item in items:
        if not isinstance(item, dict):
            raise LabelsError(f"{path}: {where}: expected an object with 'id' and 'label', got {type(item).__name__}")
        if "id" not in item or "label" not in item:
            raise _missing_columns(path, where, list(item))
        yield where, item["id"], item["label"]


def _parquet_rows(path: Path | str, data: bytes) -> Iterator[tuple[str, Any, Any]]:
    """(where, id, label) per row of a Parquet file."""
    try:
        names = pq.read_schema(pa.BufferReader(data)).names
        if not {"id", "label"} <= set(names):
            raise _missing_columns(path, "schema", names)
        table = pq.read_table(pa.BufferReader(data), columns=["id", "label"])
    except (pa.ArrowException, OSError) as error:
        raise LabelsError(f"{path}: not a readable Parquet file ({' '.join(str(error).split())[:200]})") from None
    for number, (identifier, label) in enumerate(zip(table.column("id").to_pylist(), table.column("label").to_pylist()), start=1):
        yield f"row {number}", identifier, label


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def train_filter(
    labels_path: str | os.PathLike,
    data_dirs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    config: TrainFilterConfig,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fit the quality probe on labelled orbits and save the filter.

    Steps: read the labels; find every labelled id in the orbit and rejected tables of the shard
    directories (ids only, before any image is read); split the ids into training and validation
    by hashing them with `config.seed`; encode the labelled orbits (their uniform-azimuth views) in
    batches with the frozen encoder, on CUDA when available; fit L2-regularised logistic regression
    on the standardised training features; choose the threshold that maximises balanced accuracy
    on the training split; save the filter and the report.

    Every location may be a local path or an object-store URI (`s3://`, `gs://`; vf3d.storage);
    the outputs are published whole (weights, then config.json, then the report and the config).

    Args:
        labels_path: CSV / JSONL / Parquet labels (`read_labels`).
        data_dirs: orbit shard directories; an id found in several is taken from the first
            (orbits table before rejected table).
        out_dir: where the filter (config.json + model.safetensors), `filter_report.json` and
            `train_filter_config.json` go.
        config: the resolved `TrainFilterConfig`.
        log: receives one-line progress messages.
    Returns:
        the report written to `out_dir/filter_report.json`.
    Raises:
        LabelsError: bad labels file, labelled ids missing from the shards, or fewer than 2
            orbits of either class.
        FileNotFoundError: a data directory does not exist.
    """
    started = time.perf_counter()
    config.validate()
    labels_path, out_dir = storage.local_or_uri(labels_path), storage.local_or_uri(out_dir)
    data_dirs = [storage.local_or_uri(directory) for directory in data_dirs]
    labels = read_labels(labels_path)
    good = sum(labels.values())
    log(f"train-filter: {len(labels)} labelled orbits ({good} good, {len(labels) - good} bad) from {labels_path}")

    locations = _locate_orbits(set(labels), data_dirs)
    unknown = sorted(set(labels) - set(locations))
    if unknown:
        shown = ", ".join(repr(identifier) for identifier in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise LabelsError(
            f"{labels_path}: {len(unknown)} labelled id(s) are in no orbit or rejected shard of {', '.join(map(str, data_dirs))}: {shown}"
        )
    if good < 2 or len(labels) - good < 2:
        raise LabelsError(
            f"{labels_path}: need at least 2 good and 2 bad orbits to fit a probe, got {good} good and {len(labels) - good} bad"
        )

    validation = _validation_ids(labels, config.validation_fraction, config.seed)
    training_ids = sorted(identifier for identifier in labels if identifier not in validation)
    validation_ids = sorted(validation)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoder = OrbitFeatureEncoder(config.encoder).to(device)
    log(
        f"train-filter: encoding {len(labels)} orbits ({config.encoder.num_views} views each, {config.batch_size} orbits per batch) on {device}"
    )
    features = _encode_orbits(locations, encoder, config.batch_size, log)

    def stacked(ids: list[str]) -> tuple[torch.Tensor, np.ndarray]:
        rows = torch.stack([features[identifier] for identifier in ids]) if ids else torch.zeros(0, encoder.feature_dim)
        return rows, np.array([labels[identifier] for identifier in ids], dtype=bool)

    training_features, training_labels = stacked(training_ids)
    validation_features, validation_labels = stacked(validation_ids)
    probe = fit_quality_probe(training_features, training_labels, config)
    with torch.no_grad():
        training_scores = probe.score(training_features).numpy()
        validation_scores = probe.score(validation_features).numpy()
    threshold = best_threshold(training_scores, training_labels)
    probe.config.threshold = threshold

    notes = []
    for name, wanted in (("good", True), ("bad", False)):
        if not (validation_labels == wanted).any():
            notes.append(
                f"the validation split has no {name} orbits: balanced accuracy and ROC AUC are not measured (label more, or raise validation_fraction)"
            )
    report = {
        "labels_path": str(labels_path),
        "data_dirs": [str(directory) for directory in data_dirs],
        "counts": {
            "labelled": len(labels),
            "good": good,
            "bad": len(labels) - good,
            "from_rejected": sum(1 for _, table in locations.values() if table == "rejected"),
            "train": {"good": int(training_labels.sum()), "bad": int((~training_labels).sum())},
            "validation": {"good": int(validation_labels.sum()), "bad": int((~validation_labels).sum())},
        },
        "threshold": threshold,
        "train": _classification_metrics(training_scores, training_labels, threshold),
        "validation": _classification_metrics(validation_scores, validation_labels, threshold),
        "feature_dim": encoder.feature_dim,
        FINGERPRINT_KEY: encoder.fingerprint(),
        "device": str(device),
        "notes": notes,
        "seconds": round(time.perf_counter() - started, 3),
        "config": config_lib.to_dict(config),
    }

    QualityFilter(encoder, probe).save_pretrained(out_dir)
    report_path = storage.join(out_dir, REPORT_NAME)
    write_json_atomic(report_path, report)  # readers never see half a report
    config_lib.save_json(config, storage.join(out_dir, CONFIG_FILE_NAME))
    validation_metrics = report["validation"]
    log(
        f"train-filter: threshold {threshold:.3f}; accuracy {_rounded(report['train']['accuracy'])} (train), {_rounded(validation_metrics['accuracy'])} "
        f"(validation); validation balanced accuracy {_rounded(validation_metrics['balanced_accuracy'])}, ROC AUC {_rounded(validation_metrics['roc_auc'])}"
    )
    for note in notes:
        log(f"train-filter: note: {note}")
    log(f"train-filter: filter saved to {out_dir} (report: {report_path})")
    return report


def _rounded(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _locate_orbits(wanted: set[str], data_dirs: Sequence[Path | str]) -> dict[str, tuple[Path | str, str]]:
    """{id: (shard file, table)} of the wanted ids, reading only the id column of every shard
    (local paths or URIs)."""
    locations: dict[str, tuple[Path | str, str]] = {}
    for directory in data_dirs:
        if not storage.is_dir(directory):
            raise FileNotFoundError(f"data directory not found: {directory}")
        for table in ("orbits", "rejected"):
            for path in shards.list_shard_files(directory, table):
                source, filesystem = storage.arrow_source(path)
                for identifier in pq.read_table(source, columns=["id"], filesystem=filesystem).column("id").to_pylist():
                    if identifier in wanted and identifier not in locations:
                        locations[identifier] = (path, table)
    return locations


def _validation_ids(labels: dict[str, bool], fraction: float, seed: int) -> set[str]:
    """Ids held out for validation: those whose hash of (seed, id) falls below `fraction`.

    Hashing keeps an id on the same side whatever else is labelled. Each class keeps at least one
    training example: if all of a class hashed into validation, its highest-hashed one goes back.
    """

    def position(identifier: str) -> float:
        digest = hashlib.sha256(f"{seed}:{identifier}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    validation = {identifier for identifier in labels if position(identifier) < fraction}
    for wanted in (True, False):
        members = [identifier for identifier, label in labels.items() if label == wanted]
        if all(identifier in validation for identifier in members):
            validation.discard(max(members, key=position))
    return validation


def _encode_orbits(
    locations: dict[str, tuple[Path | str, str]], encoder: OrbitFeatureEncoder, batch_size: int, log: Callable[[str], None]
) -> dict[str, torch.Tensor]:
    """Features float32 [F] (on the CPU) of every located orbit, encoded `batch_size` at a time."""
    features: dict[str, torch.Tensor] = {}
    batches_between_logs = max(1, math.ceil(len(locations) / batch_size) // 10)  # about ten lines
    pending: list[tuple[str, torch.Tensor]] = []

    def flush() -> None:
        # Orbits of different sizes cannot share a tensor: encode each shape group separately.
        shapes: dict[tuple[int, ...], list[tuple[str, torch.Tensor]]] = {}
        for identifier, frames in pending:
            shapes.setdefault(tuple(frames.shape), []).append((identifier, frames))
        for group in shapes.values():
            encoded = encoder(torch.stack([frames for _, frames in group])).cpu()
            features.update((identifier, row) for (identifier, _), row in zip(group, encoded))
        pending.clear()

    for identifier, frames in _read_orbit_views(locations):
        pending.append((identifier, frames))
        if len(pending) == batch_size:
            flush()
            if (len(features) // batch_size) % batches_between_logs == 0:
                log(f"train-filter: encoded {len(features)}/{len(locations)} orbits")
    flush()
    log(f"train-filter: encoded {len(features)}/{len(locations)} orbits")
    return features


def _read_orbit_views(locations: dict[str, tuple[Path | str, str]]) -> Iterator[tuple[str, torch.Tensor]]:
    """(id, frames float32 [V, H, W, 3] in [0, 1]) of the located orbits, file by file, reading
    only their rows (row groups without them are skipped by the id statistics) and only the
    uniform-azimuth views (extra random views are not part of the video)."""
    by_file: dict[Path | str, list[str]] = {}
    for identifier, (path, _) in locations.items():
        by_file.setdefault(path, []).append(identifier)
    for path, ids in sorted(by_file.items(), key=lambda item: str(item[0])):
        columns = ["id", "frames", "masks", "cameras", "num_orbit_views", "resolution"]
        source, filesystem = storage.arrow_source(path)
        rows = pq.read_table(source, columns=columns, filters=[("id", "in", ids)], filesystem=filesystem).to_pylist()
        for row in rows:
            decoded = shards.decode_row(row)
            yield row["id"], decoded["frames"][: row["num_orbit_views"]].permute(0, 2, 3, 1)


def fit_quality_probe(features: torch.Tensor, labels: np.ndarray, config: TrainFilterConfig) -> QualityProbe:
    """Logistic regression on standardised features, L2-penalised, fitted with full-batch L-BFGS.

    Minimises mean_i w_i·BCE(x_i·β + b, y_i) + l2·‖β‖², with w_i weighting both classes equally
    (labelled sets are rarely balanced) and the bias unpenalised. Starting from zero weights, the
    fit is deterministic. Computed in float64 (L-BFGS's line search needs the precision), stored
    in float32.

    Args:
        features: float32 [N, F] training features (OrbitFeatureEncoder of `config.encoder`).
        labels: bool [N], True = good; both classes present.
        config: l2 and max_iterations of the fit; its encoder is recorded in the probe's config.
    Returns:
        the probe (threshold 0.5 until the caller chooses one).
    """
    mean = features.double().mean(dim=0)
    std = features.double().std(dim=0, correction=0)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # a constant feature carries no signal
    x = (features.double() - mean) / std
    y = torch.as_tensor(labels, dtype=torch.float64)
    positives = float(y.sum())
    sample_weights = torch.where(y > 0, len(y) / (2 * positives), len(y) / (2 * (len(y) - positives)))

    weight = torch.zeros(features.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=config.max_iterations, tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        losses = torch.nn.functional.binary_cross_entropy_with_logits(x @ weight + bias, y, reduction="none")
        loss = (sample_weights * losses).mean() + config.l2 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    probe = QualityProbe(QualityProbeConfig(encoder=config.encoder, feature_dim=features.shape[1]))
    with torch.no_grad():
        probe.feature_mean.copy_(mean.float())
        probe.feature_std.copy_(std.float())
        probe.linear.weight.copy_(weight.detach().float()[None])
        probe.linear.bias.copy_(bias.detach().float()[None])
    return probe.eval()


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The score threshold (predict good when score ≥ threshold) with the best balanced accuracy.

    Candidates lie halfway between consecutive distinct scores (plus the lowest score itself), so
    the threshold sits in a gap rather than on an example; among equally good candidates the median
    one is taken, the middle of the best range.

    Args:
        scores: float [N] in [0, 1]; labels: bool [N] with both classes.
    """
    distinct = np.unique(scores.astype(np.float64))
    candidates = np.concatenate([distinct[:1], (distinct[:-1] + distinct[1:]) / 2])
    accuracies = np.array([_balanced_accuracy(scores >= candidate, labels) for candidate in candidates])
    best = candidates[accuracies == accuracies.max()]
    return float(np.clip(best[(len(best) - 1) // 2], 0.0, 1.0))


def _balanced_accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Mean of the recall of good and the recall of bad orbits (both classes must be present)."""
    return float(((predictions[labels]).mean() + (~predictions[~labels]).mean()) / 2)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a random good orbit > score of a random bad one),
    ties counting half (the Mann–Whitney statistic). Needs both classes."""
    good, bad = scores[labels].astype(np.float64), scores[~labels].astype(np.float64)
    greater = (good[:, None] > bad[None, :]).sum()
    ties = (good[:, None] == bad[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(good) * len(bad)))


def _classification_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float | None]:
    """accuracy, balanced_accuracy and roc_auc at `threshold`; None where they cannot be measured
    (no examples, or only one class)."""
    both_classes = bool(labels.any() and (~labels).any())
    predictions = scores >= threshold
    return {
        "accuracy": float((predictions == labels).mean()) if len(labels) else None,
        "balanced_accuracy": _balanced_accuracy(predictions, labels) if both_classes else None,
        "roc_auc": roc_auc(scores, labels) if both_classes else None,
    }
