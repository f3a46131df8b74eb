"""Atomic file writes: a file appears whole under its final name, or not at all.

Every output vf3d publishes (shards, id indexes, models, reports, plots, meshes, videos) is read by
other processes, sometimes while it is being rewritten: a resumed run, a server loading a model, a
person opening a report. Writing in place would let them see half a file, and a writer killed in
the middle would leave that half file behind for good. So every write goes to a partial file in
the same directory, with a unique hidden name, and is renamed onto the final name (`os.replace`,
atomic on POSIX filesystems, NFS included) only when complete:

- a reader sees either the old file or the new one, never a mix;
- a failed write (an exception) removes its partial file and leaves the old file untouched;
- a killed writer leaves only `.{name}.{8 hex}.partial`, which readers never pick up (it is hidden
  and has another suffix) and `remove_partials` deletes when no writer can still be running.

The partial file lives in the target's own directory because a rename is atomic only within one
filesystem. With `fsync=True` the data is flushed before the rename and the directory after it,
so the new file survives a power loss as well as a killed process (slower; shards and manifests
offer it, small reports do not need it).

`atomic_path` hands out the partial path itself, for libraries that insist on writing to a file
name (pyarrow, safetensors, imageio, matplotlib); `atomic_write` opens it as a file object;
`write_bytes_atomic`, `write_text_atomic` and `write_json_atomic` cover the one-call cases.

Every function here also takes an object-store URI (`s3://bucket/key`, `gs://bucket/key`; see
`vf3d.storage`). There the same promise is kept with the means object stores have: the content is
written to a local staging file, uploaded to a hidden partial key beside the target and copied
server-side onto the final key, which is atomic (`storage.publish_file`). `fsync` has no meaning
there (an upload is durable once it completes). This module imports only `vf3d.storage` (core).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from vf3d import storage

PARTIAL_SUFFIX = ".partial"
"""What partial files end with (after `.{name}.{8 hex}`), and what `remove_partials` looks for."""

_WRITE_MODES = frozenset({"w", "wb", "wt"})


def partial_path(path: str | os.PathLike, partial_suffix: str = PARTIAL_SUFFIX) -> Path:
    """A fresh partial-file path for `path`: `.{name}.{8 random hex}{partial_suffix}` beside it.

    The leading dot hides it from directory readers (Ray Data and pyarrow skip "." and "_" names),
    and the random tag keeps two writers of the same target (a retried task racing its original)
    from writing into one partial file.
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{partial_suffix}")


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's or a directory's data and metadata to disk (a directory: the names in it,
    which is what makes a rename durable)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = False, partial_suffix: str = PARTIAL_SUFFIX) -> Iterator[Path]:
    """Yield a partial path to write `path`'s new content to, by any means; rename it onto `path`
    when the block ends normally, delete it when the block raises.

    For an object-store URI the yielded path is a local staging file with the target's name,
    published by `storage.publish_file` when the block ends normally.

    The parent directory must exist (locally). Nothing needs to have been written to the partial path when
    the block raises; when it ends normally the partial file must exist.

    Args:
        path: the final file.
        fsync: flush the written file before the rename and the directory after it.
        partial_suffix: the end of the partial name. Keep the default unless something needs
            otherwise: the suffix is how cleanup (`remove_partials`) recognises leftovers, and a
            writer that picks its format from the file name (imageio) needs the real suffix at the
            end, e.g. ".partial.mp4".
    """
    if storage.is_uri(path):
        with storage.staged_file(str(path), partial_suffix) as staged:
            yield staged
        return
    path = Path(path)
    partial = partial_path(path, partial_suffix)
    try:
        yield partial
        if fsync:
            fsync_path(partial)
        os.replace(partial, path)
        if fsync:
            fsync_path(path.parent)  # the rename itself is durable only once the directory is
    except BaseException:
        # BaseException: a KeyboardInterrupt (or a task cancelled by Ray) must not leave a partial file.
        partial.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike, mode: str = "wb", *, fsync: bool = False, encoding: str | None = None, partial_suffix: str = PARTIAL_SUFFIX
) -> Iterator[IO[Any]]:
    """Open a partial file for writing, yield it, and publish it as `path` when the block ends
    normally (see `atomic_path`); an exception in the block leaves `path` as it was.

    Args:
        path: the final file (its directory must exist).
        mode: "wb" (bytes) or "w"/"wt" (text); nothing else makes sense for a whole new file.
        fsync: flush the file before the rename and the directory after it.
        encoding: for text modes; UTF-8 when None (never the locale's, so files read the same everywhere).
        partial_suffix: see `atomic_path`.
    """
    if mode not in _WRITE_MODES:
        raise ValueError(f"atomic_write writes a whole new file: mode must be one of {sorted(_WRITE_MODES)}, got {mode!r}")
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    with atomic_path(path, fsync=fsync, partial_suffix=partial_suffix) as partial:
        with open(partial, mode, encoding=encoding) as file:
            yield file


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, fsync: bool = False, partial_suffix: str = PARTIAL_SUFFIX) -> Path | str:
    """Write `data` as `path` atomically (see `atomic_write`); returns `path` (a Path, or the URI
    string for an object store)."""
    if storage.is_uri(path):
        storage.publish_bytes(data, str(path), partial_suffix)
        return str(path)
    with atomic_write(path, "wb", fsync=fsync, partial_suffix=partial_suffix) as file:
        file.write(data)
    return Path(path)


def write_text_atomic(
    path: str | os.PathLike, text: str, *, encoding: str = "utf-8", fsync: bool = False, partial_suffix: str = PARTIAL_SUFFIX
) -> Path | str:
    """Write `text` as `path` atomically (see `atomic_write`); returns `path`."""
    return write_bytes_atomic(path, text.encode(encoding), fsync=fsync, partial_suffix=partial_suffix)


def write_json_atomic(
    path: str | os.PathLike,
    document: Any,
    *,
    indent: int | None = 2,
    fsync: bool = False,
    partial_suffix: str = PARTIAL_SUFFIX,
    **dumps_options: Any,
) -> Path | str:
    """Write `document` as JSON (`indent`ed, newline-terminated) as `path` atomically; returns `path`.

    The document is serialised before the partial file is opened, so a value json cannot encode
    raises without touching the disk. `dumps_options` go to `json.dumps` (e.g. sort_keys,
    ensure_ascii, default).
    """
    text = json.dumps(document, indent=indent, **dumps_options) + "\n"
    return write_text_atomic(path, text, fsync=fsync, partial_suffix=partial_suffix)


def remove_partials(directory: str | os.PathLike, partial_suffix: str = PARTIAL_SUFFIX) -> int:
    """Delete the partial files killed writers left directly in `directory`; returns how many.

    Only call it when no writer can be active there (e.g. at the start of a stage that holds the
    directory's lease): a live writer's partial file looks exactly like a dead one's.
    """
    if storage.is_uri(directory):
        return storage.remove_partials(directory, partial_suffix)
    folder = Path(directory)
    removed = 0
    if folder.is_dir():
        for partial in folder.glob(f".*{partial_suffix}"):
            partial.unlink(missing_ok=True)
            removed += 1
    return removed
