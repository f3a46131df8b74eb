"""The HTTP boundary of the endpoint, free of Ray: auth, body limits, content sniffing, image
decoding and the triplane cache. Every rejection is a `RequestError` carrying the 4xx status and a
one-line message, which the ingress turns into `{"error": message}`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from vf3d.mesh import MESH_CONTENT_TYPES
from vf3d.models.reconstructor.config import InferenceConfig
from vf3d.preprocess import ImageInputError, load_image, prepare_decoded

# Formats PIL decodes that a user would upload, by their leading bytes. The request's
# Content-Type is never trusted: the bytes decide.
_SIGNATURES: tuple[tuple[str, bytes, int], ...] = (
    ("png", b"\x89PNG\r\n\x1a\n", 0),
    ("jpeg", b"\xff\xd8\xff", 0),
    ("gif", b"GIF87a", 0),
    ("gif", b"GIF89a", 0),
    ("webp", b"WEBP", 8),  # RIFF....WEBP
    ("bmp", b"BM", 0),
    ("tiff", b"II*\x00", 0),
    ("tiff", b"MM\x00*", 0),
)
SUPPORTED_FORMATS = "PNG, JPEG, WebP, GIF, BMP or TIFF"


class RequestError(Exception):
    """A request the endpoint refuses: HTTP `status` (4xx, or 503/504) and a one-line `message`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = " ".join(str(message).split())
        self.headers = dict(headers or {})
        """Extra response headers (e.g. `Retry-After` on a 503 of load shedding)."""


def check_api_key(authorization: str | None, expected: str | None) -> None:
    """Raise 401 unless `authorization` is `Bearer <expected>` (no key configured: no check).

    The comparison takes the same time wherever the strings first differ (hmac.compare_digest),
    so response timing does not reveal how much of a guessed key was right.
    """
    if not expected:
        return
    if not authorization:
        raise RequestError(401, "missing API key: send the header 'Authorization: Bearer <key>'")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise RequestError(401, "invalid API key")


def check_headers(headers: list[tuple[bytes, bytes]], max_count: int, max_bytes: int) -> None:
    """Raise 431 when the raw ASGI `headers` (name, value) pairs are more than `max_count`, or
    their names and values together more than `max_bytes`."""
    if len(headers) > max_count:
        raise RequestError(431, f"request has {len(headers)} headers, more than the limit of {max_count}")
    size = sum(len(name) + len(value) for name, value in headers)
    if size > max_bytes:
        raise RequestError(431, f"request headers are {size} bytes, more than the limit of {max_bytes} bytes")


def content_length(headers) -> int | None:
    """The declared body size, or None when the client streams without one."""
    value = headers.get("content-length")
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise RequestError(400, f"invalid Content-Length header: {value[:40]!r}") from None
    if length < 0:
        raise RequestError(400, "invalid Content-Length header: negative")
    return length


