"""The web page's files as shipped: the vendored viewer matches its pin and nothing loads from outside."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import vf3d.serving

STATIC = Path(vf3d.serving.__file__).parent / "static"


def test_vendored_files_match_their_pinned_sha256():
    pins = json.loads((STATIC / "vendor" / "vendored.json").read_text())
    assert pins, "vendored.json lists no files"
    for name, pin in pins.items():
        assert hashlib.sha256((STATIC / "vendor" / name).read_bytes()).hexdigest() == pin["sha256"], name
        assert pin["version"] in name, f"{name}: the file name carries the pinned version {pin['version']}"


def test_the_page_loads_only_files_the_app_serves():
    page = (STATIC / "index.html").read_text()
    sources = re.findall(r"""<(?:script|link)\b[^>]*\b(?:src|href)=["']([^"']+)["']""", page)
    assert "/static/vendor/model-viewer-4.4.0.min.js" in sources
    for source in sources:
        assert source.startswith(("/static/", "data:")), f"index.html loads {source} from outside the app"
        if source.startswith("/static/"):
            assert (STATIC / source.removeprefix("/static/")).is_file(), f"index.html loads {source}, which is not shipped"
