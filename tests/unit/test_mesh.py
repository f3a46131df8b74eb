"""Mesh extraction, export and video writing on analytic fields with known answers."""

import io
import json
import struct

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from vf3d.mesh import (
    MESH_CONTENT_TYPES,
    EmptyMeshError,
    _base_cells_meeting,
    _corners_of_children,
    export_mesh,
    extract_mesh,
    save_mesh,
    write_video,
)

RADIUS = 0.6


def sphere_field(points):
    """Density 1 (the iso level) exactly at |p| = RADIUS, larger inside; rgb = (p + 1) / 2."""
    return 20.0 * (RADIUS - points.norm(dim=-1)) + 1.0, (points + 1.0) / 2.0


def two_blobs_field(points):
    centres = torch.tensor([[0.5, 0.0, 0.0], [-0.5, 0.0, 0.0]])
    distance = torch.cdist(points, centres).min(dim=-1).values
    return 20.0 * (0.15 - distance) + 1.0, (points + 1.0) / 2.0


def assert_same_surface(result, reference, resolution, exact=False):
    """Vertex counts within 2% and every vertex within a voxel of the reference; with
    ``exact`` (nothing was missed, so the very same grid values reach marching cubes) the
    same vertices up to float rounding."""
    voxel = 2.0 / (resolution - 1)
    count, reference_count = len(result.mesh.vertices), len(reference.mesh.vertices)
    assert abs(count - reference_count) <= 0.02 * reference_count
    distance, _ = cKDTree(reference.mesh.vertices).query(result.mesh.vertices)
    assert distance.max() <= voxel
    if exact:
        assert count == reference_count and distance.max() < 1e-5


def sorted_rows(array):
    array = np.asarray(array)
    return array[np.lexsort(array.T[::-1])]


@pytest.fixture(scope="module")
def sphere_meshes():
    meshes = {method: extract_mesh(sphere_field, resolution=64, method=method) for method in ("dense", "coarse_to_fine")}
    # 8 base cells of 8 fine cells: three levels of refinement, and a base grid one cell past the 63 fine cells.
    meshes["surface"] = extract_mesh(sphere_field, resolution=64, method="surface", coarse_resolution=8)
    return meshes


@pytest.fixture(scope="module")
def sphere_mesh(sphere_meshes):
    return sphere_meshes["coarse_to_fine"].mesh


def test_coarse_to_fine_matches_dense_on_sphere_with_fewer_queries(sphere_meshes):
    dense, coarse = sphere_meshes["dense"], sphere_meshes["coarse_to_fine"]
    assert dense.num_queries == 64**3
    assert coarse.num_queries < dense.num_queries / 2
    assert coarse.num_color_queries == len(coarse.mesh.vertices)
    assert coarse.seconds > 0
    assert_same_surface(coarse, dense, 64, exact=True)


def test_surface_method_matches_dense_on_sphere_with_a_thin_band_of_queries(sphere_meshes):
    dense, coarse, surface = sphere_meshes["dense"], sphere_meshes["coarse_to_fine"], sphere_meshes["surface"]
    assert_same_surface(surface, dense, 64, exact=True)
    assert surface.num_queries < coarse.num_queries < dense.num_queries
    assert surface.num_color_queries == len(surface.mesh.vertices)
    assert set(surface.stages) == {"density", "marching_cubes", "colors"}


@pytest.mark.parametrize("method", ["dense", "coarse_to_fine", "surface"])
def test_sphere_geometry_colours_and_orientation(sphere_meshes, method):
    mesh = sphere_meshes[method].mesh
    radius = np.linalg.norm(mesh.vertices, axis=1)
    assert abs(radius.mean() - RADIUS) < 2.0 / 63
    assert np.abs(radius - RADIUS).max() < 2.0 / 63
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(4.0 / 3.0 * np.pi * RADIUS**3, rel=0.02)
    colours = mesh.visual.vertex_colors
    assert colours.dtype == np.uint8 and colours.shape == (len(mesh.vertices), 4)
    assert (colours[:, 3] == 255).all()
    expected = (mesh.vertices + 1.0) / 2.0 * 255.0
    assert np.abs(colours[:, :3].astype(float) - expected).max() <= 2.0