async def read_body(request, max_bytes: int) -> bytes:
    """The request body, refusing (413) one over `max_bytes` before reading it when its size is
    declared, and as soon as the count passes the limit when it is streamed."""
    declared = content_length(request.headers)
    if declared is not None and declared > max_bytes:
        raise RequestError(413, f"body is {declared} bytes, more than the limit of {max_bytes} bytes")
    chunks, received = [], 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_bytes:
            raise RequestError(413, f"body is more than the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def image_bytes(request, max_bytes: int) -> bytes:
    """The uploaded image: the raw body, or the `image` field of a multipart/form-data body."""
    body = await read_body(request, max_bytes)
    content_type = request.headers.get("content-type", "")
    if content_type.lower().startswith("multipart/form-data"):
        body = await _multipart_image(request.headers, body)
    if not body:
        raise RequestError(400, "empty body: send the image bytes, or a multipart form with an 'image' file field")
    return body


async def _multipart_image(headers, body: bytes) -> bytes:
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def replay():
        yield body
        yield b""

    try:
        form = await MultiPartParser(headers, replay(), max_files=4, max_fields=16).parse()
    except MultiPartException as error:
        raise RequestError(400, f"malformed multipart body: {error.message}") from None
    upload = form.get("image")
    if upload is None:
        raise RequestError(400, f"multipart body has no 'image' field (fields: {', '.join(form.keys()) or 'none'})")
    if not isinstance(upload, UploadFile):
        raise RequestError(400, "multipart field 'image' must be a file, not text")
    data = await upload.read()
    await form.close()
    return data


def sniff_format(data: bytes) -> str:
    """The image format the bytes start with; 415 naming what they look like otherwise."""
    for name, magic, offset in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic and (name != "webp" or data[:4] == b"RIFF"):
            return name
    raise RequestError(415, f"body is not a {SUPPORTED_FORMATS} image (it looks like {_describe(data)})")


def _describe(data: bytes) -> str:
    head = data[:512]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"binary data starting with {data[:8].hex()}"
    stripped = text.lstrip().lower()
    if stripped.startswith(("<!doctype html", "<html")):
        return "HTML"
    if stripped.startswith(("{", "[")):
        try:
            json.loads(data)
            return "JSON"
        except ValueError:
            pass
    return "text"


@dataclass
class MeshRequest:
    """Validated query parameters of `/v1/image-to-3d` and `/v1/turntable`."""

    format: str = "glb"
    mesh_resolution: int | None = None
    seed: int | None = None

    @classmethod
    def from_query(cls, format: str, mesh_resolution: int | None, seed: int | None, max_mesh_resolution: int) -> MeshRequest:
        """Check each parameter, with a 422 naming the bad one."""
        fmt = format.lower()
        if fmt not in MESH_CONTENT_TYPES:
            raise RequestError(422, f"format must be one of {', '.join(sorted(MESH_CONTENT_TYPES))}, got {format[:20]!r}")
        if mesh_resolution is not None and not 16 <= mesh_resolution <= max_mesh_resolution:
            raise RequestError(422, f"mesh_resolution must be between 16 and {max_mesh_resolution}, got {mesh_resolution}")
        if seed is not None and not 0 <= seed < 2**63:
            raise RequestError(422, f"seed must be between 0 and 2**63 - 1, got {seed}")
        return cls(fmt, mesh_resolution, seed)


def working_side(image_size: int) -> int:
    """Longest side an upload is decoded to for a model input of `image_size` pixels: the size
    preprocessing works at anyway (`prepare_decoded` shrinks to it), reached during decoding so a
    40 MP upload never exists as a full-size RGBA copy."""
    return max(4 * image_size, 1024)


def decode_image(data: bytes, image_size: int, inference: InferenceConfig, max_pixels: int, min_side: int) -> np.ndarray:
    """Image bytes → the model input float32 [3, S, S] in [0, 1] (mask, recentre, resize).

    Raises RequestError: 415 for non-images, 413 for too many pixels (read from the header,
    before decoding: decompression bombs), 422 for images too small or without a foreground
    (e.g. fully transparent), 400 for corrupt files.
    """
    sniff_format(data)
    try:
        image = load_image(data, max_pixels=max_pixels, max_side=working_side(image_size))
    except ImageInputError as error:
        raise RequestError(413 if "pixels" in str(error) else 400, str(error)) from None
    width, height = image.info.get("original_size", image.size)  # before the decode-time shrink
    if min(width, height) < min_side:
        raise RequestError(422, f"image is {width}x{height} pixels; at least {min_side}x{min_side} is needed")
    try:
        prepared = prepare_decoded(image, image_size, inference.foreground_ratio, inference.mask_method, mode=inference.preprocessing)
    except ImageInputError as error:
        # A valid image without an object to reconstruct is unprocessable content, not a bad file.
        raise RequestError(422 if str(error).startswith("no foreground") else 400, str(error)) from None
    return prepared.numpy()


def image_key(data: bytes, inference: InferenceConfig) -> str:
    """Cache key of an upload: its bytes and the preprocessing settings that shape the model input."""
    digest = hashlib.sha256(data)
    digest.update(f"|{inference.foreground_ratio}|{inference.mask_method}".encode())
    return digest.hexdigest()


class TriplaneCache:
    """Least-recently-used triplanes [1, 3, C, R, R] by image key, at most `capacity` entries."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> np.ndarray | None:
        """The cached triplanes of `key` (marking them recently used), or None."""
        planes = self._entries.get(key)
        if planes is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return planes

    def put(self, key: str, planes: np.ndarray) -> None:
        """Remember `planes`, dropping the least recently used entry when full."""
        if self.capacity == 0:
            return
        self._entries[key] = planes
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
