"""Tests for vf3d.preprocess: real photos, masks, recentring and hostile inputs."""

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from vf3d.preprocess import (
    ImageInputError,
    foreground_mask,
    load_image,
    prepare_image,
    recenter,
)


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + payload))
    return struct.pack(">I", len(payload)) + kind + payload + crc


def _handmade_png(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (8-bit RGB) followed by a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + _chunk(b"IEND", b"")


def _disc_photo(h=120, w=160, radius=30):
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - 55) ** 2 + (xx - 85) ** 2 <= radius**2
    rgb = np.full((h, w, 3), 128, np.uint8)
    rgb[disc] = (200, 40, 30)
    rng = np.random.default_rng(0)  # mild sensor noise so the estimate is not trivially exact
    noisy = np.clip(rgb.astype(np.int16) + rng.integers(-6, 7, rgb.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy), disc


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee"])
def test_real_photo_gives_model_input(name):
    photo = Image.fromarray(getattr(data, name)())
    out = prepare_image(_png_bytes(photo), size=64)
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert out.std() > 0.05  # the photo content survived, not a blank canvas


def test_pil_path_and_bytes_sources_agree(tmp_path):
    photo = Image.fromarray(data.chelsea())
    path = tmp_path / "cat.png"
    photo.save(path)
    a = prepare_image(path, size=32)
    assert torch.equal(a, prepare_image(str(path), size=32))
    assert torch.equal(a, prepare_image(photo, size=32))


def test_alpha_square_is_mask_and_recentred():
    h, w = 100, 200
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., :3] = (0, 255, 0)  # green where transparent: must not leak into the output
    rgba[10:50, 20:60] = (200, 30, 30, 255)  # 40x40 opaque red square, off-centre
    image = Image.fromarray(rgba)
    mask = foreground_mask(image)
    np.testing.assert_array_equal(mask, rgba[..., 3] / 255.0)

    out = recenter(np.asarray(image.convert("RGB"), np.float32) / 255, mask)
    assert out.shape == (50, 50, 3)  # 40 / 0.8
    ys, xs = np.nonzero((out < 0.99).any(axis=-1))
    assert (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) == (5, 45, 5, 45)
    assert np.allclose(out[:5], 1) and np.allclose(out[:, 45:], 1)  # white background
    np.testing.assert_allclose(out[25, 25], (200 / 255, 30 / 255, 30 / 255), atol=1e-6)

    t = prepare_image(image, size=100)
    ys, xs = np.nonzero((t < 0.95).any(dim=0).numpy())
    assert abs((ys.max() + 1 - ys.min()) - 80) <= 2 and abs((xs.max() + 1 - xs.min()) - 80) <= 2
    assert abs((ys.min() + ys.max()) / 2 - 49.5) <= 1.5  # centred
    assert abs((xs.min() + xs.max()) / 2 - 49.5) <= 1.5
    assert float(t[:, 0, 0].min()) == pytest.approx(1.0)


def test_recenter_non_square_box_and_validation():
    rgb = np.zeros((30, 90, 3), np.float32)
    mask = np.zeros((30, 90), np.float32)
    mask[10:20, 5:85] = 1  # 10 x 80 box
    out = recenter(rgb, mask, foreground_ratio=0.5)
    assert out.shape == (160, 160, 3)
    ys, xs = np.nonzero(out[..., 0] < 0.5)
    assert (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) == (75, 85, 40, 120)
    empty = recenter(rgb, np.zeros_like(mask))  # empty mask: whole image, background everywhere
    assert empty.shape == (113, 113, 3) and np.allclose(empty, 1)
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValueError, match="foreground_ratio"):
            recenter(rgb, mask, foreground_ratio=bad)


def test_offline_mask_finds_disc_on_grey_background():
    photo, disc = _disc_photo()
    mask = foreground_mask(photo.convert("RGBA"), method="estimate") > 0.5
    iou = (mask & disc).sum() / (mask | disc).sum()
    assert iou > 0.9, iou


def test_offline_mask_keeps_object_cut_by_edge_and_drops_specks():
    h, w = 100, 100
    rgb = np.full((h, w, 3), 240, np.uint8)  # near-white studio background
    yy, xx = np.mgrid[:h, :w]
    mug = (np.abs(xx - 50) <= 20) & (yy >= 40)  # touches the bottom edge
    rgb[mug] = (30, 60, 160)
    rgb[5:8, 5:8] = 0  # dust specks, not the object: one in a corner, one near the centre
    rgb[26:29, 72:75] = 0
    mask = foreground_mask(Image.fromarray(rgb).convert("RGBA"), method="estimate") > 0.5
    iou = (mask & mug).sum() / (mask | mug).sum()
    assert iou > 0.9 and not mask[5:8, 5:8].any() and not mask[26:29, 72:75].any()


def test_scene_photo_without_uniform_background_is_kept_whole():
    mask = foreground_mask(Image.fromarray(data.chelsea()).convert("RGBA"), method="estimate")
    assert np.all(mask == 1)


