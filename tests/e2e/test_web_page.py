"""The web page at `/` in a real headless Chromium: upload a photo, see the mesh drawn and turning
in the vendored <model-viewer>, with nothing loaded from outside the app.

Needs Debian's chromium and chromium-driver (`make browser` installs them as root) and selenium
(the `dev` extra); skips itself without them. The app is a real `vf3d serve` on the debug
reconstructor (the `serve_endpoint` fixture in tests/conftest.py), API key included.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # skipped below with the reason
    webdriver = None

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # WebGL without a GPU: ANGLE on SwiftShader, which Chromium only offers to WebGL when told to.
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--window-size=1280,1000",
]
MODEL_TIMEOUT_S = 150  # one image-to-3D request with the CPU model
PAGE_TIMEOUT_S = 20
# How long one script may wait for the page's main thread. Drawing the first frames of a model in
# SwiftShader (shader compilation on the CPU) can hold that thread for tens of seconds on a loaded
# 2-core machine, and a page poll made meanwhile must wait, not fail.
SCRIPT_TIMEOUT_S = MODEL_TIMEOUT_S
# A pixel "differs" when a channel is this far (of 255) from the other image's.
PIXEL_TOLERANCE = 12
SCREENSHOTS_ENV = "VF3D_SCREENSHOTS"
"""A directory: when set, the upload test also saves the whole page there before and after."""


@pytest.fixture
def browser(tmp_path):
    if webdriver is None:
        pytest.skip("selenium is not installed (it is in the `dev` extra)")
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.skip(f"{' and '.join(missing)} missing: `make browser` installs Debian's chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_script_timeout(SCRIPT_TIMEOUT_S)
    yield driver
    driver.quit()


@pytest.fixture
def endpoint(serve_endpoint) -> tuple[str, str | None]:
    """The app's base URL and the API key it requires (tests/conftest.py starts `vf3d serve`)."""
    return serve_endpoint.url.rstrip("/"), serve_endpoint.api_key


@pytest.fixture
def photo(tmp_path):
    from skimage import data

    path = tmp_path / "chelsea.png"
    Image.fromarray(data.chelsea()).save(path)
    return path


def _open_page(browser, base_url: str, api_key: str | None) -> None:
    browser.get(base_url + "/")
    WebDriverWait(browser, PAGE_TIMEOUT_S).until(
        lambda d: d.execute_script("return Boolean(customElements.get('model-viewer')) && document.body.dataset.state === 'idle'")
    )
    if api_key:
        browser.find_element(By.CSS_SELECTOR, "details summary").click()
        browser.find_element(By.ID, "api-key").send_keys(api_key)


def _submit(browser, path: Path) -> str:
    """Choose `path` in #image, press #submit and wait for the page's final state."""
    browser.find_element(By.ID, "image").send_keys(str(path))
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 5).until(lambda d: d.execute_script("return document.body.dataset.state") != "idle")
    return WebDriverWait(browser, MODEL_TIMEOUT_S, poll_frequency=0.2).until(
        lambda d: d.execute_script("const s = document.body.dataset.state; return s === 'done' || s === 'error' ? s : false")
    )


def _error_text(browser) -> str:
    return browser.find_element(By.ID, "error").get_property("textContent").strip()


def _viewer_pixels(browser) -> np.ndarray:
    """The viewer's frame as the browser shows it: uint8[H, W, 3]."""
    png = browser.find_element(By.ID, "viewer-frame").screenshot_as_png
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _turn(browser, turning: bool) -> None:
    """Start or stop the viewer's automatic turning (the page starts it with each model)."""
    browser.execute_script("document.getElementById('viewer').autoRotate = arguments[0]", turning)


def _keep_screenshot(browser, name: str) -> None:
    """Save the page as $VF3D_SCREENSHOTS/NAME.png when that variable is set (pictures for docs)."""
    directory = os.environ.get(SCREENSHOTS_ENV)
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(Path(directory) / f"{name}.png"))


def _differs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """bool[H, W]: where the images differ by more than the tolerance in some channel."""
    return (np.abs(a.astype(np.int16) - b.astype(np.int16)) > PIXEL_TOLERANCE).any(axis=-1)


