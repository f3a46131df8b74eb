"""Single-photo preprocessing for image-to-3D reconstruction (VFusion3D/LRM style).

The released model expects: background removed, the object cropped to its mask's bounding
box and rescaled so the box's longer side is 80% of a square canvas, centred, composited on
white, resized to the model input size (docs/vfusion3d.md#preprocessing). Everything that can
go wrong with user input raises one :class:`ImageInputError` with a one-line message, so the CLI
and the HTTP endpoint can report it as-is.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import math
import os
import re
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

# 40 MP covers every consumer camera and phone (the largest common sensors are ~50 MP only
# in special modes) while bounding the decoded RGBA buffer to 160 MB: a server must not let a
# tiny compressed file (a "decompression bomb") claim gigabytes. PIL's own bomb check
# (Image.MAX_IMAGE_PIXELS, ~89 MP) still applies on top, so raising max_pixels beyond that
# has no effect.
DEFAULT_MAX_PIXELS = 40_000_000

Source = str | os.PathLike | bytes | bytearray | memoryview | Image.Image


class ImageInputError(ValueError):
    """The input is not a usable image; the message is a single line naming the problem."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # PIL messages may carry newlines


def load_image(source: Source, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int | None = None) -> Image.Image:
    """Open and fully decode an image as an RGBA PIL image of shape [H, W, 4] (uint8).

    ``source`` is a path, encoded bytes, or an (possibly still lazy) PIL image. Alpha is 255
    where the file has none; palette transparency and LA are kept; 16-bit and float modes are
    rescaled to 8 bit; CMYK is converted; EXIF orientation is applied. The header size is
    checked against ``max_pixels`` before any pixel is decoded.

    With ``max_side``, the result is scaled down (aspect kept, LANCZOS) so its longer side is at
    most ``max_side``, during decoding: JPEGs decode at 1/2, 1/4 or 1/8 scale directly, other
    formats are shrunk in their own mode right after decoding, before any RGBA or 16-bit
    conversion, so a 40 MP upload never exists as a full-size RGBA copy. The header's size is
    kept in ``image.info["original_size"]`` (W, H) either way.
    """
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    if isinstance(source, Image.Image):
        return _decode(source, max_pixels, max_side)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageInputError("image is empty (0 bytes)")
        return _decode_stream(io.BytesIO(source), max_pixels, max_side)
    path = os.fspath(source)
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise ImageInputError(f"image is empty (0 bytes): {path}")
            return _decode_stream(f, max_pixels, max_side)
    except FileNotFoundError:
        raise ImageInputError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise ImageInputError(f"not a file: {path}") from None
    except PermissionError:
        raise ImageInputError(f"permission denied: {path}") from None


