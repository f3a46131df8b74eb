"""3D assets: find them, load and normalise them for the orbit renderer, name and caption them.

`load_asset` turns a mesh file (GLB/glTF, OBJ+MTL, PLY, STL, OFF) into an `Asset`: a list of
`AssetPart`s, one per geometry of the file's scene (so each keeps its own texture and is drawn
separately), with every scene-graph transform applied, triangles de-indexed into corners, and the
whole asset centred on its bounding-box centre and scaled so its farthest vertex lies at radius
1 − margin. Bad files raise `AssetError` (a `ValueError`) with a one-line reason, never anything else.

glTF encodings: Draco geometry (`KHR_draco_mesh_compression`) is decoded through the `DracoPy`
package (trimesh calls it); meshopt geometry (`EXT_/KHR_meshopt_compression`) and KTX2/Basis
textures (`KHR_texture_basisu`) without a PNG/JPEG fallback cannot be decoded and raise `AssetError`
naming the extension, read from the file's glTF JSON before trimesh sees it (trimesh would
otherwise load zeros or drop the texture without a word).

Up axis: the world is +Z up (cameras.py). glTF is +Y up by specification, so GLB/glTF scenes are
turned +90° about +X (+Y → +Z, as Blender's importer does); the other formats have no convention
and are taken as stored (+Z up, like pybullet's meshes).

`gather_sample_assets` copies real meshes that ship inside the `pybullet` wheel into a folder
(no download), so demos and tests render real, textured objects.

Pure library: numpy, Pillow and trimesh (+ DracoPy for Draco) only; no ray, no OpenGL.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np

from vf3d import storage
from vf3d.atomic import write_bytes_atomic, write_json_atomic

SUPPORTED_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")
UNSUPPORTED_3D_SUFFIXES = (".fbx", ".blend", ".usd", ".usda", ".usdc", ".usdz", ".3ds", ".max", ".c4d", ".abc", ".dae", ".x3d")
"""3D formats we cannot read: a job lists them so each is reported as an error, not silently ignored."""
"""File types `load_asset` reads (compared case-insensitively)."""
PLAIN_COLOR = (0.75, 0.75, 0.75, 1.0)
"""RGBA of geometry that has no colour, material or texture of its own."""
CREASE_COS = math.cos(math.radians(45.0))
"""A corner keeps its smooth vertex normal only within 45° of its face's normal, so boxes stay crisp
(their merged corner normals are 54.7° off every face) while curved surfaces stay smooth."""
GENERIC_STEMS = {"model", "mesh", "scene", "object", "untitled", "base", "textured", "normalized", "model_normalized"}
"""File stems that say nothing about the object; `caption_for` then uses the folder name."""
CAPTIONS_FILES = ("captions.json", "captions.jsonl")
"""Optional caption files in an assets root (see `load_captions`)."""
DRACO = "KHR_draco_mesh_compression"
MESHOPT_EXTENSIONS = ("EXT_meshopt_compression", "KHR_meshopt_compression")
BASISU = "KHR_texture_basisu"
GLB_MAGIC = b"glTF"
GLB_JSON_CHUNK = b"JSON"
Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
"""+90° about +X: glTF's +Y up becomes the world's +Z up (and glTF's +Z front becomes −Y)."""


class AssetError(ValueError):
    """A file that cannot become an asset; the message is a one-line reason."""


@dataclass
class AssetPart:
    """One geometry of an asset, drawn as one draw call with at most one texture.

    Triangles are de-indexed: corners 3t, 3t+1, 3t+2 form triangle t (N = 3·T corners), so every
    attribute is per corner and a textured seam needs no vertex splitting.
    """

    positions: np.ndarray
    """float32 [N, 3] corner positions in the normalised asset frame (world units)."""
    normals: np.ndarray
    """float32 [N, 3] unit normals: smooth vertex normals, face normals across creases (zero for
    degenerate triangles)."""
    colors: np.ndarray
    """float32 [N, 4] RGBA in [0, 1]: vertex colours, else the material's base colour, else grey;
    multiplied by the texture when there is one."""
    uvs: np.ndarray | None
    """float32 [N, 2] texture coordinates in the OBJ convention (v = 0 at the image's bottom row), or
    None without a texture."""
    texture: np.ndarray | None
    """uint8 [h, w, 4] RGBA base-colour texture, row 0 = the image's top row, or None."""

    @property
    def num_triangles(self) -> int:
        """Number of triangles T (= N / 3)."""
        return len(self.positions) // 3


@dataclass
class Asset:
    """A normalised asset: parts plus the normalisation that was applied.

    A point p of the file (after its scene transforms and the up-axis turn) is at (p − center)·scale.
    """

    parts: list[AssetPart]
    scale: float
    center: np.ndarray
    """float32 [3] bounding-box centre in the file's (up-axis corrected) frame."""
    source: str
    """The file the asset was loaded from."""

    @property
    def positions(self) -> np.ndarray:
        """float32 [N_total, 3] corners of all parts, concatenated in part order."""
        return np.concatenate([part.positions for part in self.parts])

    @property
    def num_triangles(self) -> int:
        """Triangles over all parts."""
        return sum(part.num_triangles for part in self.parts)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_asset(path: str | os.PathLike, margin: float = 0.2) -> Asset:
    """Load a mesh file into a normalised `Asset` (see the module docstring for conventions).

    Args:
        path: a .glb/.gltf/.obj/.ply/.stl/.off file (an OBJ finds its MTL and textures next to it).
        margin: the farthest vertex from the bounding-box centre ends at radius 1 − margin.

    Raises:
        AssetError: missing, empty, unsupported, unparsable, faceless or non-finite geometry.
    """
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must be in [0, 1), got {margin}")
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.exists():
        raise AssetError("file not found")
    if not path.is_file():
        raise AssetError("not a file")
    if suffix not in SUPPORTED_SUFFIXES:
        raise AssetError(f"unsupported file type '{suffix}'")
    if path.stat().st_size == 0:
        raise AssetError("empty file")
    gltf = suffix in (".glb", ".gltf")
    try:
        extensions = _check_gltf_encodings(path) if gltf else frozenset()
        return _load_normalised(path, margin, y_up=gltf, draco=DRACO in extensions)
    except AssetError:
        raise
    except Exception as error:  # trimesh raises anything from KeyError to JSONDecodeError on bad files
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise AssetError(f"cannot parse: {first_line}") from error


def _gltf_json(path: Path) -> dict:
    """The glTF JSON document of a .gltf file, or the JSON chunk of a .glb; {} when the file is not
    readable as either (trimesh then reports why it cannot parse it)."""
    with path.open("rb") as file:
        if path.suffix.lower() == ".glb":
            # GLB: 12-byte header (magic, version, length), then chunk 0 = (length, b"JSON", JSON).
            header = file.read(20)
            if len(header) < 20 or header[:4] != GLB_MAGIC or header[16:20] != GLB_JSON_CHUNK:
                return {}
            text = file.read(struct.unpack_from("<I", header, 12)[0])
        else:
            text = file.read()
    try:
        document = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def _check_gltf_encodings(path: Path) -> frozenset[str]:
    """Raise `AssetError` for glTF extensions we cannot decode; → the extensions the file uses."""
    document = _gltf_json(path)
    used = frozenset(
        name for name in [*document.get("extensionsUsed", []), *document.get("extensionsRequired", [])] if isinstance(name, str)
    )
    required = frozenset(name for name in document.get("extensionsRequired", []) if isinstance(name, str))
    if DRACO in used:
        try:
            import DracoPy  # noqa: F401  (trimesh imports it inside its Draco handler and only logs a failure)
        except ImportError:
            raise AssetError(
                f"{path.name} uses {DRACO} (Draco-compressed geometry) but DracoPy is not installed: pip install DracoPy"
            ) from None
    for name in MESHOPT_EXTENSIONS:
        # Only a required meshopt extension lacks uncompressed fallback buffers (which trimesh reads).
        if name in required:
            raise AssetError(
                f"{path.name} uses {name} (meshopt-compressed geometry), which vf3d cannot decode; re-export it without mesh compression (e.g. gltfpack -i IN -o OUT -noq, without -c)"
            )
    textures = document.get("textures", [])
    if BASISU in used and any(
        isinstance(texture, dict) and BASISU in (texture.get("extensions") or {}) and texture.get("source") is None for texture in textures
    ):
        # A KTX2 texture with a PNG/JPEG fallback `source` renders from the fallback; without one
        # trimesh would silently drop the texture, and an untextured orbit is a wrong training sample.
        raise AssetError(
            f"{path.name} uses {BASISU} (KTX2/Basis Universal textures) without a PNG/JPEG fallback, which vf3d cannot decode; re-export it with PNG or JPEG textures"
        )
    return used


def _load_normalised(path: Path, margin: float, y_up: bool, draco: bool = False) -> Asset:
    """`load_asset` without the file checks; trimesh's own exceptions pass through."""
    import trimesh

    # process=False so NaN vertices reach us (processing would silently drop their faces); each
    # mesh is processed (vertex merging for smooth normals) after the finiteness check below.
    scene = trimesh.load(path, force="scene", process=False)
    geometries = scene.dump()
    meshes = [geometry for geometry in geometries if isinstance(geometry, trimesh.Trimesh) and len(geometry.faces)]
    if not meshes:
        if any(isinstance(geometry, trimesh.PointCloud) and len(geometry.vertices) for geometry in geometries):
            raise AssetError("point cloud: no faces")
        raise AssetError("empty mesh: no faces")
    for mesh in meshes:
        if not np.isfinite(mesh.vertices[mesh.faces]).all():
            raise AssetError("non-finite vertex coordinates (NaN or inf)")
        if draco and np.ptp(mesh.vertices[mesh.faces].reshape(-1, 3), axis=0).max() == 0.0:
            # trimesh leaves a primitive whose Draco data failed to decode as all-zero placeholders.
            raise AssetError(f"{path.name}: {DRACO} data did not decode (corrupt Draco buffer, or DracoPy/trimesh too old)")
        mesh.process()
        if y_up:
            mesh.apply_transform(_homogeneous(Y_UP_TO_Z_UP))
    # Normalise in float64 before anything becomes float32: assets far from their origin keep detail.
    corners = np.concatenate([mesh.vertices[mesh.faces].reshape(-1, 3) for mesh in meshes])
    center = (corners.min(axis=0) + corners.max(axis=0)) / 2
    extent = float(np.linalg.norm(corners - center, axis=1).max())
    if extent <= 0.0:
        raise AssetError("degenerate mesh: all vertices at one point")
    scale = (1.0 - margin) / extent
    parts = [_part_from_mesh(mesh, center, scale) for mesh in meshes]
    return Asset(parts=parts, scale=scale, center=center.astype(np.float32), source=str(path))


def _homogeneous(rotation: np.ndarray) -> np.ndarray:
    """[3, 3] rotation → [4, 4] transform."""
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    return matrix


def _part_from_mesh(mesh, center: np.ndarray, scale: float) -> AssetPart:
    """De-index a processed trimesh.Trimesh into corner attributes, positions normalised as (p − center)·scale."""
    faces = mesh.faces
    positions = (mesh.vertices[faces].reshape(-1, 3) - center) * scale
    vertex_normals = mesh.vertex_normals[faces].reshape(-1, 3)
    face_normals = np.repeat(mesh.face_normals, 3, axis=0)
    smooth = (vertex_normals * face_normals).sum(axis=1, keepdims=True) >= CREASE_COS
    normals = np.where(smooth, vertex_normals, face_normals)
    colors, uvs, texture = _corner_colors(mesh)
    return AssetPart(
        positions=positions.astype(np.float32),
        normals=normals.astype(np.float32),
        colors=colors.astype(np.float32),
        uvs=None if uvs is None else uvs.astype(np.float32),
        texture=texture,
    )


def _corner_colors(mesh) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Per-corner RGBA [N, 4] in [0, 1], per-corner uvs [N, 2] or None, texture [h, w, 4] or None."""
    from trimesh.visual import TextureVisuals
    from trimesh.visual.material import PBRMaterial, SimpleMaterial

    faces, visual = mesh.faces, mesh.visual
    num_corners = faces.size
    if visual.kind == "vertex":
        return _unit_rgba(visual.vertex_colors)[faces].reshape(-1, 4), None, None
    if visual.kind == "face":
        return np.repeat(_unit_rgba(visual.face_colors), 3, axis=0), None, None
    if not isinstance(visual, TextureVisuals):
        return np.tile(PLAIN_COLOR, (num_corners, 1)), None, None
    material, image, base_color = visual.material, None, np.array(PLAIN_COLOR)
    if isinstance(material, PBRMaterial):
        # glTF: base colour = baseColorFactor × baseColorTexture.
        image = material.baseColorTexture
        if material.baseColorFactor is not None:
            base_color = _unit_rgba(np.asarray(material.baseColorFactor))
        else:
            base_color = np.ones(4)
    elif isinstance(material, SimpleMaterial):
        # OBJ exporters write a nominal Kd (0.64, 0.8, ...) next to map_Kd; like Blender's importer,
        # the texture alone is the base colour then, and Kd only colours untextured materials.
        image = material.image
        base_color = np.ones(4) if image is not None else _unit_rgba(np.asarray(material.diffuse))
    colors = np.tile(base_color, (num_corners, 1))
    uv = getattr(visual, "uv", None)
    if image is None or uv is None or len(uv) != len(mesh.vertices):
        return colors, None, None
    texture = np.ascontiguousarray(np.asarray(image.convert("RGBA"), dtype=np.uint8))
    return colors, np.asarray(uv, dtype=np.float64)[faces].reshape(-1, 2), texture


def _unit_rgba(colors: np.ndarray) -> np.ndarray:
    """uint8 (or float in [0, 1]) RGB/RGBA [..., 3|4] → float64 RGBA in [0, 1]."""
    colors = np.asarray(colors)
    unit = colors / 255.0 if colors.dtype.kind in "ui" else colors.astype(np.float64)
    if unit.shape[-1] == 3:
        unit = np.concatenate([unit, np.ones_like(unit[..., :1])], axis=-1)
    return unit


# ---------------------------------------------------------------------------------------------
# Ids, captions, discovery
# ---------------------------------------------------------------------------------------------


def asset_id(relative_path: str | os.PathLike) -> str:
    """Stable id of an asset: the first 16 hex digits of the SHA-1 of its POSIX path relative to the
    assets root (e.g. "random_urdfs/000/000.glb"), so the same file under any root, on any machine
    and in any run gets the same id, and different files get different ids."""
    posix = PurePath(relative_path).as_posix()
    return hashlib.sha1(posix.encode("utf-8")).hexdigest()[:16]


def load_captions(root: str | os.PathLike) -> dict[str, str]:
    """Captions of the assets under `root`, keyed by POSIX path relative to `root`.

    Read (from a local folder or an object-store prefix) from `root/captions.json` (an object {relative path: caption}) and/or `root/captions.jsonl`
    (one {"path": ..., "caption": ...} object per line; later entries win). Empty when neither exists.
    """
    captions: dict[str, str] = {}
    json_file, jsonl_file = (storage.join(root, name) for name in CAPTIONS_FILES)
    if storage.is_file(json_file):
        mapping = json.loads(storage.read_text(json_file))
        if not isinstance(mapping, dict):
            raise ValueError(f"{json_file} must hold one JSON object mapping relative paths to captions")
        captions.update({PurePath(key).as_posix(): str(value) for key, value in mapping.items()})
    if storage.is_file(jsonl_file):
        for number, line in enumerate(storage.read_text(jsonl_file).splitlines(), start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            if not isinstance(record, dict) or "path" not in record or "caption" not in record:
                raise ValueError(f'{jsonl_file}:{number}: each line must be {{"path": ..., "caption": ...}}')
            captions[PurePath(record["path"]).as_posix()] = str(record["caption"])
    return captions


def local_asset_copy(root: str, relative: str, directory: str | os.PathLike) -> Path:
    """Download the asset `relative` under the object-store folder `root` into the local
    `directory`, with the files it may refer to (an OBJ's materials and textures, a glTF's buffers
    and images: every file under the asset's own folder that is not another 3D model), keeping
    their relative layout; returns the local path of the asset for `load_asset`."""
    folder = str(PurePath(relative).parent) if PurePath(relative).parent != PurePath(".") else ""
    base = storage.join(root, folder) if folder else root
    target = Path(directory) / relative
    storage.download(str(storage.join(root, relative)), target)
    if PurePath(relative).suffix.lower() in (".obj", ".gltf"):
        models = {*SUPPORTED_SUFFIXES, *UNSUPPORTED_3D_SUFFIXES}
        for name in storage.walk_files(base):
            if PurePath(name).suffix.lower() not in models:
                storage.download(str(storage.join(base, name)), target.parent / name)
    return target


def caption_for(path: str | os.PathLike, root: str | os.PathLike, captions: Mapping[str, str] | None = None) -> str:
    """Caption of an asset: `captions[relative path]` when given, else made from its name.

    From the name: the file stem, or the nearest folder name when the stem is generic ("model",
    "mesh", "scene", only digits, ...), with `_`/`-` turned into spaces and stray digits trimmed:
    "duck.obj" → "duck", "chair/model.glb" → "chair", "tray_textured4.obj" → "tray textured".
    "object" when no name says anything.
    """
    path, root = Path(path), Path(root)
    relative = path.relative_to(root)
    if captions and relative.as_posix() in captions:
        return captions[relative.as_posix()]
    for name in [relative.stem, *(parent.name for parent in relative.parents if parent.name)]:
        words = re.sub(r"[_\-\s]+", " ", name).strip(" 0123456789").strip()
        if words and name.lower() not in GENERIC_STEMS:
            return words
    return "object"


def find_assets(root: str | os.PathLike, extensions: Iterable[str] = SUPPORTED_SUFFIXES) -> list[Path]:
    """All files under `root` (recursively) whose suffix is in `extensions` (case-insensitive,
    with or without the dot), sorted by their POSIX path relative to `root`. `root` may be an
    object-store URI: then the files are URI strings (one recursive listing of the prefix)."""
    wanted = {("." + extension.lstrip(".")).lower() for extension in extensions}
    if storage.is_uri(root):
        if not storage.is_dir(root):
            raise FileNotFoundError(f"assets folder not found: {root}")
        return [storage.join(root, name) for name in storage.walk_files(root) if PurePath(name).suffix.lower() in wanted]
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"assets folder not found: {root}")
    found = [path for path in root.rglob("*") if path.suffix.lower() in wanted and path.is_file()]
    return sorted(found, key=lambda path: path.relative_to(root).as_posix())


# ---------------------------------------------------------------------------------------------
# Sample assets from the pybullet wheel
# ---------------------------------------------------------------------------------------------

SAMPLE_URDFS = (
    ("duck_vhacd.urdf", "duck"),
    ("soccerball.urdf", "soccer ball"),
    ("table/table.urdf", "table"),
    ("tray/tray.urdf", "tray"),
    ("jenga/jenga.urdf", "jenga block"),
    ("domino/domino.urdf", "domino"),
    ("objects/mug.urdf", "mug"),
    ("lego/lego.urdf", "lego brick"),
)
"""Hand-picked pybullet_data objects (URDF, caption), then random_urdfs/NNN/NNN.urdf ("abstract shape")."""
RANDOM_SHAPE_CAPTION = "abstract shape"


def gather_sample_assets(out_dir: str | os.PathLike, limit: int | None = None) -> list[Path | str]:
    """Put real meshes from the `pybullet` wheel into `out_dir` and return their paths.

    The hand-picked objects come first (duck, soccer ball, table, tray, jenga block, domino, mug,
    lego brick), then the ~1000 procedurally generated shapes of random_urdfs/, up to `limit`
    assets in all. Each object is described by a URDF whose visuals place (scale, rotate, colour) its
    mesh files, so:

    - a URDF with one textured mesh at the identity with uniform scale (duck, soccer ball, tray)
      is copied as it is: the OBJ plus the MTL files and textures it references, same layout;
    - anything else (table.obj is a unit cube that table.urdf scales into a top and four legs;
      jenga.obj a cube scaled into a block; untextured meshes coloured by the URDF) is baked into one
      GLB (+Y up, per glTF) next to where the URDF was.

    Captions go to `out_dir/captions.json` (merged with one already there). Idempotent: existing
    files are kept, so a rerun copies nothing and returns the same list.

    `out_dir` may be a local directory (paths returned) or an object-store URI (URI strings
    returned): each file is published whole (`vf3d.atomic`), and what is already there is found
    with one listing.

    Raises:
        RuntimeError: pybullet is not installed.
    """
    try:
        import pybullet_data
    except ImportError as error:
        raise RuntimeError("sample assets come from the pybullet wheel: pip install 'vf3d[assets]'") from error
    data_root = Path(pybullet_data.getDataPath())
    out_dir = storage.local_or_uri(out_dir)
    storage.makedirs(out_dir)
    # On an object store, one listing instead of a request per file; locally, a stat per file.
    present = set(storage.walk_files(out_dir)) if storage.is_uri(out_dir) else None
    random_urdfs = sorted((data_root / "random_urdfs").glob("*/*.urdf"))
    entries = [*SAMPLE_URDFS, *((urdf.relative_to(data_root).as_posix(), RANDOM_SHAPE_CAPTION) for urdf in random_urdfs)]
    if limit is not None:
        entries = entries[:limit]
    assets, captions = [], {}
    for relative_urdf, caption in entries:
        asset = _export_urdf_asset(data_root, PurePath(relative_urdf), out_dir, present)
        assets.append(asset)
        captions[storage.relative_to(asset, out_dir)] = caption
    captions_file = storage.join(out_dir, CAPTIONS_FILES[0])
    exists = CAPTIONS_FILES[0] in present if present is not None else storage.is_file(captions_file)
    existing = json.loads(storage.read_text(captions_file)) if exists else {}
    if {**existing, **captions} != existing:
        write_json_atomic(captions_file, {**existing, **captions}, indent=1, sort_keys=True)
    return assets


@dataclass
class _UrdfVisual:
    """One <visual> of a URDF: a mesh file, its scale, its placement and an optional colour."""

    mesh_file: Path
    scale: np.ndarray
    transform: np.ndarray
    rgba: tuple[float, ...] | None


def _urdf_visuals(urdf: Path) -> list[_UrdfVisual]:
    """Mesh visuals of every link of a single-body URDF (joints are not followed: the sample URDFs
    are one link each)."""
    import trimesh

    visuals = []
    for visual in ElementTree.parse(urdf).getroot().iter("visual"):
        mesh = visual.find("geometry/mesh")
        if mesh is None:
            continue
        origin = visual.find("origin")
        xyz = [float(value) for value in (origin.get("xyz", "0 0 0") if origin is not None else "0 0 0").split()]
        rpy = [float(value) for value in (origin.get("rpy", "0 0 0") if origin is not None else "0 0 0").split()]
        transform = trimesh.transformations.euler_matrix(*rpy, axes="sxyz")  # URDF: fixed-axis roll, pitch, yaw
        transform[:3, 3] = xyz
        color = visual.find("material/color")
        visuals.append(
            _UrdfVisual(
                mesh_file=urdf.parent / mesh.get("filename"),
                scale=np.array([float(value) for value in mesh.get("scale", "1 1 1").split()]),
                transform=transform,
                rgba=tuple(float(value) for value in color.get("rgba").split()) if color is not None else None,
            )
        )
    return visuals


def _export_urdf_asset(data_root: Path, relative_urdf: PurePath, out_dir: Path | str, present: set[str] | None) -> Path | str:
    """Copy or bake one URDF's visuals into `out_dir` (see `gather_sample_assets`); → the asset path.
    `present`: the relative paths of the files already in `out_dir` (None: ask the filesystem)."""

    def missing(relative: str) -> bool:
        return relative not in present if present is not None else not storage.exists(storage.join(out_dir, relative))

    def write(relative: str, data: bytes) -> None:
        target = storage.join(out_dir, relative)
        storage.makedirs(storage.parent(target))
        write_bytes_atomic(target, data)
        if present is not None:
            present.add(relative)

    urdf = data_root / relative_urdf
    visuals = _urdf_visuals(urdf)
    if not visuals:
        raise ValueError(f"{urdf} has no mesh visual")
    single = visuals[0]
    mtl_files, texture_files = _obj_dependencies(single.mesh_file) if single.mesh_file.suffix.lower() == ".obj" else ([], [])
    if len(visuals) == 1 and texture_files and np.allclose(single.transform, np.eye(4)) and np.ptp(single.scale) == 0:
        for file in [single.mesh_file, *mtl_files, *texture_files]:
            relative = file.relative_to(data_root).as_posix()
            if missing(relative):
                write(relative, file.read_bytes())
        return storage.join(out_dir, single.mesh_file.relative_to(data_root).as_posix())
    relative = relative_urdf.with_suffix(".glb").as_posix()
    if missing(relative):
        write(relative, _bake_visuals_to_glb(visuals))
    return storage.join(out_dir, relative)


def _obj_dependencies(obj_file: Path) -> tuple[list[Path], list[Path]]:
    """MTL files an OBJ names (`mtllib`) and the texture files those name (`map_*`), existing ones only."""
    mtl_files, texture_files = [], []
    for line in obj_file.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("mtllib"):
            mtl_file = obj_file.parent / line.split(maxsplit=1)[1].strip()
            if mtl_file.is_file() and mtl_file not in mtl_files:
                mtl_files.append(mtl_file)
    for mtl_file in mtl_files:
        for line in mtl_file.read_text(encoding="utf-8", errors="replace").splitlines():
            words = line.split()
            if words and words[0].lower().startswith("map_"):
                texture = mtl_file.parent / words[-1]
                if texture.is_file() and texture not in texture_files:
                    texture_files.append(texture)
    return mtl_files, texture_files


def _bake_visuals_to_glb(visuals: list[_UrdfVisual]) -> bytes:
    """One GLB holding every visual, placed as the URDF places it and turned to glTF's +Y up.

    Visuals of the same mesh file and colour (table.urdf's top and legs) become one geometry, so the
    GLB holds each texture once.
    """
    import trimesh
    from trimesh.visual.material import PBRMaterial, SimpleMaterial

    z_up_to_y_up = _homogeneous(Y_UP_TO_Z_UP.T)
    groups: dict[tuple[Path, tuple | None], list[_UrdfVisual]] = {}
    for visual in visuals:
        groups.setdefault((visual.mesh_file, visual.rgba), []).append(visual)
    scene = trimesh.Scene()
    for (mesh_file, rgba), group in groups.items():
        source = trimesh.load(mesh_file, force="mesh")
        placed = []
        for visual in group:
            mesh = trimesh.Trimesh(source.vertices * visual.scale, source.faces, process=False)
            placed.append(mesh.apply_transform(z_up_to_y_up @ visual.transform))
        merged = trimesh.util.concatenate(placed)
        material = getattr(source.visual, "material", None)
        image = material.image if isinstance(material, SimpleMaterial) else None
        if image is not None:
            # White factor: the texture is the colour (see _corner_colors); metallic 0 because
            # trimesh's default conversion makes OBJ materials fully metallic (dark in PBR viewers).
            pbr = PBRMaterial(baseColorTexture=image, baseColorFactor=[1.0, 1.0, 1.0, 1.0], metallicFactor=0.0, roughnessFactor=1.0)
            merged.visual = trimesh.visual.TextureVisuals(uv=np.concatenate([source.visual.uv] * len(group)), material=pbr)
        else:
            color = list(rgba) if rgba is not None else list(PLAIN_COLOR)
            merged.visual = trimesh.visual.TextureVisuals(
                material=PBRMaterial(baseColorFactor=color, metallicFactor=0.0, roughnessFactor=1.0)
            )
        scene.add_geometry(merged)
    return scene.export(file_type="glb")