@pytest.mark.parametrize("method", ["coarse_to_fine", "surface"])
def test_coarse_to_fine_finds_two_separate_blobs(method):
    dense = extract_mesh(two_blobs_field, resolution=96, method="dense")
    coarse = extract_mesh(two_blobs_field, resolution=96, method=method, coarse_resolution=12 if method == "surface" else None)
    bodies = coarse.mesh.split(only_watertight=False)
    assert len(bodies) == 2
    assert sorted(np.sign(body.centroid[0]) for body in bodies) == [-1.0, 1.0]
    assert_same_surface(coarse, dense, 96, exact=True)
    assert coarse.num_queries < dense.num_queries / 4


@pytest.mark.parametrize("method", ["coarse_to_fine", "surface"])
def test_surface_reaching_past_the_straddling_cells_is_kept(method):
    # Resolution 64 with coarse_resolution 8 puts coarse samples every 9 fine voxels. A
    # ball around one coarse sample sprouts a thin capsule that ends 1.5 coarse cells away
    # without containing any other coarse sample: only refining the neighbours of the
    # straddling cells recovers its far end.
    spacing = 2.0 * 9 / 63
    centre = torch.full((3,), -1.0 + 2.0 * 27 / 63)
    tip = centre + torch.tensor([1.5, 0.5, 0.5]) * spacing

    def ball_with_capsule(points):
        ball = (points - centre).norm(dim=-1) - 0.3 * spacing
        along = ((points - centre) @ (tip - centre) / (tip - centre).dot(tip - centre)).clamp(0, 1)
        capsule = (points - centre - along[:, None] * (tip - centre)).norm(dim=-1) - 0.2 * spacing
        return 1.0 - 20.0 * torch.minimum(ball, capsule), (points + 1.0) / 2.0

    dense = extract_mesh(ball_with_capsule, resolution=64, method="dense")
    coarse = extract_mesh(ball_with_capsule, resolution=64, method=method, coarse_resolution=8)
    assert coarse.mesh.is_watertight
    assert_same_surface(coarse, dense, 64, exact=True)
    assert coarse.mesh.vertices[:, 0].max() > centre[0].item() + 1.5 * spacing


def test_coarse_grid_that_does_not_divide_the_fine_grid_still_matches_dense():
    # 47 fine cells per axis is prime, so the coarse cells cannot all be the same size.
    dense = extract_mesh(sphere_field, resolution=48, method="dense")
    coarse = extract_mesh(sphere_field, resolution=48, method="coarse_to_fine", coarse_resolution=16)
    assert_same_surface(coarse, dense, 48, exact=True)
    assert coarse.mesh.is_watertight


def test_queries_are_chunked_on_the_requested_device():
    seen = []

    def recording_field(points):
        seen.append((len(points), points.device.type, points.dtype, torch.is_grad_enabled()))
        return sphere_field(points)

    extract_mesh(recording_field, resolution=32, method="dense", chunk_size=1000, device="cpu")
    extract_mesh(recording_field, resolution=32, method="coarse_to_fine", chunk_size=1000, device="cpu")
    extract_mesh(recording_field, resolution=32, method="surface", coarse_resolution=4, chunk_size=1000, device="cpu")
    assert max(size for size, *_ in seen) <= 1000
    assert {(device, dtype, grad) for _, device, dtype, grad in seen} == {("cpu", torch.float32, False)}


def test_nan_densities_are_treated_as_empty_space():
    def field_with_nans(points):
        density, rgb = sphere_field(points)
        return torch.where(points.norm(dim=-1) > 0.9, torch.nan, density), rgb

    for method in ("coarse_to_fine", "surface"):
        mesh = extract_mesh(field_with_nans, resolution=48, method=method, coarse_resolution=12).mesh
        assert mesh.is_watertight
        assert np.abs(np.linalg.norm(mesh.vertices, axis=1) - RADIUS).max() < 2.0 / 47


