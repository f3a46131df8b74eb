"""Id manifests: a small record of which ids each published shard file holds, so that resuming a
run over millions of ids reads a few megabytes of ids instead of the id column of every shard.

Layout, inside a shard directory (the "_" keeps Ray Data and pyarrow.dataset from reading it):

    _ids/log-<32 hex>.arrows     one per writer (OrbitShardWriter instance): an Arrow IPC stream
                                 that the writer appends one record batch to after each shard it
                                 publishes, flushed at once
    _ids/index-<32 hex>.arrow    the logs (and shards read directly) folded into one Arrow IPC
                                 file by a planning step that holds the directory's lease; written
                                 as a partial file and renamed, then the logs it folded are removed

Every entry is one row of `MANIFEST_SCHEMA`: (table, file, ids) with `table` one of "orbits",
"rejected", "errors", `file` the shard's name inside that table's folder and `ids` the ids it holds.

Why one append-only log per writer and not a sidecar file per shard: a sidecar doubles the file
count (85k shards at paper scale) and reading 85k small files is exactly the cost to be removed; a
log per writer is a handful of files per run, and folding them into one index makes the next
resume read one file. Appending needs no lock because no two writers share a log.

The manifest is a cache, never the truth: a shard counts only when its file is listed in its
table's folder. A log entry is appended after the shard is renamed into place, so a writer killed
in between leaves a published shard with no entry (the reader then reads that shard's id column:
correct, just slower); an entry whose file is no longer listed (moved to `_errors/_retried/`) is
ignored; a log whose last batch was cut short by a kill yields the batches before it. This module
imports neither ray nor the shard format (`vf3d.data.shards` builds on it).

On an object store (`s3://`, `gs://` directories; see vf3d.storage) nothing can be appended to: a
writer's log is a series of segment objects `log-<32 hex>.arrows`, each rewritten whole (an atomic
publish) after every entry until it holds `SEGMENT_ENTRIES` entries, then a new segment starts. A
kill loses at most the entry being written, as locally, and the rewriting stays bounded.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vf3d import atomic, storage

MANIFEST_DIRNAME = "_ids"
"""Sub-directory of a shard directory holding the id logs and the folded index."""
MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("table", pa.string(), nullable=False),
        pa.field("file", pa.string(), nullable=False),
        pa.field("ids", pa.list_(pa.string()), nullable=False),
    ]
)
"""One row per published shard file: its table, its file name and the ids it holds."""
_LOG_PREFIX, _LOG_SUFFIX = "log-", ".arrows"
_INDEX_PREFIX, _INDEX_SUFFIX = "index-", ".arrow"
SEGMENT_ENTRIES = 64
"""Entries per log segment on an object store (each append rewrites its segment: at most this many
entries' ids are uploaded again per append)."""


class ManifestLog:
    """The append-only id log of one writer. Opened on the first `append`, so a writer that
    publishes nothing leaves no file.

    Args:
        directory: the shard directory, a local path or a URI (the log goes into its `_ids/`).
        fsync: flush each appended entry to disk before returning (with a writer that fsyncs).
    """

    def __init__(self, directory: str | os.PathLike, fsync: bool = False):
        self.directory = storage.join(directory, MANIFEST_DIRNAME)
        self.remote = storage.is_uri(directory)
        self.fsync = fsync
        self._file: BinaryIO | None = None
        self._stream: Any = None
        self._segment: list[pa.RecordBatch] = []
        self._segment_name = ""

    def append(self, table: str, file: str, ids: pa.Array | list[str]) -> None:
        """Record that `file` of `table` (already published) holds `ids` (string [n])."""
        ids = pa.array(ids, pa.string()) if not isinstance(ids, pa.Array) else ids.cast(pa.string())
        offsets = pa.array([0, len(ids)], pa.int32())
        entry = pa.record_batch([pa.array([table]), pa.array([file]), pa.ListArray.from_arrays(offsets, ids)], schema=MANIFEST_SCHEMA)
        if self.remote:
            self._append_remote(entry)
            return
        if self._stream is None:
            Path(self.directory).mkdir(parents=True, exist_ok=True)
            self._file = open(Path(self.directory) / f"{_LOG_PREFIX}{uuid.uuid4().hex}{_LOG_SUFFIX}", "wb")
            self._stream = pa.ipc.new_stream(self._file, MANIFEST_SCHEMA)
        self._stream.write_batch(entry)
        self._file.flush()  # a killed process loses at most the entry being written
        if self.fsync:
            os.fsync(self._file.fileno())

    def _append_remote(self, entry: pa.RecordBatch) -> None:
        """Rewrite this writer's current segment object with `entry` added (see the module docstring)."""
        if not self._segment or len(self._segment) >= SEGMENT_ENTRIES:
            self._segment, self._segment_name = [], f"{_LOG_PREFIX}{uuid.uuid4().hex}{_LOG_SUFFIX}"
        self._segment.append(entry)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, MANIFEST_SCHEMA) as stream:
            for batch in self._segment:
                stream.write_batch(batch)
        atomic.write_bytes_atomic(storage.join(self.directory, self._segment_name), sink.getvalue().to_pybytes())

    def close(self) -> None:
        """End the stream (readers also accept a log that was never closed)."""
        if self._stream is not None:
            try:
                self._stream.close()
                self._file.close()
            except (OSError, ValueError):
                pass  # the directory went away under us; the shards themselves are what count
            self._stream = self._file = None

    def __del__(self) -> None:
        self.close()