def _server_error(base_url: str, path: Path, content_type: str, api_key: str | None) -> tuple[int, str]:
    """Status and JSON error message the app gives for `path`'s bytes, asked directly."""
    headers = {"Content-Type": content_type}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(f"{base_url}/v1/image-to-3d?format=glb", data=path.read_bytes(), headers=headers, method="POST")
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=MODEL_TIMEOUT_S)
    return raised.value.code, json.loads(raised.value.read())["error"]


def test_image_to_3d_is_drawn_and_turns(browser, endpoint, photo):
    base_url, api_key = endpoint
    _open_page(browser, base_url, api_key)
    # Before a request: a hint in a dashed frame, not an empty dark box.
    assert browser.find_element(By.ID, "viewer-hint").is_displayed()
    assert not browser.find_element(By.ID, "viewer").is_displayed()
    _keep_screenshot(browser, "web-page-before-upload")

    state = _submit(browser, photo)
    assert state == "done", f"page shows an error: {_error_text(browser)!r}"
    assert not browser.find_element(By.ID, "viewer-hint").is_displayed()
    assert browser.execute_script("const v = document.getElementById('viewer'); return v.loaded && v.modelIsVisible && v.autoRotate")

    # The page turns the model (checked above); the screenshots are taken with it held still, and
    # it turns for one second between them. Software WebGL redraws a turning model as fast as it
    # can, on most of 2 cores, while each screenshot and script waits for the page's main thread:
    # left turning, the rest of this test took tens of seconds and slowed every other test running.
    _turn(browser, False)
    first = _viewer_pixels(browser)
    _turn(browser, True)
    time.sleep(1.0)
    _turn(browser, False)
    second = _viewer_pixels(browser)
    turned = _differs(first, second)
    assert turned.mean() > 0.005, f"the view did not turn: {turned.mean():.2%} of pixels changed in 1 s"
    colours, counts = np.unique(first.reshape(-1, 3), axis=0, return_counts=True)
    background = colours[counts.argmax()]  # the frame's colour around the model
    drawn = _differs(first, background)
    assert drawn.mean() > 0.03, f"only {drawn.mean():.2%} of the viewer differs from its background"
    shades = np.unique(first[drawn].reshape(-1, 3) // 8, axis=0)
    assert len(shades) > 20, f"the model is drawn flat ({len(shades)} shades): no colours or shading"
    _keep_screenshot(browser, "web-page-after-upload")

    stats = browser.find_element(By.ID, "stats").text
    assert re.match(r"[\d,]+ vertices · [\d,]+ faces · [\d.]+ s$", stats), stats
    link = browser.find_element(By.ID, "download")
    assert link.is_displayed()
    assert link.get_attribute("download") == "result.glb"
    assert link.get_attribute("href").startswith("blob:")
    size, magic = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(document.getElementById('download').href).then((r) => r.arrayBuffer())"
        ".then((b) => done([b.byteLength, new TextDecoder().decode(b.slice(0, 4))]));"
    )
    assert magic == "glTF" and size > 100
    script_errors = [
        entry["message"] for entry in browser.get_log("browser") if entry["source"] == "javascript" and entry["level"] == "SEVERE"
    ]
    assert not script_errors, script_errors
    # The viewer and everything it needs come from the app itself (vendored), never from a CDN.
    resources = browser.execute_script("return performance.getEntriesByType('resource').map((entry) => entry.name)")
    outside = [url for url in resources if not url.startswith((base_url + "/", "blob:", "data:"))]
    assert not outside, outside


def test_bad_upload_shows_the_servers_error(browser, endpoint, tmp_path):
    base_url, api_key = endpoint
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not an image\n")
    status, message = _server_error(base_url, notes, "text/plain", api_key)
    assert 400 <= status < 500

    _open_page(browser, base_url, api_key)
    assert _submit(browser, notes) == "error"
    assert _error_text(browser) == message
    assert not browser.find_element(By.ID, "download").is_displayed()


def test_missing_api_key_shows_the_servers_error(browser, endpoint, photo):
    base_url, api_key = endpoint
    if not api_key:
        pytest.skip("the app under test requires no API key")
    status, message = _server_error(base_url, photo, "image/png", None)
    assert status in (401, 403)

    _open_page(browser, base_url, None)
    assert _submit(browser, photo) == "error"
    assert _error_text(browser) == message
    # The page points to the key field: Options opened, the field focused, the status says so.
    assert browser.find_element(By.ID, "api-key").is_displayed()
    assert browser.execute_script("return document.activeElement.id") == "api-key"
    assert "API key under Options" in browser.find_element(By.ID, "status").text


