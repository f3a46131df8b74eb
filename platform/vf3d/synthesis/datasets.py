"""Orbit shards as Ray Data datasets (what training and evaluation stream from)."""

from __future__ import annotations

from pathlib import Path

from vf3d import storage
from vf3d.data import shards


def read_orbit_dataset(path: str | Path, decode: bool = True, columns: list[str] | None = None):
    """A Ray Dataset over the orbit shards in `path` (a directory, or a list of files; local
    paths or object-store URIs, read through the matching pyarrow filesystem).

    The errors table lives in `_errors/`, which Parquet readers skip, so only orbits are read.
    With `decode`, rows carry tensors as numpy arrays: frames [V, 3, H, W] in [0, 1] on white,
    masks [V, 1, H, W], cameras [V, 25] (see `vf3d.data.shards.decode_batch`).
    """
    import ray

    files = [str(file) for file in shards.list_shard_files(path)] if isinstance(path, (str, Path)) else [str(file) for file in path]
    if not files:
        raise shards.ShardFormatError(f"no orbit shards in {path}")
    filesystem = storage.arrow_source(files[0])[1]
    dataset = ray.data.read_parquet([storage.arrow_source(file)[0] for file in files], columns=columns, filesystem=filesystem)
    return dataset.map_batches(shards.decode_batch, batch_format="numpy") if decode else dataset