def test_corners_of_children_are_the_corners_of_the_split_cells():
    cells = torch.rand(5, 4, 3, generator=torch.Generator().manual_seed(0)) > 0.6
    children = cells.repeat_interleave(2, 0).repeat_interleave(2, 1).repeat_interleave(2, 2)
    expected = torch.nn.functional.max_pool3d(children[None, None].float(), 2, stride=1, padding=1)[0, 0] > 0
    assert torch.equal(_corners_of_children(cells), expected)


def test_base_cells_meeting_occupied_cells_match_a_brute_force_overlap_test():
    occupied = torch.rand(16, 16, 16, generator=torch.Generator().manual_seed(1)) > 0.97
    count, stride, cells = 6, 4, 21  # 6 base cells of 4 fine cells cover 21 fine cells and a bit past the box
    result = _base_cells_meeting(occupied, count, stride, cells)
    low = np.minimum(np.arange(count) * stride / cells, 1.0)
    high = np.minimum((np.arange(count) + 1) * stride / cells, 1.0)
    expected = np.zeros((count,) * 3, dtype=bool)
    for x, y, z in occupied.nonzero().tolist():  # closed boxes in fractions of the box
        cell = [(x / 16, (x + 1) / 16), (y / 16, (y + 1) / 16), (z / 16, (z + 1) / 16)]
        meets = [(low <= b) & (high >= a) for a, b in cell]
        expected |= meets[0][:, None, None] & meets[1][None, :, None] & meets[2][None, None, :]
    assert np.array_equal(result.numpy(), expected)


def test_surface_method_seeded_by_occupied_cells_gives_the_same_mesh_with_fewer_queries():
    axis = (torch.arange(32) + 0.5) / 16 - 1  # centres of 32³ cells over the box
    centres = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)
    # Cells that may hold density above the iso level: within a cell's diagonal of the sphere.
    occupied = centres.norm(dim=-1) < RADIUS + 3**0.5 / 16
    unseeded = extract_mesh(sphere_field, resolution=96, method="surface", coarse_resolution=12)
    seeded = extract_mesh(sphere_field, resolution=96, method="surface", coarse_resolution=12, occupied=occupied)
    assert_same_surface(seeded, unseeded, 96, exact=True)
    assert seeded.num_queries < unseeded.num_queries


@pytest.mark.parametrize("method", ["dense", "coarse_to_fine", "surface"])
@pytest.mark.parametrize("value", [0.0, 5.0])
def test_field_without_surface_raises(method, value):
    def constant_field(points):
        return torch.full((len(points),), value), torch.zeros(len(points), 3)

    with pytest.raises(EmptyMeshError, match="iso=1.0") as error:
        extract_mesh(constant_field, resolution=32, method=method)
    assert isinstance(error.value, ValueError)
    assert f"{value:.4g}" in str(error.value)


def test_unknown_method_raises():
    with pytest.raises(ValueError, match="method"):
        extract_mesh(sphere_field, resolution=16, method="octree")


def test_glb_is_gltf2_with_colours_and_y_up(sphere_mesh):
    data = export_mesh(sphere_mesh, "glb")
    magic, version, length = struct.unpack_from("<4sII", data, 0)
    assert (magic, version, length) == (b"glTF", 2, len(data))
    chunk_length, chunk_type = struct.unpack_from("<I4s", data, 12)
    assert chunk_type == b"JSON"
    gltf = json.loads(data[20 : 20 + chunk_length])
    attributes = gltf["meshes"][0]["primitives"][0]["attributes"]
    assert {"POSITION", "COLOR_0"} <= set(attributes)

    loaded = trimesh.load(file_obj=io.BytesIO(data), file_type="glb", force="mesh")
    assert len(loaded.vertices) == len(sphere_mesh.vertices)
    assert len(loaded.faces) == len(sphere_mesh.faces)
    np.testing.assert_array_equal(sorted_rows(loaded.visual.vertex_colors), sorted_rows(sphere_mesh.visual.vertex_colors))

    world = sphere_mesh.vertices
    expected = np.stack([world[:, 0], world[:, 2], -world[:, 1]], axis=1)
    distance, _ = cKDTree(expected).query(loaded.vertices)
    assert distance.max() < 1e-5
    top = world[np.argmax(world[:, 2])]
    np.testing.assert_allclose(loaded.vertices[np.argmax(loaded.vertices[:, 1])], [top[0], top[2], -top[1]], atol=1e-5)
    assert loaded.volume > 0


