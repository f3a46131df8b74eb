"""train-recon's input pipeline: orbit shards → sampled training views, streamed by Ray Data.

A training sample uses 1 + k of an orbit's V views (4 of 16 by default), so the pipeline decides
the views first and decodes only those:

    shard paths (file order reshuffled every epoch)
      → `read_and_sample` (a CPU map stage): each file streamed a row group at a time (the
        columns sampling needs), held-out ids filtered out before any image is touched, then
        `sample_views` per orbit: `ViewSampler.choose` picks the source and
        target views from (seed, epoch, id); only their PNG/WebP bytes are decoded; the source is
        recentred on white and resized to the encoder input there; everything stays uint8
      → each training worker: `iter_torch_batches` with a local shuffle buffer and prefetching;
        pixels turn into floats on the worker's device (`vf3d.training.recon.batch_from_samples`).

Ids and counts come from the directory's id manifests (`vf3d.training.recon.prepare_inputs`, via
`shards.index_shards`) and the validator reads its held-out orbits with a filter on `id`
(`read_orbits_by_id`), so nothing in start-up decodes or scans the whole dataset.
Ray is imported only inside the functions that build datasets.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import torch

from vf3d import storage
from vf3d.data import shards

if TYPE_CHECKING:
    import ray.data

SAMPLE_COLUMNS = ["id", "frames", "masks", "cameras", "num_orbit_views", "resolution"]
"""Columns the sampling stage reads (prompts, metadata and the rest stay on disk)."""
SAMPLES_PER_BLOCK = 32
"""Samples per Ray Data block the pipeline aims at (see `training_dataset`)."""
MIN_PATH_BLOCKS = 64
PATH_BLOCKS_PER_CPU = 4
"""The shard paths are split into max(MIN_PATH_BLOCKS, PATH_BLOCKS_PER_CPU × cluster CPUs) blocks
at most: enough map tasks to keep every CPU busy, few enough that building the dataset does not
grow with the number of files."""
SAMPLE_FIELDS = (
    "source_images",
    "source_cameras",
    "target_frames",
    "target_masks",
    "target_cameras",
    "target_backgrounds",
    "source_views",
    "target_views",
)
"""Columns of a sampled batch (see `sample_views`)."""


def count_rows(files: Iterable[str | os.PathLike]) -> int:
    """Rows in Parquet files (local paths or URIs), from their footers only (no page, let alone an
    image, is read)."""
    total = 0
    for path in files:
        with storage.open_input(path) as file:
            total += pq.read_metadata(file).num_rows
    return total


def read_orbits_by_id(directory: str | os.PathLike, ids: Sequence[str]) -> list[dict[str, Any]]:
    """The orbits of a shard directory whose id is in `ids`, decoded (`shards.decode_row`), in the
    order of `ids` (missing ids are skipped). The filter on `id` is applied while reading: row
    groups whose id statistics exclude every wanted id are skipped and other rows are never
    decoded, so this costs a few orbits however large the dataset is."""
    located = [storage.arrow_source(path) for path in shards.list_shard_files(directory)]
    if not located or not ids:
        return []
    dataset = pads.dataset([path for path, _ in located], format="parquet", schema=shards.ORBIT_SCHEMA, filesystem=located[0][1])
    table = dataset.to_table(filter=pc.field("id").isin(list(ids)))
    by_id = {row["id"]: row for row in table.to_pylist()}
    return [shards.decode_row(by_id[identifier]) for identifier in ids if identifier in by_id]


def current_epoch() -> int:
    """How many times this dataset has been executed before (Ray Data's execution index: 0, 1, 2,
    ... per pass over the data), read inside a map task; 0 outside Ray Data."""
    try:
        from ray.data.context import DataContext
    except ImportError:  # pragma: no cover - ray is a dependency; this keeps the module importable without it
        return 0
    # Ray's own seeded file shuffling reads the same private counter; there is no public one.
    return int(getattr(DataContext.get_current(), "_execution_idx", 0))


def _resized_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [n, c, h, w] → uint8 [n, c, size, size] (antialiased bilinear, rounded)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    resized = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


def recentred_source(frame: torch.Tensor, mask: torch.Tensor, image_size: int) -> torch.Tensor:
    """A source view as the model sees it at inference (`vf3d.preprocess.recenter`: cropped to the
    mask's box, spanning 80% of a white square, resized). uint8 frame [3, H, W], mask [1, H, W] →
    uint8 [3, S, S]."""
    from vf3d.preprocess import recenter

    canvas = recenter(frame.permute(1, 2, 0).numpy().astype(np.float32) / 255, mask[0].numpy().astype(np.float32) / 255)
    tensor = torch.from_numpy(canvas).permute(2, 0, 1)[None] * 255
    resized = torch.nn.functional.interpolate(tensor, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    return resized[0].round().clamp(0, 255).to(torch.uint8)


def sample_views(
    batch: pa.Table,
    *,
    num_target_views: int,
    image_size: int,
    target_resolution: int,
    seed: int,
    repeats: int = 1,
    epoch: int | None = None,
) -> dict[str, np.ndarray]:
    """Ray Data map stage (`batch_format="pyarrow"`): encoded orbits → training samples, uint8.

    Each orbit gives `repeats` samples (small datasets repeat within an epoch instead of running
    one tiny epoch per step); sample r of an orbit in epoch e draws its views with
    `ViewSampler(seed=seed).choose(id, ..., epoch=e * repeats + r)`, so a sample depends only on
    (seed, epoch, id, r), never on which task or worker handled it. Only the chosen views are
    decoded.

    Args:
        batch: rows with at least `SAMPLE_COLUMNS`.
        num_target_views: k.
        image_size: S, the encoder's input side.
        target_resolution: R, the side targets are sent at (the largest render resolution of the
            stages that read this data; the worker resizes to each stage's own).
        seed: the run's seed.
        repeats: samples per orbit per epoch.
        epoch: the epoch; None reads Ray Data's execution index (`current_epoch`).
    Returns:
        B = rows × repeats samples: source_images uint8 [B, 3, S, S] (recentred, on white),
        source_cameras float32 [B, 25], target_frames uint8 [B, k, 3, R, R] (on white),
        target_masks uint8 [B, k, 1, R, R], target_cameras float32 [B, k, 25],
        target_backgrounds float32 [B, k, 3], source_views int64 [B], target_views int64 [B, k].
    """
    epoch = current_epoch() if epoch is None else epoch
    sampler = shards.ViewSampler(num_target_views, seed=seed)
    columns = {name: batch.column(name) for name in SAMPLE_COLUMNS if name in batch.column_names}
    outputs: dict[str, list[Any]] = {name: [] for name in SAMPLE_FIELDS}
    for index in range(batch.num_rows):
        # Cells stay pyarrow scalars: only the chosen views' bytes become Python objects.
        row = {name: column[index] for name, column in columns.items()}
        row_id = row["id"].as_py()
        row = {**row, "id": row_id, "resolution": row["resolution"].as_py() if "resolution" in row else None}
        num_views = len(row["frames"])
        orbit_views = row["num_orbit_views"].as_py() if "num_orbit_views" in row else None
        for copy in range(repeats):
            source_view, target_views, backgrounds = sampler.choose(row_id, num_views, orbit_views, epoch=epoch * repeats + copy)
            views = [source_view, *target_views.tolist()]
            decoded = shards.decode_row(row, views=views, dtype=torch.uint8)
            frames, masks, cameras = decoded["frames"], decoded["masks"], decoded["cameras"]
            outputs["source_images"].append(recentred_source(frames[0], masks[0], image_size))
            outputs["source_cameras"].append(cameras[0])
            outputs["target_frames"].append(_resized_uint8(frames[1:], target_resolution))
            outputs["target_masks"].append(_resized_uint8(masks[1:], target_resolution))
            outputs["target_cameras"].append(cameras[1:])
            outputs["target_backgrounds"].append(backgrounds.float())
            outputs["source_views"].append(torch.tensor(source_view))
            outputs["target_views"].append(target_views)
    if not outputs["source_images"]:
        empty_shapes = {
            "source_images": (0, 3, image_size, image_size),
            "source_cameras": (0, shards.CAMERA_DIM),
            "target_frames": (0, num_target_views, 3, target_resolution, target_resolution),
            "target_masks": (0, num_target_views, 1, target_resolution, target_resolution),
            "target_cameras": (0, num_target_views, shards.CAMERA_DIM),
            "target_backgrounds": (0, num_target_views, 3),
            "source_views": (0,),
            "target_views": (0, num_target_views),
        }
        dtypes = {
            "source_images": np.uint8,
            "target_frames": np.uint8,
            "target_masks": np.uint8,
            "source_views": np.int64,
            "target_views": np.int64,
        }
        return {name: np.zeros(shape, dtype=dtypes.get(name, np.float32)) for name, shape in empty_shapes.items()}
    return {name: torch.stack(values).numpy() for name, values in outputs.items()}


def epoch_repeats(num_orbits: int, min_samples_per_epoch: int) -> int:
    """Samples per orbit per epoch so that an epoch holds at least `min_samples_per_epoch`."""
    return max(1, math.ceil(min_samples_per_epoch / max(1, num_orbits)))


def read_and_sample(paths: pa.Table, *, exclude_ids: Sequence[str] = (), **sampling: Any) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data map stage over shard paths (`batch_format="pyarrow"`, a `path` column): each file
    is streamed a row group at a time (`SAMPLE_COLUMNS` only), held-out ids dropped by a filter
    on `id` before anything is decoded, and every row group's samples (`sample_views`, given
    `sampling`) are yielded as they are ready."""
    excluded = pa.array(sorted(exclude_ids), pa.string())
    files = paths.column("path").to_pylist()
    if len(files) > 1:
        # A block holds several files: visit them in a new order every epoch (the blocks
        # themselves are reordered by Ray Data), seeded so a rerun reads the same sequence.
        epoch = current_epoch() if sampling.get("epoch") is None else sampling["epoch"]
        files = [
            files[index]
            for index in np.random.default_rng([sampling.get("seed", 0), epoch, zlib.crc32(files[0].encode())]).permutation(len(files))
        ]
    for path in files:
        with storage.open_input(path) as file, pq.ParquetFile(file) as shard:
            for batch in shard.iter_batches(batch_size=shards.ROWS_PER_ROW_GROUP, columns=SAMPLE_COLUMNS):
                table = pa.Table.from_batches([batch])
                if len(excluded):
                    table = table.filter(pc.invert(pc.is_in(table.column("id"), value_set=excluded)))
                if table.num_rows:
                    yield sample_views(table, **sampling)


def training_dataset(
    files: Sequence[str | os.PathLike],
    *,
    exclude_ids: Iterable[str] = (),
    num_target_views: int,
    image_size: int,
    target_resolution: int,
    seed: int,
    repeats: int = 1,
    max_blocks: int | None = None,
) -> ray.data.Dataset:
    """The lazy Ray Dataset of training samples (`sample_views` columns) over shard `files`:
    file order reshuffled every epoch, `exclude_ids` dropped by a filter on `id` before sampling,
    views sampled and decoded in CPU map tasks (`read_and_sample`). Nothing is read until it is
    iterated. `max_blocks` caps the blocks the paths are split into (default: see
    `MIN_PATH_BLOCKS`)."""
    import ray.data

    # The dataset starts from the list of paths, not from `read_parquet`: that one inspects every
    # file when an execution starts (measured: ~55 s before the first row over 1,563 files on 2
    # cores), so start-up would grow with the dataset. The paths go into a bounded number of
    # blocks (one per file made 1,563 blocks cost ~4 s to build at 100k orbits): reordering
    # blocks every execution needs no tasks, where a row shuffle would run two tasks per block
    # before the first sample, and `read_and_sample` reorders the files inside each block.
    if max_blocks is None:
        max_blocks = (
            max(MIN_PATH_BLOCKS, PATH_BLOCKS_PER_CPU * int(ray.cluster_resources().get("CPU", 1)))
            if ray.is_initialized()
            else MIN_PATH_BLOCKS
        )
    blocks = max(1, min(len(files), max_blocks))
    dataset = ray.data.from_items([{"path": str(path)} for path in files], override_num_blocks=blocks).randomize_block_order()
    # A task hands on its output a block at a time, and a block may hold 128 MiB: a whole file of
    # samples, with every task sharing the CPUs, so the first batch would wait longer the more
    # files there are. Blocks of about SAMPLES_PER_BLOCK samples let the first ones through in
    # seconds. The context belongs to this dataset's lineage (ray.data copies the global one).
    sample_bytes = image_size**2 * 3 + num_target_views * (target_resolution**2 * 4 + (shards.CAMERA_DIM + 3) * 4) + shards.CAMERA_DIM * 4
    dataset.context.target_max_block_size = min(128 << 20, max(1 << 20, SAMPLES_PER_BLOCK * sample_bytes))
    return dataset.map_batches(
        read_and_sample,
        batch_format="pyarrow",
        batch_size=None,  # a whole block of paths per call, so its files can be reordered
        fn_kwargs={
            "exclude_ids": sorted(set(exclude_ids)),
            "num_target_views": num_target_views,
            "image_size": image_size,
            "target_resolution": target_resolution,
            "seed": seed,
            "repeats": repeats,
        },
    )


def batches_forever(
    shard, batch_size: int, *, prefetch_batches: int, shuffle_buffer_size: int, seed: int, device: torch.device | str = "auto"
) -> Iterator[dict[str, torch.Tensor]]:
    """Training batches of a worker's dataset shard (`ray.train.get_dataset_shard`), epoch after
    epoch: `batch_size` samples as torch tensors on `device`, pixels still uint8, shuffled through
    a local buffer of `shuffle_buffer_size` samples (seeded by `seed` and the epoch), the next
    `prefetch_batches` prepared while the current one trains; each epoch's last partial batch is
    dropped. `device` "auto" is the Ray Train worker's device (the CPU elsewhere)."""
    epoch = 0
    while True:
        produced = False
        for batch in shard.iter_torch_batches(
            batch_size=batch_size,
            drop_last=True,
            prefetch_batches=prefetch_batches,
            local_shuffle_buffer_size=shuffle_buffer_size or None,
            local_shuffle_seed=seed * 1_000_003 + epoch if shuffle_buffer_size else None,
            device=device,
        ):
            produced = True
            yield batch
        if not produced:
            raise RuntimeError("this worker's data shard holds no full batch: use fewer workers or a smaller run.batch_size")
        epoch += 1


def sample_nbytes(batch: dict[str, Any]) -> int:
    """Bytes of a sampled batch's arrays (what travels from the map stage to a worker)."""
    return sum(
        int(np.asarray(value).nbytes) if not isinstance(value, torch.Tensor) else value.numel() * value.element_size()
        for value in batch.values()
    )


def used_view_nbytes(resolution: int, num_target_views: int) -> int:
    """uint8 size of the views one sample uses at their stored `resolution`: (1 + k) views of
    RGB + mask."""
    return (1 + num_target_views) * resolution * resolution * 4


__all__ = [
    "SAMPLE_COLUMNS",
    "SAMPLE_FIELDS",
    "batches_forever",
    "count_rows",
    "current_epoch",
    "epoch_repeats",
    "read_orbits_by_id",
    "read_and_sample",
    "recentred_source",
    "sample_nbytes",
    "sample_views",
    "training_dataset",
    "used_view_nbytes",
]