def manifest_files(directory: str | os.PathLike) -> list[Path | str]:
    """The logs and folded indexes under `directory/_ids/` (Paths, or URIs on an object store),
    sorted (partial files excluded)."""
    folder = storage.join(directory, MANIFEST_DIRNAME)
    return [
        storage.join(folder, name)
        for name, is_file in storage.list_dir(folder)
        if is_file
        and (
            (name.startswith(_LOG_PREFIX) and name.endswith(_LOG_SUFFIX))
            or (name.startswith(_INDEX_PREFIX) and name.endswith(_INDEX_SUFFIX))
        )
    ]


def read_manifest(path: Path | str) -> pa.Table:
    """Entries of one log or index file (`MANIFEST_SCHEMA`); a log cut short by a kill yields the
    entries before the cut, an unreadable file none (the shards are then read directly)."""
    batches: list[pa.RecordBatch] = []
    remote = storage.is_uri(path)

    def source():
        # An object is read whole (a few MB of ids at most); a local file is mapped or streamed.
        return pa.BufferReader(storage.read_bytes(path)) if remote else pa.OSFile(str(path))

    try:
        if storage.name(path).endswith(_INDEX_SUFFIX):
            with source() if remote else pa.memory_map(str(path)) as reader:
                return pa.ipc.open_file(reader).read_all().cast(MANIFEST_SCHEMA)
        with source() as reader:
            try:
                return pa.ipc.open_stream(reader).read_all().cast(MANIFEST_SCHEMA).combine_chunks()
            except (pa.ArrowInvalid, OSError, EOFError):
                pass  # a torn tail: read again batch by batch, keeping the whole ones
        with source() as reader:
            stream = pa.ipc.open_stream(reader)
            while True:
                batches.append(stream.read_next_batch())
    except StopIteration:
        pass
    except (pa.ArrowInvalid, OSError, EOFError):
        pass  # a torn tail (or a file that is not ours): keep what was read whole
    if not batches:
        return MANIFEST_SCHEMA.empty_table()
    try:
        # One chunk, not one per logged shard: tens of thousands of one-row chunks make every later
        # filter or take pay a per-chunk cost (measured: ~1 s per filter at 31k chunks).
        return pa.Table.from_batches(batches).cast(MANIFEST_SCHEMA).combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return MANIFEST_SCHEMA.empty_table()