def test_glb_without_y_up_keeps_world_coordinates(sphere_mesh):
    loaded = trimesh.load(file_obj=io.BytesIO(export_mesh(sphere_mesh, "glb", y_up=False)), file_type="glb", force="mesh")
    distance, _ = cKDTree(sphere_mesh.vertices).query(loaded.vertices)
    assert distance.max() < 1e-5


@pytest.mark.parametrize("fmt", ["obj", "ply"])
def test_obj_and_ply_round_trip_with_colours(sphere_mesh, fmt):
    data = export_mesh(sphere_mesh, fmt)
    assert isinstance(data, bytes)
    loaded = trimesh.load(file_obj=io.BytesIO(data), file_type=fmt, force="mesh", process=False)
    assert len(loaded.vertices) == len(sphere_mesh.vertices)
    assert len(loaded.faces) == len(sphere_mesh.faces)
    distance, index = cKDTree(loaded.vertices).query(sphere_mesh.vertices)
    assert distance.max() < 1e-5
    colour_error = loaded.visual.vertex_colors[index].astype(int) - sphere_mesh.visual.vertex_colors.astype(int)
    assert np.abs(colour_error).max() <= 1


def test_obj_writes_vertex_colours_inline(sphere_mesh):
    first_vertex = next(line for line in export_mesh(sphere_mesh, "obj").decode().splitlines() if line.startswith("v "))
    assert len(first_vertex.split()) == 7


def test_save_mesh_picks_format_from_suffix(sphere_mesh, tmp_path):
    for fmt in MESH_CONTENT_TYPES:
        path = save_mesh(sphere_mesh, tmp_path / "nested" / f"sphere.{fmt}")
        loaded = trimesh.load(path, force="mesh", process=False)
        assert len(loaded.faces) == len(sphere_mesh.faces)
    with pytest.raises(ValueError, match=r"\.glb"):
        save_mesh(sphere_mesh, tmp_path / "sphere.stl")
    with pytest.raises(ValueError):
        export_mesh(sphere_mesh, "stl")


def test_content_types():
    assert MESH_CONTENT_TYPES == {"glb": "model/gltf-binary", "obj": "model/obj", "ply": "application/ply"}


def gradient_frames(count=8, size=64):
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    frames = np.empty((count, size, size, 3), dtype=np.uint8)
    for index in range(count):
        frames[index, ..., 0] = ramp[None, :]
        frames[index, ..., 1] = ramp[:, None]
        frames[index, ..., 2] = 32 * index
    return frames


def test_write_video_round_trips_frame_count_and_size(tmp_path):
    frames = gradient_frames()
    path = write_video(frames, tmp_path / "videos" / "orbit.mp4", fps=10)
    read_back = np.stack(imageio.mimread(path))
    assert read_back.shape == (8, 64, 64, 3)
    assert np.abs(read_back.astype(int) - frames.astype(int)).mean() < 10


def test_write_video_accepts_lists_and_float_tensors(tmp_path):
    frames = gradient_frames()
    write_video(list(frames), tmp_path / "list.mp4")
    tensor = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    write_video(tensor, tmp_path / "tensor.mp4")
    for name in ("list.mp4", "tensor.mp4"):
        assert np.stack(imageio.mimread(tmp_path / name)).shape == (8, 64, 64, 3)


def test_write_video_rejects_empty_frames(tmp_path):
    with pytest.raises(ValueError):
        write_video(np.zeros((0, 64, 64, 3), dtype=np.uint8), tmp_path / "empty.mp4")
    with pytest.raises(ValueError):
        write_video([], tmp_path / "empty.mp4")
