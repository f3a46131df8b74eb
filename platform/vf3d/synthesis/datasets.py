"""Orbit shards as Ray Data datasets (what training and evaluation stream from)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from vf3d import storage
from vf3d.data import shards

FOOTER_READERS_VARIABLE = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"
FILES_PER_FOOTER_READER = 1_000
"""Parquet files per footer-reading actor (each keeps up to 128 footer reads in flight)."""
MAX_FOOTER_READERS = 32
"""Ray Data's own pool size (2.60), kept for the largest reads."""


@contextlib.contextmanager
def footer_readers_for(num_files: int) -> Iterator[int]:
    """Size the footer readers of the `ray.data.read_parquet` calls made inside to `num_files`
    Parquet files: one actor per FILES_PER_FOOTER_READER files, at least 1, at most 32; → the size.

    Ray Data 2.60 plans a Parquet read by reading every file's footer on a pool of FooterReader
    actors, 32 whatever the number of files. Reading one prompts file thus started as many new Ray
    worker processes as the cluster had free CPUs, for one footer: on a 4-CPU local cluster about 5
    CPU-seconds more per read than with one reader (`bench/parquet_footers.py`, side by side). Ray
    reads the pool size from RAY_DATA_PARQUET_FOOTER_NUM_ACTORS when `read_parquet` builds the
    read (in the driver), so the variable is set for the calls inside only; a value the user set
    is left alone."""
    if FOOTER_READERS_VARIABLE in os.environ:
        yield int(os.environ[FOOTER_READERS_VARIABLE])
        return
    # Ray's module reads the variable once more, at import, for its process-wide default: import it
    # first, so that the value set here never becomes the default of reads made elsewhere.
    with contextlib.suppress(ImportError):  # another Ray layout: the variable alone still sizes the pool
        import ray.data._internal.datasource_v2.formats.parquet.footer_file_indexer  # noqa: F401
    readers = max(1, min(MAX_FOOTER_READERS, -(-num_files // FILES_PER_FOOTER_READER)))
    os.environ[FOOTER_READERS_VARIABLE] = str(readers)
    try:
        yield readers
    finally:
        os.environ.pop(FOOTER_READERS_VARIABLE, None)


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
    with footer_readers_for(len(files)):
        dataset = ray.data.read_parquet([storage.arrow_source(file)[0] for file in files], columns=columns, filesystem=filesystem)
    return dataset.map_batches(shards.decode_batch, batch_format="numpy") if decode else dataset