def read_manifests(directory: str | os.PathLike, skip: frozenset[str] | set[str] = frozenset()) -> tuple[pa.Table, list[str]]:
    """All entries under `directory/_ids/` except files named in `skip`, and the names read."""
    paths = [path for path in manifest_files(directory) if storage.name(path) not in skip]
    tables = [read_manifest(path) for path in paths]
    return (pa.concat_tables(tables).combine_chunks() if tables else MANIFEST_SCHEMA.empty_table()), [storage.name(path) for path in paths]


def write_index(directory: str | os.PathLike, entries: pa.Table, folded: list[str]) -> str:
    """Write `entries` as one index file (partial file, then rename; an atomic publish on an object
    store), then remove the manifest files in `folded` (their entries are in the index now).
    Returns the index's file name.

    Only call this while holding the directory's lease: a writer of another run could still be
    appending to a log in `folded`.
    """
    folder = storage.join(directory, MANIFEST_DIRNAME)
    storage.makedirs(folder)
    name = f"{_INDEX_PREFIX}{uuid.uuid4().hex}{_INDEX_SUFFIX}"
    with atomic.atomic_path(storage.join(folder, name)) as partial:
        with pa.OSFile(str(partial), "wb") as sink, pa.ipc.new_file(sink, MANIFEST_SCHEMA) as writer:
            writer.write_table(entries.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA))
    for old in folded:
        if old != name:
            storage.remove(storage.join(folder, old))
    return name


def remove_partials(directory: str | os.PathLike) -> int:
    """Delete index files a killed planner left half-written; returns how many."""
    return atomic.remove_partials(storage.join(directory, MANIFEST_DIRNAME))


# ---------------------------------------------------------------------------------------------
# A set of ids built once, probed per batch at a cost that does not grow with the set
# ---------------------------------------------------------------------------------------------

_HASH_BASE = np.uint64(0x100000001B3)  # odd, so invertible modulo 2**64
_HASH_BASE_INVERSE = np.uint64(pow(0x100000001B3, -1, 2**64))
_HASH_CHUNK_BYTES = 1 << 20
"""Strings are hashed in chunks of about this many bytes, which bounds the temporary arrays."""


_POWERS: tuple[np.ndarray, np.ndarray] | None = None