def _decode_stream(fp, max_pixels: int, max_side: int | None = None) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # PIL warns (rather than raises) between 1x and 2x its limit; refuse those too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(fp)
    except UnidentifiedImageError:
        raise ImageInputError("not a decodable image: cannot identify image file format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        n = re.search(r"\((\d+) pixels\)", str(e))
        count = f"{int(n.group(1)):.2g}" if n else "too many"
        limit, name = min((max_pixels, "max_pixels"), (Image.MAX_IMAGE_PIXELS, "PIL.Image.MAX_IMAGE_PIXELS"))
        raise ImageInputError(f"image has {count} pixels, more than the limit of {limit} ({name})") from None
    except Exception as e:  # noqa: BLE001 - plugins raise SyntaxError, struct.error, ...
        raise ImageInputError(f"image is truncated or corrupt: {type(e).__name__}: {e}") from None
    with im:
        return _decode(im, max_pixels, max_side)


def _shrink(im: Image.Image, max_side: int) -> Image.Image:
    """`im` (decoded) scaled so its longer side is at most `max_side`, in its own mode where PIL
    filters that mode: the full-size buffer is then dropped before any wider conversion."""
    w, h = im.size
    if max(w, h) <= max_side:
        return im
    if im.mode in ("P", "PA", "1"):
        # PIL resizes palette and bilevel images nearest-neighbour only: convert first.
        im = im.convert("L" if im.mode == "1" else "RGBA")
    scale = max_side / max(w, h)
    size = (max(1, min(max_side, round(w * scale))), max(1, min(max_side, round(h * scale))))
    # reducing_gap: an integer box reduction first, then LANCZOS on the small image (fast, and
    # RGBA is resized premultiplied, so transparent pixels' colours do not bleed in). PIL's box
    # reduction has no 16-bit modes; those take LANCZOS alone.
    gap = None if im.mode.startswith("I;16") else 2.0
    small = im.resize(size, Image.Resampling.LANCZOS, reducing_gap=gap)
    small.info = dict(im.info)  # keeps the EXIF orientation for the transpose
    return small


def _decode(im: Image.Image, max_pixels: int, max_side: int | None = None) -> Image.Image:
    w, h = im.size  # known from the header: nothing decoded yet
    if w == 0 or h == 0:
        raise ImageInputError("image has zero width or height")
    if w * h > max_pixels:
        raise ImageInputError(f"image is {w}x{h} = {w * h:.2g} pixels, more than the limit of {max_pixels} (max_pixels)")
    try:
        if max_side is not None and max(w, h) > max_side:
            # JPEG's DCT decodes straight to the smallest 1/2^k scale still >= the target (a
            # no-op for other formats and for images already decoded).
            scale = max_side / max(w, h)
            im.draft(None, (math.ceil(w * scale), math.ceil(h * scale)))
        im.load()  # force the full decode here so truncation surfaces as ImageInputError
        if max_side is not None:
            im = _shrink(im, max_side)
        if im.mode in ("I", "F") or im.mode.startswith("I;16"):
            # Integer modes come from 16-bit files; float modes are assumed to be in [0, 1].
            scale = 255.0 if im.mode == "F" else 1 / 257
            grey = np.clip(np.asarray(im, np.float32) * scale + 0.5, 0, 255).astype(np.uint8)
            grey = Image.fromarray(grey)
            grey.info = im.info  # keeps the EXIF orientation for the transpose below
            im = grey
        rgba = im.convert("RGBA")  # always a new image; handles P+transparency, LA, PA, CMYK, ...
        ImageOps.exif_transpose(rgba, in_place=True)  # on our copy: one less full-size buffer
        rgba.info["original_size"] = (w, h)
        return rgba
    except Exception as e:  # noqa: BLE001 - any decoder failure is a property of the input
        raise ImageInputError(f"image is truncated or corrupt: {type(e).__name__}: {e}") from None


def foreground_mask(image: Image.Image, method: str = "auto", rembg_model: str | None = None) -> np.ndarray:
    """Foreground probability [H, W] float32 in [0, 1] for an RGBA image of size W x H.

    Order: a non-trivial alpha channel (any alpha < 255) is used as-is; otherwise, for
    ``method`` "auto" or "rembg", the ``rembg`` package when installed (with ``rembg_model``,
    rembg's default when None); otherwise (``method="estimate"``, or "auto" without rembg)
    :func:`_estimate_mask`. ``method="none"`` treats the whole image as foreground (for inputs
    already framed on a clean background).
    """
    if method not in ("auto", "rembg", "estimate", "none"):
        raise ValueError(f"mask method must be 'auto', 'rembg', 'estimate' or 'none', got {method!r}")
    image = image if image.mode == "RGBA" else image.convert("RGBA")
    alpha = np.asarray(image.getchannel("A"))
    if alpha.min() < 255:
        return alpha.astype(np.float32) / 255.0
    if method == "none":
        return np.ones(alpha.shape, np.float32)
    has_rembg = importlib.util.find_spec("rembg") is not None  # importing it loads onnxruntime
    if method == "rembg" and not has_rembg:
        raise RuntimeError("mask_method='rembg' needs the rembg package: pip install rembg")
    if method != "estimate" and has_rembg:
        import rembg

        mask = rembg.remove(image.convert("RGB"), session=_rembg_session(rembg_model), only_mask=True)
        return np.asarray(mask.convert("L"), np.float32) / 255.0
    return _estimate_mask(image)


RELEASE_REMBG_MODEL = "isnet-general-use"
"""The rembg model the released VFusion3D code removes backgrounds with (rembg's default is u2net)."""


@functools.cache
def _rembg_session(model_name: str | None = None):
    import rembg

    # Loads the ONNX model once per process, not once per image.
    return rembg.new_session(model_name) if model_name else rembg.new_session()


def _estimate_mask(image: Image.Image, work_side: int = 512) -> np.ndarray:
    """Offline background removal by colour distance to the border; returns [H, W] float32.

    Works for product-style photos: an object in front of a roughly uniform background that
    fills the image border. It fails on cluttered or textured backgrounds, objects touching
    most of the border, or objects coloured like the background; when it finds almost nothing
    (< 0.5% of pixels) or almost everything (> 95%) it returns all ones, i.e. the whole photo
    is treated as the object, so that a result is always produced. It does the same when the
    border itself is not one colour (median distance to its median colour > 0.1), which is
    the case for most real photos of scenes. Use rembg (or an alpha channel) for those.
    """
    w, h = image.size
    small = image.convert("RGB")
    small.thumbnail((work_side, work_side), Image.Resampling.BILINEAR)  # speed; mask is smooth
    rgb = ndimage.gaussian_filter(np.asarray(small, np.float32) / 255.0, sigma=(1, 1, 0))
    sh, sw = rgb.shape[:2]
    b = max(2, min(sh, sw) // 50)  # border strip, a few pixels wide
    border = np.concatenate([rgb[:b].reshape(-1, 3), rgb[-b:].reshape(-1, 3), rgb[:, :b].reshape(-1, 3), rgb[:, -b:].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    # Median, so an object cut by the image edge (less than half the border) does not count.
    spread = float(np.median(np.linalg.norm(border - bg, axis=-1)))
    if spread > 0.1:  # the border is no single colour (a scene, texture): nothing to separate
        return np.ones((h, w), np.float32)
    # Noise and gentle gradients spread the background's own distances; stay well above that.
    # The opening drops isolated noisy pixels before components are counted.
    fg = ndimage.binary_opening(np.linalg.norm(rgb - bg, axis=-1) > max(0.1, 3 * spread))
    fg = ndimage.binary_fill_holes(fg)
    labels, n = ndimage.label(fg)
    if n:
        sizes = np.bincount(labels.ravel())[1:]
        big = sizes >= max(0.001 * fg.size, 0.05 * sizes.max())  # remove small specks
        centre = np.unique(labels[sh // 4 : sh - sh // 4, sw // 4 : sw - sw // 4])
        keep = np.zeros(n + 1, bool)
        keep[centre[centre > 0]] = True
        keep[1:] &= big
        if not keep.any():
            keep[1 + int(sizes.argmax())] = True
        fg = keep[labels]
    if not 0.005 <= fg.mean() <= 0.95:
        return np.ones((h, w), np.float32)
    soft = np.clip(ndimage.gaussian_filter(fg.astype(np.float32), sigma=0.7), 0, 1)
    return np.asarray(Image.fromarray(soft).resize((w, h), Image.Resampling.BILINEAR))


def recenter(
    image_rgb: np.ndarray, mask: np.ndarray, foreground_ratio: float = 0.8, background: tuple[float, float, float] = (1.0, 1.0, 1.0)
) -> np.ndarray:
    """Composite, crop to the mask's bounding box and centre it on a square canvas.

    ``image_rgb`` [H, W, 3] float in [0, 1] and ``mask`` [H, W] in [0, 1] give
    [S, S, 3] float32 with S = ceil(longer box side / foreground_ratio); the box is the mask
    above 0.5 (the whole image when empty) and the canvas is filled with ``background``.
    """
    if not 0 < foreground_ratio <= 1:
        raise ValueError(f"foreground_ratio must be in (0, 1], got {foreground_ratio}")
    rgb, m = np.asarray(image_rgb, np.float32), np.asarray(mask, np.float32)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or m.shape != rgb.shape[:2]:
        raise ValueError(f"expected image [H, W, 3] and mask [H, W], got {rgb.shape} and {m.shape}")
    bg = np.asarray(background, np.float32).reshape(1, 1, 3)
    ys, xs = np.nonzero(m > 0.5)
    if ys.size:
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    else:
        y0, y1, x0, x1 = 0, rgb.shape[0], 0, rgb.shape[1]
    mc = m[y0:y1, x0:x1, None]
    crop = rgb[y0:y1, x0:x1] * mc + bg * (1 - mc)
    ch, cw = crop.shape[:2]
    # The 1e-6 keeps float error (e.g. 40 / 0.8 = 50.000000001) from adding a pixel.
    side = max(1, math.ceil(max(ch, cw) / foreground_ratio - 1e-6))
    canvas = np.empty((side, side, 3), np.float32)
    canvas[:] = bg
    top, left = (side - ch) // 2, (side - cw) // 2
    canvas[top : top + ch, left : left + cw] = crop
    return canvas


PREPROCESSING_MODES = ("vf3d", "release")
"""How a photo is framed: "vf3d" (`recenter`: the mask's box at `foreground_ratio` of a canvas
sized to it, antialiased bicubic resize) or "release" (`release_framing`: the released VFusion3D
code's framing, for comparing outputs with it)."""


def prepare_image(
    source: Source,
    size: int,
    foreground_ratio: float = 0.8,
    mask_method: str = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    mode: str = "vf3d",
) -> torch.Tensor:
    """Photo (path, bytes or PIL image) -> model input [3, size, size] float32 in [0, 1].

    load_image -> foreground_mask -> recenter -> antialiased resize (``mode="vf3d"``), or the
    released code's framing (``mode="release"``, see `release_framing`). No ImageNet
    normalisation: the model's image encoder applies its own. An image with no foreground (fully
    transparent, or nothing found by background removal) raises `ImageInputError`.
    """
    if int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer, got {size}")
    return prepare_decoded(load_image(source, max_pixels), size, foreground_ratio, mask_method, mode=mode)


def prepare_decoded(
    image: Image.Image, size: int, foreground_ratio: float = 0.8, mask_method: str = "auto", mode: str = "vf3d"
) -> torch.Tensor:
    """`prepare_image` for an image `load_image` already decoded (RGBA; shrunk in place), for
    callers that inspect it first, so it is not decoded and converted a second time."""
    if mode not in PREPROCESSING_MODES:
        raise ValueError(f"preprocessing mode must be one of {', '.join(PREPROCESSING_MODES)}, got {mode!r}")
    # Bound the working resolution: full-size float buffers of a 40 MP photo cost gigabytes,
    # and the object ends up foreground_ratio * size wide, so only objects spanning less than
    # ~a fifth of a large photo lose detail here.
    image.thumbnail((max(4 * size, 1024),) * 2, Image.Resampling.LANCZOS)
    mask = foreground_mask(image, mask_method, RELEASE_REMBG_MODEL if mode == "release" else None)
    _require_foreground(image, mask, mask_method)
    if mode == "release":
        return release_framing(image, mask, size, foreground_ratio)
    rgb = np.asarray(image.convert("RGB"), np.float32) / 255.0
    canvas = torch.from_numpy(recenter(rgb, mask, foreground_ratio)).permute(2, 0, 1)[None]
    out = F.interpolate(canvas, size=(size, size), mode="bicubic", antialias=True)
    return out[0].clamp_(0.0, 1.0).contiguous()


def _require_foreground(image: Image.Image, mask: np.ndarray, mask_method: str) -> None:
    """A mask with nothing above one half leaves no object to reconstruct: say why, rather than
    reconstructing a blank canvas."""
    if mask.size and float(mask.max()) > 0.5:
        return
    if np.asarray(image.getchannel("A")).min() < 255:
        raise ImageInputError("no foreground: the image is fully transparent (its alpha channel hides every pixel)")
    raise ImageInputError(f"no foreground: background removal (mask_method={mask_method!r}) found no object in the image")


def release_framing(image: Image.Image, mask: np.ndarray, size: int, foreground_ratio: float = 0.8) -> torch.Tensor:
    """Frame a photo as the released VFusion3D code does → [3, size, size] float32 in [0, 1]
    (docs/vfusion3d.md#preprocessing).

    The release cuts the object out (RGBA, alpha = mask), crops the box of every pixel whose
    uint8 mask is non-zero (the box's last row and column excluded, as its slicing does), scales
    the crop with area interpolation so that its longer side is int(max(H, W) · foreground_ratio)
    on a transparent square canvas of side max(H, W), centres it, truncates to uint8, composites
    over white and resizes to `size` bicubically with align_corners=True and no antialiasing.

    Not copied: the release composites an already premultiplied cut-out a second time, which
    darkens the object's soft edges; here the cut-out is composited once. It also runs
    background removal twice (the second time on the cut-out, for the box); here one mask serves
    both. Area interpolation is PIL's box filter per channel (OpenCV's INTER_AREA when shrinking).

    Args:
        image: RGBA [H, W] PIL image; mask: [H, W] foreground in [0, 1] with some pixel > 0.5.
    """
    height, width = mask.shape
    canvas_side = max(height, width)
    alpha = (np.clip(mask, 0.0, 1.0) * 255).astype(np.uint8)
    rows, columns = np.nonzero(alpha)
    top, bottom, left, right = rows.min(), rows.max(), columns.min(), columns.max()
    crop_h, crop_w = bottom - top, right - left
    if crop_h == 0 or crop_w == 0:
        raise ImageInputError("no foreground: the object is a single row or column of pixels")
    target = int(canvas_side * foreground_ratio)
    scale = target / max(crop_h, crop_w)
    new_h, new_w = int(crop_h * scale), int(crop_w * scale)
    cutout = np.dstack([np.asarray(image.convert("RGB"))[top:bottom, left:right], alpha[top:bottom, left:right]])
    # Channel by channel: PIL would premultiply an RGBA image before filtering; OpenCV does not.
    resized = np.dstack(
        [np.asarray(Image.fromarray(np.ascontiguousarray(cutout[..., c])).resize((new_w, new_h), Image.Resampling.BOX)) for c in range(4)]
    )
    framed = np.zeros((canvas_side, canvas_side, 4), np.uint8)
    y0, x0 = (canvas_side - new_h) // 2, (canvas_side - new_w) // 2
    framed[y0 : y0 + new_h, x0 : x0 + new_w] = resized
    rgba = torch.from_numpy(framed).permute(2, 0, 1)[None].float() / 255.0
    composited = rgba[:, :3] * rgba[:, 3:] + (1 - rgba[:, 3:])
    out = F.interpolate(composited, size=(size, size), mode="bicubic", align_corners=True)
    return out[0].clamp_(0.0, 1.0).contiguous()
