"""glTF encodings in real files built here: Draco geometry decodes; meshopt geometry and KTX2
textures without a fallback are reported by name instead of rendering as zeros or untextured."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import DracoPy
import numpy as np
import pybullet_data
import pytest
import trimesh
from PIL import Image

from vf3d.data.assets import Y_UP_TO_Z_UP, AssetError, load_asset

DUCK = Path(pybullet_data.getDataPath()) / "duck.obj"
FLOAT, UINT32 = 5126, 5125


def pack_glb(document: dict, binary: bytes) -> bytes:
    """A GLB 2.0 file: header, JSON chunk (space-padded), BIN chunk (zero-padded), 4-byte aligned."""
    text = json.dumps(document).encode("utf-8")
    text += b" " * (-len(text) % 4)
    binary += b"\0" * (-len(binary) % 4)
    chunks = struct.pack("<I4s", len(text), b"JSON") + text + struct.pack("<I4s", len(binary), b"BIN\0") + binary
    return struct.pack("<4sII", b"glTF", 2, 12 + len(chunks)) + chunks


def unpack_glb(data: bytes) -> tuple[dict, bytes]:
    """GLB bytes → (JSON document, BIN chunk)."""
    json_length = struct.unpack_from("<I", data, 12)[0]
    document = json.loads(data[20 : 20 + json_length])
    bin_length = struct.unpack_from("<I", data, 20 + json_length)[0]
    return document, data[28 + json_length : 28 + json_length + bin_length]


def draco_glb(vertices: np.ndarray, faces: np.ndarray, draco: bytes | None = None) -> bytes:
    """One triangle primitive whose POSITION and indices live only in a KHR_draco_mesh_compression
    buffer (the accessors have no bufferView, as Blender and gltf-transform write them)."""
    if draco is None:
        draco = DracoPy.encode(vertices.astype(np.float32), faces.astype(np.uint32), quantization_bits=14, preserve_order=True)
    position_id = (
        next(
            attribute["unique_id"]
            for attribute in DracoPy.decode(draco).attributes
            if attribute["attribute_type"] == DracoPy.AttributeType.POSITION
        )
        if draco[:5] == b"DRACO"
        else 0
    )
    extension = {"bufferView": 0, "attributes": {"POSITION": position_id}}
    document = {
        "asset": {"version": "2.0"},
        "extensionsUsed": ["KHR_draco_mesh_compression"],
        "extensionsRequired": ["KHR_draco_mesh_compression"],
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [
            {
                "primitives": [
                    {"attributes": {"POSITION": 0}, "indices": 1, "mode": 4, "extensions": {"KHR_draco_mesh_compression": extension}}
                ]
            }
        ],
        "accessors": [
            {
                "componentType": FLOAT,
                "count": len(vertices),
                "type": "VEC3",
                "min": vertices.min(axis=0).tolist(),
                "max": vertices.max(axis=0).tolist(),
            },
            {"componentType": UINT32, "count": faces.size, "type": "SCALAR"},
        ],
        "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": len(draco)}],
        "buffers": [{"byteLength": len(draco) + (-len(draco) % 4)}],
    }
    return pack_glb(document, draco)


@pytest.fixture(scope="module")
def duck():
    """pybullet's duck as stored (2277 vertices, 4212 triangles), taken as glTF (+Y up) coordinates."""
    return trimesh.load(DUCK, force="mesh", process=False)


def test_draco_glb_decodes_to_the_source_mesh_and_renders(tmp_path, duck):
    path = tmp_path / "duck_draco.glb"
    path.write_bytes(draco_glb(duck.vertices, duck.faces))
    asset = load_asset(path)
    assert asset.num_triangles == len(duck.faces)
    # Undo the normalisation: corners must be the source corners turned Z-up, within Draco's
    # 14-bit quantisation (half a step of the largest extent).
    expected = duck.vertices[duck.faces].reshape(-1, 3) @ Y_UP_TO_Z_UP.T
    recovered = asset.positions / asset.scale + asset.center
    step = duck.extents.max() * 2.0**-14
    np.testing.assert_allclose(recovered, expected, atol=step)
    np.testing.assert_allclose(asset.center, (expected.min(axis=0) + expected.max(axis=0)) / 2, atol=step)
    radius = np.linalg.norm(asset.positions, axis=1).max()
    assert abs(radius - 0.8) < 1e-5  # default margin 0.2

    from vf3d.data.config import OrbitRenderConfig
    from vf3d.data.orbit_renderer import OrbitRenderer, orbit_cameras

    with OrbitRenderer(64) as renderer:
        rgba = renderer.render(asset, orbit_cameras(OrbitRenderConfig(num_views=4, resolution=64), elevation_deg=20.0))
    coverage = (rgba[..., 3] > 0).mean(axis=(1, 2))
    assert (coverage > 0.05).all() and (coverage < 0.9).all(), coverage


