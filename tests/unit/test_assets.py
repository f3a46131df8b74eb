"""Asset loading, normalisation, errors, ids, captions, discovery and the pybullet sample assets."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pybullet_data
import pytest
import trimesh
from PIL import Image

from vf3d.data.assets import (
    AssetError,
    asset_id,
    caption_for,
    find_assets,
    gather_sample_assets,
    load_asset,
    load_captions,
)

PYBULLET_DATA = Path(pybullet_data.getDataPath())


def textured_box(color: tuple[int, int, int], offset: tuple[float, float, float]):
    """A unit box with a one-colour 8×8 PBR base-colour texture, moved by `offset`."""
    box = trimesh.creation.box()
    box.apply_translation(offset)
    uv = np.random.default_rng(0).random((len(box.vertices), 2))
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.new("RGB", (8, 8), color), metallicFactor=0.0)
    box.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    return box


def test_duck_loads_with_its_texture():
    asset = load_asset(PYBULLET_DATA / "duck.obj")
    assert len(asset.parts) == 1 and asset.num_triangles == 4212
    part = asset.parts[0]
    assert part.texture is not None and part.texture.shape == (512, 512, 4) and part.texture.dtype == np.uint8
    assert part.positions.shape == part.normals.shape == (3 * 4212, 3) and part.positions.dtype == np.float32
    assert part.uvs.shape == (3 * 4212, 2) and part.colors.shape == (3 * 4212, 4)
    np.testing.assert_allclose(np.linalg.norm(part.normals, axis=1), 1.0, atol=1e-4)
    # duckCM.png is yellow; the texture is the base colour (not darkened by the MTL's nominal Kd 0.64).
    assert part.texture[..., 0].mean() > 200 and part.texture[..., 2].mean() < 40
    np.testing.assert_allclose(part.colors, 1.0)
    assert asset.source.endswith("duck.obj")


def test_ply_vertex_colours_are_kept(tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=2)
    colors = np.where(sphere.vertices[:, 2:3] > 0, [255, 0, 0, 255], [0, 0, 255, 255]).astype(np.uint8)
    sphere.visual.vertex_colors = colors
    sphere.export(tmp_path / "sphere.ply")
    part = load_asset(tmp_path / "sphere.ply").parts[0]
    assert part.texture is None and part.uvs is None
    top, bottom = part.positions[:, 2] > 0.01, part.positions[:, 2] < -0.01
    assert top.sum() > 100 and bottom.sum() > 100
    assert np.allclose(part.colors[top], [1, 0, 0, 1]) and np.allclose(part.colors[bottom], [0, 0, 1, 1])


def test_glb_is_loaded_and_turned_z_up(tmp_path):
    box = trimesh.creation.box(extents=(1.0, 2.0, 3.0))
    box.visual.face_colors = [0, 200, 0, 255]
    box.export(tmp_path / "box.glb")
    asset = load_asset(tmp_path / "box.glb")
    assert asset.num_triangles == 12
    assert np.allclose(asset.parts[0].colors, [0, 200 / 255, 0, 1], atol=1e-6)
    # glTF's +Y is up: the 2-long side ends along +Z, the 3-long side along Y.
    extents = asset.positions.max(axis=0) - asset.positions.min(axis=0)
    np.testing.assert_allclose(extents / extents[0], [1.0, 3.0, 2.0], atol=1e-5)


def test_normalisation_centres_the_box_and_sets_the_radius(tmp_path):
    mesh = trimesh.creation.icosphere(subdivisions=1)
    mesh.apply_scale([3.0, 1.0, 0.5])
    mesh.apply_translation([5.0, -2.0, 7.0])
    mesh.export(tmp_path / "blob.off")
    asset = load_asset(tmp_path / "blob.off", margin=0.3)
    positions = asset.positions
    np.testing.assert_allclose((positions.max(axis=0) + positions.min(axis=0)) / 2, 0.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(positions, axis=1).max(), 0.7, atol=1e-6)
    np.testing.assert_allclose(asset.center, [5.0, -2.0, 7.0], atol=1e-5)
    corners = mesh.vertices[mesh.faces].reshape(-1, 3)
    np.testing.assert_allclose(positions, (corners - asset.center) * asset.scale, atol=1e-5)


def test_normals_are_smooth_on_curves_and_crisp_on_creases(tmp_path):
    trimesh.creation.box().export(tmp_path / "box.stl")  # STL: a triangle soup, merged on load
    trimesh.creation.icosphere(subdivisions=3).export(tmp_path / "ball.stl")
    box = load_asset(tmp_path / "box.stl").parts[0]
    assert np.allclose(np.abs(box.normals).max(axis=1), 1.0, atol=1e-5)  # every corner on an axis
    ball = load_asset(tmp_path / "ball.stl").parts[0]
    radial = ball.positions / np.linalg.norm(ball.positions, axis=1, keepdims=True)
    assert (ball.normals * radial).sum(axis=1).min() > 0.9999  # vertex normals, not face normals


def test_scene_with_two_textured_parts_gives_two_parts(tmp_path):
    trimesh.Scene([textured_box((255, 0, 0), (0, 0, 0)), textured_box((0, 0, 255), (3, 0, 0))]).export(tmp_path / "two.glb")
    asset = load_asset(tmp_path / "two.glb")
    assert len(asset.parts) == 2
    colors = sorted(tuple(part.texture[0, 0, :3]) for part in asset.parts)
    assert colors == [(0, 0, 255), (255, 0, 0)]
    # Each part keeps its scene position: the red box on the left (−X), the blue one on the right.
    for part in asset.parts:
        is_red = part.texture[0, 0, 0] == 255
        assert (part.positions[:, 0].mean() < 0) == is_red


def write_nan_obj(path: Path) -> None:
    path.write_text("v 0 0 0\nv 1 0 0\nv nan 1 0\nf 1 2 3\n")


def write_point_cloud(path: Path) -> None:
    trimesh.PointCloud(np.random.default_rng(0).random((20, 3))).export(path)


def write_truncated_glb(path: Path) -> None:
    data = trimesh.creation.box().export(file_type="glb")
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "name, write, reason",
    [
        ("noise.obj", lambda path: path.write_bytes(np.random.default_rng(0).bytes(2000)), "no faces"),
        ("noise.glb", lambda path: path.write_bytes(np.random.default_rng(1).bytes(2000)), "cannot parse"),
        ("cut.glb", write_truncated_glb, "cannot parse"),
        ("empty.obj", lambda path: path.write_bytes(b""), "empty file"),
        ("cloud.ply", write_point_cloud, "point cloud"),
        ("nan.obj", write_nan_obj, "non-finite"),
        ("model.fbx", lambda path: path.write_bytes(b"Kaydara FBX Binary"), "unsupported file type '.fbx'"),
        ("missing.glb", lambda path: None, "file not found"),
    ],
)
def test_bad_files_raise_asset_error_with_a_reason(tmp_path, name, write, reason):
    path = tmp_path / name
    write(path)
    with pytest.raises(AssetError, match=reason) as raised:
        load_asset(path)
    assert type(raised.value) is AssetError and isinstance(raised.value, ValueError)
    assert "\n" not in str(raised.value)


def test_asset_id_is_stable_and_distinct():
    assert asset_id("random_urdfs/000/000.glb") == hashlib.sha1(b"random_urdfs/000/000.glb").hexdigest()[:16]
    assert asset_id(Path("random_urdfs") / "000" / "000.glb") == asset_id("random_urdfs/000/000.glb")
    ids = {asset_id(f"random_urdfs/{index:03d}/{index:03d}.glb") for index in range(1000)}
    assert len(ids) == 1000 and all(len(value) == 16 for value in ids)


def test_captions_from_files_and_names(tmp_path):
    (tmp_path / "captions.json").write_text(json.dumps({"a/duck.obj": "a yellow rubber duck"}))
    (tmp_path / "captions.jsonl").write_text(json.dumps({"path": "b/thing.glb", "caption": "a wooden chair"}) + "\n\n")
    captions = load_captions(tmp_path)
    assert captions == {"a/duck.obj": "a yellow rubber duck", "b/thing.glb": "a wooden chair"}
    assert caption_for(tmp_path / "a" / "duck.obj", tmp_path, captions) == "a yellow rubber duck"
    assert caption_for(tmp_path / "b" / "thing.glb", tmp_path, captions) == "a wooden chair"
    assert caption_for(tmp_path / "duck.obj", tmp_path, captions) == "duck"
    assert caption_for(tmp_path / "soccerball.obj", tmp_path) == "soccerball"
    assert caption_for(tmp_path / "office_chair" / "model.glb", tmp_path) == "office chair"
    assert caption_for(tmp_path / "red-mug" / "0042.ply", tmp_path) == "red mug"
    assert caption_for(tmp_path / "123" / "mesh.stl", tmp_path) == "object"
    assert load_captions(tmp_path / "a") == {}


def test_find_assets_is_sorted_recursive_and_filtered(tmp_path):
    for relative in ["b/z.obj", "a/deep/er/y.GLB", "a/x.ply", "notes.txt", "c/texture.png", "m.stl", "b/a.obj"]:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"x")
    found = [path.relative_to(tmp_path).as_posix() for path in find_assets(tmp_path, [".glb", ".obj", "ply"])]
    assert found == ["a/deep/er/y.GLB", "a/x.ply", "b/a.obj", "b/z.obj"]
    assert [path.relative_to(tmp_path).as_posix() for path in find_assets(tmp_path, [".stl"])] == ["m.stl"]
    with pytest.raises(FileNotFoundError):
        find_assets(tmp_path / "nowhere", [".obj"])


def test_gather_sample_assets_gives_real_renderable_assets(tmp_path):
    from vf3d.data.config import OrbitRenderConfig
    from vf3d.data.orbit_renderer import OrbitRenderer, orbit_cameras

    out_dir = tmp_path / "samples"
    paths = gather_sample_assets(out_dir, limit=20)
    assert len(paths) == 20 and len(set(paths)) == 20
    relative = [path.relative_to(out_dir).as_posix() for path in paths]
    assert relative[:3] == ["duck.obj", "soccerball.obj", "table/table.glb"]
    assert relative[-1] == "random_urdfs/011/011.glb"
    # The OBJ samples come with their materials and textures.
    for needed in ["duck.mtl", "duckCM.png", "soccerball.mtl", "colors16.png"]:
        assert (out_dir / needed).is_file()
    captions = load_captions(out_dir)
    assert caption_for(out_dir / "duck.obj", out_dir, captions) == "duck"
    assert set(captions) == set(relative)
    render_cameras = orbit_cameras(OrbitRenderConfig(num_views=4, resolution=64), elevation_deg=20.0)
    with OrbitRenderer(64) as renderer:
        for path in paths:
            asset = load_asset(path)
            assert asset.num_triangles > 0
            coverage = (renderer.render(asset, render_cameras)[..., 3] > 0).mean(axis=(1, 2))
            assert (coverage > 0.02).all(), path
    # table.obj is a unit cube; the URDF's top and legs are baked in: 1.5 × 1 wide, 0.625 high.
    table = load_asset(out_dir / "table" / "table.glb").positions
    extents = table.max(axis=0) - table.min(axis=0)
    np.testing.assert_allclose(extents / extents[1], [1.5, 1.0, 0.625], atol=1e-4)
    assert (table[:, 2] > table[:, 2].max() - 0.01).sum() >= 6  # a flat top, facing +Z

    files_before = {path: path.stat().st_mtime_ns for path in out_dir.rglob("*")}
    assert gather_sample_assets(out_dir, limit=20) == paths
    assert {path: path.stat().st_mtime_ns for path in out_dir.rglob("*")} == files_before
