"""Where vf3d's files live: local paths and object-store URIs (`s3://bucket/key`, `gs://bucket/key`)
behind one small API, through `pyarrow.fs`.

Every stage option that names an input or an output (prompts, assets, shard directories, model
directories, Ray Train's storage path, reports) may be a local path or a URI. Code that reads,
lists or writes such a location goes through this module (reads, listings) or `vf3d.atomic`
(writes), never through `pathlib` on the raw string: `Path("s3://b/k")` is the local path `s3:/b/k`.

- **Local paths** keep the code paths they always had (`os`, `pathlib`, the partial-file-and-rename
  writes of `vf3d.atomic`); pyarrow is imported only when a URI is used.
- **Object stores** have no directories and no rename. A "directory" is a key prefix: listing one
  is a delimiter listing (one level, never a recursive scan), and creating one is a no-op. A write
  is published the way a local write is: the bytes are uploaded to a hidden partial key beside the
  target (`.{name}.{8 hex}.partial`, which readers skip and `remove_partials` deletes) and then
  copied server-side onto the final key (`CopyObject`), which is atomic: a reader sees the old
  object or the new one, never a part. Uploading straight to the final key would not be safe:
  pyarrow's output streams complete their upload when they are closed or garbage-collected, so a
  write interrupted by an exception would publish a truncated object under the final name.
- **Credentials and endpoints** come the standard way. S3: `AWS_ACCESS_KEY_ID`/
  `AWS_SECRET_ACCESS_KEY` (or any source the AWS SDK knows: profiles, instance roles),
  `AWS_REGION`/`AWS_DEFAULT_REGION`, and `AWS_ENDPOINT_URL_S3`/`AWS_ENDPOINT_URL` for MinIO, Ceph or
  another S3-compatible API (read here and passed as `endpoint_override` and `scheme`, because
  pyarrow before 16 ignores them). GCS: Google's application-default credentials; a
  `STORAGE_EMULATOR_HOST` endpoint is passed on the same way. `filesystem_for` is the one place
  that reads these settings.

This module is in the core layer: the standard library, plus pyarrow inside functions.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import pyarrow.fs as pafs

SCHEMES = ("s3", "gs", "gcs")
"""URI schemes vf3d reads and writes (gcs:// is an alias of gs://)."""
MAX_COPY_BYTES = 5 * 1024**3
"""S3's single-request CopyObject limit: larger objects are uploaded straight to their final key
(see `_publish`)."""


class StorageError(ValueError):
    """A location cannot be used as given: an unknown scheme, a URI without a bucket, a local Path
    that mangled a URI, a missing bucket. The message names the location."""


class Location(str):
    """A command-line value naming a local path or an object-store URI, kept as text.

    Options that may be URIs use this type instead of `pathlib.Path`, which would turn
    `s3://bucket/key` into the local path `s3:/bucket/key`."""

    __slots__ = ()


def is_uri(location: str | os.PathLike) -> bool:
    """Whether `location` is an object-store URI (`s3://`, `gs://`, `gcs://`, or any other
    `scheme://`, which `filesystem_for` then refuses by name). A local path is never a URI; a
    Windows drive letter (`C:\\`) is not a scheme."""
    if isinstance(location, os.PathLike):
        _refuse_mangled(os.fspath(location))
        return False
    text = str(location)
    scheme, separator, _ = text.partition("://")
    return bool(separator) and len(scheme) > 1 and scheme.replace("+", "").replace("-", "").replace(".", "").isalnum()


def _refuse_mangled(text: str) -> None:
    for scheme in SCHEMES:
        if text.startswith(f"{scheme}:/") and not text.startswith(f"{scheme}://"):
            raise StorageError(
                f"{text!r} looks like a {scheme}:// URI that went through a local Path (which collapses '//'); pass it as a string"
            )


def _split(uri: str) -> tuple[str, str, str]:
    """(scheme, bucket, key) of a URI, the scheme lower-cased and gcs folded into gs."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise StorageError(f"{uri}: unknown storage scheme {scheme!r}; use a local path, s3://BUCKET/KEY or gs://BUCKET/KEY")
    if not parts.netloc:
        raise StorageError(f"{uri}: no bucket in the URI; expected {scheme}://BUCKET/KEY")
    return ("gs" if scheme == "gcs" else scheme), parts.netloc, parts.path.strip("/")


def _endpoint(url: str) -> tuple[str, str]:
    """(host[:port][/path], scheme) of an endpoint URL such as http://127.0.0.1:9000."""
    parts = urlsplit(url if "://" in url else f"https://{url}")
    return parts.netloc + parts.path.rstrip("/"), parts.scheme or "https"


def _settings_key(scheme: str) -> tuple[str, ...]:
    """The environment settings a filesystem of `scheme` is built from: a changed endpoint or
    key (a test's fresh server) gets a fresh filesystem rather than a cached stale one."""
    names = (
        ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_PROFILE")
        if scheme == "s3"
        else ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS")
    )
    return tuple(os.environ.get(name, "") for name in names)


@functools.lru_cache(maxsize=32)
def _filesystem(scheme: str, bucket: str, settings: tuple[str, ...]) -> pafs.FileSystem:
    import pyarrow.fs as pafs

    if scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        options: dict[str, Any] = {}
        if endpoint:
            options["endpoint_override"], options["scheme"] = _endpoint(endpoint)
            options["region"] = region or "us-east-1"
            # MinIO and most on-prem S3 APIs serve buckets as paths, which pyarrow picks for an
            # endpoint override; addressing is left to it.
        elif region:
            options["region"] = region
        else:
            # No region given: let pyarrow ask the bucket for its region (one request, cached).
            try:
                return pafs.S3FileSystem(region=pafs.resolve_s3_region(bucket))
            except OSError as error:
                raise StorageError(f"s3://{bucket}: cannot find the bucket's region ({_short(error)}); set AWS_REGION") from error
        return pafs.S3FileSystem(**options)
    options = {}
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:
        options["endpoint_override"], options["scheme"] = _endpoint(emulator)
        options["anonymous"] = True
    return pafs.GcsFileSystem(**options)


def filesystem_for(location: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or a URI; the path of a URI is
    `bucket/key`, what pyarrow's S3 and GCS filesystems expect. Filesystems are cached per
    scheme, bucket and environment settings (creating one may cost a request)."""
    import pyarrow.fs as pafs

    if not is_uri(location):
        return pafs.LocalFileSystem(), os.path.abspath(os.fspath(location))
    scheme, bucket, key = _split(str(location))
    return _filesystem(scheme, bucket, _settings_key(scheme)), f"{bucket}/{key}".rstrip("/")


def arrow_source(location: str | os.PathLike) -> tuple[str, pafs.FileSystem | None]:
    """(path, filesystem) to hand to pyarrow or Ray Data readers (`filesystem=`): the plain local
    path and None for a local location (pyarrow's own fast path), `bucket/key` and the object
    store's filesystem for a URI."""
    if not is_uri(location):
        return os.fspath(location), None
    filesystem, path = filesystem_for(location)
    return path, filesystem


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------


def join(base: str | os.PathLike, *parts: str) -> str | Path:
    """`base/part/...`: a `Path` for a local base (what local callers always had), a URI string
    for an object store (parts joined with '/', never through `pathlib`)."""
    if not is_uri(base):
        return Path(base, *parts)
    text = str(base).rstrip("/")
    for part in parts:
        text += "/" + str(part).strip("/")
    return text


def name(location: str | os.PathLike) -> str:
    """The last component of a path or a URI."""
    if not is_uri(location):
        return Path(location).name
    return PurePosixPath(urlsplit(str(location)).path).name


def parent(location: str | os.PathLike) -> str | Path:
    """The folder holding `location` (a `Path` locally, a URI string on an object store)."""
    if not is_uri(location):
        return Path(location).parent
    scheme, bucket, key = _split(str(location))
    head = key.rsplit("/", 1)[0] if "/" in key else ""
    return f"{urlsplit(str(location)).scheme}://{bucket}" + (f"/{head}" if head else "")


def relative_to(location: str | os.PathLike, root: str | os.PathLike) -> str:
    """`location` relative to `root`, POSIX-style (both local or both URIs)."""
    if not is_uri(root):
        return Path(location).relative_to(root).as_posix()
    prefix = str(root).rstrip("/") + "/"
    if not str(location).startswith(prefix):
        raise ValueError(f"{location} is not under {root}")
    return str(location)[len(prefix) :]


def local_or_uri(location: str | os.PathLike) -> str | Path:
    """A location as the rest of vf3d carries it: a `Path` when local, the URI string otherwise."""
    return str(location) if is_uri(location) else Path(location)


# ---------------------------------------------------------------------------------------------
# Questions and listings
# ---------------------------------------------------------------------------------------------


def _info(location: str | os.PathLike):
    filesystem, path = filesystem_for(location)
    try:
        return filesystem.get_file_info(path)
    except OSError as error:
        raise _explained(error, location) from error


def exists(location: str | os.PathLike) -> bool:
    """Whether a file or a directory (on an object store: any key under the prefix) exists."""
    if not is_uri(location):
        return Path(location).exists()
    import pyarrow.fs as pafs

    return _info(location).type != pafs.FileType.NotFound


def is_file(location: str | os.PathLike) -> bool:
    if not is_uri(location):
        return Path(location).is_file()
    import pyarrow.fs as pafs

    return _info(location).type == pafs.FileType.File


def is_dir(location: str | os.PathLike) -> bool:
    """Whether `location` is a directory; on an object store, whether any key lies under it (an
    empty prefix does not exist there) or it is a bucket."""
    if not is_uri(location):
        return Path(location).is_dir()
    import pyarrow.fs as pafs

    return _info(location).type == pafs.FileType.Directory


def size(location: str | os.PathLike) -> int:
    """Bytes in a file."""
    if not is_uri(location):
        return Path(location).stat().st_size
    return int(_info(location).size)


def list_dir(location: str | os.PathLike) -> list[tuple[str, bool]]:
    """(name, is_file) of every entry directly in a directory, sorted by name; nothing when it
    does not exist. One level only: on an object store a delimiter listing (paged by the SDK),
    never a recursive scan of everything under the prefix."""
    if not is_uri(location):
        try:
            with os.scandir(location) as entries:
                return sorted((entry.name, entry.is_file()) for entry in entries)
        except (FileNotFoundError, NotADirectoryError):
            return []
    import pyarrow.fs as pafs

    filesystem, path = filesystem_for(location)
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    except OSError as error:
        raise _explained(error, location) from error
    return sorted((info.base_name, info.type == pafs.FileType.File) for info in infos if info.base_name)


def walk_files(location: str | os.PathLike) -> list[str]:
    """Relative POSIX paths of every file under a directory, sorted (recursive: for small trees
    such as a model directory or an assets folder, not for shard directories)."""
    if not is_uri(location):
        root = Path(location)
        return sorted(path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file())
    import pyarrow.fs as pafs

    filesystem, path = filesystem_for(location)
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    except OSError as error:
        raise _explained(error, location) from error
    prefix = path.rstrip("/") + "/"
    return sorted(info.path[len(prefix) :] for info in infos if info.type == pafs.FileType.File and info.path.startswith(prefix))


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def read_bytes(location: str | os.PathLike) -> bytes:
    """The whole content of a file; FileNotFoundError when there is none."""
    if not is_uri(location):
        return Path(location).read_bytes()
    filesystem, path = filesystem_for(location)
    try:
        with filesystem.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError:
        raise
    except OSError as error:
        raise _explained(error, location) from error


def read_text(location: str | os.PathLike, encoding: str = "utf-8") -> str:
    return read_bytes(location).decode(encoding)


def read_json(location: str | os.PathLike) -> Any:
    return json.loads(read_text(location))


def open_input(location: str | os.PathLike):
    """A seekable binary file for readers (pyarrow.parquet, PIL): a local file object, or pyarrow's
    random-access reader of the object (ranged GETs, nothing downloaded up front)."""
    if not is_uri(location):
        return open(location, "rb")
    filesystem, path = filesystem_for(location)
    try:
        return filesystem.open_input_file(path)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise _explained(error, location) from error


# ---------------------------------------------------------------------------------------------
# Writing (the object-store half of vf3d.atomic) and removing
# ---------------------------------------------------------------------------------------------


def makedirs(location: str | os.PathLike) -> None:
    """Create a local directory and its parents; nothing on an object store, where a "directory"
    is only a key prefix (an empty marker object would show up as an entry in listings)."""
    if not is_uri(location):
        Path(location).mkdir(parents=True, exist_ok=True)


def partial_key(location: str, partial_suffix: str) -> str:
    """A fresh hidden partial key beside `location`: `.{name}.{8 hex}{partial_suffix}`."""
    return str(join(parent(location), f".{name(location)}.{uuid.uuid4().hex[:8]}{partial_suffix}"))


def _upload(local_file: str | os.PathLike, uri: str) -> None:
    """Stream a local file to `uri` (multipart for large files)."""
    filesystem, path = filesystem_for(uri)
    with open(local_file, "rb") as source, filesystem.open_output_stream(path, metadata={}) as sink:
        shutil.copyfileobj(source, sink, 8 << 20)


def publish_file(local_file: str | os.PathLike, uri: str, partial_suffix: str = ".partial") -> None:
    """Publish a complete local file as the object `uri`, atomically: upload it to a hidden
    partial key, copy that server-side onto `uri` (a reader sees the old object or the new one),
    delete the partial key. A failure removes the partial key when it can and leaves `uri` as it
    was; a killed process leaves at most a partial key (`remove_partials` deletes it).

    Objects over `MAX_COPY_BYTES` (S3's single-copy limit) are uploaded straight to `uri`: an
    upload is published only when it completes, and the file is complete on disk before it
    starts, so only a failure of the upload itself could cut it short."""
    filesystem, path = filesystem_for(uri)
    if os.path.getsize(local_file) > MAX_COPY_BYTES:
        _upload(local_file, uri)
        return
    partial = partial_key(uri, partial_suffix)
    _, partial_path = filesystem_for(partial)
    try:
        _upload(local_file, partial)
        filesystem.copy_file(partial_path, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            filesystem.delete_file(partial_path)
        if isinstance(error, OSError):
            raise _explained(error, uri) from error
        raise
    with contextlib.suppress(OSError):  # published; a leftover partial key is only clutter
        filesystem.delete_file(partial_path)


@contextlib.contextmanager
def staged_file(uri: str, partial_suffix: str = ".partial") -> Iterator[Path]:
    """Yield a local file path (in a private temporary directory, with `uri`'s own name, so
    writers that pick a format from the suffix work) to write `uri`'s new content to; publish it
    with `publish_file` when the block ends normally, drop it when the block raises."""
    with tempfile.TemporaryDirectory(prefix="vf3d-upload-") as scratch:
        local = Path(scratch) / (name(uri) or "object")
        yield local
        publish_file(local, uri, partial_suffix)


def publish_bytes(data: bytes, uri: str, partial_suffix: str = ".partial") -> None:
    """`publish_file` for bytes in memory."""
    with staged_file(uri, partial_suffix) as local:
        local.write_bytes(data)


def remove(location: str | os.PathLike, missing_ok: bool = True) -> None:
    """Delete one file or object."""
    if not is_uri(location):
        Path(location).unlink(missing_ok=missing_ok)
        return
    filesystem, path = filesystem_for(location)
    try:
        filesystem.delete_file(path)
    except FileNotFoundError:
        if not missing_ok:
            raise


def move(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Rename a file (`os.replace` locally; copy then delete on an object store, where the copy is
    atomic at the target and a failure leaves the source in place)."""
    if not is_uri(source) and not is_uri(target):
        os.replace(source, target)
        return
    filesystem, source_path = filesystem_for(source)
    _, target_path = filesystem_for(target)
    filesystem.copy_file(source_path, target_path)
    filesystem.delete_file(source_path)


def remove_partials(directory: str | os.PathLike, partial_suffix: str = ".partial") -> int:
    """Delete the hidden partial files (`.*{partial_suffix}`) directly in `directory`; returns how
    many. Only when no writer can be active there (the caller holds the directory's lease)."""
    removed = 0
    for entry, entry_is_file in list_dir(directory):
        if entry_is_file and entry.startswith(".") and entry.endswith(partial_suffix):
            remove(join(directory, entry))
            removed += 1
    return removed


def create_exclusive(location: str | os.PathLike, data: bytes = b"") -> bool:
    """Create a marker file unless it exists; True when this call created it. Exclusive locally
    (O_EXCL); on an object store a check then a write, so two racing callers may both succeed:
    use it for fault-injection markers and the like, not for mutual exclusion."""
    if not is_uri(location):
        try:
            descriptor = os.open(location, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        return True
    if exists(location):
        return False
    publish_bytes(data, str(location))
    return True


# ---------------------------------------------------------------------------------------------
# Local copies, for libraries that need a real file or directory name
# ---------------------------------------------------------------------------------------------


def download(location: str, target: str | os.PathLike) -> Path:
    """Copy the object or the directory tree at `location` to the local `target`; returns it."""
    target = Path(target)
    if is_file(location):
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as sink, open_input(location) as source:
            shutil.copyfileobj(source, sink, 8 << 20)
        return target
    files = walk_files(location)
    if not files:
        raise FileNotFoundError(f"{location}: no such file or directory")
    for relative in files:
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        with open(destination, "wb") as sink, open_input(join(location, relative)) as source:
            shutil.copyfileobj(source, sink, 8 << 20)
    return target


@contextlib.contextmanager
def local_copy(location: str | os.PathLike) -> Iterator[Path]:
    """A local path holding `location`'s content for the block: the path itself when local, a
    temporary download (file or directory tree) of an object store's, removed afterwards."""
    if not is_uri(location):
        yield Path(location)
        return
    with tempfile.TemporaryDirectory(prefix="vf3d-download-") as scratch:
        yield download(str(location), Path(scratch) / (name(location) or "download"))


_CACHE_LOCK = threading.Lock()


def cached_local_copy(location: str | os.PathLike) -> Path:
    """A local copy of a (read-only) file or directory that lives as long as the process: for a
    model directory that every batch of an actor reads. Downloaded once per process and location
    into a private temporary directory; a local location is returned as it is."""
    if not is_uri(location):
        return Path(location)
    with _CACHE_LOCK:
        cached = _CACHED.get(str(location))
        if cached is None or not cached.exists():
            scratch = Path(tempfile.mkdtemp(prefix="vf3d-cache-"))
            import atexit

            atexit.register(shutil.rmtree, scratch, True)
            cached = download(str(location), scratch / (name(location) or "download"))
            _CACHED[str(location)] = cached
        return cached


_CACHED: dict[str, Path] = {}


def upload_tree(local_dir: str | os.PathLike, uri: str, last: tuple[str, ...] = ()) -> None:
    """Publish every file of a local directory under `uri` (each file atomically), the files named
    in `last` (relative paths) after all the others: a reader that takes a directory as complete
    once its marker file (a model's config.json) exists never sees a part of it."""
    root = Path(local_dir)
    files = sorted(path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file())
    for relative in sorted(files, key=lambda item: (item in last, item)):
        publish_file(root / relative, str(join(uri, relative)))


def remove_tree(location: str | os.PathLike) -> None:
    """Delete a directory and everything under it (an object store: every key under the prefix)."""
    if not is_uri(location):
        shutil.rmtree(location, ignore_errors=True)
        return
    filesystem, path = filesystem_for(location)
    with contextlib.suppress(FileNotFoundError):
        filesystem.delete_dir(path)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def _short(error: BaseException) -> str:
    return " ".join(str(error).split())[:300]


def _explained(error: OSError, location: str | os.PathLike) -> OSError:
    """An object-store error with the location and a hint for the usual causes (a missing bucket,
    refused credentials, an unreachable endpoint). Still an OSError: callers that treat storage
    failures as infrastructure failures keep doing so."""
    text = _short(error)
    lowered = text.lower()
    if "nosuchbucket" in lowered or "bucket does not exist" in lowered or "bucket not found" in lowered:
        hint = "the bucket does not exist"
    elif "accessdenied" in lowered or "forbidden" in lowered or "invalidaccesskeyid" in lowered or "signaturedoesnotmatch" in lowered:
        hint = "access denied: check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or the GCS credentials)"
    elif "curl" in lowered or "connect" in lowered or "timed out" in lowered:
        hint = "cannot reach the storage endpoint: check AWS_ENDPOINT_URL (or STORAGE_EMULATOR_HOST)"
    else:
        hint = None
    message = f"{location}: {hint} ({text})" if hint else f"{location}: {text}"
    explained = type(error)(message) if type(error) is not OSError else OSError(error.errno, message)
    return explained