def test_draco_without_dracopy_says_so(tmp_path, duck, monkeypatch):
    path = tmp_path / "duck_draco.glb"
    path.write_bytes(draco_glb(duck.vertices, duck.faces))
    monkeypatch.setitem(__import__("sys").modules, "DracoPy", None)  # `import DracoPy` now raises ImportError
    with pytest.raises(AssetError, match=r"duck_draco.glb uses KHR_draco_mesh_compression .* DracoPy is not installed"):
        load_asset(path)


def test_corrupt_draco_data_is_not_a_degenerate_mesh(tmp_path, duck):
    path = tmp_path / "broken.glb"
    path.write_bytes(draco_glb(duck.vertices, duck.faces, draco=np.random.default_rng(0).bytes(4000)))
    with pytest.raises(AssetError, match="KHR_draco_mesh_compression data did not decode"):
        load_asset(path)


def textured_box_glb() -> tuple[dict, bytes]:
    """A box with uvs and a red 8×8 PNG base-colour texture, as trimesh exports it."""
    box = trimesh.creation.box()
    uv = np.random.default_rng(0).random((len(box.vertices), 2))
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.new("RGB", (8, 8), (255, 0, 0)), metallicFactor=0.0)
    box.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    return unpack_glb(box.export(file_type="glb"))


def with_ktx2_texture(document: dict, binary: bytes, keep_fallback: bool) -> bytes:
    """Make texture 0 a KHR_texture_basisu texture (a KTX2 image in a new bufferView), keeping the
    PNG as its fallback `source` or not (then the extension is required, per the spec)."""
    binary += b"\0" * (-len(binary) % 4)
    ktx2 = b"\xabKTX 20\xbb\r\n\x1a\n" + bytes(64)  # the KTX2 identifier and an empty header
    document["bufferViews"].append({"buffer": 0, "byteOffset": len(binary), "byteLength": len(ktx2)})
    document["images"].append({"mimeType": "image/ktx2", "bufferView": len(document["bufferViews"]) - 1})
    texture = document["textures"][0]
    texture["extensions"] = {"KHR_texture_basisu": {"source": len(document["images"]) - 1}}
    document["extensionsUsed"] = [*document.get("extensionsUsed", []), "KHR_texture_basisu"]
    if not keep_fallback:
        del texture["source"]
        document["extensionsRequired"] = ["KHR_texture_basisu"]
    binary += ktx2
    document["buffers"][0]["byteLength"] = len(binary) + (-len(binary) % 4)
    return pack_glb(document, binary)


def test_ktx2_texture_without_fallback_is_reported(tmp_path):
    path = tmp_path / "box_ktx2.glb"
    path.write_bytes(with_ktx2_texture(*textured_box_glb(), keep_fallback=False))
    with pytest.raises(AssetError, match=r"box_ktx2.glb uses KHR_texture_basisu .* without a PNG/JPEG fallback") as raised:
        load_asset(path)
    assert "\n" not in str(raised.value)


def test_ktx2_texture_with_png_fallback_renders_the_fallback(tmp_path):
    path = tmp_path / "box_ktx2_fallback.glb"
    path.write_bytes(with_ktx2_texture(*textured_box_glb(), keep_fallback=True))
    part = load_asset(path).parts[0]
    assert part.texture is not None and part.texture.shape == (8, 8, 4)
    assert (part.texture[..., 0] == 255).all() and (part.texture[..., 1] == 0).all()


