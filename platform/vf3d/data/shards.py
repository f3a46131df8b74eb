"""Orbit shards: the one module that owns the on-disk format of rendered and synthesised orbits.

An orbit is V views of one object: the first `num_orbit_views` at uniform azimuth around it (the
"orbit", at one elevation), optionally followed by extra views from random directions. Orbit
shards are Parquet files holding one row per orbit. Renders of 3D assets (`vf3d render-assets`)
and videos from the multi-view generator (`vf3d synthesize`) share this format, so the
reconstructor trainer and the evaluation read both the same way.

Schema (`ORBIT_SCHEMA`, `FORMAT_VERSION` = 1); V may differ between rows, never within one:

    column           type                                   meaning
    id               string, not null                       stable key of the orbit, unique across
                                                            a dataset (derived from the asset or the
                                                            prompt, never from run order), so reruns
                                                            can skip finished orbits
    source           string, not null                       "render" (3D asset) or "synthetic"
                                                            (video model output)
    prompt           string, not null                       text prompt of a synthetic orbit; a
                                                            caption or "" for renders
    asset            string, nullable                       relative path of the source 3D asset
                                                            (the evaluation needs it for Chamfer
                                                            distance); null for synthetic orbits
    frames           list<binary>, not null                 V encoded RGB images composited on
                                                            WHITE; PNG by default, WebP (lossless)
                                                            allowed; readers detect the format from
                                                            the bytes
    masks            list<binary>, not null                 V encoded 8-bit grayscale PNG foreground
                                                            masks, 255 = object
    cameras          list<fixed_size_list<float32, 25>>,    V 25-D render-camera vectors (flattened
                     not null                               4×4 camera-to-world pose + normalised
                                                            3×3 K; see vf3d.cameras)
    num_orbit_views  int32, not null                        the first N views are the uniform-azimuth
                                                            orbit; views N..V-1 are extra random views
    elevation        float32, not null                      elevation of the orbit in degrees
    resolution       int32, not null                        side of the square frames and masks, pixels
    quality          float32, nullable                      quality-filter score of a synthetic orbit
                                                            (higher is better); null for renders
    format_version   int16, not null                        FORMAT_VERSION of the writer
    metadata         string, not null                       JSON object, free-form: renderer settings,
                                                            seed, timings, model versions

A shard directory:

    out_dir/
        orbits-<16 hex>.parquet                   orbit rows; the name is the sha1 of the sorted
                                                  ids the file holds, so rewriting the same orbits
                                                  replaces the file instead of duplicating it
        .orbits-<16 hex>.parquet.<tag>.partial    a write in progress, or left by a killed writer;
                                                  never read, removed by `remove_partials`
        _errors/orbits-<16 hex>.parquet           `ERROR_SCHEMA` rows: orbits that failed a stage
                                                  (id, asset, stage, reason, format_version)
        _rejected/orbits-<16 hex>.parquet         `REJECTED_SCHEMA` rows: synthetic orbits the
                                                  quality filter rejected, kept whole (frames,
                                                  scores in `quality` and `metadata`) with the
                                                  filter's `reasons`, so nothing is silently
                                                  dropped and rejects can be audited or labelled
        _ids/                                     id manifests (vf3d.data.manifest): which ids
                                                  each published file holds, so resuming reads
                                                  them instead of every shard's id column

The error table lives in `_errors/`, not `errors/`, because both `ray.data.read_parquet(out_dir)`
and `pyarrow.dataset.dataset(out_dir)` skip paths starting with "_" or "." when they list a
directory: a plain `errors/` would be read as orbit rows with the wrong schema. The same rule keeps
rejected orbits (`_rejected/`) out of training data and readers away from `.partial` files.

Rows hold images, so row groups are small (`ROWS_PER_ROW_GROUP`) and readers can stream them.
Decoding turns a row into float or uint8 tensors, all views or only chosen ones (`decode_row`), or
a Ray Data numpy batch into stacked arrays (`decode_batch`); `ViewSampler` picks one training
sample (source view + k targets on random backgrounds, as OpenLRM's released trainer does), and its `choose` decides
the views before anything is decoded. This module imports neither ray nor deepspeed.

A shard directory may be a local path or an object-store URI (`s3://bucket/prefix`, `gs://...`;
vf3d.storage): the layout is the same, files are published atomically either way (vf3d.atomic),
and listings read one level of the directory (a delimiter listing on an object store).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from PIL import Image

from vf3d import atomic, storage
from vf3d.data import manifest as id_manifest

if TYPE_CHECKING:  # torch is imported where it is used: a planning driver needs none of it
    import torch

FORMAT_VERSION = 1
"""Version written into every row; bump it when the meaning of a column changes."""
KNOWN_FORMAT_VERSIONS = frozenset({1})
"""Versions this module can read."""
SOURCES = ("render", "synthetic")
CAMERA_DIM = 25
"""Length of a render-camera vector (vf3d.cameras.render_camera_vector)."""
IMAGE_FORMATS = ("png", "webp")
"""Encodings `encode_record` can write for frames; both are lossless. Masks are always PNG."""
ROWS_PER_ROW_GROUP = 16
"""Rows hold V images each: a small row group keeps a streaming reader's memory small."""
ERRORS_DIRNAME = "_errors"
"""Sub-directory of the error table ('_' keeps Ray Data and pyarrow.dataset from reading it)."""
REJECTED_DIRNAME = "_rejected"
"""Sub-directory of the rejected-orbit table (hidden from orbit readers the same way)."""
DEFAULT_BACKGROUND_COLORS = ((0.0, 0.0, 0.0), (0.5, 0.5, 0.5), (1.0, 1.0, 1.0))
"""Target background colours of the released trainer: black, grey, white (docs/vfusion3d.md#training-recipe)."""

ORBIT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("asset", pa.string()),
        pa.field("frames", pa.list_(pa.binary()), nullable=False),
        pa.field("masks", pa.list_(pa.binary()), nullable=False),
        pa.field("cameras", pa.list_(pa.list_(pa.float32(), CAMERA_DIM)), nullable=False),
        pa.field("num_orbit_views", pa.int32(), nullable=False),
        pa.field("elevation", pa.float32(), nullable=False),
        pa.field("resolution", pa.int32(), nullable=False),
        pa.field("quality", pa.float32()),
        pa.field("format_version", pa.int16(), nullable=False),
        pa.field("metadata", pa.string(), nullable=False),
    ]
)
"""One row per orbit; see the module docstring for every column."""