def _layout_glb() -> tuple[bytes, dict]:
    """A GLB using what trimesh's does not (interleaved strided vertices, normalized uint16 RGB
    colours, uint8 indices, TRS and matrix nodes, a strip without indices, a material colour),
    and the world-space positions its scene places."""
    import struct

    corners = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float32)
    rgb16 = np.array([[65535, 0, 0], [0, 65535, 0], [0, 0, 65535], [32768, 32768, 32768]], np.uint16)
    interleaved = b"".join(p.tobytes() + c.tobytes() + b"\0\0" for p, c in zip(corners, rgb16))  # stride 20
    quad = np.array([0, 1, 2, 0, 2, 3], np.uint8).tobytes() + b"\0\0"
    strip = (corners + [0, 0, 5]).astype(np.float32).tobytes()
    binary = interleaved + quad + strip
    turn = np.sqrt(0.5)  # 90 degrees about Z as an [x, y, z, w] quaternion
    gltf = {
        "asset": {"version": "2.0"},
        "scene": 0,
        "scenes": [{"nodes": [0, 2]}],
        "nodes": [
            {"translation": [1, 2, 3], "rotation": [0, 0, turn, turn], "scale": [2, 2, 2], "children": [1]},
            {"matrix": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 1, 1], "mesh": 0},
            {"mesh": 1},
        ],
        "meshes": [
            {"primitives": [{"attributes": {"POSITION": 0, "COLOR_0": 1}, "indices": 2}]},
            {"primitives": [{"attributes": {"POSITION": 3}, "mode": 5, "material": 0}]},
        ],
        "materials": [{"pbrMetallicRoughness": {"baseColorFactor": [1, 0, 0, 1]}}],
        "buffers": [{"byteLength": len(binary)}],
        "bufferViews": [
            {"buffer": 0, "byteOffset": 0, "byteLength": 80, "byteStride": 20},
            {"buffer": 0, "byteOffset": 80, "byteLength": 6},
            {"buffer": 0, "byteOffset": 88, "byteLength": 48},
        ],
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "type": "VEC3", "count": 4},
            {"bufferView": 0, "byteOffset": 12, "componentType": 5123, "normalized": True, "type": "VEC3", "count": 4},
            {"bufferView": 1, "componentType": 5121, "type": "SCALAR", "count": 6},
            {"bufferView": 2, "componentType": 5126, "type": "VEC3", "count": 4},
        ],
    }
    text = json.dumps(gltf).encode()
    text += b" " * (-len(text) % 4)
    chunks = struct.pack("<II", len(text), 0x4E4F534A) + text + struct.pack("<II", len(binary), 0x004E4942) + binary
    glb = struct.pack("<4sII", b"glTF", 2, 12 + len(chunks)) + chunks

    # world = translate(1, 2, 3) * rotate_z(90) * scale(2) * translate(0, 0, 1)
    quad_world = (corners + [0, 0, 1]) * 2 @ np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1]]) + [1, 2, 3]
    expected = {"positions": np.concatenate([quad_world, corners + [0, 0, 5]])}
    return glb, expected


def test_the_viewer_shows_other_glb_layouts(browser, endpoint):
    """A GLB laid out unlike trimesh's (see _layout_glb) loads in the viewer with the scene graph's
    transforms applied: its bounding box is the expected geometry's."""
    import base64

    glb, expected = _layout_glb()
    _open_page(browser, endpoint[0], None)
    outcome = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));"
        "const viewer = document.getElementById('viewer');"
        "viewer.hidden = false;"
        "viewer.autoRotate = false;"  # what this checks needs no turning (see _turn)
        "viewer.addEventListener('error', (e) => done({error: String(e.detail && e.detail.type)}), {once: true});"
        "viewer.addEventListener('load', () => { const d = viewer.getDimensions(); done({size: [d.x, d.y, d.z]}); }, {once: true});"
        "viewer.src = URL.createObjectURL(new Blob([bytes], {type: 'model/gltf-binary'}));",
        base64.b64encode(glb).decode(),
    )
    assert "error" not in outcome, outcome
    positions = expected["positions"]
    np.testing.assert_allclose(outcome["size"], positions.max(axis=0) - positions.min(axis=0), atol=1e-4)
