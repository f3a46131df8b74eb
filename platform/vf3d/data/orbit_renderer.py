"""Orbit rendering of normalised assets with headless OpenGL (moderngl over EGL).

`OrbitRenderer` owns one standalone EGL context, an offscreen framebuffer and one shader program,
and renders an `Asset` (assets.py) from any batch of 25-D render cameras (cameras.py) into straight
(not premultiplied) RGBA frames whose alpha is the foreground coverage. `opengl_matrices` builds
the view and projection matrices from those cameras so that a rasterised point lands exactly where
`cameras.project_points` puts it. `orbit_cameras`, `draw_elevation` and `render_orbit` turn an
`OrbitRenderConfig` into one asset's orbit: V views at uniform azimuth and one elevation drawn
deterministically from the asset id, plus optional random views on the sphere.

On a CPU the context is Mesa's llvmpipe, which by default uses one thread per core; callers that run
several renderers on one machine (one per Ray actor) should set `LP_NUM_THREADS=1` in those
processes' environment. This module sets no environment variables itself. On GPU machines the same
code runs on the NVIDIA EGL driver, on the GPU the process was given: `select_egl_device` maps the
assigned GPU ids (Ray's `ray.get_gpu_ids()`, else CUDA_VISIBLE_DEVICES) onto the EGL devices
`list_egl_devices` finds, so eight render actors on an 8-GPU node draw on eight GPUs, not all on
device 0. EGL enumerates every GPU whatever CUDA_VISIBLE_DEVICES says; NVIDIA's EGL reports each
device's CUDA ordinal (EGL_NV_device_cuda, as this process's CUDA numbers it), which is matched
first. `GLCONTEXT_DEVICE_INDEX` in the environment overrides the choice (glcontext reads it).

Pure library: numpy, torch (cameras) and moderngl; no ray.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import importlib.util
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vf3d import cameras as cameras_module
from vf3d.data.assets import Asset, AssetPart
from vf3d.data.config import OrbitRenderConfig

logger = logging.getLogger(__name__)

# Conventions: positions are world coordinates (+Z up), `view` is world → OpenGL camera (x right,
# y up, looking down −z), `projection` is `opengl_matrices`'s. The headlight sits at the camera, so
# a fragment's light direction is the direction to the eye; |n·l| lights both sides of a surface
# because many assets have inconsistent winding (and nothing is culled). Texture coordinates follow
# the OBJ convention (v up) while textures are uploaded top row first, hence the 1 − v.
VERTEX_SHADER = """
#version 330
uniform mat4 view;
uniform mat4 projection;
in vec3 in_position;
in vec3 in_normal;
in vec4 in_color;
in vec2 in_uv;
out vec3 eye_position;
out vec3 eye_normal;
out vec4 base_color;
out vec2 texture_uv;
void main() {
    vec4 eye = view * vec4(in_position, 1.0);
    eye_position = eye.xyz;
    eye_normal = mat3(view) * in_normal;
    base_color = in_color;
    texture_uv = vec2(in_uv.x, 1.0 - in_uv.y);
    gl_Position = projection * eye;
}
"""

FRAGMENT_SHADER = """
#version 330
uniform sampler2D base_texture;
uniform float ambient;
in vec3 eye_position;
in vec3 eye_normal;
in vec4 base_color;
in vec2 texture_uv;
out vec4 frag_color;
void main() {
    vec3 to_eye = normalize(-eye_position);
    // Degenerate triangles carry zero normals: light them as if they faced the camera.
    vec3 normal = dot(eye_normal, eye_normal) > 0.0 ? normalize(eye_normal) : to_eye;
    float diffuse = abs(dot(normal, to_eye));
    vec3 albedo = base_color.rgb * texture(base_texture, texture_uv).rgb;
    frag_color = vec4(albedo * (ambient + (1.0 - ambient) * diffuse), 1.0);
}
"""


def opengl_matrices(cameras: torch.Tensor | np.ndarray, near: float = 0.01, far: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """OpenGL view and projection matrices of 25-D render cameras.

    With OpenGL camera coordinates (X, Y, Z) (x right, y up, looking down −Z), the OpenCV point is
    (X, −Y, −Z), so `cameras.project_points` gives normalised image coordinates
    u = fx·X/(−Z) + cx (left → right) and v = fy·Y/Z + cy (top → bottom). With clip w = −Z:
    x_ndc = 2u − 1 and y_ndc = 1 − 2v (image row 0 at the top, i.e. at y_ndc = +1), hence the rows
    [2fx, 0, 1 − 2cx, 0] and [0, 2fy, 2cy − 1, 0]; depth is the standard [near, far] → [−1, 1] map.
    OpenGL's framebuffer rows run bottom-up, so a read-back image is flipped vertically to put row 0
    at the top; then a point at pixel coordinate (x, y) of `project_points` (pixel centres at
    j + 0.5) is rasterised at that same column x and row y.

    Args:
        cameras: [V, 25] render cameras (camera-to-world pose + normalised K); one [25] camera is V = 1.
        near, far: clipping distances in world units.

    Returns:
        view [V, 4, 4] (world → camera, the inverse pose) and projection [V, 4, 4], float32,
        row-major (transpose before handing them to OpenGL's column-major uniforms).
    """
    cameras = torch.as_tensor(cameras, dtype=torch.float64).cpu().reshape(-1, 25)
    poses, intrinsics = cameras_module.split_render_camera(cameras)
    view = torch.linalg.inv(poses).numpy()
    fx, fy = intrinsics[:, 0, 0].numpy(), intrinsics[:, 1, 1].numpy()
    cx, cy = intrinsics[:, 0, 2].numpy(), intrinsics[:, 1, 2].numpy()
    projection = np.zeros((len(cameras), 4, 4))
    projection[:, 0, 0] = 2 * fx
    projection[:, 0, 2] = 1 - 2 * cx
    projection[:, 1, 1] = 2 * fy
    projection[:, 1, 2] = 2 * cy - 1
    projection[:, 2, 2] = -(far + near) / (far - near)
    projection[:, 2, 3] = -2 * far * near / (far - near)
    projection[:, 3, 2] = -1.0
    return view.astype(np.float32), projection.astype(np.float32)


class OrbitRenderer:
    """Renders assets into square RGBA frames with one reusable headless OpenGL context.

    Frames are straight RGBA uint8 on a transparent black background: alpha is the fraction of the
    pixel the asset covers (0/255 without multisampling, in steps of 1/samples with it), and RGB is
    the lit base colour (vertex/material colour × texture × (ambient + (1 − ambient)·|n·l|), light at
    the camera). Not thread-safe: use one renderer per thread or process.
    """

    def __init__(self, resolution: int, ambient: float = 0.35, samples: int = 4, gpu_ids: Sequence[int | str] | None = None):
        """Create the context, framebuffers and shader program.

        Args:
            resolution: side H = W of the frames in pixels.
            ambient: light that reaches every surface, in [0, 1]; the rest comes from the headlight.
            samples: multisampling samples per pixel (antialiased edges), capped at the driver's
                maximum (4 on llvmpipe); 0 or 1 for none.
            gpu_ids: the GPUs this process was given (a Ray actor: `ray.get_gpu_ids()`); the context
                is created on the EGL device of the first one, and on a software (CPU) device when
                the list is empty. None: read CUDA_VISIBLE_DEVICES; when that is unset too, EGL's
                first device, as before.

        Raises:
            RuntimeError: no EGL OpenGL 3.3 context could be created, or `gpu_ids` names a GPU
                that EGL does not see (e.g. a container without NVIDIA's `graphics` capability),
                unless VF3D_ALLOW_LOGICAL_GPUS=1 (logical GPUs on a CPU machine).
        """
        import moderngl

        if not 0.0 <= ambient <= 1.0:
            raise ValueError(f"ambient must be in [0, 1], got {ambient}")
        self.resolution = resolution
        self.ambient = ambient
        _load_triton_first()
        self.device_index = _choose_egl_device(gpu_ids)
        """Index of the EGL device the context is on (eglQueryDevicesEXT order); None = EGL's first."""
        try:
            extra = {} if self.device_index is None else {"device_index": self.device_index}
            self.ctx = moderngl.create_standalone_context(backend="egl", **extra)
        except Exception as error:
            raise RuntimeError(
                "cannot create a headless OpenGL context through EGL "
                f"({type(error).__name__}: {error}). On a CPU this needs Mesa's EGL and llvmpipe "
                "(Debian/Ubuntu: libegl1 libgl1-mesa-dri); on a GPU, the NVIDIA driver's EGL. When "
                "several renderers share a machine, set LP_NUM_THREADS=1 in their environment."
            ) from error
        self.samples = min(samples, self.ctx.max_samples) if samples > 1 else 0
        size = (resolution, resolution)
        self._render_target = self.ctx.framebuffer(
            color_attachments=[self.ctx.renderbuffer(size, 4, samples=self.samples)],
            depth_attachment=self.ctx.depth_renderbuffer(size, samples=self.samples),
        )
        # Multisampled buffers cannot be read directly: they are resolved into this one first.
        self._read_target = (
            self.ctx.framebuffer(color_attachments=[self.ctx.renderbuffer(size, 4)]) if self.samples else self._render_target
        )
        self._program = self.ctx.program(vertex_shader=VERTEX_SHADER, fragment_shader=FRAGMENT_SHADER)
        self._program["ambient"].value = ambient
        self._program["base_texture"].value = 0
        # Untextured parts sample this 1×1 white texture, so one shader serves every part.
        self._white_texture = self.ctx.texture((1, 1), 4, data=bytes([255, 255, 255, 255]))
        # An EGL context can be current in one thread only, and creation made it current here.
        # Release it so whichever thread renders (Ray Data runs actor UDFs in a worker thread)
        # can take it; every use below enters it with `with self.ctx`.
        self.ctx.__exit__(None, None, None)

    @classmethod
    def from_config(cls, config: OrbitRenderConfig, samples: int = 4, gpu_ids: Sequence[int | str] | None = None) -> OrbitRenderer:
        """A renderer with the config's resolution and ambient light."""
        return cls(config.resolution, ambient=config.ambient, samples=samples, gpu_ids=gpu_ids)

    def render(self, asset: Asset, cameras: torch.Tensor | np.ndarray) -> np.ndarray:
        """Render `asset` from every camera.

        Args:
            asset: a normalised asset (assets.load_asset).
            cameras: [V, 25] render cameras.

        Returns:
            uint8 [V, H, W, 4] straight RGBA, row 0 = top, alpha = coverage.
        """
        with self.ctx:
            return self._render_current(asset, cameras)

    def _render_current(self, asset: Asset, cameras: torch.Tensor | np.ndarray) -> np.ndarray:
        import moderngl

        views, projections = opengl_matrices(cameras)
        size = self.resolution
        frames = np.empty((len(views), size, size, 4), dtype=np.uint8)
        resources, draws = [], []
        try:
            # Upload once per asset, draw every view from the same buffers.
            for part in asset.parts:
                buffer = self.ctx.buffer(_interleave(part).tobytes())
                array = self.ctx.vertex_array(self._program, [(buffer, "3f 3f 4f 2f", "in_position", "in_normal", "in_color", "in_uv")])
                resources += [buffer, array]
                texture = self._white_texture
                if part.texture is not None:
                    height, width = part.texture.shape[:2]
                    texture = self.ctx.texture((width, height), 4, data=np.ascontiguousarray(part.texture).tobytes())
                    texture.build_mipmaps()
                    texture.filter = (moderngl.LINEAR_MIPMAP_LINEAR, moderngl.LINEAR)
                    resources.append(texture)
                draws.append((array, texture))
            self.ctx.enable(moderngl.DEPTH_TEST)
            self.ctx.disable(moderngl.CULL_FACE)
            for index, (view, projection) in enumerate(zip(views, projections)):
                self._render_target.use()
                self._render_target.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
                # OpenGL uniforms are column-major: hand over the transposes.
                self._program["view"].write(np.ascontiguousarray(view.T).tobytes())
                self._program["projection"].write(np.ascontiguousarray(projection.T).tobytes())
                for array, texture in draws:
                    texture.use(0)
                    array.render(moderngl.TRIANGLES)
                if self.samples:
                    self.ctx.copy_framebuffer(self._read_target, self._render_target)
                pixels = np.frombuffer(self._read_target.read(components=4, alignment=1), dtype=np.uint8)
                # OpenGL rows run bottom-up; row 0 of a frame is the top.
                frames[index] = pixels.reshape(size, size, 4)[::-1]
        finally:
            for resource in resources:
                resource.release()
        if self.samples:
            _unpremultiply(frames)
        return frames

    def close(self) -> None:
        """Release the OpenGL context (the renderer is unusable afterwards)."""
        self.ctx.__enter__()  # release needs the context current; it is gone afterwards
        self.ctx.release()

    def __enter__(self) -> OrbitRenderer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# EGL device selection: which GPU a renderer draws on
# ---------------------------------------------------------------------------------------------

_EGL_EXTENSIONS = 0x3055
_EGL_CUDA_DEVICE_NV = 0x323A
_ALLOW_LOGICAL_GPUS_ENV = "VF3D_ALLOW_LOGICAL_GPUS"  # vf3d.ray_runtime.ALLOW_LOGICAL_GPUS_ENV (no ray import here)


@dataclass(frozen=True)
class EglDevice:
    """One device of `eglQueryDevicesEXT`, as far as device selection needs it."""

    index: int
    """Position in EGL's device list: glcontext's `device_index`."""
    cuda_ordinal: int | None = None
    """EGL_CUDA_DEVICE_NV: the CUDA device number of this GPU as this process numbers CUDA devices
    (after CUDA_VISIBLE_DEVICES); None for non-NVIDIA devices and GPUs CUDA does not see here."""
    software: bool = False
    """A CPU rasteriser (Mesa's llvmpipe: EGL_MESA_device_software)."""


def parse_visible_devices(value: str | None) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as a list of ids: None when unset, [] when empty (no GPU)."""
    if value is None:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


def select_egl_device(
    gpu_ids: Sequence[int | str] | None, devices: Sequence[EglDevice], visible_devices: Sequence[str] | None = None
) -> int | None:
    """The EGL device index a renderer given `gpu_ids` should draw on.

    Args:
        gpu_ids: the GPUs assigned to this process, as Ray numbers them (`ray.get_gpu_ids()`, the
            values of CUDA_VISIBLE_DEVICES); only the first is used. [] = no GPU; None = unknown.
        devices: the EGL devices, in EGL order (`list_egl_devices()`).
        visible_devices: this process's CUDA_VISIBLE_DEVICES as a list (None when unset), which
            turns an assigned id into the CUDA ordinal NVIDIA's EGL reports.

    Returns:
        An index into EGL's device list, or None for EGL's first device (unknown assignment, or
        nothing enumerated). No GPU assigned: the first software device, when there is one.

    Raises:
        LookupError: a GPU is assigned but none of `devices` is that GPU.

    The GPU is matched by its CUDA ordinal when the driver reports ordinals (EGL_NV_device_cuda):
    the assigned id's position in `visible_devices`, or the id itself when CUDA_VISIBLE_DEVICES is
    unset. Otherwise the hardware devices are taken in EGL order, which is PCI bus order, the order
    nvidia-smi and Ray number GPUs in: id g is the g-th non-software device.
    """
    if gpu_ids is None or not devices:
        return None
    if len(gpu_ids) == 0:
        software = [device.index for device in devices if device.software]
        return software[0] if software else None
    gpu = str(gpu_ids[0]).strip()
    described = f"GPU {gpu} (EGL devices: {[device.index for device in devices]})"
    if any(device.cuda_ordinal is not None for device in devices):
        if visible_devices is not None:
            if gpu not in visible_devices:
                raise LookupError(f"{described}: GPU {gpu} is not in CUDA_VISIBLE_DEVICES={','.join(visible_devices)!r}")
            ordinal = list(visible_devices).index(gpu)
        elif gpu.isdigit():
            ordinal = int(gpu)
        else:
            raise LookupError(f"{described}: cannot number GPU {gpu!r} without CUDA_VISIBLE_DEVICES")
        for device in devices:
            if device.cuda_ordinal == ordinal:
                return device.index
        raise LookupError(f"{described}: no EGL device reports CUDA device {ordinal}")
    hardware = [device.index for device in devices if not device.software]
    if gpu.isdigit() and int(gpu) < len(hardware):
        return hardware[int(gpu)]
    raise LookupError(f"{described}: {len(hardware)} hardware EGL device(s), none is GPU {gpu}")


def list_egl_devices() -> list[EglDevice]:
    """The EGL devices this process can see (EGL_EXT_device_enumeration), [] when EGL or the
    extension is missing. Reads only device strings and attributes: no display, no context."""
    try:
        library = ctypes.util.find_library("EGL")
        if library is None:
            return []
        egl = ctypes.CDLL(library)
        egl.eglGetProcAddress.restype = ctypes.c_void_p
        egl.eglGetProcAddress.argtypes = [ctypes.c_char_p]

        def proc(name: str, restype, *argtypes):
            address = egl.eglGetProcAddress(name.encode())
            return ctypes.CFUNCTYPE(restype, *argtypes)(address) if address else None

        query_devices = proc(
            "eglQueryDevicesEXT", ctypes.c_uint, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int)
        )
        query_string = proc("eglQueryDeviceStringEXT", ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int)
        query_attrib = proc("eglQueryDeviceAttribEXT", ctypes.c_uint, ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_ssize_t))
        if query_devices is None:
            return []
        count = ctypes.c_int(0)
        if not query_devices(0, None, ctypes.byref(count)) or count.value <= 0:
            return []
        handles = (ctypes.c_void_p * count.value)()
        if not query_devices(count.value, handles, ctypes.byref(count)):
            return []
        devices = []
        for index in range(count.value):
            extensions = (query_string(handles[index], _EGL_EXTENSIONS) or b"").decode(errors="replace").split() if query_string else []
            ordinal = None
            if "EGL_NV_device_cuda" in extensions and query_attrib is not None:
                value = ctypes.c_ssize_t(-1)
                if query_attrib(handles[index], _EGL_CUDA_DEVICE_NV, ctypes.byref(value)) and value.value >= 0:
                    ordinal = int(value.value)
            devices.append(EglDevice(index=index, cuda_ordinal=ordinal, software="EGL_MESA_device_software" in extensions))
        return devices
    except (OSError, AttributeError, ValueError):
        return []


def _choose_egl_device(gpu_ids: Sequence[int | str] | None) -> int | None:
    """`select_egl_device` for this process: explicit `gpu_ids` (strict: an assigned GPU that EGL
    does not see is an error, so a GPU actor never silently rasterises on the CPU), else
    CUDA_VISIBLE_DEVICES (lenient: falls back to EGL's default device with a warning)."""
    visible = parse_visible_devices(os.environ.get("CUDA_VISIBLE_DEVICES"))
    strict = gpu_ids is not None and os.environ.get(_ALLOW_LOGICAL_GPUS_ENV) != "1"
    assigned = list(gpu_ids) if gpu_ids is not None else visible
    if assigned is None:
        return None
    devices = list_egl_devices()
    try:
        return select_egl_device(assigned, devices, visible)
    except LookupError as error:
        if strict:
            raise RuntimeError(
                f"cannot render on the assigned GPU: {error}. In a container, NVIDIA_DRIVER_CAPABILITIES must "
                f"include `graphics` for NVIDIA's EGL (cluster/Dockerfile sets it); for logical GPUs on a CPU "
                f"machine set {_ALLOW_LOGICAL_GPUS_ENV}=1."
            ) from error
        logger.warning("orbit renderer: %s; using EGL's default device", error)
        return select_egl_device([], devices)


def _load_triton_first() -> None:
    """Import triton (shipped with CUDA builds of torch) before Mesa's llvmpipe loads its LLVM.

    Both bundle LLVM; when triton's is loaded second into a process that already rendered with
    llvmpipe, the process segfaults (seen with Mesa 22.3 / LLVM 15 and triton 3.x). Loaded in this
    order they coexist, so a process may render and later import transformers or torch._dynamo.
    """
    if importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401


def _interleave(part: AssetPart) -> np.ndarray:
    """A part's corner attributes interleaved as the vertex array reads them: float32 [N, 12] =
    position 3, normal 3, colour 4, uv 2 (zeros without a texture)."""
    uvs = part.uvs if part.uvs is not None else np.zeros((len(part.positions), 2), dtype=np.float32)
    return np.concatenate([part.positions, part.normals, part.colors, uvs], axis=1).astype(np.float32)


def _unpremultiply(frames: np.ndarray) -> None:
    """Undo the multisample resolve's premultiplication in place: an edge pixel's samples average the
    asset's colour with the transparent black background, i.e. RGB = coverage × colour."""
    alpha = frames[..., 3]
    edge = (alpha > 0) & (alpha < 255)
    if edge.any():
        rgb = frames[..., :3][edge].astype(np.float32)
        scaled = rgb * (255.0 / alpha[edge].astype(np.float32))[:, None]
        frames[..., :3][edge] = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Orbits
# ---------------------------------------------------------------------------------------------


@dataclass
class OrbitRender:
    """One asset's orbit: frames, their cameras and how they were chosen."""

    rgba: np.ndarray
    """uint8 [V_total, H, W, 4] straight RGBA frames (row 0 = top, alpha = coverage)."""
    cameras: np.ndarray
    """float32 [V_total, 25] render cameras of the frames."""
    elevation_deg: float
    """Elevation of the orbit views."""
    num_orbit_views: int
    """Frames [0, num_orbit_views) are the orbit (view i at azimuth 360°·i/V); the rest are random views."""


def _seed_from(asset_id: str, seed: int, purpose: str) -> int:
    """A 64-bit seed from (purpose, seed, asset id): independent streams per purpose, reproducible
    across processes (unlike Python's salted hash())."""
    digest = hashlib.sha1(f"{purpose}:{seed}:{asset_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def draw_elevation(asset_id: str, config: OrbitRenderConfig, seed: int = 0) -> float:
    """The asset's orbit elevation in degrees: uniform in `config.elevation_range_deg`, a pure
    function of (asset id, seed)."""
    low, high = config.elevation_range_deg
    return float(np.random.default_rng(_seed_from(asset_id, seed, "elevation")).uniform(low, high))


def orbit_cameras(config: OrbitRenderConfig, elevation_deg: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Render cameras of one orbit: `config.num_views` views at azimuth 360°·i/V and `elevation_deg`,
    then `config.num_random_views` views at random azimuth and (area-uniform) elevation in
    `config.random_elevation_range_deg`, drawn from `generator`; all at `config.radius` with
    intrinsics (focal, focal, 0.5, 0.5).

    Returns:
        float32 [num_views + num_random_views, 25].
    """
    intrinsics = cameras_module.intrinsics_matrix(config.focal, config.focal, 0.5, 0.5)
    poses = cameras_module.orbit_poses(config.num_views, elevation_deg=elevation_deg, radius=config.radius)
    if config.num_random_views:
        low, high = config.random_elevation_range_deg
        random_poses = cameras_module.random_sphere_poses(
            config.num_random_views, radius=config.radius, min_elevation_deg=low, max_elevation_deg=high, generator=generator
        )
        poses = torch.cat([poses, random_poses])
    return cameras_module.render_camera_vector(poses, intrinsics)


def render_orbit(renderer: OrbitRenderer, asset: Asset, config: OrbitRenderConfig, asset_id: str, seed: int = 0) -> OrbitRender:
    """Render one asset's orbit; identical for the same (asset, config, asset id, seed).

    Raises:
        ValueError: the renderer's resolution differs from the config's.
    """
    if renderer.resolution != config.resolution:
        raise ValueError(f"renderer resolution {renderer.resolution} != config resolution {config.resolution}")
    elevation = draw_elevation(asset_id, config, seed)
    generator = torch.Generator().manual_seed(_seed_from(asset_id, seed, "random views") % (2**63))
    cameras = orbit_cameras(config, elevation, generator)
    return OrbitRender(
        rgba=renderer.render(asset, cameras),
        cameras=cameras.numpy().astype(np.float32),
        elevation_deg=elevation,
        num_orbit_views=config.num_views,
    )