def test_uniform_image_falls_back_to_whole_image():
    image = Image.new("RGBA", (40, 30), (90, 120, 200, 255))
    mask = foreground_mask(image, method="estimate")
    assert mask.shape == (30, 40) and mask.dtype == np.float32 and np.all(mask == 1)
    out = prepare_image(image, size=16)
    assert out.shape == (3, 16, 16) and torch.isfinite(out).all()


def _raises_one_line(source, match, **kwargs):
    with pytest.raises(ImageInputError, match=match) as info:
        load_image(source, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_error_message_is_one_line():
    err = ImageInputError("image is truncated or corrupt: broken\n  PNG chunk")
    assert str(err) == "image is truncated or corrupt: broken PNG chunk"
    assert isinstance(err, ValueError)


def test_bad_inputs_raise_clear_errors(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello world\n")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    png = _png_bytes(Image.fromarray(data.astronaut()))

    _raises_one_line(b"hello world", "not a decodable image")
    _raises_one_line(text, "not a decodable image")
    _raises_one_line(b"", r"empty \(0 bytes\)")
    _raises_one_line(empty, r"empty \(0 bytes\)")
    _raises_one_line(png[: len(png) // 2], "truncated or corrupt")
    _raises_one_line(tmp_path / "missing.png", "file not found: .*missing.png")
    _raises_one_line(tmp_path, "not a file")
    _raises_one_line(Image.new("RGB", (0, 7)), "zero width or height")
    with pytest.raises(ImageInputError, match="not a decodable image"):
        prepare_image(b"hello world", size=8)


def test_huge_header_rejected_before_decoding():
    msg = _raises_one_line(_handmade_png(50000, 50000), "more than the limit of")
    assert "2.5e+09 pixels" in msg and "40000000 (max_pixels)" in msg
    # Below PIL's own bomb limit, our max_pixels check on the header size applies.
    msg = _raises_one_line(_handmade_png(5000, 5000), "more than the limit", max_pixels=1_000_000)
    assert "5000x5000" in msg and "1000000 (max_pixels)" in msg


def test_sixteen_bit_and_palette_load_as_rgba():
    ramp = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64).astype(np.uint16)
    im = load_image(_png_bytes(Image.fromarray(ramp)))
    assert im.mode == "RGBA" and im.size == (32, 32)
    arr = np.asarray(im)
    assert np.all(arr[..., 3] == 255)
    assert arr[0, 0, 0] == 0
    assert abs(int(arr[16, 0, 0]) - 128) <= 1  # 32768 is mid-grey: scaled, not clipped

    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([255, 255, 255, 10, 20, 30] + [0] * 762)
    pal.paste(1, (2, 2, 6, 6))
    pal.info["transparency"] = 0
    im = load_image(_png_bytes(pal))
    arr = np.asarray(im)
    assert im.mode == "RGBA" and arr[0, 0, 3] == 0 and tuple(arr[3, 3]) == (10, 20, 30, 255)
    np.testing.assert_array_equal(foreground_mask(im) > 0.5, arr[..., 3] == 255)


def test_grey_alpha_and_exif_orientation():
    la = Image.new("LA", (6, 4), (100, 0))
    la.paste((50, 255), (1, 1, 3, 3))
    arr = np.asarray(load_image(_png_bytes(la)))
    assert arr.shape == (4, 6, 4) and tuple(arr[2, 2]) == (50, 50, 50, 255) and arr[0, 0, 3] == 0

    wide = Image.new("RGB", (40, 20), (10, 200, 10))
    exif = wide.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    wide.save(buf, "JPEG", exif=exif.tobytes())
    assert load_image(buf.getvalue()).size == (20, 40)


def test_max_side_shrinks_while_decoding_keeping_alpha_orientation_and_the_header_size():
    rgba = np.zeros((300, 600, 4), np.uint8)
    rgba[100:200, 200:400] = (200, 30, 40, 255)  # an opaque red box on a transparent black field
    im = load_image(_png_bytes(Image.fromarray(rgba)), max_side=150)
    arr = np.asarray(im)
    assert im.mode == "RGBA" and im.size == (150, 75) and im.info["original_size"] == (600, 300)
    assert arr[0, 0, 3] == 0 and tuple(arr[37, 75]) == (200, 30, 40, 255)
    # Premultiplied resize: the box's edge fades in alpha, not towards the black of the field.
    edge = arr[25:50, 45:55].reshape(-1, 4)
    partial = edge[(edge[:, 3] > 0) & (edge[:, 3] < 255)]
    assert len(partial) and np.all(partial[:, 0] >= 190), partial

    wide = Image.new("RGB", (400, 200), (10, 200, 10))
    exif = wide.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the shrink happens before the transpose
    buf = io.BytesIO()
    wide.save(buf, "JPEG", exif=exif.tobytes())
    assert load_image(buf.getvalue(), max_side=100).size == (50, 100)
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    assert load_image(_png_bytes(Image.fromarray(ramp)), max_side=16).size == (16, 16)
    assert load_image(_png_bytes(Image.fromarray(rgba)), max_side=1000).size == (600, 300)  # never enlarged
    with pytest.raises(ValueError, match="max_side"):
        load_image(_png_bytes(Image.fromarray(rgba)), max_side=0)


DECODE_PEAK = """
import sys
from vf3d.preprocess import load_image


def status_kb(key):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(key + ":"))


data = open(sys.argv[1], "rb").read()
# Reset the peak (VmHWM) to the current RSS: the imports' own transient peak (torch) would
# otherwise hide the decode's, as ru_maxrss never goes down.
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")
before = status_kb("VmRSS")
image = load_image(data, max_side=int(sys.argv[2]) or None)
print(image.size[0], (status_kb("VmHWM") - before) // 1024)
"""


@pytest.mark.heavy  # measures peak memory in subprocesses
def test_a_40_megapixel_jpeg_is_decoded_at_reduced_scale(tmp_path):
    import subprocess
    import sys

    from PIL import ImageDraw

    photo = Image.new("RGB", (7744, 5160), (235, 235, 235))
    ImageDraw.Draw(photo).ellipse((1936, 1290, 5808, 3870), fill=(200, 40, 40))
    path = tmp_path / "40mp.jpg"
    photo.save(path, "JPEG", quality=80)
    del photo
    peaks = {}
    for side in (0, 1024):
        out = subprocess.run(
            [sys.executable, "-c", DECODE_PEAK, str(path), str(side)], capture_output=True, text=True, timeout=120, check=True
        )
        width, peaks[side] = map(int, out.stdout.split())
        assert width == (side or 7744)
    # Full size: 40 MP x 3-4 bytes. At 1/4 scale (the smallest DCT scale still >= 1024 px wide:
    # 1936 px) the decode holds ~10 MB, twice at most.
    assert peaks[0] >= 100 and peaks[1024] <= 30, peaks


# ---------------------------------------------------------------------------------------------
# Empty foreground, and the released code's framing (docs/vfusion3d.md#preprocessing)
# ---------------------------------------------------------------------------------------------


def test_fully_transparent_image_is_refused_as_having_no_foreground():
    blank = Image.fromarray(np.zeros((64, 48, 4), np.uint8))
    for mode in ("vf3d", "release"):
        with pytest.raises(ImageInputError, match="^no foreground: the image is fully transparent"):
            prepare_image(_png_bytes(blank), size=32, mode=mode)


def _release_framing_by_hand(rgba: np.ndarray, size: int) -> torch.Tensor:
    """The released framing written out for an object whose box scales by exactly 2 (area
    interpolation then repeats each pixel twice): a canvas of side max(H, W) with the crop
    (last row and column excluded) at 80% of it, composited on white, bicubic with
    align_corners=True."""
    height, width = rgba.shape[:2]
    side = max(height, width)
    rows, columns = np.nonzero(rgba[..., 3])
    crop = rgba[rows.min() : rows.max(), columns.min() : columns.max()]
    scaled = crop.repeat(2, axis=0).repeat(2, axis=1)
    canvas = np.zeros((side, side, 4), np.uint8)
    top, left = (side - scaled.shape[0]) // 2, (side - scaled.shape[1]) // 2
    canvas[top : top + scaled.shape[0], left : left + scaled.shape[1]] = scaled
    image = torch.from_numpy(canvas).permute(2, 0, 1)[None].float() / 255
    image = image[:, :3] * image[:, 3:] + (1 - image[:, 3:])
    return torch.nn.functional.interpolate(image, size=(size, size), mode="bicubic", align_corners=True)[0].clamp(0, 1)


def test_release_framing_matches_the_released_arithmetic():
    rng = np.random.default_rng(0)
    rgba = np.zeros((250, 180, 4), np.uint8)
    rgba[..., :3] = rng.integers(0, 256, (250, 180, 3))
    rgba[50:151, 60:111, 3] = 255  # 101 × 51 pixels: the release's box is 100 × 50 → ×2 = 200 = 0.8 · 250
    out = prepare_image(Image.fromarray(rgba), size=64, mode="release")
    expected = _release_framing_by_hand(rgba, 64)
    assert out.shape == (3, 64, 64)
    assert torch.allclose(out, expected, atol=1e-6), (out - expected).abs().max()
    # Our own framing differs: it keeps the box's last row and column and resizes with antialiasing.
    assert (prepare_image(Image.fromarray(rgba), size=64) - expected).abs().max() > 0.1


def test_release_framing_of_a_real_photo_is_centred_at_80_percent():
    photo = data.astronaut()
    rgba = np.dstack([photo, np.zeros(photo.shape[:2], np.uint8)])
    rgba[100:400, 150:300, 3] = 255
    out = prepare_image(Image.fromarray(rgba), size=128, mode="release")
    rows, columns = np.nonzero((out < 0.99).any(dim=0).numpy())
    assert rows.max() - rows.min() + 1 == pytest.approx(0.8 * 128, abs=2)
    assert (rows.min() + rows.max()) / 2 == pytest.approx(63.5, abs=1.5)
    assert (columns.min() + columns.max()) / 2 == pytest.approx(63.5, abs=1.5)
    with pytest.raises(ValueError, match="preprocessing mode"):
        prepare_image(Image.fromarray(rgba), size=128, mode="lrm")
