"""Typed, import-light configuration for every vf3d component, with named presets.

Configs are plain dataclasses: one docstring-style comment per field, no arithmetic in YAML,
unknown keys rejected with the full dotted path of the bad key. Choices are `Literal` types and
numeric bounds are declared beside their field (`bounded`); `validate()` checks them, and each
config's few cross-field `rules()`, over the whole tree with the same dotted paths. Presets are
functions so each call returns a fresh, independent object. `debug` comes first and runs in
seconds on a CPU.


This module imports only the standard library (and PyYAML lazily), so `vf3d --help`, Ray job
drivers and Serve ingress replicas can read configs without importing torch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")
C = TypeVar("C", bound="ConfigBase")


class ConfigError(ValueError):
    """A configuration value or file is invalid; the message names the offending key."""


# ---------------------------------------------------------------------------------------------
# Declared constraints: choices are `Literal` types, numeric bounds sit beside the field, and one
# walker (`check`) checks both over a whole config tree, naming each field by its dotted path.
# ---------------------------------------------------------------------------------------------

_BOUNDS = ("ge", "gt", "le", "lt", "length")


def bounded(
    default: Any = dataclasses.MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    length: int | None = None,
) -> Any:
    """A dataclass field with declared bounds, checked by `check` (so by every `validate()`): `ge`,
    `gt`, `le`, `lt` bound the value (each item's, for a list; None passes), `length` fixes a list's."""
    metadata = {key: value for key, value in zip(_BOUNDS, (ge, gt, le, lt, length)) if value is not None}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


class FieldPath:
    """The dotted path of a config field in messages: in the rules of the config at "model",
    `f"{at.encoder.num_heads}"` reads "model.encoder.num_heads" (and `at.stages[2].steps` indexes)."""

    def __init__(self, path: str = "") -> None:
        self._path = path

    def __getattr__(self, name: str) -> FieldPath:
        if name.startswith("_"):  # copy, pickle and friends probe private names: never field names
            raise AttributeError(name)
        return FieldPath(_join(self._path, name))

    def __getitem__(self, index: int) -> FieldPath:
        return FieldPath(f"{self._path}[{index}]")

    def __str__(self) -> str:
        return self._path


class ConfigBase:
    """Base of every config dataclass: `validate()` checks the tree below it, and `rules()` holds
    its cross-field rules (choices and bounds are declared on the fields themselves)."""

    def rules(self, at: FieldPath) -> list[tuple[bool, str]]:
        """(holds, message) pairs checked after every field below this config; `at` names fields."""
        return []

    def validate(self: C, path: str = "") -> C:
        """Check choices, bounds and rules of this config and every config nested in it, raising
        ConfigError for the first failure with its dotted path (`path` prefixes it); returns self."""
        check(self, path)
        return self


def check(config: Any, path: str = "") -> None:
    """Walk a config tree in field order: every `Literal` field must hold one of its choices,
    every `bounded` field lie within its bounds, nested configs (alone or in lists) likewise;
    then the config's own `rules()`. Raises ConfigError naming the first failure's dotted path."""
    hints = _hints(type(config))
    for spec in dataclasses.fields(config):
        value, where = getattr(config, spec.name), _join(path, spec.name)
        if _has_choices(hints[spec.name]):
            _coerce(value, hints[spec.name], where, spec.metadata.get("note", ""))
        if value is not None and any(key in spec.metadata for key in _BOUNDS):
            _check_bounds(value, spec.metadata, where)
        if dataclasses.is_dataclass(value):
            check(value, where)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    check(item, f"{where}[{index}]")
    if isinstance(config, ConfigBase):
        for holds, message in config.rules(FieldPath(path)):
            if not holds:
                raise ConfigError(message)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _has_choices(annotation: Any) -> bool:
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (annotation,)
    return any(typing.get_origin(option) is Literal for option in options)


def _check_bounds(value: Any, limits: typing.Mapping[str, Any], where: str) -> None:
    if isinstance(value, (list, tuple)):
        if "length" in limits and len(value) != limits["length"]:
            raise ConfigError(f"{where} must be a list of {limits['length']} values, got {value!r}")
        for index, item in enumerate(value):
            _check_bounds(item, {key: limits[key] for key in limits if key != "length"}, f"{where}[{index}]")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    ge, gt, le, lt = (limits.get(key) for key in ("ge", "gt", "le", "lt"))
    below = (ge is not None and value < ge) or (gt is not None and value <= gt)
    above = (le is not None and value > le) or (lt is not None and value >= lt)
    if below or above:
        raise ConfigError(f"{where} must be {_describe_bounds(ge, gt, le, lt)}, got {value!r}")


def _describe_bounds(ge: float | None, gt: float | None, le: float | None, lt: float | None) -> str:
    if ge is not None and le is not None:
        return f"between {ge} and {le}"
    low = f"[{ge}" if ge is not None else f"({gt}" if gt is not None else None
    high = f"{le}]" if le is not None else f"{lt})" if lt is not None else None
    if low and high:
        return f"in {low}, {high}"
    return " and ".join(f"{sign} {bound}" for sign, bound in ((">=", ge), (">", gt), ("<=", le), ("<", lt)) if bound is not None)


# ---------------------------------------------------------------------------------------------
# Reconstructor architecture
# ---------------------------------------------------------------------------------------------


@dataclass
class EncoderConfig(ConfigBase):
    """DINOv2 image encoder (transformers `Dinov2Model`, or `Dinov2WithRegistersModel`)."""

    hidden_size: int = bounded(768, ge=1)
    """Token width of the encoder (768 for ViT-B/14)."""
    num_layers: int = bounded(12, ge=1)
    """Number of ViT blocks."""
    num_heads: int = bounded(12, ge=1)
    """Attention heads per block."""
    mlp_ratio: int = bounded(4, ge=1)
    """MLP hidden width as a multiple of `hidden_size`."""
    patch_size: int = bounded(14, ge=1)
    """Side of the square image patches, in pixels."""
    image_size: int = bounded(512, ge=1)
    """Side of the square input image the reconstructor is fed (the release uses 512;
    docs/vfusion3d.md#encoder)."""
    position_image_size: int = bounded(518, ge=1)
    """Image size the position embeddings were trained at (518 = 37 patches for DINOv2); inputs of
    other sizes interpolate them, exactly as transformers does for the released checkpoint."""
    position_interpolation: Literal["size", "scale_factor"] = "size"
    """How position embeddings are resized to other input sizes: "size" (transformers >= 4.46:
    resample the grid to the new patch count) or "scale_factor" (transformers <= 4.45 and the
    original DINOv2: resample by (patches + 0.1) / grid side, which samples the grid at slightly
    different places). The released VFusion3D weights were trained with "scale_factor"
    (docs/vfusion3d.md#position-embeddings)."""
    num_register_tokens: int = bounded(0, ge=0)
    """DINOv2 register tokens (0 for VFusion3D, 4 for OpenLRM v1.1; docs/vfusion3d.md#openlrm)."""
    normalize_input: bool = True
    """Apply ImageNet mean/std to [0,1] inputs (VFusion3D); OpenLRM feeds raw [0,1] pixels."""
    pretrained_path: str | None = None
    """Local transformers directory holding pretrained DINOv2 weights to start from (training
    only; a saved reconstructor directory always carries its own encoder weights)."""

    def rules(self, at: FieldPath) -> list[tuple[bool, str]]:
        return [
            (
                self.hidden_size % self.num_heads == 0,
                f"{at.hidden_size} must be divisible by {at.num_heads}, got {self.hidden_size} and {self.num_heads}",
            ),
            (self.image_size >= self.patch_size, f"{at.image_size} must be at least {at.patch_size}"),
        ]


@dataclass
class TransformerConfig(ConfigBase):
    """Triplane transformer: learned triplane queries cross-attend to image tokens."""

    width: int = bounded(1024, ge=1)
    """Token width of the triplane queries."""
    num_layers: int = bounded(16, ge=1)
    """Number of (cross-attention, self-attention, MLP) blocks."""
    num_heads: int = bounded(16, ge=1)
    """Attention heads in both attention layers."""
    mlp_ratio: float = bounded(4.0, gt=0)
    """MLP hidden width as a multiple of `width`."""
    camera_embed_dim: int = bounded(1024, ge=1)
    """Width of the source-camera embedding that modulates every LayerNorm."""
    attention_backend: Literal["auto", "sdpa", "xformers"] = "auto"
    """"sdpa" (torch scaled_dot_product_attention), "xformers" (memory-efficient attention, needs
    the `gpu` extra and a CUDA device) or "auto" (xformers on CUDA when installed, else sdpa)."""
    gradient_checkpointing: bool = False
    """Recompute each block in the backward pass instead of storing its activations."""

    def rules(self, at: FieldPath) -> list[tuple[bool, str]]:
        return [
            (self.width % self.num_heads == 0, f"{at.width} must be divisible by {at.num_heads}, got {self.width} and {self.num_heads}")
        ]


@dataclass
class TriplaneConfig(ConfigBase):
    """Triplane feature volume produced by the transformer and the shared deconv upsampler."""

    token_resolution: int = bounded(32, ge=1)
    """Side of each plane's token grid in the transformer (3 × side² queries)."""
    upsample_factor: int = bounded(2, ge=1)
    """ConvTranspose2d stride (and kernel) applied to every plane."""
    channels: int = bounded(80, ge=1)
    """Feature channels per plane after upsampling (the decoder sees 3 × channels)."""

    @property
    def resolution(self) -> int:
        """Side of each plane after upsampling."""
        return self.token_resolution * self.upsample_factor


@dataclass
class DecoderConfig(ConfigBase):
    """MLP mapping concatenated triplane features to (raw density, rgb); no view direction."""

    hidden_width: int = bounded(64, ge=1)
    """Width of the hidden layers."""
    num_layers: int = bounded(4, ge=2)
    """Number of Linear layers (ReLU between them); the last one outputs 4 values."""


@dataclass
class RendererConfig(ConfigBase):
    """Parameter-free volume renderer over the [-1,1]³ box."""

    num_coarse_samples: int = bounded(64, ge=2)
    """Stratified samples per ray."""
    num_fine_samples: int = bounded(64, ge=0)
    """Importance samples per ray, drawn from the coarse weights (0 disables the fine pass)."""
    render_size: int = bounded(384, ge=1)
    """Default side of rendered views at inference."""
    ray_chunk_size: int = bounded(8192, ge=0)
    """Rays per object rendered at once; bounds memory whatever the image size (0 = no chunking)."""
    box_half_size: float = bounded(1.0, gt=0)
    """Half the side of the cube the object lives in; rays are clipped to it."""


@dataclass
class ReconstructorConfig(ConfigBase):
    """The whole image→triplane→NeRF reconstructor (VFusion3D / LRM architecture)."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    triplane: TriplaneConfig = field(default_factory=TriplaneConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    renderer: RendererConfig = field(default_factory=RendererConfig)
    source_camera_distance: float = 1.0
    """Translation of the canonical source camera in the 16-D conditioning vector (the release
    uses 1.0 although render cameras sit at 1.5; OpenLRM uses 2.0). Keep it as trained
    (docs/vfusion3d.md#source-camera-vector)."""
    source_camera_azimuth_deg: float = bounded(0.0, ge=-180.0, le=180.0)
    """Azimuth of the canonical source camera in degrees, growing towards +Y (0 = on +X as in
    VFusion3D; −90 = on −Y as in OpenLRM). Sets the source-canonical frame and where turntables
    start. Keep it as trained (docs/vfusion3d.md#source-camera-vector)."""
    mesh_iso: float = 1.0
    """Density level of the extracted surface (1.0 for VFusion3D, 3.0 for OpenLRM;
    docs/vfusion3d.md#meshes-and-turntables)."""


def _reconstructor_debug() -> ReconstructorConfig:
    return ReconstructorConfig(
        encoder=EncoderConfig(hidden_size=32, num_layers=2, num_heads=2, patch_size=8, image_size=64, position_image_size=64),
        transformer=TransformerConfig(width=64, num_layers=2, num_heads=4, camera_embed_dim=64),
        triplane=TriplaneConfig(token_resolution=8, channels=16),
        decoder=DecoderConfig(hidden_width=32),
        renderer=RendererConfig(num_coarse_samples=16, num_fine_samples=16, render_size=32, ray_chunk_size=4096),
    )


def _reconstructor_small() -> ReconstructorConfig:
    return ReconstructorConfig(
        encoder=EncoderConfig(hidden_size=384, num_layers=12, num_heads=6, image_size=224, position_image_size=518),
        transformer=TransformerConfig(width=512, num_layers=8, num_heads=8, camera_embed_dim=512),
        triplane=TriplaneConfig(token_resolution=16, channels=40),
        decoder=DecoderConfig(hidden_width=64),
        renderer=RendererConfig(num_coarse_samples=48, num_fine_samples=48, render_size=128),
    )


def _reconstructor_base() -> ReconstructorConfig:
    return ReconstructorConfig(
        encoder=EncoderConfig(hidden_size=768, num_layers=12, num_heads=12, image_size=336, position_image_size=518),
        transformer=TransformerConfig(width=768, num_layers=12, num_heads=12, camera_embed_dim=768),
        triplane=TriplaneConfig(token_resolution=32, channels=48),
        decoder=DecoderConfig(hidden_width=64),
        renderer=RendererConfig(num_coarse_samples=64, num_fine_samples=64, render_size=384),
    )


def _reconstructor_vfusion3d() -> ReconstructorConfig:
    # Exactly the released model: the dataclass defaults are its numbers, and its encoder was
    # trained with the older position-embedding interpolation (docs/vfusion3d.md#reconstructor-architecture).
    return ReconstructorConfig(encoder=EncoderConfig(position_interpolation="scale_factor"))


RECONSTRUCTOR_PRESETS = {
    "debug": _reconstructor_debug,
    "small": _reconstructor_small,
    "base": _reconstructor_base,
    "vfusion3d": _reconstructor_vfusion3d,
}


# ---------------------------------------------------------------------------------------------
# Inference (image-to-3d): preprocessing, meshing, turntable video
# ---------------------------------------------------------------------------------------------


MaskMethod = Literal["auto", "rembg", "estimate", "none"]
"""Foreground masks of images without alpha (vf3d.preprocess.foreground_mask)."""


@dataclass
class InferenceConfig(ConfigBase):
    """Settings of `vf3d image-to-3d` and the endpoint (the model's own config stays in its dir)."""

    foreground_ratio: float = bounded(0.8, gt=0, le=1)
    """Longer side of the foreground box as a fraction of the square input canvas."""
    mask_method: MaskMethod = "auto"
    """Foreground mask when the image has no alpha: "auto" (rembg if installed, else an offline
    background estimate), "rembg", "estimate" or "none" (use the whole image)."""
    preprocessing: Literal["vf3d", "release"] = "vf3d"
    """How the photo is framed: "vf3d" (mask box at `foreground_ratio`, antialiased resize) or
    "release" (the released VFusion3D code's framing and rembg model, for comparing with it;
    see vf3d.preprocess.release_framing and docs/vfusion3d.md#preprocessing)."""
    mesh_resolution: int = bounded(256, ge=8, le=1024)
    """Density grid samples per axis for marching cubes."""
    mesh_method: Literal["coarse_to_fine", "dense"] = "coarse_to_fine"
    """"coarse_to_fine" (query the full grid only near the surface) or "dense"."""
    mesh_iso: float | Literal["auto"] | None = None
    """Surface density level; None uses the model's `mesh_iso`; "auto" uses Otsu's threshold of
    the density (for untrained models or fields of unknown scale)."""
    turntable_views: int = bounded(160, ge=1)
    """Frames in the turntable video (one full revolution)."""
    turntable_size: int | None = bounded(None, ge=1)
    """Side of turntable frames; None uses the model's render size."""
    turntable_fps: int = bounded(40, ge=1)
    """Frames per second of the turntable MP4."""
    turntable_radius: float = bounded(1.5, gt=0)
    """Distance of the turntable cameras from the origin."""
    turntable_elevation_deg: float = 0.0
    """Elevation of the turntable cameras."""
    seed: int = 0
    """Seed of the renderer's random sampling (ignored when `deterministic`)."""
    deterministic: bool = True
    """Render without jitter (bit-identical outputs for the same input)."""
    device: str = "auto"
    """"auto" (CUDA when available), "cpu" or "cuda[:N]"."""
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Autocast dtype on CUDA: "auto" (bf16 when supported), "bf16", "fp16" or "fp32"."""


INFERENCE_PRESETS = {
    "debug": lambda: InferenceConfig(mesh_resolution=64, turntable_views=16, turntable_fps=8),
    "small": lambda: InferenceConfig(mesh_resolution=128, turntable_views=60, turntable_fps=20),
    "base": lambda: InferenceConfig(),
    "vfusion3d": lambda: InferenceConfig(mesh_resolution=384),
}


# ---------------------------------------------------------------------------------------------
# Orbit rendering of 3D assets (render-assets)
# ---------------------------------------------------------------------------------------------


@dataclass
class OrbitRenderConfig(ConfigBase):
    """How one asset becomes an orbit: normalisation, cameras and image size."""

    num_views: int = bounded(16, ge=1)
    """Orbit frames at uniform azimuth 360°·i/V (view 0 on the +X axis)."""
    resolution: int = bounded(256, ge=16, le=4096)
    """Side of the square frames in pixels."""
    elevation_range_deg: list[float] = bounded(factory=lambda: [0.0, 45.0], gt=-90, lt=90, length=2)
    """[min, max] elevation in degrees; each asset gets one elevation drawn uniformly (seeded by its id)."""
    radius: float = bounded(1.5, gt=1)
    """Distance of the cameras from the origin (the turntable radius of cameras.py); above 1, so
    the cameras are outside the cube."""
    focal: float = bounded(0.75, gt=0)
    """Normalised focal length fx/W = fy/H (0.75 ↔ 67.4° field of view, the release's;
    docs/vfusion3d.md#intrinsics)."""
    margin: float = bounded(0.2, ge=0, lt=1)
    """The asset is centred on its bounding box and scaled so its farthest vertex lies at radius
    1 − margin: inside the reconstructor's [−1, 1]³ cube and inside every view's frame."""
    num_random_views: int = bounded(0, ge=0)
    """Extra views per asset at random positions on the sphere (reconstructor supervision)."""
    random_elevation_range_deg: list[float] = bounded(factory=lambda: [-30.0, 60.0], length=2)
    """[min, max] elevation of the extra random views."""
    ambient: float = 0.35
    """Ambient light level; the rest is a Lambertian light from the camera (shows shape)."""

    def rules(self, at: FieldPath) -> list[tuple[bool, str]]:
        (low, high), (random_low, random_high) = self.elevation_range_deg, self.random_elevation_range_deg
        return [
            (low <= high, f"{at.elevation_range_deg} must be [min, max] with min <= max"),
            (random_low <= random_high, f"{at.random_elevation_range_deg} must be [min, max] with min <= max"),
        ]


@dataclass
class ActorPoolConfig(ConfigBase):
    """An elastic Ray Data actor pool (`ActorPoolStrategy`) and what each actor asks for."""

    min_actors: int = bounded(1, ge=1)
    """Actors kept alive even when idle (Ray Data needs at least 1)."""
    max_actors: int = bounded(4, ge=1)
    """Upper bound the pool (and a cluster autoscaler behind it) grows to while work is queued."""
    initial_actors: int | None = bounded(None, ge=1)
    """Actors started up front (defaults to min_actors)."""
    num_cpus: float = bounded(1.0, ge=0)
    """CPUs reserved per actor (fractional on small machines, so read/write tasks still run)."""
    num_gpus: float = bounded(0.0, ge=0)
    """GPUs per actor (0 for CPU rendering; EGL uses the GPU when one is assigned)."""
    batch_size: int = bounded(4, ge=1)
    """Items per call of the stage."""

    def rules(self, at: FieldPath) -> list[tuple[bool, str]]:
        initial = self.min_actors if self.initial_actors is None else self.initial_actors
        return [
            (
                self.min_actors <= initial <= self.max_actors,
                f"need {at.min_actors} <= initial_actors <= max_actors, got {self.min_actors} <= {initial} <= {self.max_actors}",
            )
        ]


@dataclass
class WriterPoolConfig(ConfigBase):
    """The pool of shard-writer actors (Ray Data `ActorPoolStrategy`; each writes whole shards,
    named by the ids they hold, so writers never collide and a retried write is idempotent)."""

    min_actors: int = bounded(1, ge=1)
    """Writers kept alive even when idle."""
    max_actors: int = bounded(4, ge=1)
    """Writers the pool grows to while written batches queue up (one writer takes ~25 rows/s)."""
    num_cpus: float = bounded(0.5, ge=0)
    """CPUs reserved per writer (Parquet zstd compression and the storage client)."""

    def rules(self, at: FieldPath) -> list[tuple[bool, str]]:
        return [(self.min_actors <= self.max_actors, f"{at.min_actors} must be <= {at.max_actors}")]


@dataclass
class StageFailureConfig(ConfigBase):
    """How Ray Data stages recover from infrastructure failures (vf3d.synthesis.failures): CUDA,
    NCCL or ECC errors, GPU out-of-memory and storage OSErrors are retried, never written as a
    row's error; input errors stay permanent error rows."""

    max_batch_retries: int = bounded(3, ge=0)
    """Retries of a batch whose stage raised an infrastructure error or whose actor died (Ray's
    `max_task_retries`; Ray Data's default, unbounded, retries a batch that kills its actor forever)."""
    max_actor_restarts: int = bounded(3, ge=0)
    """Restarts of one actor (Ray's `max_restarts`); the pool replaces an actor past them."""
    max_consecutive_failures: int = bounded(2, ge=1)
    """An actor whose batches fail this many times in a row with infrastructure errors exits, so
    that Ray restarts it on a fresh process and CUDA context (a sick GPU stops eating batches)."""
    max_errored_blocks: int = bounded(8, ge=-1)
    """Error budget: blocks Ray Data may give up on (retries exhausted, or a non-input bug) before
    the run fails; their ids get no output and a rerun retries them (DataContext.max_errored_blocks;
    -1 = unlimited, 0 = the first one fails the run)."""


@dataclass
class LeaseConfig(ConfigBase):
    """The output-directory lease (vf3d.synthesis.lease): one run per `--out` at a time."""

    heartbeat_seconds: float = bounded(30.0, gt=0)
    """How often the running driver rewrites its lease's heartbeat."""
    stale_after_seconds: float = bounded(300.0, gt=0)
    """A lease held from another host whose heartbeat is older than this is taken over (its run is
    presumed dead). On the same host the holder's pid decides, whatever the heartbeat. Keep it
    well above heartbeat_seconds plus the clock skew between hosts."""

    def rules(self, at: FieldPath) -> list[tuple[bool, str]]:
        return [(self.heartbeat_seconds < self.stale_after_seconds, f"{at.heartbeat_seconds} must be < {at.stale_after_seconds}")]


@dataclass
class RenderAssetsConfig(ConfigBase):
    """The `render-assets` job: orbit rendering plus the Ray Data pool that runs it."""

    render: OrbitRenderConfig = field(default_factory=OrbitRenderConfig)
    pool: ActorPoolConfig = field(default_factory=ActorPoolConfig)
    rows_per_shard: int = bounded(64, ge=1)
    """Orbits per Parquet file (one file per batch of finished assets)."""
    writer_pool: WriterPoolConfig = field(default_factory=WriterPoolConfig)
    """Shard writers (a pool: one writer for a whole cluster caps the job at its write rate)."""
    failures: StageFailureConfig = field(default_factory=StageFailureConfig)
    """Retries of infrastructure failures and the run's error budget."""
    extensions: list[str] = field(default_factory=lambda: [".glb", ".gltf", ".obj", ".ply", ".stl", ".off"])
    """Files under --assets with these suffixes are assets; everything else is ignored."""
    retry_errors: bool = False
    """On a rerun, try assets that failed before again (by default a failure is final)."""
    seed: int = 0
    """Mixed with each asset's id to draw its elevation and random views (reruns are identical)."""
    lease: LeaseConfig = field(default_factory=LeaseConfig)
    """The `--out` lease: a second run on the same directory refuses while this one lives."""


RENDER_ASSETS_PRESETS = {
    "debug": lambda: RenderAssetsConfig(
        render=OrbitRenderConfig(num_views=16, resolution=64),
        pool=ActorPoolConfig(min_actors=1, max_actors=2, num_cpus=0.5, batch_size=2),
        writer_pool=WriterPoolConfig(min_actors=1, max_actors=2, num_cpus=0.25),
        rows_per_shard=8,
    ),
    "small": lambda: RenderAssetsConfig(render=OrbitRenderConfig(resolution=256), pool=ActorPoolConfig(max_actors=8)),
    "base": lambda: RenderAssetsConfig(
        render=OrbitRenderConfig(resolution=512, num_random_views=8), pool=ActorPoolConfig(min_actors=2, max_actors=64, batch_size=8)
    ),
    "vfusion3d": lambda: RenderAssetsConfig(
        render=OrbitRenderConfig(resolution=512, num_random_views=8),
        pool=ActorPoolConfig(min_actors=4, max_actors=256, batch_size=8),
        rows_per_shard=128,
        writer_pool=WriterPoolConfig(min_actors=1, max_actors=16, num_cpus=1.0),
    ),
}


# ---------------------------------------------------------------------------------------------
# Training (Ray Train + DeepSpeed harness shared by the video model and the reconstructor)
# ---------------------------------------------------------------------------------------------


@dataclass
class OptimizerConfig(ConfigBase):
    """AdamW with decoupled weight decay (none on biases and norms), warm-up and a decay schedule."""

    lr: float = bounded(1e-4, gt=0)
    """Peak learning rate, reached at the end of the warm-up."""
    betas: list[float] = bounded(factory=lambda: [0.9, 0.95], ge=0, lt=1, length=2)
    """AdamW (beta1, beta2)."""
    weight_decay: float = bounded(0.05, ge=0)
    """Decoupled weight decay of matrices; biases, norm weights and other 1-D parameters get none."""
    eps: float = bounded(1e-8, gt=0)
    """AdamW denominator epsilon."""
    warmup_steps: int = bounded(0, ge=0)
    """Optimizer steps of linear warm-up from lr/warmup_steps to lr."""
    schedule: Literal["cosine", "constant"] = "cosine"
    """After the warm-up: "cosine" (half-cosine from lr to lr·min_lr_ratio at run.max_steps) or
    "constant"."""
    min_lr_ratio: float = bounded(0.1, ge=0, le=1)
    """Final learning rate of the cosine schedule as a fraction of lr."""
    grad_clip: float = bounded(1.0, ge=0)
    """Clip the global gradient norm to this value (0 disables clipping)."""


Precision = Literal["auto", "bf16", "fp32"]
""""auto" (bf16 on CUDA, fp32 on the CPU), "bf16" or "fp32"."""


@dataclass
class DeepSpeedConfig(ConfigBase):
    """How DeepSpeed distributes and stores the optimizer state (ZeRO) and which precision it uses."""

    zero_stage: Literal[0, 2, 3] = 2
    """ZeRO stage: 0 (plain data parallel), 2 (optimizer state and gradients sharded) or 3 (the
    parameters too, for models that do not fit one device)."""
    precision: Precision = "auto"
    """"auto" (bf16 on CUDA, fp32 on the CPU), "bf16" or "fp32"."""
    gradient_accumulation_steps: int = bounded(1, ge=1)
    """Micro-batches per optimizer step (the loop calls backward/step this many times per step)."""
    offload_optimizer: bool = False
    """Keep the optimizer state in host memory (ZeRO-Offload; stages 2 and 3, GPU runs only: on the
    CPU it already lives there)."""

    def rules(self, at: FieldPath) -> list[tuple[bool, str]]:
        return [(not self.offload_optimizer or self.zero_stage >= 2, f"{at.offload_optimizer} needs {at.zero_stage} 2 or 3")]


@dataclass
class ScalingSettings(ConfigBase):
    """The Ray Train worker group: how many workers and what each one reserves."""

    num_workers: int = bounded(2, ge=1)
    """Training workers (one process and one data-parallel rank each)."""
    use_gpu: bool | Literal["auto"] = "auto"
    """true, false or "auto" (GPUs when the Ray cluster has any)."""
    cpus_per_worker: float = bounded(0.5, gt=0)
    """CPUs reserved per worker; fractional so that Ray Data's read tasks still get a CPU on small
    machines (2 workers × 1 CPU hang a 2-CPU cluster fed by Ray Data). Raise it on GPU nodes."""
    gpus_per_worker: float = bounded(1.0, gt=0)
    """GPUs reserved per worker when GPUs are used."""


@dataclass
class CheckpointSettings(ConfigBase):
    """When checkpoints are written and how many are kept."""

    every_n_steps: int = bounded(500, ge=1)
    """Write a checkpoint every this many optimizer steps (and always at the last step)."""
    keep_last: int = bounded(2, ge=1)
    """Checkpoints kept in storage; older ones are deleted once a newer one is registered."""


@dataclass
class FaultInjection(ConfigBase):
    """Kill one worker mid-run, once, to test recovery (tests and fire drills only)."""

    fail_at_step: int | None = bounded(None, ge=1)
    """Step at which the worker exits abruptly (os._exit(1)); None disables fault injection. Only
    the first time the run reaches it: a marker file in the run's storage directory records that
    the fault fired, so the restarted worker group carries on."""
    fail_rank: int = bounded(0, ge=0)
    """World rank of the worker that exits."""


@dataclass
class RunSettings(ConfigBase):
    """Identity, storage, failure policy and length of one training run."""

    name: str = "vf3d-train"
    """Run name; rerunning with the same name and storage_path resumes from its latest checkpoint."""
    storage_path: str | None = None
    """Directory or URI (s3://, gs://) holding the run's checkpoints; None uses Ray's default
    (~/ray_results). Multi-node clusters need shared storage here."""
    max_failures: int = bounded(2, ge=-1)
    """Worker-group restarts (from the latest checkpoint) before the run fails; -1 retries forever."""
    seed: int = 0
    """Seed of model initialisation and data order (each rank offsets it by its rank)."""
    log_every_n_steps: int = bounded(10, ge=1)
    """Report metrics every this many optimizer steps."""
    batch_size: int = bounded(8, ge=1)
    """Samples per worker per micro-batch (DeepSpeed's train_micro_batch_size_per_gpu)."""
    max_steps: int = bounded(1000, ge=1)
    """Optimizer steps of the whole run (a resumed run continues up to this step)."""

    def rules(self, at: FieldPath) -> list[tuple[bool, str]]:
        return [(bool(self.name) and "/" not in self.name, f"{at.name} must be a non-empty name without '/', got {self.name!r}")]


@dataclass
class TrainingConfig(ConfigBase):
    """Everything the shared training harness needs, apart from the model and its data."""

    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    scaling: ScalingSettings = field(default_factory=ScalingSettings)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    fault_injection: FaultInjection = field(default_factory=FaultInjection)
    run: RunSettings = field(default_factory=RunSettings)

    def rules(self, at: FieldPath) -> list[tuple[bool, str]]:
        fault = self.fault_injection
        return [
            (
                fault.fail_at_step is None or fault.fail_at_step <= self.run.max_steps,
                f"{at.fault_injection.fail_at_step} must be <= {at.run.max_steps}",
            ),
            (fault.fail_rank < self.scaling.num_workers, f"{at.fault_injection.fail_rank} must be a rank below {at.scaling.num_workers}"),
        ]


# ---------------------------------------------------------------------------------------------
# Video model (multi-view orbit video diffusion, models/video)
# ---------------------------------------------------------------------------------------------


@dataclass
class VideoArchitectureConfig(ConfigBase):
    """Sizes of a randomly initialised video model (`random_init`); pretrained ones bring their own."""

    transformer_layers: int = bounded(2, ge=1)
    """DiT blocks (`WanTransformer3DModel.num_layers`)."""
    transformer_heads: int = bounded(2, ge=1)
    """Attention heads per DiT block."""
    transformer_head_dim: int = bounded(12, ge=2)
    """Channels per head; even, because the 3-D rotary embedding splits it over time, height, width."""
    transformer_ffn_dim: int = bounded(48, ge=1)
    """Hidden width of each DiT block's feed-forward layer."""
    patch_size: list[int] = bounded(factory=lambda: [1, 2, 2], ge=1, length=3)
    """(frames, height, width) of the DiT's latent patches."""
    vae_base_dim: int = bounded(4, ge=1)
    """Channels of the Wan VAE's first stage (96 in Wan 2.1)."""
    vae_dim_mult: list[int] = bounded(factory=lambda: [1, 1, 1], ge=1)
    """Channel multiplier per VAE stage; every stage after the first halves height and width."""
    vae_temporal_downsample: list[bool] = field(default_factory=lambda: [True, True])
    """Per downsampling stage (len(vae_dim_mult) − 1 of them), whether it also halves time."""
    vae_latent_channels: int = bounded(4, ge=1)
    """Latent channels of the VAE (16 in Wan 2.1, 48 in Wan 2.2)."""
    text_hidden_size: int = bounded(32, ge=1)
    """Width of the random CLIP text encoder (and of the DiT's text input)."""
    text_layers: int = bounded(2, ge=1)
    """Layers of the random CLIP text encoder."""
    text_heads: int = bounded(2, ge=1)
    """Attention heads of the random CLIP text encoder."""

    def rules(self, at: FieldPath) -> list[tuple[bool, str]]:
        return [
            (self.transformer_head_dim % 2 == 0, f"{at.transformer_head_dim} must be even, got {self.transformer_head_dim}"),
            (
                len(self.vae_temporal_downsample) == len(self.vae_dim_mult) - 1,
                f"{at.vae_temporal_downsample} needs one entry per VAE downsampling stage (len(vae_dim_mult) - 1)",
            ),
            (
                self.text_hidden_size % self.text_heads == 0,
                f"{at.text_hidden_size} must be divisible by {at.text_heads}, got {self.text_hidden_size} and {self.text_heads}",
            ),
        ]


@dataclass
class VideoModelConfig(ConfigBase):
    """The orbit video model: a Wan-style DiT on Wan VAE latents, conditioned on the prompt, the
    first frame and the orbit's elevation, plus the text-to-image model that makes first frames."""

    pretrained_path: str | None = None
    """Local diffusers directory to start from: a Wan text-to-video pipeline (Wan 2.1 T2V, Wan 2.2
    TI2V) or a saved vf3d video model. Required unless `random_init`."""
    random_init: bool = False
    """Build every component randomly from `architecture` (debug and tests only)."""
    architecture: VideoArchitectureConfig = field(default_factory=VideoArchitectureConfig)
    text_to_image_path: str | None = None
    """Local diffusers text-to-image pipeline that draws first frames from prompts; None builds a
    tiny random one when `random_init`."""
    resolution: int = bounded(512, ge=16, le=4096)
    """Side of the square frames the model trains on and generates."""
    num_views: int = bounded(16, ge=4)
    """Orbit views per video at azimuth 360°·i/V; a multiple of 4 (the Wan VAE's frame chunk)."""
    max_text_tokens: int = bounded(512, ge=1)
    """Prompt tokens fed to the text encoder (padding is zeroed, as Wan does)."""
    elevation_frequency_dim: int = bounded(256, ge=2)
    """Sinusoidal features of the elevation before the elevation MLP; even."""
    frozen_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Dtype the frozen VAE and text encoder are loaded in from `pretrained_path`: "fp32", "bf16" or
    "fp16" (bf16 halves their memory on GPUs; random debug models stay fp32)."""
    trainable: Literal["temporal", "full"] = field(default="temporal", metadata={"note": "LoRA needs peft, which vf3d does not install"})
    """What fine-tuning trains: "temporal" (self-attention, patch embedding and elevation embedder)
    or "full" (the whole DiT and the elevation embedder)."""
    prompt_dropout: float = bounded(0.1, ge=0, lt=1)
    """Probability of training on the empty prompt (what classifier-free guidance contrasts with)."""
    flow_shift: float = bounded(3.0, gt=0)
    """Shift of the flow-matching noise levels, σ' = sσ / (1 + (s − 1)σ), in training and sampling."""
    gradient_checkpointing: bool = False
    """Recompute DiT blocks in the backward pass instead of storing their activations."""
    num_inference_steps: int = bounded(50, ge=1)
    """Euler steps of orbit generation."""
    guidance_scale: float = bounded(5.0, ge=1)
    """Classifier-free guidance on the prompt (1 disables it)."""
    text_to_image_steps: int = bounded(30, ge=1)
    """Denoising steps of the first-frame text-to-image model."""
    text_to_image_guidance: float = bounded(7.5, ge=1)
    """Classifier-free guidance of the first-frame text-to-image model."""
    seed: int = 0
    """Seed of a random initialisation."""

    def rules(self, at: FieldPath) -> list[tuple[bool, str]]:
        return [
            (
                self.num_views % 4 == 0,
                f"{at.num_views} must be a multiple of 4 (the Wan VAE encodes frames in chunks of 4 after the first), got {self.num_views}",
            ),
            (self.elevation_frequency_dim % 2 == 0, f"{at.elevation_frequency_dim} must be even, got {self.elevation_frequency_dim}"),
        ]


def _video_model_debug() -> VideoModelConfig:
    # Tiny and random: 32×32 frames → 8×8×5 latents (the VAE keeps Wan's 4× temporal compression,
    # so debug runs the same frame and mask layout as the real models).
    return VideoModelConfig(
        random_init=True,
        resolution=32,
        max_text_tokens=32,
        elevation_frequency_dim=32,
        num_inference_steps=4,
        guidance_scale=3.0,
        text_to_image_steps=4,
        text_to_image_guidance=3.0,
    )


VIDEO_MODEL_PRESETS = {
    "debug": _video_model_debug,
    # Wan 2.1 T2V 1.3B (diffusers layout) fine-tuned at 512² (the paper's video model ran at 512).
    "wan2.1-1.3b": lambda: VideoModelConfig(frozen_dtype="bf16", gradient_checkpointing=True, flow_shift=3.0),
    # Wan 2.2 TI2V 5B: 48-channel VAE with 16× spatial compression, so 512² frames are 32×32 latents.
    "wan2.2-5b": lambda: VideoModelConfig(frozen_dtype="bf16", gradient_checkpointing=True, flow_shift=5.0),
}


# ---------------------------------------------------------------------------------------------
# finetune-video: the video model trained on orbit shards
# ---------------------------------------------------------------------------------------------


@dataclass
class FinetuneVideoConfig(ConfigBase):
    """`vf3d finetune-video`: which video model, and how the shared harness trains it."""

    model: VideoModelConfig = field(default_factory=VideoModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval_seed: int = 1234
    """Seed of the fixed timesteps and noise of the evaluation loss (comparable across steps)."""


def _finetune_video_debug() -> FinetuneVideoConfig:
    model = _video_model_debug()
    model.trainable, model.prompt_dropout = "full", 0.0
    training = TrainingConfig(
        optimizer=OptimizerConfig(lr=3e-3, warmup_steps=0, schedule="constant", weight_decay=0.0),
        deepspeed=DeepSpeedConfig(zero_stage=2),
        scaling=ScalingSettings(num_workers=2, cpus_per_worker=0.5),
        checkpoint=CheckpointSettings(every_n_steps=10, keep_last=2),
        run=RunSettings(name="finetune-video", max_steps=40, batch_size=1, log_every_n_steps=10, max_failures=2),
    )
    return FinetuneVideoConfig(model=model, training=training)


def _finetune_video_full(video_preset: str) -> FinetuneVideoConfig:
    training = TrainingConfig(
        optimizer=OptimizerConfig(lr=1e-5, warmup_steps=500, weight_decay=0.01),
        deepspeed=DeepSpeedConfig(zero_stage=2, precision="auto"),
        scaling=ScalingSettings(num_workers=8, use_gpu=True, cpus_per_worker=8),
        checkpoint=CheckpointSettings(every_n_steps=500, keep_last=3),
        run=RunSettings(name=f"finetune-{video_preset}", max_steps=20_000, batch_size=1, log_every_n_steps=20),
    )
    return FinetuneVideoConfig(model=VIDEO_MODEL_PRESETS[video_preset](), training=training)


FINETUNE_VIDEO_PRESETS = {
    "debug": _finetune_video_debug,
    "wan2.1-1.3b": lambda: _finetune_video_full("wan2.1-1.3b"),
    "wan2.2-5b": lambda: _finetune_video_full("wan2.2-5b"),
}


# ---------------------------------------------------------------------------------------------
# Quality filter (frozen image features + linear probe, plus cheap heuristics)
# ---------------------------------------------------------------------------------------------


@dataclass
class FilterEncoderConfig(ConfigBase):
    """The frozen image encoder whose features the quality probe reads (DINOv2, as in the paper;
    docs/vfusion3d.md#data-engine)."""

    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(image_size=224))
    """Its architecture; `encoder.pretrained_path` names a local DINOv2 directory (transformers
    layout, e.g. facebook/dinov2-base) and must match these numbers."""
    random_init: bool = False
    """Allow a randomly initialised encoder when `encoder.pretrained_path` is None (debug and tests:
    random features still separate clean orbits from garbage, but far less well than DINOv2)."""
    num_views: int = bounded(4, ge=1)
    """Views per orbit that are encoded, evenly spaced around the orbit."""
    seed: int = 0
    """Seed of a random initialisation (the probe records it: features must be reproducible)."""

    def rules(self, at: FieldPath) -> list[tuple[bool, str]]:
        return [
            (
                self.encoder.pretrained_path is not None or self.random_init,
                f"{at.encoder.pretrained_path} is required (a local DINOv2 directory); only random_init presets such as debug"
                " build a random one",
            ),
            (
                self.encoder.image_size % self.encoder.patch_size == 0,
                f"{at.encoder.image_size} must be a multiple of {at.encoder.patch_size}",
            ),
        ]


@dataclass
class HeuristicsConfig(ConfigBase):
    """Cheap checks on every generated orbit; any failed check rejects it with that reason."""

    min_motion: float = bounded(0.01, ge=0)
    """Mean absolute change between consecutive views (pixels in [0, 1]) below which an orbit is
    "static" (the model froze instead of turning the object)."""
    min_foreground: float = bounded(0.01, ge=0, le=1)
    """Mean foreground fraction of the views below which an orbit is "empty_foreground"."""
    max_foreground: float = bounded(0.85, ge=0, le=1)
    """Mean foreground fraction above which an orbit is "full_frame_foreground" (no object on a
    clean background, e.g. a scene)."""
    max_flicker: float = bounded(0.08, gt=0)
    """Median |second difference| of the views' mean brightness above which an orbit "flicker"s
    (brightness jumping back and forth; a turning object changes smoothly)."""

    def rules(self, at: FieldPath) -> list[tuple[bool, str]]:
        return [(self.min_foreground < self.max_foreground, f"{at.min_foreground} must be < {at.max_foreground}")]


@dataclass
class QualityFilterConfig(ConfigBase):
    """How `synthesize` keeps or rejects a generated orbit."""

    probe_path: str | None = None
    """Directory written by `vf3d train-filter` (probe + the encoder it was fitted on); None runs
    the heuristics only, and the summary says so."""
    min_score: float | None = bounded(None, ge=0, le=1)
    """Probe scores (probability of "good") below this reject an orbit; None uses the threshold
    `train-filter` chose on its training labels."""
    encoder_path: str | None = None
    """Where the probe's DINOv2 weights are on this cluster, when not at the path recorded at
    training time (the weights must be the same: the probe checks their fingerprint)."""
    heuristics: HeuristicsConfig = field(default_factory=HeuristicsConfig)
    mask_threshold: float = bounded(0.12, gt=0, lt=1)
    """Foreground masks of generated views: pixels farther than this (RGB distance, [0, 1] per
    channel) from the white background are the object."""


@dataclass
class TrainFilterConfig(ConfigBase):
    """`vf3d train-filter`: fit the linear probe on labelled orbits."""

    encoder: FilterEncoderConfig = field(default_factory=FilterEncoderConfig)
    validation_fraction: float = bounded(0.25, ge=0, lt=1)
    """Share of the labelled orbits (chosen by hashing their ids) held out to measure the probe."""
    l2: float = bounded(1e-3, ge=0)
    """L2 penalty on the probe's weights (features are standardised first)."""
    max_iterations: int = bounded(200, ge=1)
    """L-BFGS iterations of the logistic-regression fit."""
    batch_size: int = bounded(16, ge=1)
    """Orbits encoded per forward pass."""
    seed: int = 0


@dataclass
class QualityProbeConfig(ConfigBase):
    """A fitted quality probe (saved by `train-filter`): the encoder it reads and its decision."""

    encoder: FilterEncoderConfig = field(default_factory=FilterEncoderConfig)
    feature_dim: int = bounded(0, ge=1)
    """Length of the orbit feature vector the probe's linear layer takes (set when it is fitted)."""
    threshold: float = bounded(0.5, ge=0, le=1)
    """Scores (probability of "good") at or above this pass."""


def _debug_filter_encoder() -> FilterEncoderConfig:
    encoder = EncoderConfig(hidden_size=32, num_layers=2, num_heads=2, patch_size=8, image_size=64, position_image_size=64)
    return FilterEncoderConfig(encoder=encoder, random_init=True)


TRAIN_FILTER_PRESETS = {
    "debug": lambda: TrainFilterConfig(encoder=_debug_filter_encoder()),
    # DINOv2 ViT-B/14 from a local directory (set encoder.encoder.pretrained_path in --config).
    "dinov2-base": lambda: TrainFilterConfig(encoder=FilterEncoderConfig(encoder=EncoderConfig(image_size=224, position_image_size=518))),
}


# ---------------------------------------------------------------------------------------------
# synthesize: prompts / images → synthetic orbit shards on elastic actor pools
# ---------------------------------------------------------------------------------------------


@dataclass
class GenerationConfig(ConfigBase):
    """How first frames and orbits are sampled (the models come from --video-model and here)."""

    text_to_image_path: str | None = None
    """Local diffusers text-to-image pipeline that draws first frames from prompts; required when
    any input has no image (checked before the run starts)."""
    random_text_to_image: bool = False
    """Without `text_to_image_path`, build a tiny random text-to-image model (debug and tests)."""
    text_to_image_steps: int = bounded(30, ge=1)
    """Denoising steps of the text-to-image model."""
    text_to_image_guidance: float = bounded(7.5, ge=1)
    """Classifier-free guidance of the text-to-image model."""
    num_inference_steps: int = bounded(50, ge=1)
    """Euler steps of orbit generation."""
    guidance_scale: float = bounded(5.0, ge=1)
    """Classifier-free guidance of orbit generation on the prompt (1 disables it)."""
    elevation_range_deg: list[float] = bounded(factory=lambda: [0.0, 30.0], gt=-90, lt=90, length=2)
    """[min, max] elevation drawn (seeded by the id) for inputs without an `elevation`."""
    image_mask_method: MaskMethod = "auto"
    """Background removal of given first-frame images before they are recentred on white:
    "auto", "rembg", "estimate" or "none" (vf3d.preprocess.foreground_mask)."""
    precision: Precision = "auto"
    """"auto" (bf16 autocast on CUDA, fp32 on the CPU), "bf16" or "fp32"."""

    def rules(self, at: FieldPath) -> list[tuple[bool, str]]:
        low, high = self.elevation_range_deg
        return [(low <= high, f"{at.elevation_range_deg} must be [min, max] with min <= max")]


ModelStage = Literal["first_frame", "generate", "mask", "filter"]
"""The synthesize stages that run a model on an actor pool."""


@dataclass
class SynthesisFaultInjection(ConfigBase):
    """Kill one actor of one stage mid-batch, once, to test recovery (tests and fire drills only)."""

    kill_stage: ModelStage | None = None
    """Stage whose actor exits abruptly (os._exit) inside a batch: "first_frame", "generate",
    "mask" or "filter"; None disables it. A marker file in the output directory makes it fire once."""
    after_batches: int = bounded(1, ge=0)
    """The actor dies in its batch number `after_batches` + 1 (batches it finished before are kept)."""
    cuda_error_stage: ModelStage | None = None
    """Stage whose actor raises a CUDA-style RuntimeError once, in its batch number
    `error_after_batches` + 1 (an infrastructure error: the batch must be retried, not failed)."""
    os_error_stage: Literal[ModelStage, "encode", "write"] | None = None
    """Stage (a model stage, "encode" or "write") whose actor raises an OSError once, the same way."""
    error_after_batches: int = bounded(0, ge=0)
    """Batches an actor finishes before the injected error fires."""


@dataclass
class SynthesizeConfig(ConfigBase):
    """`vf3d synthesize`: the stages, their elastic actor pools and the quality filter."""

    generation: GenerationConfig = field(default_factory=GenerationConfig)
    filter: QualityFilterConfig = field(default_factory=QualityFilterConfig)
    first_frame_pool: ActorPoolConfig = field(default_factory=lambda: ActorPoolConfig(num_gpus=1.0, num_cpus=2.0, batch_size=8))
    """Text-to-image actors (skipped for inputs that bring their image)."""
    generate_pool: ActorPoolConfig = field(default_factory=lambda: ActorPoolConfig(max_actors=8, num_gpus=1.0, num_cpus=4.0, batch_size=4))
    """Orbit-generation actors: the expensive stage, so the one that grows most."""
    mask_pool: ActorPoolConfig = field(default_factory=lambda: ActorPoolConfig(max_actors=8, num_cpus=1.0, batch_size=8))
    """Mask + heuristics actors (CPU): foreground masks, the heuristic statistics and reasons, and
    the few views the probe scores (so the GPU filter gets nothing else to do)."""
    filter_pool: ActorPoolConfig = field(default_factory=lambda: ActorPoolConfig(num_gpus=0.25, num_cpus=1.0, batch_size=16))
    """Probe actors (a frozen DINOv2 on the probe's views only: a fraction of a GPU is plenty).
    Without `filter.probe_path` the stage is left out and holds no GPU."""
    encode_pool: ActorPoolConfig = field(default_factory=lambda: ActorPoolConfig(max_actors=8, num_cpus=1.0, batch_size=8))
    """Encoding actors (CPU): PNG-encode every view and mask into shard rows, kept or rejected."""
    writer_pool: WriterPoolConfig = field(default_factory=WriterPoolConfig)
    """Shard writers (a pool: one writer for a whole cluster caps the job at its write rate)."""
    failures: StageFailureConfig = field(default_factory=StageFailureConfig)
    """Retries of infrastructure failures and the run's error budget (vf3d.synthesis.failures)."""
    max_prompt_chars: int = bounded(1000, ge=1)
    """Longer prompts become error rows (text encoders truncate silently; we refuse loudly)."""
    rows_per_shard: int = bounded(64, ge=1)
    """Orbits per Parquet file (one file per written batch)."""
    retry_errors: bool = False
    """On a rerun, try inputs that failed before again (by default an error row is final)."""
    seed: int = 0
    """Mixed with each input's id to seed its first frame, orbit noise and elevation."""
    fault: SynthesisFaultInjection = field(default_factory=SynthesisFaultInjection)
    lease: LeaseConfig = field(default_factory=LeaseConfig)
    """The `--out` lease: a second run on the same directory refuses while this one lives."""


def _synthesize_debug() -> SynthesizeConfig:
    # Sized for 2 cores: fractional CPUs leave room for the read and write tasks (a pool that takes
    # every CPU starves them), and the generation pool may grow from 1 to 2 actors.
    generation = GenerationConfig(
        random_text_to_image=True,
        text_to_image_steps=4,
        text_to_image_guidance=3.0,
        num_inference_steps=4,
        guidance_scale=3.0,
        image_mask_method="estimate",
    )
    return SynthesizeConfig(
        generation=generation,
        first_frame_pool=ActorPoolConfig(min_actors=1, max_actors=1, num_cpus=0.5, batch_size=4),
        generate_pool=ActorPoolConfig(min_actors=1, max_actors=2, num_cpus=0.5, batch_size=2),
        mask_pool=ActorPoolConfig(min_actors=1, max_actors=1, num_cpus=0.25, batch_size=4),
        filter_pool=ActorPoolConfig(min_actors=1, max_actors=1, num_cpus=0.25, batch_size=4),
        encode_pool=ActorPoolConfig(min_actors=1, max_actors=1, num_cpus=0.25, batch_size=4),
        writer_pool=WriterPoolConfig(min_actors=1, max_actors=2, num_cpus=0.25),
        rows_per_shard=8,
    )


def _synthesize_cluster(max_generators: int) -> SynthesizeConfig:
    return SynthesizeConfig(
        first_frame_pool=ActorPoolConfig(min_actors=1, max_actors=max(1, max_generators // 8), num_gpus=1.0, num_cpus=4.0, batch_size=8),
        generate_pool=ActorPoolConfig(min_actors=1, max_actors=max_generators, num_gpus=1.0, num_cpus=4.0, batch_size=4),
        mask_pool=ActorPoolConfig(min_actors=1, max_actors=max(2, max_generators // 2), num_cpus=1.0, batch_size=8),
        filter_pool=ActorPoolConfig(min_actors=1, max_actors=max(1, max_generators // 16), num_gpus=0.25, num_cpus=2.0, batch_size=16),
        # PNG encoding costs ~0.45 CPU-s per 16-view 512² orbit: at 0.1 videos/s per generation
        # GPU one encoder core serves ~20 GPUs; the max leaves room for slower CPUs and bursts.
        encode_pool=ActorPoolConfig(min_actors=1, max_actors=max(2, max_generators // 4), num_cpus=1.0, batch_size=8),
        writer_pool=WriterPoolConfig(min_actors=1, max_actors=max(2, max_generators // 16), num_cpus=1.0),
        rows_per_shard=128,
    )


SYNTHESIZE_PRESETS = {
    "debug": _synthesize_debug,
    # One node of 8 GPUs (generation may take all 8; first frames and the filter share with it).
    "node": lambda: _synthesize_cluster(8),
    # An autoscaling cluster: generation grows to 128 GPUs while there is backlog (cluster/ configs).
    "cluster": lambda: _synthesize_cluster(128),
}


# ---------------------------------------------------------------------------------------------
# train-recon: the reconstructor trained on orbit shards (VFusion3D's recipe, docs/vfusion3d.md#training-recipe)
# ---------------------------------------------------------------------------------------------


LpipsNet = Literal["vgg", "alex", "squeeze"]
"""LPIPS backbones (torchvision VGG16, AlexNet, SqueezeNet 1.1); the linear heads ship with lpips."""


@dataclass
class ReconLossConfig(ConfigBase):
    """Loss terms and weights of reconstructor training (OpenLRM's defaults where the paper is
    silent; docs/vfusion3d.md#training-recipe)."""

    lpips_weight: float = bounded(1.0, ge=0)
    """LPIPS between rendered and true target crops (the only image loss on synthetic data)."""
    lpips_net: LpipsNet = "vgg"
    """LPIPS backbone: "vgg" (OpenLRM's), "alex" or "squeeze"; the linear heads ship with lpips."""
    lpips_backbone_path: str | None = None
    """Local torchvision weights of that backbone (a state dict in .pth/.safetensors, loaded
    weights-only), e.g. vgg16-397923af.pth. Required (checked when the loss is built) unless
    `lpips_random_backbone`."""
    lpips_random_backbone: bool = False
    """Use a random backbone (tests and debug only: the loss still trains, but it is not a
    perceptual metric; runs log a warning)."""
    mse_weight: float = bounded(1.0, ge=0)
    """Pixel MSE weight, applied to the stages whose `pixel_loss` is on (the 3D fine-tune)."""
    opacity_weight: float = bounded(0.5, ge=0)
    """MSE between rendered accumulated opacity and each target's foreground mask."""
    tv_weight: float = bounded(5e-4, ge=0)
    """Total variation on the triplanes (smooth fields, fewer floaters)."""


@dataclass
class CameraNoiseConfig(ConfigBase):
    """Random perturbation of the (estimated) cameras during training, in degrees and scene units
    (docs/vfusion3d.md#camera-noise)."""

    source_rotation_deg: float = bounded(1.0, ge=0)
    """Std of the rotation (random axis) applied to the source camera's pose."""
    source_translation: float = bounded(0.01, ge=0)
    """Std of the translation noise of the source camera."""
    target_rotation_deg: float = bounded(0.5, ge=0)
    """Std of the rotation noise of each target camera."""
    target_translation: float = bounded(0.005, ge=0)
    """Std of the translation noise of each target camera."""


@dataclass
class ReconStage(ConfigBase):
    """One stage of the resolution schedule: what the rendered supervision looks like, how long."""

    name: str = "stage"
    steps: int = bounded(1000, ge=1)
    """Optimizer steps of this stage (the run's total is the sum over stages)."""
    data: Literal["synthetic", "3d"] = "synthetic"
    """"synthetic" (--data) or "3d" (--data-3d, real renders)."""
    render_resolution: int = bounded(128, ge=16)
    """Targets are resized to this side; rays are cast as if the whole view were rendered at it."""
    crop_size: int = bounded(128, ge=16)
    """Side of the random crop actually rendered and supervised (≤ render_resolution): high
    resolution supervision at the cost of a crop (patch rendering). At least 16 px, and 32 px
    whenever the LPIPS loss is on (LPIPS backbones pool smaller crops down to nothing)."""

    pixel_loss: bool = False
    """Add the MSE term (real 3D renders are pixel-consistent; synthetic videos are not)."""

    def rules(self, at: FieldPath) -> list[tuple[bool, str]]:
        return [(self.crop_size <= self.render_resolution, f"{at.crop_size} must be <= {at.render_resolution}, got {self.crop_size}")]


@dataclass
class ReconValidationConfig(ConfigBase):
    """Novel-view validation on held-out objects."""

    every_n_steps: int = bounded(500, ge=1)
    """Validate every this many steps (and at the end)."""
    num_objects: int = bounded(8, ge=0)
    """Held-out objects (chosen by hashing ids; never trained on)."""
    num_views: int = bounded(4, ge=1)
    """Novel views rendered per held-out object."""
    resolution: int = bounded(128, ge=1)
    """Side of the rendered validation views."""


@dataclass
class ReconInputConfig(ConfigBase):
    """How training samples stream to the train-recon workers (Ray Data; see vf3d.data.training_input)."""

    prefetch_batches: int = bounded(2, ge=0)
    """Batches each worker prepares ahead of the one it trains on."""
    shuffle_buffer_size: int = bounded(64, ge=0)
    """Samples in each worker's local shuffle buffer (0: no shuffling beyond the per-epoch file order)."""
    min_samples_per_epoch: int = bounded(256, ge=1)
    """Datasets smaller than this repeat each orbit (fresh views per repeat) so an epoch holds at
    least this many samples, instead of running a tiny epoch every step."""


@dataclass
class TrainReconConfig(ConfigBase):
    """`vf3d train-recon`: model, data sampling, losses, stage schedule, validation, harness."""

    model: ReconstructorConfig = field(default_factory=ReconstructorConfig)
    init_path: str | None = None
    """Reconstructor directory to start from (e.g. an imported released checkpoint); None: random."""
    losses: ReconLossConfig = field(default_factory=ReconLossConfig)
    camera_noise: CameraNoiseConfig = field(default_factory=CameraNoiseConfig)
    stages: list[ReconStage] = field(
        default_factory=lambda: [
            ReconStage(name="synthetic-128", steps=20_000, render_resolution=128, crop_size=128),
            ReconStage(name="synthetic-256", steps=20_000, render_resolution=256, crop_size=192),
            ReconStage(name="synthetic-384", steps=20_000, render_resolution=384, crop_size=192),
            ReconStage(name="3d-finetune", steps=10_000, data="3d", render_resolution=384, crop_size=192, pixel_loss=True),
        ]
    )
    num_target_views: int = bounded(3, ge=1)
    """Target views per sample besides the source view (OpenLRM: 1 source + 3;
    docs/vfusion3d.md#training-recipe)."""
    gradient_checkpointing: bool = True
    """Recompute transformer blocks in the backward pass instead of storing their activations."""
    validation: ReconValidationConfig = field(default_factory=ReconValidationConfig)
    input: ReconInputConfig = field(default_factory=ReconInputConfig)
    """Streaming of training samples: prefetching, local shuffling, minimum epoch size."""
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def rules(self, at: FieldPath) -> list[tuple[bool, str]]:
        total = sum(stage.steps for stage in self.stages)
        # LPIPS backbones pool an input down to nothing below 32 px (squeeze and alex; vgg needs 16).
        lpips = self.losses.lpips_weight > 0
        return [
            (bool(self.stages), f"{at.stages} must not be empty"),
            *[
                (
                    not lpips or stage.crop_size >= 32,
                    f"{at.stages[index].crop_size} must be >= 32 while {at.losses.lpips_weight} > 0, got {stage.crop_size}",
                )
                for index, stage in enumerate(self.stages)
            ],
            (total == self.training.run.max_steps, f"{at.training.run.max_steps} must equal the sum of the stages' steps ({total})"),
        ]


def _train_recon_debug() -> TrainReconConfig:
    training = TrainingConfig(
        optimizer=OptimizerConfig(lr=5e-3, warmup_steps=0, schedule="constant", weight_decay=0.0),
        deepspeed=DeepSpeedConfig(zero_stage=2),
        scaling=ScalingSettings(num_workers=2, cpus_per_worker=0.5),
        checkpoint=CheckpointSettings(every_n_steps=20, keep_last=2),
        run=RunSettings(name="train-recon", max_steps=120, batch_size=1, log_every_n_steps=10, max_failures=2),
    )
    return TrainReconConfig(
        model=_reconstructor_debug(),
        # A tiny model seeing few objects learns shape mostly from the masks: a heavier opacity
        # term (measured: +6 dB novel-view PSNR on one object in 120 steps at 3.0, +4 dB at 0.5).
        losses=ReconLossConfig(lpips_random_backbone=True, lpips_net="squeeze", opacity_weight=3.0),
        camera_noise=CameraNoiseConfig(0.0, 0.0, 0.0, 0.0),
        # The full recipe in miniature: synthetic data at a low resolution, then real renders at a
        # higher one, cropped, with the pixel loss on.
        stages=[
            ReconStage(name="low", steps=40, render_resolution=32, crop_size=32),
            ReconStage(name="high", steps=80, data="3d", render_resolution=48, crop_size=32, pixel_loss=True),
        ],
        gradient_checkpointing=False,
        validation=ReconValidationConfig(every_n_steps=40, num_objects=1, num_views=4, resolution=32),
        training=training,
    )


def _train_recon_full(model: str) -> TrainReconConfig:
    config = TrainReconConfig(model=RECONSTRUCTOR_PRESETS[model]())
    config.training = TrainingConfig(
        optimizer=OptimizerConfig(lr=4e-4, warmup_steps=3000, weight_decay=0.05),
        deepspeed=DeepSpeedConfig(zero_stage=2, precision="auto"),
        scaling=ScalingSettings(num_workers=8, use_gpu=True, cpus_per_worker=8),
        checkpoint=CheckpointSettings(every_n_steps=1000, keep_last=3),
        run=RunSettings(
            name=f"train-recon-{model}", max_steps=sum(stage.steps for stage in config.stages), batch_size=8, log_every_n_steps=50
        ),
    )
    return config


TRAIN_RECON_PRESETS = {
    "debug": _train_recon_debug,
    "base": lambda: _train_recon_full("base"),
    "vfusion3d": lambda: _train_recon_full("vfusion3d"),
}


# ---------------------------------------------------------------------------------------------
# serve: the image-to-3D endpoint on Ray Serve
# ---------------------------------------------------------------------------------------------


@dataclass
class ReplicaConfig(ConfigBase):
    """One Serve deployment's replicas: autoscaling bounds and what each replica reserves."""

    min_replicas: int = bounded(1, ge=0)
    """Replicas kept even when idle."""
    max_replicas: int = bounded(1, ge=1)
    """Upper bound the autoscaler (and a cluster autoscaler behind it) grows to under load."""
    initial_replicas: int | None = bounded(None, ge=0)
    """Replicas started with the application (defaults to min_replicas)."""
    target_ongoing_requests: float = bounded(2.0, gt=0)
    """Requests in flight per replica the autoscaler aims for (more → add replicas)."""
    max_ongoing_requests: int = bounded(8, ge=1)
    """Requests a replica accepts at once; the rest wait in the caller's queue."""
    max_queued_requests: int = bounded(-1, ge=-1)
    """Requests that wait in one caller's queue for a free replica before more are refused (Serve's
    load shedding: the endpoint answers 503 JSON with `Retry-After`); -1 queues without bound."""
    num_cpus: float = bounded(1.0, ge=0)
    """CPUs reserved per replica."""
    num_gpus: float = bounded(0.0, ge=0)
    """GPUs per replica (1 for the model on a cluster; a fraction lets mesh replicas share one)."""

    def rules(self, at: FieldPath) -> list[tuple[bool, str]]:
        initial = self.min_replicas if self.initial_replicas is None else self.initial_replicas
        return [
            (
                self.min_replicas <= initial <= self.max_replicas,
                f"need {at.min_replicas} <= initial_replicas <= max_replicas, got {self.min_replicas} <= {initial} <= {self.max_replicas}",
            ),
            (self.max_queued_requests != 0, f"{at.max_queued_requests} must be -1 (no limit) or >= 1, got 0"),
        ]


@dataclass
class ServeConfig(ConfigBase):
    """`vf3d serve` / serve/config.yaml: deployments, batching, request limits and HTTP options."""

    inference: InferenceConfig = field(default_factory=InferenceConfig)
    """Preprocessing, mesh and turntable settings (the request's `mesh_resolution` overrides)."""
    ingress: ReplicaConfig = field(
        default_factory=lambda: ReplicaConfig(
            max_replicas=4, num_cpus=2.0, max_ongoing_requests=64, target_ongoing_requests=16.0, max_queued_requests=256
        )
    )
    """HTTP ingress replicas (CPU): auth, body limits, image decoding and preprocessing, the triplane cache."""
    model: ReplicaConfig = field(
        default_factory=lambda: ReplicaConfig(
            max_replicas=8, num_cpus=4.0, num_gpus=1.0, max_ongoing_requests=16, target_ongoing_requests=8.0, max_queued_requests=64
        )
    )
    """Reconstructor replicas: batched encoding (image → triplanes) and turntable rendering."""
    mesh: ReplicaConfig = field(
        default_factory=lambda: ReplicaConfig(
            max_replicas=16, num_cpus=4.0, max_ongoing_requests=4, target_ongoing_requests=2.0, max_queued_requests=64
        )
    )
    """Mesh replicas (CPU by default): density queries, marching cubes, GLB/OBJ/PLY and MP4 encoding."""
    max_batch_size: int = bounded(8, ge=1)
    """Images encoded in one forward pass (`@serve.batch`); 1 turns batching off."""
    batch_wait_timeout_s: float = bounded(0.05, ge=0)
    """How long a partial batch waits for more requests before it runs."""
    max_body_bytes: int = bounded(20_000_000, ge=1)
    """Largest request body accepted (413 above it, checked before the body is read)."""
    max_pixels: int = bounded(40_000_000, ge=1)
    """Largest image (width × height, read from the header before decoding) accepted (413 above it)."""
    min_image_side: int = bounded(16, ge=1)
    """Smallest width or height accepted (422 below it)."""
    max_concurrent_decodes: int = bounded(2, ge=1)
    """Uploads one ingress replica decodes at once (the rest wait, holding only their bytes). Each
    decode peaks at about 16 bytes per pixel of `max_pixels` for WebP (the worst format; ~640 MB
    at 40 MP), 8 for PNG, 1 for JPEG (decoded at reduced scale), so an ingress replica's memory is
    bounded by about its base + this × that + `max_inflight_requests` × `max_body_bytes`."""
    max_inflight_requests: int = bounded(48, ge=1)
    """Image requests one ingress replica holds at once (reading, decoding, waiting on the model or
    the mesher); more are refused at once with 503 JSON and `Retry-After`. Below
    `ingress.max_ongoing_requests`, so the ingress refuses them (Serve's own refusal is plain text)."""
    retry_after_s: int = bounded(5, ge=0)
    """`Retry-After` seconds sent with every 503 of load shedding."""
    max_header_count: int = bounded(64, ge=8)
    """Request headers accepted (431 JSON above it, before the body is read)."""
    max_header_bytes: int = bounded(16_384, ge=1024)
    """Total size of the request headers' names and values accepted (431 JSON above it)."""
    api_docs: bool = False
    """Serve FastAPI's `/docs` and `/openapi.json` (the docs page loads its script from a CDN, so
    off by default: the endpoint then makes no page fetch anything from outside)."""
    max_mesh_resolution: int = bounded(384, ge=8, le=1024)
    """Largest `mesh_resolution` a request may ask for (marching-cubes cost grows with its cube)."""
    request_timeout_s: float = bounded(300.0, gt=0)
    """End-to-end limit of one request (504 after it, with a JSON error)."""
    triplane_cache_entries: int = bounded(64, ge=0)
    """Triplanes kept per ingress replica, keyed by image hash, so a turntable after a mesh of the
    same image skips the model (0 disables the cache)."""
    health_check_period_s: float = bounded(10.0, gt=0)
    """How often Serve checks each model replica (a tiny forward pass on a fixed image)."""
    health_check_timeout_s: float = bounded(60.0, gt=0)
    """A replica whose health check takes longer is considered unhealthy and replaced."""
    host: str = "127.0.0.1"
    """HTTP host of `vf3d serve` (0.0.0.0 to listen on every interface)."""
    port: int = bounded(8000, ge=1, le=65535)
    """HTTP port of `vf3d serve`."""

    def rules(self, at: FieldPath) -> list[tuple[bool, str]]:
        return [
            # A replica that accepts fewer requests than a batch holds can never fill a batch.
            (self.model.max_ongoing_requests >= self.max_batch_size, f"{at.model.max_ongoing_requests} must be >= {at.max_batch_size}"),
            (
                self.max_inflight_requests < self.ingress.max_ongoing_requests,
                f"{at.max_inflight_requests} must be >= 1 and < {at.ingress.max_ongoing_requests}",
            ),
            (
                self.inference.mesh_resolution <= self.max_mesh_resolution,
                f"{at.inference.mesh_resolution} must be <= {at.max_mesh_resolution}",
            ),
        ]


def _serve_debug() -> ServeConfig:
    # One small replica of each deployment on a laptop's CPU; fractional CPUs so all three fit
    # on 2 cores next to Serve's controller and proxy. "auto" iso: debug models are often random.
    inference = InferenceConfig(mesh_resolution=64, mesh_iso="auto", turntable_views=16, turntable_fps=8, mask_method="estimate")
    return ServeConfig(
        inference=inference,
        ingress=ReplicaConfig(num_cpus=0.25, max_ongoing_requests=32, target_ongoing_requests=16.0, max_queued_requests=64),
        model=ReplicaConfig(num_cpus=0.5, max_ongoing_requests=8, target_ongoing_requests=4.0, max_queued_requests=32),
        mesh=ReplicaConfig(num_cpus=0.5, max_ongoing_requests=4, target_ongoing_requests=2.0, max_queued_requests=32),
        max_concurrent_decodes=1,
        max_inflight_requests=24,
        max_batch_size=4,
        max_body_bytes=8_000_000,
        max_mesh_resolution=128,
        request_timeout_s=120.0,
        triplane_cache_entries=16,
    )


def _serve_cluster(model: str) -> ServeConfig:
    # GPU model replicas autoscale 1 → 8 (one GPU each); mesh replicas on CPU workers.
    return ServeConfig(inference=INFERENCE_PRESETS[model](), host="0.0.0.0")


SERVE_PRESETS = {
    "debug": _serve_debug,
    "base": lambda: _serve_cluster("base"),
    "vfusion3d": lambda: _serve_cluster("vfusion3d"),
}


# ---------------------------------------------------------------------------------------------
# evaluate: novel-view, CLIP and geometry metrics of reconstructors on held-out orbits
# ---------------------------------------------------------------------------------------------


@dataclass
class EvalClipConfig(ConfigBase):
    """CLIP image/text similarity (open_clip); weights come from a local path, never a hub."""

    enabled: bool = True
    """Compute CLIP similarities (false skips them: no weights needed)."""
    model: str = "ViT-B-32"
    """open_clip architecture name of the weights (e.g. "ViT-B-32-quickgelu" for OpenAI's
    ViT-B/32, "ViT-L-14"); ignored when `weights_path` is a directory with open_clip_config.json."""
    weights_path: str | None = None
    """Local open_clip weights: a checkpoint file (.safetensors/.bin/.pt/.pth) for `model`, or a
    directory holding open_clip_config.json and its weights (the hub layout, downloaded once)."""
    allow_random: bool = False
    """Without `weights_path`, build `model` with random weights (tests only: the similarities
    are then meaningless, and the report says so in bold)."""
    batch_size: int = bounded(32, ge=1)
    """Images per CLIP forward pass."""


@dataclass
class EvalLpipsConfig(ConfigBase):
    """LPIPS of predicted vs true views (the metric usually uses AlexNet features)."""

    net: LpipsNet = "alex"
    """Backbone: "alex" (the LPIPS paper's metric), "vgg" or "squeeze"."""
    backbone_path: str | None = None
    """Local torchvision state dict of that backbone (alexnet/vgg16/squeezenet1_1 weights, .pth
    or .safetensors). Required unless `random_backbone`."""
    random_backbone: bool = False
    """Use a random backbone (tests only: LPIPS is then not perceptual; the report says so)."""


@dataclass
class EvalGeometryConfig(ConfigBase):
    """Chamfer distance and F-score between the extracted mesh and the true asset mesh."""

    enabled: bool = True
    """Compute geometry metrics for orbits whose `asset` is found under `--assets`."""
    num_points: int = bounded(100_000, ge=100)
    """Points sampled (area-uniformly, seeded) on each surface."""
    fscore_threshold: float = bounded(0.05, gt=0)
    """Distance τ (world units; the asset fits in a sphere of radius 1 − margin = 0.8, inside the
    [−1, 1]³ box) under which a point counts as matched, for precision, recall and F-score."""
    alignment: Literal["none", "bbox"] = "none"
    """"none" (compare in the asset's frame, as reconstructed) or "bbox" (first move and uniformly
    scale the predicted mesh so its bounding box has the true one's centre and diagonal)."""


@dataclass
class EvaluateConfig(ConfigBase):
    """`vf3d evaluate`: reconstruct each held-out orbit from its view 0 and score the result."""

    num_views: int = bounded(8, ge=1)
    """Novel views per object, spread evenly around the orbit (view 0, the input, excluded)."""
    resolution: int | None = bounded(None, ge=16, le=4096)
    """Side of the compared views in pixels (true views are resized to it; SSIM needs at least 11);
    None = the orbit's."""
    limit: int | None = bounded(None, ge=1)
    """Evaluate at most this many orbits (the first ones by id, or by the order of `--ids`)."""
    figure_objects: int = bounded(8, ge=0)
    """Objects drawn in the view grids and the per-object bar chart (the first ones)."""
    seed: int = 0
    """Seed of the surface point sampling."""
    clip: EvalClipConfig = field(default_factory=EvalClipConfig)
    lpips: EvalLpipsConfig = field(default_factory=EvalLpipsConfig)
    geometry: EvalGeometryConfig = field(default_factory=EvalGeometryConfig)
    inference: InferenceConfig = field(default_factory=lambda: InferenceConfig(mesh_resolution=256))
    """Device, dtype (bf16 autocast on CUDA), mesh resolution and iso of the reconstruction."""


def _evaluate_debug() -> EvaluateConfig:
    # Seconds on a CPU: random CLIP and LPIPS backbones (flagged in the report), few small views,
    # few points, a coarse mesh at Otsu's iso (debug models are often random).
    return EvaluateConfig(
        num_views=4,
        resolution=32,
        figure_objects=4,
        clip=EvalClipConfig(model="ViT-S-32", allow_random=True, batch_size=16),
        lpips=EvalLpipsConfig(net="squeeze", random_backbone=True),
        geometry=EvalGeometryConfig(num_points=4000),
        inference=InferenceConfig(mesh_resolution=48, mesh_iso="auto"),
    )


EVALUATE_PRESETS = {
    "debug": _evaluate_debug,
    "full": EvaluateConfig,
}


# ---------------------------------------------------------------------------------------------
# Generic (de)serialisation with unknown-key rejection
# ---------------------------------------------------------------------------------------------


def preset(kind: dict[str, Any], name: str) -> Any:
    """Build preset `name` from a preset table, with an error listing the valid names."""
    if name not in kind:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(kind)}")
    return kind[name]()


def to_dict(config: Any) -> dict[str, Any]:
    """Dataclass → plain JSON/YAML-ready dict (nested)."""
    return dataclasses.asdict(config)


def _describe(annotation: Any) -> str:
    """How a type reads in messages: `float | Literal["auto"] | None` → "a number, 'auto' or null"."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = ", ".join(repr(choice) for choice in typing.get_args(annotation))
        return choices if len(typing.get_args(annotation)) == 1 else f"one of {choices}"
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(option) for option in typing.get_args(annotation)]
        return f"{', '.join(parts[:-1])} or {parts[-1]}"
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", type(None): "null", list: "a list"}
    return names.get(origin or annotation, "a mapping" if dataclasses.is_dataclass(annotation) else str(annotation))


def _coerce(value: Any, annotation: Any, path: str, note: str = "") -> Any:
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return from_dict(annotation, value, path)
    if origin is Literal:
        if not any(value == choice and type(value) is type(choice) for choice in typing.get_args(annotation)):
            raise ConfigError(f"{path}: expected {_describe(annotation)}, got {value!r}" + (f" ({note})" if note else ""))
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, path, note)
            except ConfigError as error:
                errors.append(str(error))
        if any(dataclasses.is_dataclass(option) or typing.get_origin(option) in (list, tuple) for option in options):
            raise ConfigError(errors[0])  # a structured alternative: its own message names the bad item
        raise ConfigError(f"{path}: expected {_describe(annotation)}, got {value!r}" + (f" ({note})" if note else ""))
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        items = [_coerce(item, item_type, f"{path}[{i}]") for i, item in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], path: str = "") -> T:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys and wrong types."""
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}

    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in {path}" if path else ""
        raise ConfigError(f"unknown key(s){where}: {', '.join(unknown)} (valid: {', '.join(sorted(names))})")
    notes = {spec.name: spec.metadata.get("note", "") for spec in dataclasses.fields(cls)}
    kwargs = {name: _coerce(value, hints[name], _join(path, name), notes[name]) for name, value in data.items()}
    return cls(**kwargs)


def merge(config: T, overrides: dict[str, Any]) -> T:
    """Return a copy of `config` with a nested dict of overrides applied (validated like a file)."""
    merged = _deep_update(to_dict(config), overrides)
    return from_dict(type(config), merged)


def _deep_update(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
    return base


def load_overrides(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict, with a clear error for bad files."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as error:  # both json and yaml raise their own types
        raise ConfigError(f"cannot parse {path}: {str(error).splitlines()[0]}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def resolve(presets: dict[str, Any], name: str, config_file: str | Path | None = None) -> Any:
    """Preset `name`, overridden by `config_file` when given, validated."""
    config = preset(presets, name)
    if config_file is not None:
        overrides = load_overrides(config_file)
        try:
            config = merge(config, overrides)
        except ConfigError as error:
            raise ConfigError(f"{config_file}: {error}") from None
    return config.validate() if hasattr(config, "validate") else config


def save_json(config: Any, path: str | Path) -> None:
    """Write a config as indented JSON (what stages write next to their outputs), atomically: a
    rerun that rewrites it never leaves half a config for the next resume to trip over."""
    from vf3d.atomic import write_json_atomic

    write_json_atomic(path, to_dict(config))