ERROR_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("asset", pa.string()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("format_version", pa.int16(), nullable=False),
    ]
)
"""One row per orbit that failed: its id, its asset (if any), the stage that failed
("render", "generate", "filter", ...) and why. Errors are outputs too, so a rerun skips them
instead of retrying them forever."""

REJECTED_SCHEMA = ORBIT_SCHEMA.append(pa.field("reasons", pa.list_(pa.string()), nullable=False))
"""A rejected orbit: every `ORBIT_SCHEMA` column plus why the quality filter rejected it (one or
more reasons such as "static", "empty_foreground", "flicker", "probe_score")."""

_SCHEMAS = {"orbits": ORBIT_SCHEMA, "errors": ERROR_SCHEMA, "rejected": REJECTED_SCHEMA}
_TABLE_DIRNAMES = {"orbits": None, "errors": ERRORS_DIRNAME, "rejected": REJECTED_DIRNAME}
_DECODED_COLUMNS = ("frames", "masks", "cameras")
_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SHARD_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*-[0-9a-f]{16}\.parquet")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ShardFormatError(ValueError):
    """A table, row or record does not follow the orbit-shard format; the message names the
    column and, where there is one, the row id."""


# ---------------------------------------------------------------------------------------------
# Records and encoding
# ---------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class OrbitRecord:
    """One orbit before encoding. Give the images either as `rgba` or as `rgb` + `mask`.

    Attributes:
        id: stable, unique key of the orbit.
        source: "render" or "synthetic".
        prompt: text prompt ("" when there is none).
        asset: relative path of the source 3D asset, or None.
        rgba: uint8 [V, H, W, 4] straight (not premultiplied) colour + alpha, e.g. from a renderer;
            frames are stored composited on white, masks are the alpha channel.
        rgb: uint8 [V, H, W, 3] frames already on a white background (e.g. generated video
            frames), stored as they are; needs `mask`.
        mask: uint8 [V, H, W] foreground masks, 255 = object (with `rgb`).
        cameras: float32 [V, 25] render-camera vectors (other float dtypes are cast).
        num_orbit_views: how many leading views form the uniform-azimuth orbit; None = all V.
        elevation: orbit elevation in degrees.
        quality: quality-filter score, or None (renders).
        metadata: JSON-serialisable free-form details (renderer settings, seed, timings).
    """

    id: str
    source: str
    prompt: str
    cameras: np.ndarray | torch.Tensor
    elevation: float
    asset: str | None = None
    rgba: np.ndarray | torch.Tensor | None = None
    rgb: np.ndarray | torch.Tensor | None = None
    mask: np.ndarray | torch.Tensor | None = None
    num_orbit_views: int | None = None
    quality: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Straight RGBA over a white background, rounded to the nearest integer.

    Computes rgb·a + 255·(1 − a) with a = alpha/255 in exact integer arithmetic: the numerator
    rgb·alpha + 255·(255 − alpha) over 255 is never exactly k + 0.5, so rounding half up is
    rounding to nearest, with no float error at all.

    Args:
        rgba: uint8 [..., 4].
    Returns:
        uint8 [..., 3].
    """
    colour = rgba[..., :3].astype(np.int32)
    alpha = rgba[..., 3:4].astype(np.int32)
    numerator = colour * alpha + 255 * (255 - alpha)
    return ((numerator + 127) // 255).astype(np.uint8)


def encode_record(record: OrbitRecord, image_format: str = "png") -> dict[str, Any]:
    """Encode one orbit into a row of `ORBIT_SCHEMA` (a dict of plain Python values).

    Args:
        record: the orbit; images uint8, square, V ≥ 1 views.
        image_format: "png" or "webp" (lossless) for the frames; masks are always PNG.
    Returns:
        {column: value} with frames/masks as lists of V bytes and cameras as V lists of 25 floats.
    Raises:
        ShardFormatError naming the record id when shapes, dtypes or values are inconsistent.
    """
    where = f"record {record.id!r}"
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    if not isinstance(record.id, str) or not record.id:
        raise ShardFormatError(f"{where}: id must be a non-empty string")
    if record.source not in SOURCES:
        raise ShardFormatError(f"{where}: source must be one of {SOURCES}, got {record.source!r}")

    if record.rgba is not None:
        if record.rgb is not None or record.mask is not None:
            raise ShardFormatError(f"{where}: give either rgba or rgb + mask, not both")
        rgba = _uint8_array(record.rgba, "rgba", (4,), where)
        frames, masks = composite_on_white(rgba), rgba[..., 3]
    else:
        if record.rgb is None or record.mask is None:
            raise ShardFormatError(f"{where}: give either rgba or both rgb and mask")
        frames = _uint8_array(record.rgb, "rgb", (3,), where)
        masks = _uint8_array(record.mask, "mask", (), where)
        if masks.shape != frames.shape[:3]:
            raise ShardFormatError(f"{where}: mask has shape {masks.shape}, expected {frames.shape[:3]}")
    views, height, width = frames.shape[:3]
    if views < 1:
        raise ShardFormatError(f"{where}: an orbit needs at least one view")
    if height != width:
        raise ShardFormatError(f"{where}: frames must be square, got {height}×{width}")

    cameras = _as_numpy(record.cameras).astype(np.float32)
    if cameras.shape != (views, CAMERA_DIM):
        raise ShardFormatError(f"{where}: cameras have shape {cameras.shape}, expected ({views}, {CAMERA_DIM})")
    num_orbit_views = views if record.num_orbit_views is None else int(record.num_orbit_views)
    if not 1 <= num_orbit_views <= views:
        raise ShardFormatError(f"{where}: num_orbit_views={num_orbit_views} is outside 1..{views}")
    try:
        metadata = json.dumps(record.metadata, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise ShardFormatError(f"{where}: metadata is not JSON-serialisable ({error})") from error

    return {
        "id": record.id,
        "source": record.source,
        "prompt": record.prompt,
        "asset": record.asset,
        "frames": [_encode_image(frame, image_format) for frame in frames],
        "masks": [_encode_image(mask, "png") for mask in masks],
        "cameras": cameras.tolist(),  # float32 → Python float → float32 is exact
        "num_orbit_views": num_orbit_views,
        "elevation": float(record.elevation),
        "resolution": height,
        "quality": None if record.quality is None else float(record.quality),
        "format_version": FORMAT_VERSION,
        "metadata": metadata,
    }


def records_to_table(records: Iterable[OrbitRecord], image_format: str = "png") -> pa.Table:
    """Encode records into a validated `ORBIT_SCHEMA` table (rows in the given order)."""
    table = _rows_to_table([encode_record(record, image_format) for record in records], ORBIT_SCHEMA)
    validate_table(table)
    return table


def _as_numpy(array: np.ndarray | torch.Tensor) -> np.ndarray:
    if hasattr(array, "detach"):  # a torch.Tensor (checked without importing torch)
        return array.detach().cpu().numpy()
    return np.asarray(array)


def _uint8_array(array: np.ndarray | torch.Tensor, name: str, channels: tuple[int, ...], where: str) -> np.ndarray:
    """Checks a [V, H, W, *channels] uint8 image stack (floats are ambiguous: 0..1 or 0..255?)."""
    pixels = _as_numpy(array)
    if pixels.dtype != np.uint8:
        raise ShardFormatError(f"{where}: {name} must be uint8, got {pixels.dtype}")
    if pixels.ndim != 3 + len(channels) or pixels.shape[3:] != channels:
        raise ShardFormatError(f"{where}: {name} must have shape [V, H, W{''.join(f', {c}' for c in channels)}], got {pixels.shape}")
    return pixels


def _encode_image(pixels: np.ndarray, image_format: str) -> bytes:
    """uint8 [H, W, 3] (RGB) or [H, W] (grayscale) → PNG or lossless WebP bytes."""
    buffer = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(pixels))
    if image_format == "png":
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format="WEBP", lossless=True, quality=100)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def validate_table(table: pa.Table) -> None:
    """Check that `table` is a well-formed orbit table; raise ShardFormatError otherwise.

    Checks: the column names and types of `ORBIT_SCHEMA` (in any order; list item names and
    nullability flags are ignored, since Parquet renames list items), no nulls in required
    columns or inside frames/masks/cameras, ids unique, the same V in frames, masks and cameras of
    each row (V ≥ 1), 1 ≤ num_orbit_views ≤ V, known sources and format versions. Images are not
    decoded here (that is the reader's job and would cost as much as reading).
    """
    _check_schema(table, ORBIT_SCHEMA)
    ids = table.column("id").to_pylist()
    _check_unique_ids(ids)
    for name in _DECODED_COLUMNS:
        if _nested_null_count(table.column(name)):
            # Rare error path: finding the row may copy the column into Python objects.
            row = next(row for row, value in enumerate(table.column(name).to_pylist()) if _holds_null(value))
            raise ShardFormatError(f"row {ids[row]!r}: column {name!r} holds a null value")

    views = pc.list_value_length(table.column("frames")).to_numpy()
    for name in ("masks", "cameras"):
        lengths = pc.list_value_length(table.column(name)).to_numpy()
        if (lengths != views).any():
            row = int(np.flatnonzero(lengths != views)[0])
            raise ShardFormatError(f"row {ids[row]!r}: column {name!r} holds {lengths[row]} views but 'frames' holds {views[row]}")
    if (views < 1).any():
        raise ShardFormatError(f"row {ids[int(np.flatnonzero(views < 1)[0])]!r}: column 'frames' holds no views")
    orbit_views = table.column("num_orbit_views").to_numpy()
    outside = (orbit_views < 1) | (orbit_views > views)
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        raise ShardFormatError(f"row {ids[row]!r}: column 'num_orbit_views' is {orbit_views[row]}, outside 1..{views[row]}")
    for row, version in enumerate(table.column("format_version").to_pylist()):
        if version not in KNOWN_FORMAT_VERSIONS:
            raise ShardFormatError(
                f"row {ids[row]!r}: column 'format_version' is {version}, known versions are {sorted(KNOWN_FORMAT_VERSIONS)}"
            )
    for row, source in enumerate(table.column("source").to_pylist()):
        if source not in SOURCES:
            raise ShardFormatError(f"row {ids[row]!r}: column 'source' is {source!r}, expected one of {SOURCES}")


def _check_schema(table: pa.Table, schema: pa.Schema) -> None:
    names = table.schema.names
    if len(set(names)) != len(names):
        raise ShardFormatError(f"duplicate column names in {names}")
    missing = [name for name in schema.names if name not in names]
    unexpected = [name for name in names if name not in schema.names]
    if missing or unexpected:
        raise ShardFormatError(f"columns do not match the schema: missing {missing}, unexpected {unexpected}")
    for expected in schema:
        actual = table.schema.field(expected.name).type
        if _plain_type(actual) != _plain_type(expected.type):
            raise ShardFormatError(f"column {expected.name!r} has type {actual}, expected {expected.type}")
        column = table.column(expected.name)
        if not expected.nullable and column.null_count:
            row = int(np.flatnonzero(pc.is_null(column).to_numpy(zero_copy_only=False))[0])
            label = f"row {row}" if expected.name == "id" else f"row {table.column('id')[row].as_py()!r}"
            raise ShardFormatError(f"{label}: required column {expected.name!r} is null")


def _nested_null_count(column: pa.ChunkedArray) -> int:
    """Nulls at every nesting level of a list column (views, and floats inside a camera)."""
    count = 0
    while pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type):
        column = pc.list_flatten(column)
        count += column.null_count
    return count


def _holds_null(value: Any) -> bool:
    return value is None or (isinstance(value, list) and any(_holds_null(item) for item in value))


def _plain_type(data_type: pa.DataType) -> pa.DataType:
    """`data_type` with nested field names and nullability dropped (neither changes the data)."""
    if pa.types.is_fixed_size_list(data_type):
        return pa.list_(_plain_type(data_type.value_type), data_type.list_size)
    if pa.types.is_list(data_type):
        return pa.list_(_plain_type(data_type.value_type))
    return data_type


def _check_unique_ids(ids: Sequence[str]) -> None:
    seen: set[str] = set()
    for row_id in ids:
        if row_id in seen:
            raise ShardFormatError(f"column 'id' holds {row_id!r} more than once")
        seen.add(row_id)


def _rows_to_table(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows (dicts) → table of `schema`; unknown keys are an error (a typo would drop data)."""
    for row in rows:
        unexpected = set(row) - set(schema.names)
        if unexpected:
            raise ShardFormatError(f"row {row.get('id')!r}: unexpected columns {sorted(unexpected)}")
    try:
        return pa.Table.from_pylist(list(rows), schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise ShardFormatError(f"rows do not match the schema: {error}") from error


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def shard_file_name(ids: Iterable[str], prefix: str = "orbits") -> str:
    """`{prefix}-{first 16 hex of sha1 of the sorted ids joined by newlines}.parquet`.

    Depends only on the set of ids (and how often each occurs), never on order or run, so a
    rerun that writes the same orbits replaces the file instead of adding a duplicate.
    """
    digest = hashlib.sha1("\n".join(sorted(ids)).encode("utf-8")).hexdigest()
    return f"{prefix}-{digest[:16]}.parquet"


class OrbitShardWriter:
    """Writes orbit shards (and error rows) into one directory, atomically and idempotently.

    Each `write` produces one Parquet file named by `shard_file_name` of the ids it holds, rows
    sorted by id (so the same orbits give the same file), zstd-compressed, `ROWS_PER_ROW_GROUP`
    rows per row group. The file is first written as `.{name}.{random}.partial` in the same
    directory and then renamed with `os.replace`, so a reader sees either nothing or the whole
    file; the random tag keeps two writers of the same ids (a retried task racing its original)
    from writing into one partial file.

    After each rename the writer appends the file's ids to its own id log in `_ids/`
    (vf3d.data.manifest), which is what lets a resume skip reading every shard.

    Args:
        out_dir: the shard directory (created when missing).
        prefix: file-name prefix, e.g. "orbits", "render" or "synthetic".
        fsync: flush file and directory to disk before returning (slower; survives power loss,
            not only a killed process).
        manifest: keep the id log (readers fall back to the shards' id columns without it).
    """

    def __init__(self, out_dir: str | os.PathLike, prefix: str = "orbits", fsync: bool = False, manifest: bool = True):
        if not _PREFIX_PATTERN.fullmatch(prefix):
            raise ValueError(f"prefix must match {_PREFIX_PATTERN.pattern}, got {prefix!r}")
        self.out_dir = storage.local_or_uri(out_dir)
        self.prefix = prefix
        self.fsync = fsync
        storage.makedirs(self.out_dir)
        self._log = id_manifest.ManifestLog(self.out_dir, fsync=fsync) if manifest else None

    def close(self) -> None:
        """Close the id log (optional: an unclosed log reads the same)."""
        if self._log is not None:
            self._log.close()

    def write(self, data: pa.Table | Iterable[OrbitRecord | Mapping[str, Any]]) -> Path | str | None:
        """Validate and write one shard.

        Args:
            data: an `ORBIT_SCHEMA` table, or records (`OrbitRecord`, encoded as PNG) and/or
                encoded rows (dicts from `encode_record`).
        Returns:
            the path of the shard (a URI string on an object store), or None when there was
            nothing to write (no file is created).
        Raises:
            ShardFormatError when the rows are not valid orbits.
        """
        if isinstance(data, pa.Table):
            table = data
        else:
            rows = [encode_record(item) if isinstance(item, OrbitRecord) else item for item in data]
            table = _rows_to_table(rows, ORBIT_SCHEMA)
        if table.num_rows == 0:
            return None
        validate_table(table)
        table = table.select(ORBIT_SCHEMA.names).cast(ORBIT_SCHEMA).sort_by("id")
        return _write_atomically(table, self.out_dir, self.prefix, self.fsync, self._log, "orbits")

    def write_errors(self, rows: Iterable[Mapping[str, Any]]) -> Path | str | None:
        """Write error rows {id, asset (optional), stage, reason} to `_errors/` (same naming and
        atomic rename as `write`). Returns the path, or None for no rows."""
        rows = [{"asset": None, **row, "format_version": FORMAT_VERSION} for row in rows]
        if not rows:
            return None
        table = _rows_to_table(rows, ERROR_SCHEMA)
        _check_schema(table, ERROR_SCHEMA)
        directory = storage.join(self.out_dir, ERRORS_DIRNAME)
        storage.makedirs(directory)
        return _write_atomically(table.sort_by("id"), directory, self.prefix, self.fsync, self._log, "errors")

    def write_rejected(self, table: pa.Table) -> Path | str | None:
        """Write rejected orbits (`REJECTED_SCHEMA`: orbit columns + `reasons`) to `_rejected/`,
        validated like `write` and with the same naming and atomic rename. None for no rows."""
        if table.num_rows == 0:
            return None
        _check_schema(table, REJECTED_SCHEMA)
        if any(not reasons for reasons in table.column("reasons").to_pylist()):
            raise ShardFormatError("every rejected orbit needs at least one reason")
        validate_table(table.drop_columns(["reasons"]))
        directory = storage.join(self.out_dir, REJECTED_DIRNAME)
        storage.makedirs(directory)
        table = table.select(REJECTED_SCHEMA.names).cast(REJECTED_SCHEMA).sort_by("id")
        return _write_atomically(table, directory, self.prefix, self.fsync, self._log, "rejected")


def _write_atomically(
    table: pa.Table, directory: Path | str, prefix: str, fsync: bool, log: id_manifest.ManifestLog | None = None, table_name: str = "orbits"
) -> Path | str:
    """Write `table` as `directory/<shard_file_name>` via a partial file and a rename
    (`vf3d.atomic`: `.{name}.{8 hex}.partial`, which `remove_partials` deletes), then record its
    ids in `log`. The log entry comes after the rename: a kill in between leaves a shard
    without an entry, which readers handle by reading its id column; the other order could leave
    an entry for a file that never appeared, and that would claim ids nobody wrote. On an object
    store the partial file is a local staging file and the publish is an upload to a hidden
    partial key copied onto the final key (vf3d.storage.publish_file), so the same holds."""
    name = shard_file_name(table.column("id").to_pylist(), prefix)
    final_path = storage.join(directory, name)
    # Dictionaries and min/max statistics help scalar columns only: encoded images are unique
    # and incompressible, so both would be wasted work on frames and masks.
    scalar_columns = [f.name for f in table.schema if not (pa.types.is_list(f.type) or pa.types.is_binary(f.type))]
    with atomic.atomic_path(final_path, fsync=fsync) as partial_path:
        pq.write_table(
            table,
            partial_path,
            compression="zstd",
            row_group_size=ROWS_PER_ROW_GROUP,
            use_dictionary=scalar_columns,
            write_statistics=scalar_columns,
        )
    if log is not None:
        log.append(table_name, name, table.column("id").combine_chunks())
    return final_path


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def _table_directory(directory: str | os.PathLike, table: str) -> Path | str:
    if table not in _SCHEMAS:
        raise ValueError(f"table must be one of {sorted(_SCHEMAS)}, got {table!r}")
    subdirectory = _TABLE_DIRNAMES[table]
    return storage.join(directory, subdirectory) if subdirectory else storage.local_or_uri(directory)


def list_shard_files(directory: str | os.PathLike, table: str = "orbits") -> list[Path | str]:
    """Sorted shard files of `table` ("orbits", "errors" or "rejected") in a shard directory.

    Only complete shards count: `.partial` files and anything not named `{prefix}-{16 hex}.parquet`
    are ignored. A missing directory has no shards. Paths for a local directory, URI strings for
    an object store's.
    """
    folder = _table_directory(directory, table)
    return [storage.join(folder, name) for name in _shard_names(folder)]


def _shard_names(folder: Path | str) -> list[str]:
    """Sorted names of the complete shard files in `folder` (none when it does not exist)."""
    if storage.is_uri(folder):
        return [name for name, is_file in storage.list_dir(folder) if is_file and _SHARD_NAME_PATTERN.fullmatch(name)]
    if not folder.is_dir():
        return []
    # scandir's entries know their type without a stat per file on most filesystems, and names sort
    # as plain strings: listing 100k shards stays well under a second.
    with os.scandir(folder) as entries:
        return sorted(entry.name for entry in entries if _SHARD_NAME_PATTERN.fullmatch(entry.name) and entry.is_file())


TABLES = tuple(_SCHEMAS)
"""The tables of a shard directory: "orbits", "errors", "rejected"."""


@dataclass
class ShardIndex:
    """Which ids every complete shard file of a directory holds, from the id manifests (and the
    shards' id columns where no manifest entry exists).

    Attributes:
        entries: one row per listed shard file, `vf3d.data.manifest.MANIFEST_SCHEMA`:
            table (string), file (string, the name inside the table's folder), ids (list<string>).
        manifests: names of the manifest files read into `entries` (a later `index_shards` with
            `previous=` reads only newer ones).
        read_from_shards: how many shard files had no manifest entry and were read directly.
    """

    entries: pa.Table
    manifests: list[str]
    read_from_shards: int = 0

    def ids(self, table: str = "orbits") -> pa.Array:
        """string [rows of `table`], every id of every file of `table` (with repeats, if any)."""
        rows = self.entries.filter(pc.equal(self.entries.column("table"), table))
        return pc.list_flatten(rows.column("ids")).combine_chunks().cast(pa.string())

    def files(self, table: str) -> list[str]:
        """Names of the indexed files of `table`."""
        return self.entries.filter(pc.equal(self.entries.column("table"), table)).column("file").to_pylist()

    def files_holding(self, table: str, ids: id_manifest.IdSet) -> list[str]:
        """Names of the files of `table` holding at least one of `ids`."""
        rows = self.entries.filter(pc.equal(self.entries.column("table"), table))
        if not rows.num_rows or not len(ids):
            return []
        hits = ids.contains(pc.list_flatten(rows.column("ids")))
        parents = pc.list_parent_indices(rows.column("ids")).to_numpy(zero_copy_only=False)
        return [rows.column("file")[int(index)].as_py() for index in np.unique(parents[hits])]


def index_shards(
    directory: str | os.PathLike, tables: Sequence[str] = TABLES, previous: ShardIndex | None = None, threads: int = 16
) -> ShardIndex:
    """Index the complete shard files of `tables`: one listing of each table's folder, the id
    manifests, and the id column of any listed file without a manifest entry (every file of a
    directory written before manifests existed), read on `threads` threads.

    Cost: the listing plus the manifests, O(files + ids) in memory but a few files read; the
    shards themselves are read only when they have no entry. Entries for files no longer listed
    (moved to `_errors/_retried/`) are dropped.

    Args:
        directory: the shard directory.
        tables: which tables to index.
        previous: an index of the same directory from earlier in this process: its entries are
            kept (when their files are still listed) and its manifest files are not read again.
        threads: parallel readers for shards without an entry (I/O-bound: more than cores helps on
            network filesystems).
    """
    from concurrent.futures import ThreadPoolExecutor

    folders = {table: _table_directory(directory, table) for table in tables}
    listed = [(table, name) for table in tables for name in _shard_names(folders[table])]
    read, names = id_manifest.read_manifests(directory, skip=set(previous.manifests) if previous else frozenset())
    entries = pa.concat_tables([previous.entries, read]).combine_chunks() if previous is not None else read
    # Keep the entries of listed files of the wanted tables, each file once (a retried batch may
    # have recorded the same file twice); one filter at most, as each copies every id.
    keys = pc.binary_join_element_wise(entries.column("table"), entries.column("file"), "/")
    listed_keys = pa.array([f"{table}/{name}" for table, name in listed], pa.string())
    keep = pc.is_in(keys, value_set=listed_keys).to_numpy(zero_copy_only=False) if entries.num_rows else np.zeros(0, bool)
    if entries.num_rows:
        codes = pc.dictionary_encode(keys).combine_chunks().indices.to_numpy(zero_copy_only=False)
        _, first = np.unique(codes, return_index=True)
        first_of_key = np.zeros(entries.num_rows, bool)
        first_of_key[first] = True
        keep &= first_of_key
    if not keep.all():
        entries, keys = entries.filter(pa.array(keep)), keys.filter(pa.array(keep))
    covered = set(keys.to_pylist())
    missing = [(table, name, storage.join(folders[table], name)) for table, name in listed if f"{table}/{name}" not in covered]

    def read_one(item: tuple[str, str, Path | str]) -> tuple[str, str, pa.Array]:
        table, name, path = item
        source, filesystem = storage.arrow_source(path)
        return table, name, pq.read_table(source, columns=["id"], filesystem=filesystem).column("id").combine_chunks().cast(pa.string())

    if missing:
        with ThreadPoolExecutor(max_workers=max(1, min(threads, len(missing)))) as pool:
            found = list(pool.map(read_one, missing))
        offsets = np.concatenate([[0], np.cumsum([len(ids) for _, _, ids in found])]).astype(np.int32)
        flat = pa.concat_arrays([ids for _, _, ids in found]) if found else pa.array([], pa.string())
        extra = pa.table(
            [
                pa.array([table for table, _, _ in found], pa.string()),
                pa.array([name for _, name, _ in found], pa.string()),
                pa.ListArray.from_arrays(pa.array(offsets), flat),
            ],
            schema=id_manifest.MANIFEST_SCHEMA,
        )
        entries = pa.concat_tables([entries.cast(id_manifest.MANIFEST_SCHEMA), extra])
    return ShardIndex(
        entries=entries.cast(id_manifest.MANIFEST_SCHEMA).combine_chunks(),
        manifests=(previous.manifests if previous else []) + names,
        read_from_shards=len(missing),
    )


def compact_index(directory: str | os.PathLike, index: ShardIndex) -> ShardIndex:
    """Fold `index` into one manifest file and remove the manifest files it was read from, so the
    next resume reads one file (and no shard). Only while holding the directory's lease (see
    vf3d.synthesis.lease): another run's writers could be appending to those manifests."""
    if index.entries.num_rows == 0 and not index.manifests:
        return index
    name = id_manifest.write_index(directory, index.entries, index.manifests)
    return ShardIndex(entries=index.entries, manifests=[name], read_from_shards=index.read_from_shards)


def read_ids(directory: str | os.PathLike, table: str = "orbits") -> set[str]:
    """Ids of every row of `table` in a shard directory, from the id manifests (the `id` column of
    shards without one)."""
    return set(index_shards(directory, tables=(table,)).ids(table).to_pylist())


def read_table(
    source: str | os.PathLike | Iterable[str | os.PathLike], columns: Sequence[str] | None = None, table: str = "orbits"
) -> pa.Table:
    """Read shards into one table (still encoded; use `decode_row`/`decode_batch` for tensors).

    Args:
        source: a shard directory (its `table` shards are read), one shard file, or shard files
            (local paths or URIs, all on one filesystem).
        columns: the columns to read (all when None); images are the bulk, so leave them out
            when only ids, prompts or cameras are needed.
        table: "orbits", "errors" or "rejected" (selects the directory's files and the schema).
    Returns:
        the rows of all files in file order, typed by `ORBIT_SCHEMA` / `ERROR_SCHEMA`; an empty
        table of that schema when there are no files.
    """
    if table not in _SCHEMAS:
        raise ValueError(f"table must be one of {sorted(_SCHEMAS)}, got {table!r}")
    schema = _SCHEMAS[table]
    if isinstance(source, (str, os.PathLike)):
        files = list_shard_files(source, table) if storage.is_dir(source) else [storage.local_or_uri(source)]
    else:
        files = [storage.local_or_uri(path) for path in source]
    if not files:
        empty = schema.empty_table()
        return empty.select(list(columns)) if columns is not None else empty
    located = [storage.arrow_source(path) for path in files]
    dataset = pads.dataset([path for path, _ in located], format="parquet", schema=schema, filesystem=located[0][1])
    return dataset.to_table(columns=list(columns) if columns is not None else None)


def iter_records(directory: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Decoded orbits (`decode_row`) of every shard in a directory, streamed row group by row group."""
    for path in list_shard_files(directory):
        with storage.open_input(path) as file, pq.ParquetFile(file) as shard:
            for batch in shard.iter_batches(batch_size=ROWS_PER_ROW_GROUP):
                for row in batch.to_pylist():
                    yield decode_row(row)


def remove_partials(directory: str | os.PathLike) -> int:
    """Delete `.partial` files left by killed writers (every table); returns how many.

    Run it when no writer is active on the directory (e.g. when a stage starts): a live writer's
    partial file looks the same as a dead one's.
    """
    removed = id_manifest.remove_partials(directory)
    for table in _SCHEMAS:
        removed += atomic.remove_partials(_table_directory(directory, table))
    return removed


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def decode_row(row: Mapping[str, Any], views: Sequence[int] | None = None, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Decode one orbit row (a dict from Arrow `to_pylist`, one row of a numpy batch, or one row of
    an Arrow batch whose list cells are pyarrow scalars).

    Args:
        row: the encoded orbit.
        views: indices of the views to decode, in the order wanted (repeats allowed); None decodes
            all V. Only these images are decoded (a trainer needs 4 of 16 views), so bytes of the
            other views are never touched, corrupt or not.
        dtype: torch.float32 (values in [0, 1]; the default) or torch.uint8 (the stored 0..255,
            4× smaller: what a data pipeline should move; convert where the model runs).
    Returns:
        the row's other columns unchanged (metadata stays a JSON string), plus, with n = len(views)
        (V when None): frames [n, 3, H, W] (on white), masks [n, 1, H, W], cameras float32 [n, 25].
    Raises:
        ShardFormatError naming the row id and column when an image cannot be decoded, has the
        wrong mode or size, a view index is out of range, or V differs between frames, masks and
        cameras.
    """
    import torch

    dtype = torch.float32 if dtype is None else dtype
    if dtype not in (torch.float32, torch.uint8):
        raise ValueError(f"dtype must be torch.float32 or torch.uint8, got {dtype}")
    decoded = _decode_arrays(row, views)
    frames, masks = torch.from_numpy(decoded["frames"]), torch.from_numpy(decoded["masks"])
    if dtype == torch.float32:
        frames, masks = frames.float() / 255, masks.float() / 255
    arrays = {"frames": frames, "masks": masks, "cameras": torch.from_numpy(decoded["cameras"])}
    return {**{name: value for name, value in row.items() if name not in _DECODED_COLUMNS}, **arrays}


def decode_batch(batch: Mapping[str, Sequence[Any]]) -> dict[str, np.ndarray]:
    """Decode a batch of orbit rows; usable as `dataset.map_batches(decode_batch, batch_format="numpy")`.

    Args:
        batch: {column: array or list with one entry per row}, as Ray Data's numpy batches are.
    Returns:
        the other columns as numpy arrays, unchanged, plus frames, masks and cameras. When every
        row has the same V, H and W these are stacked: frames float32 [B, V, 3, H, W], masks
        float32 [B, V, 1, H, W], cameras float32 [B, V, 25]. Otherwise each is an object array of
        B per-row arrays with the shapes of `decode_row`.
    """
    size = len(batch["frames"])
    decoded = [_decode_arrays({name: column[index] for name, column in batch.items()}) for index in range(size)]
    for row in decoded:
        row["frames"], row["masks"] = row["frames"].astype(np.float32) / 255, row["masks"].astype(np.float32) / 255
    output = {name: np.asarray(column) for name, column in batch.items() if name not in _DECODED_COLUMNS}
    stackable = size > 0 and all(row["frames"].shape == decoded[0]["frames"].shape for row in decoded)
    for name in _DECODED_COLUMNS:
        if stackable:
            output[name] = np.stack([row[name] for row in decoded])
        else:
            # Filled one by one: np.array(list of differently shaped arrays) is not an object array.
            ragged = np.empty(size, dtype=object)
            for index, row in enumerate(decoded):
                ragged[index] = row[name]
            output[name] = ragged
    return output


def _decode_arrays(row: Mapping[str, Any], views: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """frames uint8 [n, 3, H, W], masks uint8 [n, 1, H, W], cameras float32 [n, 25] of a row's
    `views` (all V when None; n = len(views))."""
    row_id = row.get("id")
    for name in _DECODED_COLUMNS:
        if row.get(name) is None:
            raise ShardFormatError(f"row {row_id!r}: column {name!r} is missing")
    count = len(row["frames"])
    if count < 1:
        raise ShardFormatError(f"row {row_id!r}: column 'frames' holds no views")
    for name in ("masks", "cameras"):
        if len(row[name]) != count:
            raise ShardFormatError(f"row {row_id!r}: column {name!r} holds {len(row[name])} views but 'frames' holds {count}")
    picked = list(range(count)) if views is None else [int(view) for view in views]
    if not picked or any(not 0 <= view < count for view in picked):
        raise ShardFormatError(f"row {row_id!r}: views {picked} are not a non-empty selection of its {count} views")

    frames = _decode_images([row["frames"][view] for view in picked], "RGB", row_id, "frames", picked)
    masks = _decode_images([row["masks"][view] for view in picked], "L", row_id, "masks", picked)
    if frames.shape[:3] != masks.shape:
        raise ShardFormatError(f"row {row_id!r}: masks are {masks.shape[1:]} pixels but frames are {frames.shape[1:3]}")
    resolution = row.get("resolution")
    if resolution is not None and frames.shape[1:3] != (int(resolution), int(resolution)):
        raise ShardFormatError(f"row {row_id!r}: frames are {frames.shape[1:3]} pixels but column 'resolution' is {resolution}")

    try:
        cameras = np.stack([np.asarray(_plain(row["cameras"][view]), dtype=np.float32) for view in picked])
    except (TypeError, ValueError) as error:
        raise ShardFormatError(f"row {row_id!r}: column 'cameras' is not a list of {CAMERA_DIM}-vectors ({error})") from error
    if cameras.shape != (len(picked), CAMERA_DIM):
        raise ShardFormatError(f"row {row_id!r}: column 'cameras' has shape {cameras.shape}, expected ({len(picked)}, {CAMERA_DIM})")

    return {"frames": np.ascontiguousarray(frames.transpose(0, 3, 1, 2)), "masks": masks[:, None], "cameras": cameras}


def _plain(value: Any) -> Any:
    """A pyarrow scalar (a cell of an Arrow batch) as its Python value; anything else unchanged."""
    return value.as_py() if isinstance(value, pa.Scalar) else value


def _decode_images(encoded: Sequence[Any], mode: str, row_id: Any, column: str, views: Sequence[int]) -> np.ndarray:
    """n encoded images of one column (orbit views `views`) → uint8 [n, H, W, 3] (mode "RGB") or
    [n, H, W] ("L")."""
    images = [_decode_image(data, mode, row_id, column, view) for view, data in zip(views, encoded)]
    for view, image in zip(views, images):
        if image.shape != images[0].shape:
            raise ShardFormatError(
                f"row {row_id!r}, column {column!r}, view {view}: {image.shape[:2]} pixels, view {views[0]} has {images[0].shape[:2]}"
            )
    return np.stack(images)


def _decode_image(data: Any, mode: str, row_id: Any, column: str, view: int) -> np.ndarray:
    """One PNG or WebP image, its format told by its first bytes, that must decode to `mode`."""
    where = f"row {row_id!r}, column {column!r}, view {view}"
    data = _plain(data)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ShardFormatError(f"{where}: expected encoded image bytes, got {type(data).__name__}")
    data = bytes(data)
    if data.startswith(_PNG_SIGNATURE):
        image_format = "PNG"
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        image_format = "WEBP"
    else:
        raise ShardFormatError(f"{where}: not a PNG or WebP image")
    try:
        with Image.open(io.BytesIO(data), formats=[image_format]) as image:
            decoded_mode, pixels = image.mode, np.array(image)  # decodes it all: corrupt data fails here
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:  # PIL's ways of saying "corrupt"
        raise ShardFormatError(f"{where}: undecodable {image_format} image ({error})") from error
    if decoded_mode != mode:
        raise ShardFormatError(f"{where}: image mode is {decoded_mode}, expected {mode}")
    return pixels


# ---------------------------------------------------------------------------------------------
# Training views
# ---------------------------------------------------------------------------------------------


class ViewSampler:
    """Picks one reconstructor training sample from a decoded orbit (OpenLRM's released trainer's
    recipe; docs/vfusion3d.md#training-recipe).

    One source view, drawn from the orbit views (the first `num_orbit_views`) or from all views,
    and k distinct target views drawn from the other views. When the orbit has fewer than k + 1
    views the targets are drawn from all V views, so one of them may be the source view itself;
    fewer than k views is an error.

    The source image is the stored frame as it is, on white (the released model's input);
    recentering and resizing it is the trainer's job. Each target is re-composited on a background
    colour drawn from `background_colors`. Frames are stored on white, so

        rgb_on_bg = frame − (1 − mask) · (1 − bg),

    exact where the mask is 0 or 1, and exact up to 8-bit rounding in between for rendered orbits
    (whose frames were composited from those masks). Synthetic frames come with estimated masks,
    so the result is clamped to [0, 1].

    Sampling is reproducible: without an explicit generator, the random stream is seeded from
    (seed, epoch, row id), so a row gets the same sample in every run and on every worker, whatever
    the order, and a different one each epoch.

    Args:
        num_target_views: k, the number of target views per sample.
        background_colors: RGB colours in [0, 1] (a single number means grey) to draw target
            backgrounds from, uniformly.
        source_from_orbit_only: draw the source from the uniform-azimuth orbit views only.
        seed: base seed of the per-row generators.
    """

    def __init__(
        self,
        num_target_views: int = 3,
        background_colors: Sequence[Sequence[float] | float] = DEFAULT_BACKGROUND_COLORS,
        source_from_orbit_only: bool = True,
        seed: int = 0,
    ):
        import torch

        if num_target_views < 1:
            raise ValueError(f"num_target_views must be >= 1, got {num_target_views}")
        colors = torch.tensor(
            [
                [float(color)] * 3 if isinstance(color, (int, float)) else [float(channel) for channel in color]
                for color in background_colors
            ]
        )
        if colors.ndim != 2 or colors.shape[0] == 0 or colors.shape[1] != 3 or not bool(((colors >= 0) & (colors <= 1)).all()):
            raise ValueError(f"background_colors must be a non-empty list of colours in [0, 1], got {background_colors!r}")
        self.num_target_views = num_target_views
        self.background_colors = colors
        self.source_from_orbit_only = source_from_orbit_only
        self.seed = seed

    def generator_for(self, row_id: str, epoch: int = 0) -> torch.Generator:
        """The generator `__call__` uses for a row when none is given."""
        import torch

        digest = hashlib.sha256(f"{self.seed}\n{epoch}\n{row_id}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)  # a non-negative int64

    def choose(
        self, row_id: str, num_views: int, num_orbit_views: int | None = None, generator: torch.Generator | None = None, epoch: int = 0
    ) -> tuple[int, torch.Tensor, torch.Tensor]:
        """Which views a sample of an orbit uses, decided before anything is decoded.

        Args:
            row_id: the orbit's id (seeds the default generator).
            num_views: V, the orbit's view count; num_orbit_views: its leading orbit views (None: V).
            generator, epoch: as in `__call__`, which draws exactly these numbers.
        Returns:
            (source view index, target view indices int64 [k], target backgrounds float32 [k, 3]).
        """
        import torch

        k = self.num_target_views
        if num_views < k:
            raise ValueError(f"row {row_id!r}: {num_views} views cannot give {k} distinct target views")
        if generator is None:
            generator = self.generator_for(row_id, epoch)
        orbit_views = int(num_orbit_views or num_views)
        source_candidates = orbit_views if self.source_from_orbit_only else num_views
        source_view = int(torch.randint(source_candidates, (), generator=generator))
        others = torch.tensor([view for view in range(num_views) if view != source_view], dtype=torch.long)
        pool = others if len(others) >= k else torch.arange(num_views)
        target_views = pool[torch.randperm(len(pool), generator=generator)[:k]]
        backgrounds = self.background_colors[torch.randint(len(self.background_colors), (k,), generator=generator)]
        return source_view, target_views, backgrounds

    def __call__(self, row: Mapping[str, Any], generator: torch.Generator | None = None, epoch: int = 0) -> dict[str, torch.Tensor]:
        """Sample the views of one training example.

        Args:
            row: a decoded orbit (`decode_row`, or one row of `decode_batch`): frames [V, 3, H, W]
                on white, masks [V, 1, H, W], cameras [V, 25], num_orbit_views, id.
            generator: random stream to draw from; by default `generator_for(row["id"], epoch)`.
            epoch: mixed into the default generator's seed.
        Returns:
            source_image [3, H, W] (white background), source_mask [1, H, W], source_camera [25],
            target_images [k, 3, H, W], target_masks [k, 1, H, W], target_cameras [k, 25],
            target_backgrounds [k, 3], source_view (int64 scalar) and target_views [k] (indices
            into the orbit's views).
        """
        import torch

        frames = torch.as_tensor(row["frames"], dtype=torch.float32)
        masks = torch.as_tensor(row["masks"], dtype=torch.float32)
        cameras = torch.as_tensor(row["cameras"], dtype=torch.float32)
        source_view, target_views, backgrounds = self.choose(
            str(row.get("id")), frames.shape[0], row.get("num_orbit_views"), generator, epoch
        )
        target_frames, target_masks = frames[target_views], masks[target_views]
        target_images = (target_frames - (1 - target_masks) * (1 - backgrounds[:, :, None, None])).clamp(0, 1)
        return {
            "source_image": frames[source_view],
            "source_mask": masks[source_view],
            "source_camera": cameras[source_view],
            "target_images": target_images,
            "target_masks": target_masks,
            "target_cameras": cameras[target_views],
            "target_backgrounds": backgrounds,
            "source_view": torch.tensor(source_view),
            "target_views": target_views,
        }