@pytest.mark.parametrize("extension", ["EXT_meshopt_compression", "KHR_meshopt_compression"])
def test_required_meshopt_compression_is_reported(tmp_path, extension):
    # The structure of a gltfpack -cc file: a compressed bufferView over a fallback buffer with no data.
    document = {
        "asset": {"version": "2.0"},
        "extensionsUsed": [extension, "KHR_mesh_quantization"],
        "extensionsRequired": [extension, "KHR_mesh_quantization"],
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "mode": 4}]}],
        "accessors": [{"componentType": 5123, "count": 3, "type": "VEC3", "bufferView": 0, "min": [0, 0, 0], "max": [1, 1, 0]}],
        "bufferViews": [
            {
                "buffer": 1,
                "byteLength": 24,
                "byteStride": 8,
                "extensions": {extension: {"buffer": 0, "byteLength": 16, "byteStride": 8, "count": 3, "mode": "ATTRIBUTES"}},
            }
        ],
        "buffers": [{"byteLength": 16}, {"byteLength": 24, "extensions": {extension: {"fallback": True}}}],
    }
    path = tmp_path / "packed.glb"
    path.write_bytes(pack_glb(document, bytes(16)))
    with pytest.raises(
        AssetError, match=rf"packed.glb uses {extension} \(meshopt-compressed geometry\), which vf3d cannot decode; re-export"
    ):
        load_asset(path)


def test_gltf_json_file_is_checked_too(tmp_path):
    document, binary = textured_box_glb()
    path = tmp_path / "box.gltf"
    (tmp_path / "box.bin").write_bytes(binary)
    document["buffers"][0]["uri"] = "box.bin"
    document["extensionsUsed"] = ["EXT_meshopt_compression"]
    document["extensionsRequired"] = ["EXT_meshopt_compression"]
    path.write_text(json.dumps(document))
    with pytest.raises(AssetError, match="box.gltf uses EXT_meshopt_compression"):
        load_asset(path)
    # The same file without the extension loads: the check reads the JSON, not the file name.
    del document["extensionsUsed"], document["extensionsRequired"]
    path.write_text(json.dumps(document))
    assert load_asset(path).num_triangles == 12


def test_render_assets_records_each_encoding_error_and_renders_the_rest(tmp_path, duck):
    """The orbit stage turns encoding errors into error rows; the good Draco asset still renders."""
    from vf3d import config as config_lib
    from vf3d.synthesis.config import RENDER_ASSETS_PRESETS
    from vf3d.synthesis.render_assets import ERROR_COLUMN, RenderOrbits

    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "duck.glb").write_bytes(draco_glb(duck.vertices, duck.faces))
    (assets / "ktx.glb").write_bytes(with_ktx2_texture(*textured_box_glb(), keep_fallback=False))
    config = config_lib.merge(
        config_lib.resolve(RENDER_ASSETS_PRESETS, "small", None), {"render": {"num_views": 2, "resolution": 32}}
    ).validate()
    stage = RenderOrbits(str(assets), config_lib.to_dict(config))
    table = stage({"id": np.array(["a", "b"]), "asset": np.array(["duck.glb", "ktx.glb"]), "prompt": np.array(["duck", "box"])}).to_pylist()
    errors = {row["asset"]: row[ERROR_COLUMN] for row in table}
    assert errors["duck.glb"] is None
    assert "KHR_texture_basisu" in errors["ktx.glb"]


def test_unencoded_glb_is_unaffected(tmp_path):
    """A plain PNG-textured GLB keeps loading as before (no extension, no check triggered)."""
    document, binary = textured_box_glb()
    assert "extensionsUsed" not in document
    path = tmp_path / "plain.glb"
    path.write_bytes(pack_glb(document, binary))
    assert load_asset(path).parts[0].texture is not None


def test_png_helper_is_a_png():
    """Guard for the fixtures: trimesh embeds the base-colour texture as PNG."""
    document, binary = textured_box_glb()
    view = document["bufferViews"][document["images"][0]["bufferView"]]
    data = binary[view.get("byteOffset", 0) : view.get("byteOffset", 0) + view["byteLength"]]
    assert Image.open(io.BytesIO(data)).format == "PNG"