def _hash_powers(length: int = _HASH_CHUNK_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """(B^i, B^-i) mod 2^64 for i in 0..length, uint64 [length + 1] each; the chunk-sized pair is
    computed once per process."""
    global _POWERS
    if length == _HASH_CHUNK_BYTES and _POWERS is not None:
        return _POWERS
    with np.errstate(over="ignore"):
        powers = np.cumprod(np.concatenate([[np.uint64(1)], np.full(length, _HASH_BASE, np.uint64)]), dtype=np.uint64)
        inverse = np.cumprod(np.concatenate([[np.uint64(1)], np.full(length, _HASH_BASE_INVERSE, np.uint64)]), dtype=np.uint64)
    if length == _HASH_CHUNK_BYTES:
        _POWERS = (powers, inverse)
    return powers, inverse


def hash_strings(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit hash of each string, vectorised over Arrow's buffers (no Python strings).

    A polynomial hash Σ byte_i·B^i mod 2^64 from prefix sums, mixed with the length and a
    murmur-style finaliser. Not cryptographic: `IdSet` confirms every hash hit by comparing the
    strings, so a collision costs a comparison, never a wrong answer.

    Args:
        values: string array [n] without nulls.
    Returns:
        uint64 [n].
    """
    if isinstance(values, pa.ChunkedArray):
        return np.concatenate([hash_strings(chunk) for chunk in values.chunks]) if values.num_chunks else np.zeros(0, np.uint64)
    if pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type):
        offset_type = np.int64
    else:
        values = values.cast(pa.string())
        offset_type = np.int32
    count = len(values)
    if count == 0:
        return np.zeros(0, np.uint64)
    buffers = values.buffers()
    offsets = np.frombuffer(buffers[1], dtype=offset_type)[values.offset : values.offset + count + 1].astype(np.int64)
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
    hashes = np.empty(count, np.uint64)
    powers, inverse = _hash_powers()
    start = 0
    with np.errstate(over="ignore"):
        while start < count:
            # The next run of strings whose bytes fit in one chunk (at least one string; a longer
            # string gets a chunk of its own).
            stop = int(np.searchsorted(offsets, offsets[start] + _HASH_CHUNK_BYTES, side="right")) - 1
            stop = min(max(stop, start + 1), count)
            first, last = offsets[start], offsets[stop]
            if last - first > _HASH_CHUNK_BYTES:
                chunk_powers, chunk_inverse = _hash_powers(int(last - first))
            else:
                chunk_powers, chunk_inverse = powers, inverse
            chunk = data[first:last].astype(np.uint64)
            prefix = np.zeros(len(chunk) + 1, np.uint64)
            np.cumsum(chunk * chunk_powers[: len(chunk)], out=prefix[1:])
            begin, end = offsets[start:stop] - first, offsets[start + 1 : stop + 1] - first
            value = (prefix[end] - prefix[begin]) * chunk_inverse[begin]
            value ^= (end - begin).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
            value ^= value >> np.uint64(33)
            value *= np.uint64(0xFF51AFD7ED558CCD)
            value ^= value >> np.uint64(33)
            value *= np.uint64(0xC4CEB9FE1A85EC53)
            value ^= value >> np.uint64(33)
            hashes[start:stop] = value
            start = stop
    return hashes


class IdSet:
    """An immutable set of string ids: built once (on the driver), shipped once (its numpy and Arrow
    buffers deserialise without copying from Ray's object store), then probed batch by batch at
    O(batch · log n), with no hash table rebuilt per batch.

    Args:
        ids: string array [n] (duplicates allowed, no nulls).
    """

    def __init__(self, ids: pa.Array | pa.ChunkedArray | list[str] | None = None):
        if ids is None:
            ids = pa.array([], pa.string())
        ids = _one_string_array(ids)
        hashes = hash_strings(ids)
        self.order = np.argsort(hashes)
        """int64 [n]: position in `ids` of each sorted hash."""
        self.hashes = hashes[self.order]
        """uint64 [n], sorted."""
        self.ids = ids
        """string [n], as given."""
        self._index_buckets()

    def __len__(self) -> int:
        return len(self.hashes)

    @classmethod
    def _from_parts(cls, ids: pa.Array, order: np.ndarray, hashes: np.ndarray) -> IdSet:
        made = cls.__new__(cls)
        made.ids, made.order, made.hashes = ids, order, hashes
        made._index_buckets()
        return made

    def _index_buckets(self) -> None:
        """Where each run of sorted hashes sharing their top k bits starts (k ≈ log2 n, so about
        one hash per bucket): a probe then reads its bucket's start and walks a step or two,
        instead of a binary search whose ~log2 n cache misses grow with the set (measured per
        4096-row batch at 4M ids: ~3.6 µs per row with binary search)."""
        count = len(self.hashes)
        self._bucket_bits = int(min(24, max(1, np.ceil(np.log2(max(count, 2))))))
        boundaries = np.arange(1 << self._bucket_bits, dtype=np.uint64) << np.uint64(64 - self._bucket_bits)
        starts = _sorted_search(self.hashes, boundaries) if count else np.zeros(len(boundaries), np.int64)
        self._bucket_starts = np.append(starts, count).astype(np.int64)
        """int64 [2^k + 1]: index of the first sorted hash of each bucket, then n."""

    def _lower_bound(self, wanted: np.ndarray) -> np.ndarray:
        """`np.searchsorted(self.hashes, wanted, side="left")` through the buckets."""
        bucket = (wanted >> np.uint64(64 - self._bucket_bits)).astype(np.int64)
        position = self._bucket_starts[bucket]
        stop = self._bucket_starts[bucket + 1]
        active = np.flatnonzero(position < stop)
        while len(active):
            below = self.hashes[position[active]] < wanted[active]
            active = active[below]
            position[active] += 1
            active = active[position[active] < stop[active]]
        return position

    def positions(self, values: pa.Array | pa.ChunkedArray | list[str]) -> np.ndarray:
        """int64 [m]: for each of `values` (string [m], no nulls), the position in `ids` of an
        equal id, or -1 when it is not in the set."""
        values = _one_string_array(values)
        found = np.full(len(values), -1, np.int64)
        if not len(values) or not len(self.hashes):
            return found
        wanted = hash_strings(values)
        position = self._lower_bound(wanted)
        pending = np.flatnonzero(position < len(self.hashes))
        # Walk forward over equal hashes (almost always one step): compare the strings themselves.
        while len(pending):
            at = position[pending]
            same_hash = self.hashes[at] == wanted[pending]
            pending, at = pending[same_hash], at[same_hash]
            if not len(pending):
                break
            equal = pc.equal(self.ids.take(pa.array(self.order[at])), values.take(pa.array(pending))).to_numpy(zero_copy_only=False)
            found[pending[equal]] = self.order[at[equal]]
            pending = pending[~equal]
            position[pending] += 1
            pending = pending[position[pending] < len(self.hashes)]
        return found

    def contains(self, values: pa.Array | pa.ChunkedArray | list[str]) -> np.ndarray:
        """bool [m]: whether each of `values` (string [m], no nulls) is in the set."""
        return self.positions(values) >= 0

    def subset(self, keep: np.ndarray) -> IdSet:
        """The set of `ids[keep]` (bool [n]), derived from this one in O(n): nothing is hashed or
        sorted again."""
        keep = np.asarray(keep, bool)
        kept_sorted = keep[self.order]
        new_position = np.cumsum(keep) - 1
        return IdSet._from_parts(self.ids.filter(pa.array(keep)), new_position[self.order[kept_sorted]], self.hashes[kept_sorted])

    def repeated(self) -> np.ndarray:
        """int64 [r]: positions in `ids` of every id equal to an earlier one in sorted order (one
        per repeat, so `len(self) - len(self.repeated())` ids are distinct). O(n) from the sorted
        hashes; equal hashes are confirmed by comparing the strings."""
        if len(self.hashes) < 2:
            return np.zeros(0, np.int64)
        same = np.flatnonzero(self.hashes[1:] == self.hashes[:-1]) + 1
        if not len(same):
            return same.astype(np.int64)
        # Runs of equal hashes are tiny (a repeated id, or a rare collision): group them in Python.
        repeats: list[int] = []
        run_starts = same[np.concatenate([[True], np.diff(same) > 1])] - 1
        for start in run_starts.tolist():
            stop = start + 1
            while stop < len(self.hashes) and self.hashes[stop] == self.hashes[start]:
                stop += 1
            seen: set[str] = set()
            for sorted_index in range(start, stop):
                position = int(self.order[sorted_index])
                value = self.ids[position].as_py()
                if value in seen:
                    repeats.append(position)
                seen.add(value)
        return np.asarray(repeats, np.int64)

    def distinct_count(self) -> int:
        """How many distinct ids the set holds."""
        return len(self.hashes) - len(self.repeated())

    def __contains__(self, value: str) -> bool:
        return bool(self.contains(pa.array([value], pa.string()))[0])


def _sorted_search(haystack: np.ndarray, needles: np.ndarray) -> np.ndarray:
    """`np.searchsorted(haystack, needles, side="left")`, faster for many needles: they are
    searched in sorted order (binary searches that walk the haystack in order hit the cache;
    measured 5.5 s → under 1 s for 4M needles in 4M hashes) and the answers put back in place."""
    if len(needles) < 65536:
        return np.searchsorted(haystack, needles, side="left")
    order = np.argsort(needles)
    position = np.empty(len(needles), np.int64)
    position[order] = np.searchsorted(haystack, needles[order], side="left")
    return position


def _one_string_array(values: pa.Array | pa.ChunkedArray | list[str]) -> pa.Array:
    """`values` as one Arrow string array (a list or a chunked array is combined)."""
    if isinstance(values, list):
        return pa.array(values, pa.string())
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks() if values.num_chunks else pa.array([], pa.string())
    return values
