"""Configs of the image→triplane reconstructor (encoder, transformer, triplane, decoder, renderer)
and of inference with it (image → mesh and turntable), with their presets.

Import-light like every config module: standard library and `vf3d.config` only, so a CLI, a Ray
job driver or a Serve ingress replica can read them without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from vf3d.config import ConfigBase, FieldPath, bounded


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
    """Transformers directory holding pretrained DINOv2 weights to start from, a local path or an
    s3:// / gs:// URI (downloaded once per process; training only: a saved reconstructor directory
    always carries its own encoder weights)."""

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
    skip_empty_space: bool = False
    """Fast path (inference only; training keeps the exact path, which needs every sample's gradient):
    query the field only at samples inside an occupancy grid derived from the field, stop each ray once
    its transmittance falls below `termination_transmittance`, and run the importance pass only on rays
    whose coarse pass found mass. Sample depths are the exact path's, so images match it up to the
    skipped density (< `occupancy_threshold`) and transmittance; False renders every sample (the exact
    path, the reference in tests)."""
    occupancy_resolution: int = bounded(64, ge=16)
    """Cells per axis of the fast path's occupancy grid over the box (rounded up to 16·2^k; built coarse
    to fine from 16³, so only cells near the occupied region's boundary cost queries)."""
    occupancy_threshold: float = bounded(1e-3, gt=0)
    """Density below which a cell (the max over its corners, then dilated by a cell) counts as empty."""
    termination_transmittance: float = bounded(1e-3, ge=0)
    """A ray stops being sampled once its transmittance is below this (0 disables early termination);
    what it leaves out changes a pixel by at most this, under half an 8-bit level."""
    march_segment: int = bounded(4, ge=1)
    """Samples per ray the fast path queries between transmittance checks, counted among the samples
    it needs (smaller: fewer samples behind surfaces, more, smaller steps)."""
    fast_ray_chunk_size: int = bounded(65536, ge=0)
    """Rays per object the fast path handles at once (0 = all); the decoder still sees at most
    `ray_chunk_size` × `num_coarse_samples` points per call, so memory stays bounded."""


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
    mesh_resolution: int = bounded(384, ge=8, le=1024)
    """Marching-cubes grid per axis this model's meshes are made at unless told otherwise (the
    inference config's `mesh_resolution: null`): finer than the triplanes resolve gains nothing.
    The turntable's recommended size is `renderer.render_size`."""


def _reconstructor_debug() -> ReconstructorConfig:
    return ReconstructorConfig(
        encoder=EncoderConfig(hidden_size=32, num_layers=2, num_heads=2, patch_size=8, image_size=64, position_image_size=64),
        transformer=TransformerConfig(width=64, num_layers=2, num_heads=4, camera_embed_dim=64),
        triplane=TriplaneConfig(token_resolution=8, channels=16),
        decoder=DecoderConfig(hidden_width=32),
        renderer=RendererConfig(num_coarse_samples=16, num_fine_samples=16, render_size=32, ray_chunk_size=4096),
        mesh_resolution=64,
    )


def _reconstructor_small() -> ReconstructorConfig:
    return ReconstructorConfig(
        encoder=EncoderConfig(hidden_size=384, num_layers=12, num_heads=6, image_size=224, position_image_size=518),
        transformer=TransformerConfig(width=512, num_layers=8, num_heads=8, camera_embed_dim=512),
        triplane=TriplaneConfig(token_resolution=16, channels=40),
        decoder=DecoderConfig(hidden_width=64),
        renderer=RendererConfig(num_coarse_samples=48, num_fine_samples=48, render_size=128),
        mesh_resolution=128,
    )


def _reconstructor_base() -> ReconstructorConfig:
    return ReconstructorConfig(
        encoder=EncoderConfig(hidden_size=768, num_layers=12, num_heads=12, image_size=336, position_image_size=518),
        transformer=TransformerConfig(width=768, num_layers=12, num_heads=12, camera_embed_dim=768),
        triplane=TriplaneConfig(token_resolution=32, channels=48),
        decoder=DecoderConfig(hidden_width=64),
        renderer=RendererConfig(num_coarse_samples=64, num_fine_samples=64, render_size=384),
        mesh_resolution=256,
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
    mesh_resolution: int | None = bounded(None, ge=8, le=1024)
    """Density grid samples per axis for marching cubes; None: the model's (ReconstructorConfig.mesh_resolution)."""
    mesh_method: Literal["surface", "coarse_to_fine", "dense"] = "surface"
    """"surface" (seeded by the renderer's occupancy grid, refined level by level on the model's device,
    querying only cells near the surface), "coarse_to_fine" (a coarse grid, then the full grid within a
    coarse cell of the surface) or "dense" (every grid point; what `exact` uses)."""
    mesh_iso: float | Literal["auto"] | None = None
    """Surface density level; None uses the model's `mesh_iso`; "auto" uses Otsu's threshold of
    the density (for untrained models or fields of unknown scale)."""
    turntable_views: int | None = bounded(None, ge=1)
    """Frames in the turntable video (one full revolution); None: 160 (the release's) on a GPU,
    `cpu_turntable_views` on the CPU."""
    turntable_size: int | None = bounded(None, ge=1)
    """Side of turntable frames; None: the model's render size (`renderer.render_size`), on the CPU at
    most `cpu_turntable_size`."""
    cpu_turntable_views: int = bounded(40, ge=1)
    """Turntable frames on the CPU when `turntable_views` is None."""
    cpu_turntable_size: int = bounded(160, ge=1)
    """Largest turntable side on the CPU when `turntable_size` is None: with these two defaults the
    release-size model's turntable takes about a minute on a 2-core CPU, a twentieth of what 160
    views at 384² take (bench/recon.py --sections default_turntable)."""
    turntable_fps: int | None = bounded(None, ge=1)
    """Frames per second of the turntable MP4; None: one revolution in `TURNTABLE_SECONDS` (the
    release's 160 frames at 40 fps)."""
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
    exact: bool = False
    """Render every ray sample and query the dense mesh grid (the reference paths). False uses the
    renderer's fast path (empty-space skipping, early ray termination; RendererConfig.skip_empty_space)
    and surface-only meshing, which match the exact paths within their tolerances."""
    turntable_views_per_call: int = bounded(32, ge=1)
    """Turntable views rendered per renderer call; the renderer's ray chunks bound memory within it."""

    def for_model(self, model: ReconstructorConfig, device_type: str) -> InferenceConfig:
        """This config with every "follow the model and the device" field (None) filled in: the
        model's recommended mesh resolution and render size, and on the CPU ("cpu") a turntable
        that finishes in about a minute (see `cpu_turntable_views`, `cpu_turntable_size`)."""
        on_cpu = device_type == "cpu"
        size = self.turntable_size
        if size is None:
            size = min(model.renderer.render_size, self.cpu_turntable_size) if on_cpu else model.renderer.render_size
        views = self.turntable_views
        if views is None:
            views = self.cpu_turntable_views if on_cpu else GPU_TURNTABLE_VIEWS
        return replace(
            self,
            mesh_resolution=self.mesh_resolution or model.mesh_resolution,
            turntable_views=views,
            turntable_size=size,
            turntable_fps=self.frame_rate(views),
        ).validate()

    def frame_rate(self, views: int) -> int:
        """Frames per second of a turntable of `views` frames: `turntable_fps`, or when unset one
        revolution in TURNTABLE_SECONDS."""
        return self.turntable_fps or max(1, round(views / TURNTABLE_SECONDS))


GPU_TURNTABLE_VIEWS = 160
"""Turntable frames on a GPU when not set: the released code's video (docs/vfusion3d.md#meshes-and-turntables)."""
TURNTABLE_SECONDS = 4.0
"""Length of one revolution when the frame rate is not set (the release's 160 frames at 40 fps)."""


INFERENCE_PRESETS = {
    # The model's recommended mesh resolution and render size; on the CPU a shorter, smaller turntable.
    "auto": lambda: InferenceConfig(),
    "debug": lambda: InferenceConfig(mesh_resolution=64, turntable_views=16, turntable_fps=8),
    "small": lambda: InferenceConfig(mesh_resolution=128, turntable_views=60, turntable_fps=20),
    "base": lambda: InferenceConfig(mesh_resolution=256, turntable_views=GPU_TURNTABLE_VIEWS),
    "vfusion3d": lambda: InferenceConfig(mesh_resolution=384, turntable_views=GPU_TURNTABLE_VIEWS),
}
