"""Typed, import-light configuration for every vf3d component, with named presets.

Configs are plain dataclasses: one docstring-style comment per field, no arithmetic in YAML,
unknown keys rejected with the full dotted path of the bad key. Presets are functions so each
call returns a fresh, independent object. `debug` comes first and runs in seconds on a CPU.

This module imports only the standard library (and PyYAML lazily), so `vf3d --help`, Ray job
drivers and Serve ingress replicas can read configs without importing torch.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or file is invalid; the message names the offending key."""


def _raise_first_failure(checks: list[tuple[bool, str]]) -> None:
    """Raise ConfigError with the message of the first (condition, message) pair that fails."""
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


# ---------------------------------------------------------------------------------------------
# Reconstructor architecture
# ---------------------------------------------------------------------------------------------


@dataclass
class EncoderConfig:
    """DINOv2 image encoder (transformers `Dinov2Model`, or `Dinov2WithRegistersModel`)."""

    hidden_size: int = 768
    """Token width of the encoder (768 for ViT-B/14)."""
    num_layers: int = 12
    """Number of ViT blocks."""
    num_heads: int = 12
    """Attention heads per block."""
    mlp_ratio: int = 4
    """MLP hidden width as a multiple of `hidden_size`."""
    patch_size: int = 14
    """Side of the square image patches, in pixels."""
    image_size: int = 512
    """Side of the square input image the reconstructor is fed (the release uses 512)."""
    position_image_size: int = 518
    """Image size the position embeddings were trained at (518 = 37 patches for DINOv2); inputs of
    other sizes interpolate them, exactly as transformers does for the released checkpoint."""
    position_interpolation: str = "size"
    """How position embeddings are resized to other input sizes: "size" (transformers >= 4.46:
    resample the grid to the new patch count) or "scale_factor" (transformers <= 4.45 and the
    original DINOv2: resample by (patches + 0.1) / grid side, which samples the grid at slightly
    different places). The released VFusion3D weights were trained with "scale_factor"."""
    num_register_tokens: int = 0
    """DINOv2 register tokens (0 for VFusion3D, 4 for OpenLRM v1.1)."""
    normalize_input: bool = True
    """Apply ImageNet mean/std to [0,1] inputs (VFusion3D); OpenLRM feeds raw [0,1] pixels."""
    pretrained_path: str | None = None
    """Local transformers directory holding pretrained DINOv2 weights to start from (training
    only; a saved reconstructor directory always carries its own encoder weights)."""


@dataclass
class TransformerConfig:
    """Triplane transformer: learned triplane queries cross-attend to image tokens."""

    width: int = 1024
    """Token width of the triplane queries."""
    num_layers: int = 16
    """Number of (cross-attention, self-attention, MLP) blocks."""
    num_heads: int = 16
    """Attention heads in both attention layers."""
    mlp_ratio: float = 4.0
    """MLP hidden width as a multiple of `width`."""
    camera_embed_dim: int = 1024
    """Width of the source-camera embedding that modulates every LayerNorm."""
    attention_backend: str = "auto"
    """"sdpa" (torch scaled_dot_product_attention), "xformers" (memory-efficient attention, needs
    the `gpu` extra and a CUDA device) or "auto" (xformers on CUDA when installed, else sdpa)."""
    gradient_checkpointing: bool = False
    """Recompute each block in the backward pass instead of storing its activations."""


@dataclass
class TriplaneConfig:
    """Triplane feature volume produced by the transformer and the shared deconv upsampler."""

    token_resolution: int = 32
    """Side of each plane's token grid in the transformer (3 × side² queries)."""
    upsample_factor: int = 2
    """ConvTranspose2d stride (and kernel) applied to every plane."""
    channels: int = 80
    """Feature channels per plane after upsampling (the decoder sees 3 × channels)."""

    @property
    def resolution(self) -> int:
        """Side of each plane after upsampling."""
        return self.token_resolution * self.upsample_factor


@dataclass
class DecoderConfig:
    """MLP mapping concatenated triplane features to (raw density, rgb); no view direction."""

    hidden_width: int = 64
    """Width of the hidden layers."""
    num_layers: int = 4
    """Number of Linear layers (ReLU between them); the last one outputs 4 values."""


@dataclass
class RendererConfig:
    """Parameter-free volume renderer over the [-1,1]³ box."""

    num_coarse_samples: int = 64
    """Stratified samples per ray."""
    num_fine_samples: int = 64
    """Importance samples per ray, drawn from the coarse weights (0 disables the fine pass)."""
    render_size: int = 384
    """Default side of rendered views at inference."""
    ray_chunk_size: int = 8192
    """Rays per object rendered at once; bounds memory whatever the image size (0 = no chunking)."""
    box_half_size: float = 1.0
    """Half the side of the cube the object lives in; rays are clipped to it."""


@dataclass
class ReconstructorConfig:
    """The whole image→triplane→NeRF reconstructor (VFusion3D / LRM architecture)."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    triplane: TriplaneConfig = field(default_factory=TriplaneConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    renderer: RendererConfig = field(default_factory=RendererConfig)
    source_camera_distance: float = 1.0
    """Translation of the canonical source camera in the 16-D conditioning vector (the release
    uses 1.0 although render cameras sit at 1.5; OpenLRM uses 2.0). Keep it as trained."""
    mesh_iso: float = 1.0
    """Density level of the extracted surface (1.0 for VFusion3D, 3.0 for OpenLRM)."""

    def validate(self) -> "ReconstructorConfig":
        """Check cross-field constraints; returns self so calls chain."""
        checks = [
            (self.encoder.hidden_size % self.encoder.num_heads == 0, "encoder.hidden_size must be divisible by encoder.num_heads"),
            (self.transformer.width % self.transformer.num_heads == 0, "transformer.width must be divisible by transformer.num_heads"),
            (self.encoder.image_size >= self.encoder.patch_size, "encoder.image_size must be at least encoder.patch_size"),
            (self.encoder.position_interpolation in ("size", "scale_factor"), "encoder.position_interpolation must be size or scale_factor"),
            (self.transformer.attention_backend in ("auto", "sdpa", "xformers"), "transformer.attention_backend must be auto, sdpa or xformers"),
            (self.decoder.num_layers >= 2, "decoder.num_layers must be at least 2"),
            (self.renderer.num_coarse_samples >= 2, "renderer.num_coarse_samples must be at least 2"),
            (self.renderer.num_fine_samples >= 0, "renderer.num_fine_samples must be >= 0"),
            (self.renderer.ray_chunk_size >= 0, "renderer.ray_chunk_size must be >= 0"),
        ]
        _raise_first_failure(checks)
        return self


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
    # trained with the older position-embedding interpolation.
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


@dataclass
class InferenceConfig:
    """Settings of `vf3d image-to-3d` and the endpoint (the model's own config stays in its dir)."""

    foreground_ratio: float = 0.8
    """Longer side of the foreground box as a fraction of the square input canvas."""
    mask_method: str = "auto"
    """Foreground mask when the image has no alpha: "auto" (rembg if installed, else an offline
    background estimate), "rembg", "estimate" or "none" (use the whole image)."""
    preprocessing: str = "vf3d"
    """How the photo is framed: "vf3d" (mask box at `foreground_ratio`, antialiased resize) or
    "release" (the released VFusion3D code's framing and rembg model, for comparing with it;
    see vf3d.preprocess.release_framing)."""
    mesh_resolution: int = 256
    """Density grid samples per axis for marching cubes."""
    mesh_method: str = "coarse_to_fine"
    """"coarse_to_fine" (query the full grid only near the surface) or "dense"."""
    mesh_iso: float | str | None = None
    """Surface density level; None uses the model's `mesh_iso`; "auto" uses Otsu's threshold of
    the density (for untrained models or fields of unknown scale)."""
    turntable_views: int = 160
    """Frames in the turntable video (one full revolution)."""
    turntable_size: int | None = None
    """Side of turntable frames; None uses the model's render size."""
    turntable_fps: int = 40
    """Frames per second of the turntable MP4."""
    turntable_radius: float = 1.5
    """Distance of the turntable cameras from the origin."""
    turntable_elevation_deg: float = 0.0
    """Elevation of the turntable cameras."""
    seed: int = 0
    """Seed of the renderer's random sampling (ignored when `deterministic`)."""
    deterministic: bool = True
    """Render without jitter (bit-identical outputs for the same input)."""
    device: str = "auto"
    """"auto" (CUDA when available), "cpu" or "cuda[:N]"."""
    dtype: str = "auto"
    """Autocast dtype on CUDA: "auto" (bf16 when supported), "bf16", "fp16" or "fp32"."""

    def validate(self) -> "InferenceConfig":
        """Check value ranges; returns self so calls chain."""
        if not 0 < self.foreground_ratio <= 1:
            raise ConfigError("foreground_ratio must be in (0, 1]")
        if self.mask_method not in ("auto", "rembg", "estimate", "none"):
            raise ConfigError("mask_method must be auto, rembg, estimate or none")
        if self.preprocessing not in ("vf3d", "release"):
            raise ConfigError("preprocessing must be vf3d or release")
        if not 8 <= self.mesh_resolution <= 1024:
            raise ConfigError("mesh_resolution must be between 8 and 1024")
        if self.mesh_method not in ("coarse_to_fine", "dense"):
            raise ConfigError("mesh_method must be coarse_to_fine or dense")
        if self.turntable_views < 1 or self.turntable_fps < 1:
            raise ConfigError("turntable_views and turntable_fps must be >= 1")
        if isinstance(self.mesh_iso, str) and self.mesh_iso != "auto":
            raise ConfigError("mesh_iso must be a number, \"auto\" or null")
        if self.dtype not in ("auto", "bf16", "fp16", "fp32"):
            raise ConfigError("dtype must be auto, bf16, fp16 or fp32")
        return self


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
class OrbitRenderConfig:
    """How one asset becomes an orbit: normalisation, cameras and image size."""

    num_views: int = 16
    """Orbit frames at uniform azimuth 360°·i/V (view 0 on the +X axis)."""
    resolution: int = 256
    """Side of the square frames in pixels."""
    elevation_range_deg: list[float] = field(default_factory=lambda: [0.0, 45.0])
    """[min, max] elevation in degrees; each asset gets one elevation drawn uniformly (seeded by its id)."""
    radius: float = 1.5
    """Distance of the cameras from the origin (the turntable radius of cameras.py)."""
    focal: float = 0.75
    """Normalised focal length fx/W = fy/H (0.75 ↔ 67.4° field of view, the release's)."""
    margin: float = 0.2
    """The asset is centred on its bounding box and scaled so its farthest vertex lies at radius
    1 − margin: inside the reconstructor's [−1, 1]³ cube and inside every view's frame."""
    num_random_views: int = 0
    """Extra views per asset at random positions on the sphere (reconstructor supervision)."""
    random_elevation_range_deg: list[float] = field(default_factory=lambda: [-30.0, 60.0])
    """[min, max] elevation of the extra random views."""
    ambient: float = 0.35
    """Ambient light level; the rest is a Lambertian light from the camera (shows shape)."""

    def validate(self) -> "OrbitRenderConfig":
        """Check value ranges; returns self so calls chain."""
        low, high = (self.elevation_range_deg + [None, None])[:2]
        if len(self.elevation_range_deg) != 2 or not -90 < low <= high < 90:
            raise ConfigError("elevation_range_deg must be [min, max] with -90 < min <= max < 90")
        if len(self.random_elevation_range_deg) != 2 or self.random_elevation_range_deg[0] > self.random_elevation_range_deg[1]:
            raise ConfigError("random_elevation_range_deg must be [min, max]")
        if self.num_views < 1 or self.num_random_views < 0:
            raise ConfigError("num_views must be >= 1 and num_random_views >= 0")
        if not 16 <= self.resolution <= 4096:
            raise ConfigError("resolution must be between 16 and 4096")
        if not 0 <= self.margin < 1 or self.focal <= 0 or self.radius <= 1:
            raise ConfigError("margin must be in [0, 1), focal > 0 and radius > 1 (cameras outside the cube)")
        return self


@dataclass
class ActorPoolConfig:
    """An elastic Ray Data actor pool (`ActorPoolStrategy`) and what each actor asks for."""

    min_actors: int = 1
    """Actors kept alive even when idle (Ray Data needs at least 1)."""
    max_actors: int = 4
    """Upper bound the pool (and a cluster autoscaler behind it) grows to while work is queued."""
    initial_actors: int | None = None
    """Actors started up front (defaults to min_actors)."""
    num_cpus: float = 1.0
    """CPUs reserved per actor (fractional on small machines, so read/write tasks still run)."""
    num_gpus: float = 0.0
    """GPUs per actor (0 for CPU rendering; EGL uses the GPU when one is assigned)."""
    batch_size: int = 4
    """Items per call of the stage."""

    def validate(self) -> "ActorPoolConfig":
        """Check value ranges; returns self so calls chain."""
        initial = self.min_actors if self.initial_actors is None else self.initial_actors
        if not 1 <= self.min_actors <= initial <= self.max_actors:
            raise ConfigError("actor pool sizes must satisfy 1 <= min_actors <= initial_actors <= max_actors")
        if self.batch_size < 1 or self.num_cpus < 0 or self.num_gpus < 0:
            raise ConfigError("batch_size must be >= 1 and resources >= 0")
        return self


@dataclass
class WriterPoolConfig:
    """The pool of shard-writer actors (Ray Data `ActorPoolStrategy`; each writes whole shards,
    named by the ids they hold, so writers never collide and a retried write is idempotent)."""

    min_actors: int = 1
    """Writers kept alive even when idle."""
    max_actors: int = 4
    """Writers the pool grows to while written batches queue up (one writer takes ~25 rows/s)."""
    num_cpus: float = 0.5
    """CPUs reserved per writer (Parquet zstd compression and the storage client)."""

    def validate(self) -> "WriterPoolConfig":
        """Check value ranges; returns self so calls chain."""
        if not 1 <= self.min_actors <= self.max_actors or self.num_cpus < 0:
            raise ConfigError("writer_pool must satisfy 1 <= min_actors <= max_actors and num_cpus >= 0")
        return self


@dataclass
class StageFailureConfig:
    """How Ray Data stages recover from infrastructure failures (vf3d.synthesis.failures): CUDA,
    NCCL or ECC errors, GPU out-of-memory and storage OSErrors are retried, never written as a
    row's error; input errors stay permanent error rows."""

    max_batch_retries: int = 3
    """Retries of a batch whose stage raised an infrastructure error or whose actor died (Ray's
    `max_task_retries`; Ray Data's default, unbounded, retries a batch that kills its actor forever)."""
    max_actor_restarts: int = 3
    """Restarts of one actor (Ray's `max_restarts`); the pool replaces an actor past them."""
    max_consecutive_failures: int = 2
    """An actor whose batches fail this many times in a row with infrastructure errors exits, so
    that Ray restarts it on a fresh process and CUDA context (a sick GPU stops eating batches)."""
    max_errored_blocks: int = 8
    """Error budget: blocks Ray Data may give up on (retries exhausted, or a non-input bug) before
    the run fails; their ids get no output and a rerun retries them (DataContext.max_errored_blocks;
    -1 = unlimited, 0 = the first one fails the run)."""

    def validate(self) -> "StageFailureConfig":
        """Check value ranges; returns self so calls chain."""
        if self.max_batch_retries < 0 or self.max_actor_restarts < 0 or self.max_consecutive_failures < 1 or self.max_errored_blocks < -1:
            raise ConfigError("failures: max_batch_retries and max_actor_restarts must be >= 0, max_consecutive_failures >= 1, max_errored_blocks >= -1")
        return self


@dataclass
class LeaseConfig:
    """The output-directory lease (vf3d.synthesis.lease): one run per `--out` at a time."""

    heartbeat_seconds: float = 30.0
    """How often the running driver rewrites its lease's heartbeat."""
    stale_after_seconds: float = 300.0
    """A lease held from another host whose heartbeat is older than this is taken over (its run is
    presumed dead). On the same host the holder's pid decides, whatever the heartbeat. Keep it
    well above heartbeat_seconds plus the clock skew between hosts."""

    def validate(self) -> "LeaseConfig":
        """Check value ranges; returns self so calls chain."""
        if not 0 < self.heartbeat_seconds < self.stale_after_seconds:
            raise ConfigError("lease: need 0 < heartbeat_seconds < stale_after_seconds")
        return self


@dataclass
class RenderAssetsConfig:
    """The `render-assets` job: orbit rendering plus the Ray Data pool that runs it."""

    render: OrbitRenderConfig = field(default_factory=OrbitRenderConfig)
    pool: ActorPoolConfig = field(default_factory=ActorPoolConfig)
    rows_per_shard: int = 64
    writer_pool: WriterPoolConfig = field(default_factory=WriterPoolConfig)
    """Shard writers (a pool: one writer for a whole cluster caps the job at its write rate)."""
    failures: StageFailureConfig = field(default_factory=StageFailureConfig)
    """Retries of infrastructure failures and the run's error budget."""
    """Orbits per Parquet file (one file per batch of finished assets)."""
    extensions: list[str] = field(default_factory=lambda: [".glb", ".gltf", ".obj", ".ply", ".stl", ".off"])
    """Files under --assets with these suffixes are assets; everything else is ignored."""
    retry_errors: bool = False
    """On a rerun, try assets that failed before again (by default a failure is final)."""
    seed: int = 0
    """Mixed with each asset's id to draw its elevation and random views (reruns are identical)."""
    lease: LeaseConfig = field(default_factory=LeaseConfig)
    """The `--out` lease: a second run on the same directory refuses while this one lives."""

    def validate(self) -> "RenderAssetsConfig":
        """Validate the nested configs; returns self so calls chain."""
        self.render.validate()
        self.lease.validate()
        self.pool.validate()
        self.writer_pool.validate()
        self.failures.validate()
        if self.rows_per_shard < 1:
            raise ConfigError("rows_per_shard must be >= 1")
        return self


RENDER_ASSETS_PRESETS = {
    "debug": lambda: RenderAssetsConfig(
        render=OrbitRenderConfig(num_views=16, resolution=64),
        pool=ActorPoolConfig(min_actors=1, max_actors=2, num_cpus=0.5, batch_size=2),
        writer_pool=WriterPoolConfig(min_actors=1, max_actors=2, num_cpus=0.25),
        rows_per_shard=8,
    ),
    "small": lambda: RenderAssetsConfig(render=OrbitRenderConfig(resolution=256), pool=ActorPoolConfig(max_actors=8)),
    "base": lambda: RenderAssetsConfig(render=OrbitRenderConfig(resolution=512, num_random_views=8), pool=ActorPoolConfig(min_actors=2, max_actors=64, batch_size=8)),
    "vfusion3d": lambda: RenderAssetsConfig(render=OrbitRenderConfig(resolution=512, num_random_views=8), pool=ActorPoolConfig(min_actors=4, max_actors=256, batch_size=8), rows_per_shard=128,
                                            writer_pool=WriterPoolConfig(min_actors=1, max_actors=16, num_cpus=1.0)),
}


# ---------------------------------------------------------------------------------------------
# Training (Ray Train + DeepSpeed harness shared by the video model and the reconstructor)
# ---------------------------------------------------------------------------------------------


@dataclass
class OptimizerConfig:
    """AdamW with decoupled weight decay (none on biases and norms), warm-up and a decay schedule."""

    lr: float = 1e-4
    """Peak learning rate, reached at the end of the warm-up."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """AdamW (beta1, beta2)."""
    weight_decay: float = 0.05
    """Decoupled weight decay of matrices; biases, norm weights and other 1-D parameters get none."""
    eps: float = 1e-8
    """AdamW denominator epsilon."""
    warmup_steps: int = 0
    """Optimizer steps of linear warm-up from lr/warmup_steps to lr."""
    schedule: str = "cosine"
    """After the warm-up: "cosine" (half-cosine from lr to lr·min_lr_ratio at run.max_steps) or
    "constant"."""
    min_lr_ratio: float = 0.1
    """Final learning rate of the cosine schedule as a fraction of lr."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables clipping)."""


@dataclass
class DeepSpeedConfig:
    """How DeepSpeed distributes and stores the optimizer state (ZeRO) and which precision it uses."""

    zero_stage: int = 2
    """ZeRO stage: 0 (plain data parallel), 2 (optimizer state and gradients sharded) or 3 (the
    parameters too, for models that do not fit one device)."""
    precision: str = "auto"
    """"auto" (bf16 on CUDA, fp32 on the CPU), "bf16" or "fp32"."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step (the loop calls backward/step this many times per step)."""
    offload_optimizer: bool = False
    """Keep the optimizer state in host memory (ZeRO-Offload; stages 2 and 3, GPU runs only: on the
    CPU it already lives there)."""


@dataclass
class ScalingSettings:
    """The Ray Train worker group: how many workers and what each one reserves."""

    num_workers: int = 2
    """Training workers (one process and one data-parallel rank each)."""
    use_gpu: bool | str = "auto"
    """true, false or "auto" (GPUs when the Ray cluster has any)."""
    cpus_per_worker: float = 0.5
    """CPUs reserved per worker; fractional so that Ray Data's read tasks still get a CPU on small
    machines (2 workers × 1 CPU hang a 2-CPU cluster fed by Ray Data). Raise it on GPU nodes."""
    gpus_per_worker: float = 1.0
    """GPUs reserved per worker when GPUs are used."""


@dataclass
class CheckpointSettings:
    """When checkpoints are written and how many are kept."""

    every_n_steps: int = 500
    """Write a checkpoint every this many optimizer steps (and always at the last step)."""
    keep_last: int = 2
    """Checkpoints kept in storage; older ones are deleted once a newer one is registered."""


@dataclass
class FaultInjection:
    """Kill one worker mid-run, once, to test recovery (tests and fire drills only)."""

    fail_at_step: int | None = None
    """Step at which the worker exits abruptly (os._exit(1)); None disables fault injection. Only
    the first time the run reaches it: a marker file in the run's storage directory records that
    the fault fired, so the restarted worker group carries on."""
    fail_rank: int = 0
    """World rank of the worker that exits."""


@dataclass
class RunSettings:
    """Identity, storage, failure policy and length of one training run."""

    name: str = "vf3d-train"
    """Run name; rerunning with the same name and storage_path resumes from its latest checkpoint."""
    storage_path: str | None = None
    """Directory or URI (s3://, gs://) holding the run's checkpoints; None uses Ray's default
    (~/ray_results). Multi-node clusters need shared storage here."""
    max_failures: int = 2
    """Worker-group restarts (from the latest checkpoint) before the run fails; -1 retries forever."""
    seed: int = 0
    """Seed of model initialisation and data order (each rank offsets it by its rank)."""
    log_every_n_steps: int = 10
    """Report metrics every this many optimizer steps."""
    batch_size: int = 8
    """Samples per worker per micro-batch (DeepSpeed's train_micro_batch_size_per_gpu)."""
    max_steps: int = 1000
    """Optimizer steps of the whole run (a resumed run continues up to this step)."""


@dataclass
class TrainingConfig:
    """Everything the shared training harness needs, apart from the model and its data."""

    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    scaling: ScalingSettings = field(default_factory=ScalingSettings)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    fault_injection: FaultInjection = field(default_factory=FaultInjection)
    run: RunSettings = field(default_factory=RunSettings)

    def validate(self) -> "TrainingConfig":
        """Check value ranges and cross-field constraints; returns self so calls chain."""
        optimizer, deepspeed, scaling, run = self.optimizer, self.deepspeed, self.scaling, self.run
        fail_at_step = self.fault_injection.fail_at_step
        checks = [
            (optimizer.lr > 0 and optimizer.eps > 0 and optimizer.weight_decay >= 0, "optimizer.lr and optimizer.eps must be > 0 and optimizer.weight_decay >= 0"),
            (len(optimizer.betas) == 2 and all(0 <= beta < 1 for beta in optimizer.betas), "optimizer.betas must be two numbers in [0, 1)"),
            (optimizer.warmup_steps >= 0 and optimizer.grad_clip >= 0, "optimizer.warmup_steps and optimizer.grad_clip must be >= 0"),
            (optimizer.schedule in ("cosine", "constant"), "optimizer.schedule must be cosine or constant"),
            (0 <= optimizer.min_lr_ratio <= 1, "optimizer.min_lr_ratio must be in [0, 1]"),
            (deepspeed.zero_stage in (0, 2, 3), "deepspeed.zero_stage must be 0, 2 or 3"),
            (deepspeed.precision in ("auto", "bf16", "fp32"), "deepspeed.precision must be auto, bf16 or fp32"),
            (deepspeed.gradient_accumulation_steps >= 1, "deepspeed.gradient_accumulation_steps must be >= 1"),
            (not deepspeed.offload_optimizer or deepspeed.zero_stage >= 2, "deepspeed.offload_optimizer needs zero_stage 2 or 3"),
            (scaling.num_workers >= 1, "scaling.num_workers must be >= 1"),
            (scaling.use_gpu in (True, False, "auto"), "scaling.use_gpu must be true, false or \"auto\""),
            (scaling.cpus_per_worker > 0 and scaling.gpus_per_worker > 0, "scaling.cpus_per_worker and scaling.gpus_per_worker must be > 0"),
            (self.checkpoint.every_n_steps >= 1 and self.checkpoint.keep_last >= 1, "checkpoint.every_n_steps and checkpoint.keep_last must be >= 1"),
            (fail_at_step is None or 1 <= fail_at_step <= run.max_steps, "fault_injection.fail_at_step must be null or in [1, run.max_steps]"),
            (0 <= self.fault_injection.fail_rank < scaling.num_workers, "fault_injection.fail_rank must be a rank below scaling.num_workers"),
            (bool(run.name) and "/" not in run.name, "run.name must be a non-empty name without '/'"),
            (run.max_failures >= -1, "run.max_failures must be >= -1"),
            (run.batch_size >= 1 and run.max_steps >= 1 and run.log_every_n_steps >= 1, "run.batch_size, run.max_steps and run.log_every_n_steps must be >= 1"),
        ]
        _raise_first_failure(checks)
        return self


# ---------------------------------------------------------------------------------------------
# Video model (multi-view orbit video diffusion, models/video)
# ---------------------------------------------------------------------------------------------


@dataclass
class VideoArchitectureConfig:
    """Sizes of a randomly initialised video model (`random_init`); pretrained ones bring their own."""

    transformer_layers: int = 2
    """DiT blocks (`WanTransformer3DModel.num_layers`)."""
    transformer_heads: int = 2
    """Attention heads per DiT block."""
    transformer_head_dim: int = 12
    """Channels per head; even, because the 3-D rotary embedding splits it over time, height, width."""
    transformer_ffn_dim: int = 48
    """Hidden width of each DiT block's feed-forward layer."""
    patch_size: list[int] = field(default_factory=lambda: [1, 2, 2])
    """(frames, height, width) of the DiT's latent patches."""
    vae_base_dim: int = 4
    """Channels of the Wan VAE's first stage (96 in Wan 2.1)."""
    vae_dim_mult: list[int] = field(default_factory=lambda: [1, 1, 1])
    """Channel multiplier per VAE stage; every stage after the first halves height and width."""
    vae_temporal_downsample: list[bool] = field(default_factory=lambda: [True, True])
    """Per downsampling stage (len(vae_dim_mult) − 1 of them), whether it also halves time."""
    vae_latent_channels: int = 4
    """Latent channels of the VAE (16 in Wan 2.1, 48 in Wan 2.2)."""
    text_hidden_size: int = 32
    """Width of the random CLIP text encoder (and of the DiT's text input)."""
    text_layers: int = 2
    """Layers of the random CLIP text encoder."""
    text_heads: int = 2
    """Attention heads of the random CLIP text encoder."""


@dataclass
class VideoModelConfig:
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
    resolution: int = 512
    """Side of the square frames the model trains on and generates."""
    num_views: int = 16
    """Orbit views per video at azimuth 360°·i/V; a multiple of 4 (the Wan VAE's frame chunk)."""
    max_text_tokens: int = 512
    """Prompt tokens fed to the text encoder (padding is zeroed, as Wan does)."""
    elevation_frequency_dim: int = 256
    """Sinusoidal features of the elevation before the elevation MLP."""
    frozen_dtype: str = "fp32"
    """Dtype the frozen VAE and text encoder are loaded in from `pretrained_path`: "fp32", "bf16" or
    "fp16" (bf16 halves their memory on GPUs; random debug models stay fp32)."""
    trainable: str = "temporal"
    """What fine-tuning trains: "temporal" (self-attention, patch embedding and elevation embedder)
    or "full" (the whole DiT and the elevation embedder)."""
    prompt_dropout: float = 0.1
    """Probability of training on the empty prompt (what classifier-free guidance contrasts with)."""
    flow_shift: float = 3.0
    """Shift of the flow-matching noise levels, σ' = sσ / (1 + (s − 1)σ), in training and sampling."""
    gradient_checkpointing: bool = False
    """Recompute DiT blocks in the backward pass instead of storing their activations."""
    num_inference_steps: int = 50
    """Euler steps of orbit generation."""
    guidance_scale: float = 5.0
    """Classifier-free guidance on the prompt (1 disables it)."""
    text_to_image_steps: int = 30
    """Denoising steps of the first-frame text-to-image model."""
    text_to_image_guidance: float = 7.5
    """Classifier-free guidance of the first-frame text-to-image model."""
    seed: int = 0
    """Seed of a random initialisation."""

    def validate(self) -> "VideoModelConfig":
        """Check value ranges and cross-field constraints; returns self so calls chain."""
        architecture = self.architecture
        checks = [
            (self.trainable != "lora", "trainable \"lora\" needs the peft package, which vf3d does not install; use \"temporal\" or \"full\""),
            (self.trainable in ("temporal", "full"), "trainable must be temporal or full"),
            (self.num_views >= 4 and self.num_views % 4 == 0, "num_views must be a positive multiple of 4 (the Wan VAE encodes frames in chunks of 4 after the first)"),
            (16 <= self.resolution <= 4096, "resolution must be between 16 and 4096"),
            (self.max_text_tokens >= 1 and self.elevation_frequency_dim >= 2 and self.elevation_frequency_dim % 2 == 0, "max_text_tokens must be >= 1 and elevation_frequency_dim even and >= 2"),
            (self.frozen_dtype in ("fp32", "bf16", "fp16"), "frozen_dtype must be fp32, bf16 or fp16"),
            (0 <= self.prompt_dropout < 1 and self.flow_shift > 0, "prompt_dropout must be in [0, 1) and flow_shift > 0"),
            (self.num_inference_steps >= 1 and self.text_to_image_steps >= 1, "num_inference_steps and text_to_image_steps must be >= 1"),
            (self.guidance_scale >= 1 and self.text_to_image_guidance >= 1, "guidance_scale and text_to_image_guidance must be >= 1"),
            (architecture.transformer_head_dim % 2 == 0, "architecture.transformer_head_dim must be even"),
            (len(architecture.patch_size) == 3 and min(architecture.patch_size) >= 1, "architecture.patch_size must be three positive integers"),
            (len(architecture.vae_temporal_downsample) == len(architecture.vae_dim_mult) - 1, "architecture.vae_temporal_downsample needs one entry per VAE downsampling stage (len(vae_dim_mult) - 1)"),
            (architecture.text_hidden_size % architecture.text_heads == 0, "architecture.text_hidden_size must be divisible by architecture.text_heads"),
        ]
        _raise_first_failure(checks)
        return self


def _video_model_debug() -> VideoModelConfig:
    # Tiny and random: 32×32 frames → 8×8×5 latents (the VAE keeps Wan's 4× temporal compression,
    # so debug runs the same frame and mask layout as the real models).
    return VideoModelConfig(random_init=True, resolution=32, max_text_tokens=32, elevation_frequency_dim=32, num_inference_steps=4, guidance_scale=3.0, text_to_image_steps=4, text_to_image_guidance=3.0)


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
class FinetuneVideoConfig:
    """`vf3d finetune-video`: which video model, and how the shared harness trains it."""

    model: VideoModelConfig = field(default_factory=VideoModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval_seed: int = 1234
    """Seed of the fixed timesteps and noise of the evaluation loss (comparable across steps)."""

    def validate(self) -> "FinetuneVideoConfig":
        """Validate both halves; returns self so calls chain."""
        self.model.validate()
        self.training.validate()
        return self


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
class FilterEncoderConfig:
    """The frozen image encoder whose features the quality probe reads (DINOv2, as in the paper)."""

    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(image_size=224))
    """Its architecture; `encoder.pretrained_path` names a local DINOv2 directory (transformers
    layout, e.g. facebook/dinov2-base) and must match these numbers."""
    random_init: bool = False
    """Allow a randomly initialised encoder when `encoder.pretrained_path` is None (debug and tests:
    random features still separate clean orbits from garbage, but far less well than DINOv2)."""
    num_views: int = 4
    """Views per orbit that are encoded, evenly spaced around the orbit."""
    seed: int = 0
    """Seed of a random initialisation (the probe records it: features must be reproducible)."""

    def validate(self) -> "FilterEncoderConfig":
        """Check value ranges; returns self so calls chain."""
        _raise_first_failure([
            (self.encoder.pretrained_path is not None or self.random_init, "filter encoder: encoder.pretrained_path is required (a local DINOv2 directory); only random_init presets such as debug build a random one"),
            (self.num_views >= 1, "filter encoder: num_views must be >= 1"),
            (self.encoder.image_size % self.encoder.patch_size == 0, "filter encoder: encoder.image_size must be a multiple of encoder.patch_size"),
        ])
        return self


@dataclass
class HeuristicsConfig:
    """Cheap checks on every generated orbit; any failed check rejects it with that reason."""

    min_motion: float = 0.01
    """Mean absolute change between consecutive views (pixels in [0, 1]) below which an orbit is
    "static" (the model froze instead of turning the object)."""
    min_foreground: float = 0.01
    """Mean foreground fraction of the views below which an orbit is "empty_foreground"."""
    max_foreground: float = 0.85
    """Mean foreground fraction above which an orbit is "full_frame_foreground" (no object on a
    clean background, e.g. a scene)."""
    max_flicker: float = 0.08
    """Median |second difference| of the views' mean brightness above which an orbit "flicker"s
    (brightness jumping back and forth; a turning object changes smoothly)."""

    def validate(self) -> "HeuristicsConfig":
        """Check value ranges; returns self so calls chain."""
        _raise_first_failure([
            (0 <= self.min_foreground < self.max_foreground <= 1, "heuristics: need 0 <= min_foreground < max_foreground <= 1"),
            (self.min_motion >= 0 and self.max_flicker > 0, "heuristics: min_motion must be >= 0 and max_flicker > 0"),
        ])
        return self


@dataclass
class QualityFilterConfig:
    """How `synthesize` keeps or rejects a generated orbit."""

    probe_path: str | None = None
    """Directory written by `vf3d train-filter` (probe + the encoder it was fitted on); None runs
    the heuristics only, and the summary says so."""
    min_score: float | None = None
    """Probe scores (probability of "good") below this reject an orbit; None uses the threshold
    `train-filter` chose on its training labels."""
    encoder_path: str | None = None
    """Where the probe's DINOv2 weights are on this cluster, when not at the path recorded at
    training time (the weights must be the same: the probe checks their fingerprint)."""
    heuristics: HeuristicsConfig = field(default_factory=HeuristicsConfig)
    mask_threshold: float = 0.12
    """Foreground masks of generated views: pixels farther than this (RGB distance, [0, 1] per
    channel) from the white background are the object."""

    def validate(self) -> "QualityFilterConfig":
        """Check value ranges; returns self so calls chain."""
        self.heuristics.validate()
        _raise_first_failure([
            (self.min_score is None or 0 <= self.min_score <= 1, "filter: min_score must be in [0, 1]"),
            (0 < self.mask_threshold < 1, "filter: mask_threshold must be in (0, 1)"),
        ])
        return self


@dataclass
class TrainFilterConfig:
    """`vf3d train-filter`: fit the linear probe on labelled orbits."""

    encoder: FilterEncoderConfig = field(default_factory=FilterEncoderConfig)
    validation_fraction: float = 0.25
    """Share of the labelled orbits (chosen by hashing their ids) held out to measure the probe."""
    l2: float = 1e-3
    """L2 penalty on the probe's weights (features are standardised first)."""
    max_iterations: int = 200
    """L-BFGS iterations of the logistic-regression fit."""
    batch_size: int = 16
    """Orbits encoded per forward pass."""
    seed: int = 0

    def validate(self) -> "TrainFilterConfig":
        """Check value ranges; returns self so calls chain."""
        self.encoder.validate()
        _raise_first_failure([
            (0 <= self.validation_fraction < 1, "validation_fraction must be in [0, 1)"),
            (self.l2 >= 0 and self.max_iterations >= 1 and self.batch_size >= 1, "l2 must be >= 0, max_iterations and batch_size >= 1"),
        ])
        return self


@dataclass
class QualityProbeConfig:
    """A fitted quality probe (saved by `train-filter`): the encoder it reads and its decision."""

    encoder: FilterEncoderConfig = field(default_factory=FilterEncoderConfig)
    feature_dim: int = 0
    """Length of the orbit feature vector the probe's linear layer takes."""
    threshold: float = 0.5
    """Scores (probability of "good") at or above this pass."""

    def validate(self) -> "QualityProbeConfig":
        """Check value ranges; returns self so calls chain."""
        self.encoder.validate()
        _raise_first_failure([(self.feature_dim >= 1, "probe: feature_dim must be >= 1"), (0 <= self.threshold <= 1, "probe: threshold must be in [0, 1]")])
        return self


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
class GenerationConfig:
    """How first frames and orbits are sampled (the models come from --video-model and here)."""

    text_to_image_path: str | None = None
    """Local diffusers text-to-image pipeline that draws first frames from prompts; required when
    any input has no image (checked before the run starts)."""
    random_text_to_image: bool = False
    """Without `text_to_image_path`, build a tiny random text-to-image model (debug and tests)."""
    text_to_image_steps: int = 30
    """Denoising steps of the text-to-image model."""
    text_to_image_guidance: float = 7.5
    """Classifier-free guidance of the text-to-image model."""
    num_inference_steps: int = 50
    """Euler steps of orbit generation."""
    guidance_scale: float = 5.0
    """Classifier-free guidance of orbit generation on the prompt (1 disables it)."""
    elevation_range_deg: list[float] = field(default_factory=lambda: [0.0, 30.0])
    """[min, max] elevation drawn (seeded by the id) for inputs without an `elevation`."""
    image_mask_method: str = "auto"
    """Background removal of given first-frame images before they are recentred on white:
    "auto", "rembg", "estimate" or "none" (vf3d.preprocess.foreground_mask)."""
    precision: str = "auto"
    """"auto" (bf16 autocast on CUDA, fp32 on the CPU), "bf16" or "fp32"."""

    def validate(self) -> "GenerationConfig":
        """Check value ranges; returns self so calls chain."""
        low, high = (list(self.elevation_range_deg) + [0.0, 0.0])[:2]
        _raise_first_failure([
            (self.text_to_image_steps >= 1 and self.num_inference_steps >= 1, "generation: text_to_image_steps and num_inference_steps must be >= 1"),
            (self.text_to_image_guidance >= 1 and self.guidance_scale >= 1, "generation: guidance must be >= 1"),
            (len(self.elevation_range_deg) == 2 and -90 < low <= high < 90, "generation: elevation_range_deg must be [min, max] with -90 < min <= max < 90"),
            (self.image_mask_method in ("auto", "rembg", "estimate", "none"), "generation: image_mask_method must be auto, rembg, estimate or none"),
            (self.precision in ("auto", "bf16", "fp32"), "generation: precision must be auto, bf16 or fp32"),
        ])
        return self


@dataclass
class SynthesisFaultInjection:
    """Kill one actor of one stage mid-batch, once, to test recovery (tests and fire drills only)."""

    kill_stage: str | None = None
    """Stage whose actor exits abruptly (os._exit) inside a batch: "first_frame", "generate",
    "mask" or "filter"; None disables it. A marker file in the output directory makes it fire once."""
    after_batches: int = 1
    """The actor dies in its batch number `after_batches` + 1 (batches it finished before are kept)."""
    cuda_error_stage: str | None = None
    """Stage whose actor raises a CUDA-style RuntimeError once, in its batch number
    `error_after_batches` + 1 (an infrastructure error: the batch must be retried, not failed)."""
    os_error_stage: str | None = None
    """Stage (a model stage, "encode" or "write") whose actor raises an OSError once, the same way."""
    error_after_batches: int = 0
    """Batches an actor finishes before the injected error fires."""


@dataclass
class SynthesizeConfig:
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
    max_prompt_chars: int = 1000
    """Longer prompts become error rows (text encoders truncate silently; we refuse loudly)."""
    rows_per_shard: int = 64
    """Orbits per Parquet file (one file per written batch)."""
    retry_errors: bool = False
    """On a rerun, try inputs that failed before again (by default an error row is final)."""
    seed: int = 0
    """Mixed with each input's id to seed its first frame, orbit noise and elevation."""
    fault: SynthesisFaultInjection = field(default_factory=SynthesisFaultInjection)
    lease: LeaseConfig = field(default_factory=LeaseConfig)
    """The `--out` lease: a second run on the same directory refuses while this one lives."""

    def validate(self) -> "SynthesizeConfig":
        """Validate the nested configs; returns self so calls chain."""
        self.generation.validate()
        self.lease.validate()
        self.filter.validate()
        for pool in (self.first_frame_pool, self.generate_pool, self.mask_pool, self.filter_pool, self.encode_pool):
            pool.validate()
        self.writer_pool.validate()
        self.failures.validate()
        model_stages = (None, "first_frame", "generate", "mask", "filter")
        _raise_first_failure([
            (self.max_prompt_chars >= 1 and self.rows_per_shard >= 1, "max_prompt_chars and rows_per_shard must be >= 1"),
            (self.fault.kill_stage in model_stages, "fault.kill_stage must be first_frame, generate, mask, filter or null"),
            (self.fault.cuda_error_stage in model_stages, "fault.cuda_error_stage must be first_frame, generate, mask, filter or null"),
            (self.fault.os_error_stage in (*model_stages, "encode", "write"), "fault.os_error_stage must be first_frame, generate, mask, filter, encode, write or null"),
            (self.fault.after_batches >= 0 and self.fault.error_after_batches >= 0, "fault.after_batches and fault.error_after_batches must be >= 0"),
        ])
        return self


def _synthesize_debug() -> SynthesizeConfig:
    # Sized for 2 cores: fractional CPUs leave room for the read and write tasks (a pool that takes
    # every CPU starves them), and the generation pool may grow from 1 to 2 actors.
    generation = GenerationConfig(random_text_to_image=True, text_to_image_steps=4, text_to_image_guidance=3.0, num_inference_steps=4, guidance_scale=3.0, image_mask_method="estimate")
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
# train-recon: the reconstructor trained on orbit shards (VFusion3D's recipe)
# ---------------------------------------------------------------------------------------------


@dataclass
class ReconLossConfig:
    """Loss terms and weights of reconstructor training (OpenLRM's defaults where the paper is silent)."""

    lpips_weight: float = 1.0
    """LPIPS between rendered and true target crops (the only image loss on synthetic data)."""
    lpips_net: str = "vgg"
    """LPIPS backbone: "vgg" (OpenLRM's), "alex" or "squeeze"; the linear heads ship with lpips."""
    lpips_backbone_path: str | None = None
    """Local torchvision weights of that backbone (a state dict in .pth/.safetensors, loaded
    weights-only), e.g. vgg16-397923af.pth. Required (checked when the loss is built) unless
    `lpips_random_backbone`."""
    lpips_random_backbone: bool = False
    """Use a random backbone (tests and debug only: the loss still trains, but it is not a
    perceptual metric; runs log a warning)."""
    mse_weight: float = 1.0
    """Pixel MSE weight, applied to the stages whose `pixel_loss` is on (the 3D fine-tune)."""
    opacity_weight: float = 0.5
    """MSE between rendered accumulated opacity and each target's foreground mask."""
    tv_weight: float = 5e-4
    """Total variation on the triplanes (smooth fields, fewer floaters)."""

    def validate(self) -> "ReconLossConfig":
        """Check value ranges; returns self so calls chain."""
        _raise_first_failure([
            (self.lpips_net in ("vgg", "alex", "squeeze"), "losses.lpips_net must be vgg, alex or squeeze"),
            (min(self.lpips_weight, self.mse_weight, self.opacity_weight, self.tv_weight) >= 0, "loss weights must be >= 0"),
        ])
        return self


@dataclass
class CameraNoiseConfig:
    """Random perturbation of the (estimated) cameras during training, in degrees and scene units."""

    source_rotation_deg: float = 1.0
    """Std of the rotation (random axis) applied to the source camera's pose."""
    source_translation: float = 0.01
    """Std of the translation noise of the source camera."""
    target_rotation_deg: float = 0.5
    """Std of the rotation noise of each target camera."""
    target_translation: float = 0.005
    """Std of the translation noise of each target camera."""


@dataclass
class ReconStage:
    """One stage of the resolution schedule: what the rendered supervision looks like, how long."""

    name: str = "stage"
    steps: int = 1000
    """Optimizer steps of this stage (the run's total is the sum over stages)."""
    data: str = "synthetic"
    """"synthetic" (--data) or "3d" (--data-3d, real renders)."""
    render_resolution: int = 128
    """Targets are resized to this side; rays are cast as if the whole view were rendered at it."""
    crop_size: int = 128
    """Side of the random crop actually rendered and supervised (≤ render_resolution): high
    resolution supervision at the cost of a crop (patch rendering)."""
    pixel_loss: bool = False
    """Add the MSE term (real 3D renders are pixel-consistent; synthetic videos are not)."""


@dataclass
class ReconValidationConfig:
    """Novel-view validation on held-out objects."""

    every_n_steps: int = 500
    """Validate every this many steps (and at the end)."""
    num_objects: int = 8
    """Held-out objects (chosen by hashing ids; never trained on)."""
    num_views: int = 4
    """Novel views rendered per held-out object."""
    resolution: int = 128
    """Side of the rendered validation views."""


@dataclass
class ReconInputConfig:
    """How training samples stream to the train-recon workers (Ray Data; see vf3d.data.training_input)."""

    prefetch_batches: int = 2
    """Batches each worker prepares ahead of the one it trains on."""
    shuffle_buffer_size: int = 64
    """Samples in each worker's local shuffle buffer (0: no shuffling beyond the per-epoch file order)."""
    min_samples_per_epoch: int = 256
    """Datasets smaller than this repeat each orbit (fresh views per repeat) so an epoch holds at
    least this many samples, instead of running a tiny epoch every step."""

    def validate(self) -> "ReconInputConfig":
        """Check the bounds; returns self so calls chain."""
        _raise_first_failure([
            (self.prefetch_batches >= 0, "input.prefetch_batches must be >= 0"),
            (self.shuffle_buffer_size >= 0, "input.shuffle_buffer_size must be >= 0"),
            (self.min_samples_per_epoch >= 1, "input.min_samples_per_epoch must be >= 1"),
        ])
        return self


@dataclass
class TrainReconConfig:
    """`vf3d train-recon`: model, data sampling, losses, stage schedule, validation, harness."""

    model: ReconstructorConfig = field(default_factory=ReconstructorConfig)
    init_path: str | None = None
    """Reconstructor directory to start from (e.g. an imported released checkpoint); None: random."""
    losses: ReconLossConfig = field(default_factory=ReconLossConfig)
    camera_noise: CameraNoiseConfig = field(default_factory=CameraNoiseConfig)
    stages: list[ReconStage] = field(default_factory=lambda: [
        ReconStage(name="synthetic-128", steps=20_000, render_resolution=128, crop_size=128),
        ReconStage(name="synthetic-256", steps=20_000, render_resolution=256, crop_size=192),
        ReconStage(name="synthetic-384", steps=20_000, render_resolution=384, crop_size=192),
        ReconStage(name="3d-finetune", steps=10_000, data="3d", render_resolution=384, crop_size=192, pixel_loss=True),
    ])
    num_target_views: int = 3
    """Target views per sample besides the source view (OpenLRM: 1 source + 3)."""
    gradient_checkpointing: bool = True
    """Recompute transformer blocks in the backward pass instead of storing their activations."""
    validation: ReconValidationConfig = field(default_factory=ReconValidationConfig)
    input: ReconInputConfig = field(default_factory=ReconInputConfig)
    """Streaming of training samples: prefetching, local shuffling, minimum epoch size."""
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def validate(self) -> "TrainReconConfig":
        """Validate the nested configs and the stage schedule; returns self so calls chain."""
        self.model.validate()
        self.losses.validate()
        self.input.validate()
        self.training.validate()
        checks = [(bool(self.stages), "stages must not be empty"), (self.num_target_views >= 1, "num_target_views must be >= 1")]
        # LPIPS backbones pool an input down to nothing below 32 px (squeeze and alex; vgg needs 16).
        min_crop = 32 if self.losses.lpips_weight > 0 else 16
        for index, stage in enumerate(self.stages):
            where = f"stages[{index}] ({stage.name})"
            checks += [
                (stage.steps >= 1, f"{where}: steps must be >= 1"),
                (stage.data in ("synthetic", "3d"), f"{where}: data must be synthetic or 3d"),
                (min_crop <= stage.crop_size <= stage.render_resolution, f"{where}: need {min_crop} <= crop_size <= render_resolution (LPIPS needs crops of at least 32 px)"),
            ]
        checks.append((sum(stage.steps for stage in self.stages) == self.training.run.max_steps, "training.run.max_steps must equal the sum of the stages' steps"))
        _raise_first_failure(checks)
        return self


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
        stages=[ReconStage(name="low", steps=40, render_resolution=32, crop_size=32), ReconStage(name="high", steps=80, data="3d", render_resolution=48, crop_size=32, pixel_loss=True)],
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
        run=RunSettings(name=f"train-recon-{model}", max_steps=sum(stage.steps for stage in config.stages), batch_size=8, log_every_n_steps=50),
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
class ReplicaConfig:
    """One Serve deployment's replicas: autoscaling bounds and what each replica reserves."""

    min_replicas: int = 1
    """Replicas kept even when idle."""
    max_replicas: int = 1
    """Upper bound the autoscaler (and a cluster autoscaler behind it) grows to under load."""
    initial_replicas: int | None = None
    """Replicas started with the application (defaults to min_replicas)."""
    target_ongoing_requests: float = 2.0
    """Requests in flight per replica the autoscaler aims for (more → add replicas)."""
    max_ongoing_requests: int = 8
    """Requests a replica accepts at once; the rest wait in the caller's queue."""
    max_queued_requests: int = -1
    """Requests that wait in one caller's queue for a free replica before more are refused (Serve's
    load shedding: the endpoint answers 503 JSON with `Retry-After`); -1 queues without bound."""
    num_cpus: float = 1.0
    """CPUs reserved per replica."""
    num_gpus: float = 0.0
    """GPUs per replica (1 for the model on a cluster; a fraction lets mesh replicas share one)."""

    def validate(self, name: str) -> "ReplicaConfig":
        """Check value ranges; returns self so calls chain."""
        initial = self.min_replicas if self.initial_replicas is None else self.initial_replicas
        _raise_first_failure([
            (0 <= self.min_replicas <= initial <= self.max_replicas and self.max_replicas >= 1,
             f"{name}: replicas must satisfy 0 <= min_replicas <= initial_replicas <= max_replicas, max_replicas >= 1"),
            (self.target_ongoing_requests > 0 and self.max_ongoing_requests >= 1, f"{name}: target_ongoing_requests must be > 0 and max_ongoing_requests >= 1"),
            (self.max_queued_requests == -1 or self.max_queued_requests >= 1, f"{name}: max_queued_requests must be -1 (no limit) or >= 1"),
            (self.num_cpus >= 0 and self.num_gpus >= 0, f"{name}: num_cpus and num_gpus must be >= 0"),
        ])
        return self


@dataclass
class ServeConfig:
    """`vf3d serve` / serve/config.yaml: deployments, batching, request limits and HTTP options."""

    inference: InferenceConfig = field(default_factory=InferenceConfig)
    """Preprocessing, mesh and turntable settings (the request's `mesh_resolution` overrides)."""
    ingress: ReplicaConfig = field(default_factory=lambda: ReplicaConfig(max_replicas=4, num_cpus=2.0, max_ongoing_requests=64, target_ongoing_requests=16.0, max_queued_requests=256))
    """HTTP ingress replicas (CPU): auth, body limits, image decoding and preprocessing, the triplane cache."""
    model: ReplicaConfig = field(default_factory=lambda: ReplicaConfig(max_replicas=8, num_cpus=4.0, num_gpus=1.0, max_ongoing_requests=16, target_ongoing_requests=8.0, max_queued_requests=64))
    """Reconstructor replicas: batched encoding (image → triplanes) and turntable rendering."""
    mesh: ReplicaConfig = field(default_factory=lambda: ReplicaConfig(max_replicas=16, num_cpus=4.0, max_ongoing_requests=4, target_ongoing_requests=2.0, max_queued_requests=64))
    """Mesh replicas (CPU by default): density queries, marching cubes, GLB/OBJ/PLY and MP4 encoding."""
    max_batch_size: int = 8
    """Images encoded in one forward pass (`@serve.batch`); 1 turns batching off."""
    batch_wait_timeout_s: float = 0.05
    """How long a partial batch waits for more requests before it runs."""
    max_body_bytes: int = 20_000_000
    """Largest request body accepted (413 above it, checked before the body is read)."""
    max_pixels: int = 40_000_000
    """Largest image (width × height, read from the header before decoding) accepted (413 above it)."""
    min_image_side: int = 16
    """Smallest width or height accepted (422 below it)."""
    max_concurrent_decodes: int = 2
    """Uploads one ingress replica decodes at once (the rest wait, holding only their bytes). Each
    decode peaks at about 16 bytes per pixel of `max_pixels` for WebP (the worst format; ~640 MB
    at 40 MP), 8 for PNG, 1 for JPEG (decoded at reduced scale), so an ingress replica's memory is
    bounded by about its base + this × that + `max_inflight_requests` × `max_body_bytes`."""
    max_inflight_requests: int = 48
    """Image requests one ingress replica holds at once (reading, decoding, waiting on the model or
    the mesher); more are refused at once with 503 JSON and `Retry-After`. Below
    `ingress.max_ongoing_requests`, so the ingress refuses them (Serve's own refusal is plain text)."""
    retry_after_s: int = 5
    """`Retry-After` seconds sent with every 503 of load shedding."""
    max_header_count: int = 64
    """Request headers accepted (431 JSON above it, before the body is read)."""
    max_header_bytes: int = 16_384
    """Total size of the request headers' names and values accepted (431 JSON above it)."""
    api_docs: bool = False
    """Serve FastAPI's `/docs` and `/openapi.json` (the docs page loads its script from a CDN, so
    off by default: the endpoint then makes no page fetch anything from outside)."""
    max_mesh_resolution: int = 384
    """Largest `mesh_resolution` a request may ask for (marching-cubes cost grows with its cube)."""
    request_timeout_s: float = 300.0
    """End-to-end limit of one request (504 after it, with a JSON error)."""
    triplane_cache_entries: int = 64
    """Triplanes kept per ingress replica, keyed by image hash, so a turntable after a mesh of the
    same image skips the model (0 disables the cache)."""
    health_check_period_s: float = 10.0
    """How often Serve checks each model replica (a tiny forward pass on a fixed image)."""
    health_check_timeout_s: float = 60.0
    """A replica whose health check takes longer is considered unhealthy and replaced."""
    host: str = "127.0.0.1"
    """HTTP host of `vf3d serve` (0.0.0.0 to listen on every interface)."""
    port: int = 8000
    """HTTP port of `vf3d serve`."""

    def validate(self) -> "ServeConfig":
        """Validate the nested configs; returns self so calls chain."""
        self.inference.validate()
        for name in ("ingress", "model", "mesh"):
            getattr(self, name).validate(name)
        _raise_first_failure([
            (self.max_batch_size >= 1 and self.batch_wait_timeout_s >= 0, "max_batch_size must be >= 1 and batch_wait_timeout_s >= 0"),
            # A replica that accepts fewer requests than a batch holds can never fill a batch.
            (self.model.max_ongoing_requests >= self.max_batch_size, "model.max_ongoing_requests must be >= max_batch_size"),
            (self.max_body_bytes >= 1 and self.max_pixels >= 1 and self.min_image_side >= 1, "max_body_bytes, max_pixels and min_image_side must be >= 1"),
            (self.max_concurrent_decodes >= 1, "max_concurrent_decodes must be >= 1"),
            (1 <= self.max_inflight_requests < self.ingress.max_ongoing_requests, "max_inflight_requests must be >= 1 and < ingress.max_ongoing_requests"),
            (self.retry_after_s >= 0, "retry_after_s must be >= 0"),
            (self.max_header_count >= 8 and self.max_header_bytes >= 1024, "max_header_count must be >= 8 and max_header_bytes >= 1024"),
            (8 <= self.max_mesh_resolution <= 1024, "max_mesh_resolution must be between 8 and 1024"),
            (self.inference.mesh_resolution <= self.max_mesh_resolution, "inference.mesh_resolution must be <= max_mesh_resolution"),
            (self.request_timeout_s > 0, "request_timeout_s must be > 0"),
            (self.triplane_cache_entries >= 0, "triplane_cache_entries must be >= 0"),
            (self.health_check_period_s > 0 and self.health_check_timeout_s > 0, "health check period and timeout must be > 0"),
            (1 <= self.port <= 65535, "port must be between 1 and 65535"),
        ])
        return self


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
class EvalClipConfig:
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
    batch_size: int = 32
    """Images per CLIP forward pass."""


@dataclass
class EvalLpipsConfig:
    """LPIPS of predicted vs true views (the metric usually uses AlexNet features)."""

    net: str = "alex"
    """Backbone: "alex" (the LPIPS paper's metric), "vgg" or "squeeze"."""
    backbone_path: str | None = None
    """Local torchvision state dict of that backbone (alexnet/vgg16/squeezenet1_1 weights, .pth
    or .safetensors). Required unless `random_backbone`."""
    random_backbone: bool = False
    """Use a random backbone (tests only: LPIPS is then not perceptual; the report says so)."""


@dataclass
class EvalGeometryConfig:
    """Chamfer distance and F-score between the extracted mesh and the true asset mesh."""

    enabled: bool = True
    """Compute geometry metrics for orbits whose `asset` is found under `--assets`."""
    num_points: int = 100_000
    """Points sampled (area-uniformly, seeded) on each surface."""
    fscore_threshold: float = 0.05
    """Distance τ (world units; the asset fits in a sphere of radius 1 − margin = 0.8, inside the
    [−1, 1]³ box) under which a point counts as matched, for precision, recall and F-score."""
    alignment: str = "none"
    """"none" (compare in the asset's frame, as reconstructed) or "bbox" (first move and uniformly
    scale the predicted mesh so its bounding box has the true one's centre and diagonal)."""


@dataclass
class EvaluateConfig:
    """`vf3d evaluate`: reconstruct each held-out orbit from its view 0 and score the result."""

    num_views: int = 8
    """Novel views per object, spread evenly around the orbit (view 0, the input, excluded)."""
    resolution: int | None = None
    """Side of the compared views in pixels (true views are resized to it); None = the orbit's."""
    limit: int | None = None
    """Evaluate at most this many orbits (the first ones by id, or by the order of `--ids`)."""
    figure_objects: int = 8
    """Objects drawn in the view grids and the per-object bar chart (the first ones)."""
    seed: int = 0
    """Seed of the surface point sampling."""
    clip: EvalClipConfig = field(default_factory=EvalClipConfig)
    lpips: EvalLpipsConfig = field(default_factory=EvalLpipsConfig)
    geometry: EvalGeometryConfig = field(default_factory=EvalGeometryConfig)
    inference: InferenceConfig = field(default_factory=lambda: InferenceConfig(mesh_resolution=256))
    """Device, dtype (bf16 autocast on CUDA), mesh resolution and iso of the reconstruction."""

    def validate(self) -> "EvaluateConfig":
        """Check value ranges; returns self so calls chain."""
        self.inference.validate()
        _raise_first_failure([
            (self.num_views >= 1, "num_views must be >= 1"),
            (self.resolution is None or 16 <= self.resolution <= 4096, "resolution must be null or between 16 and 4096 (SSIM needs at least 11 pixels)"),
            (self.limit is None or self.limit >= 1, "limit must be null or >= 1"),
            (self.figure_objects >= 0, "figure_objects must be >= 0"),
            (self.clip.batch_size >= 1, "clip.batch_size must be >= 1"),
            (self.lpips.net in ("alex", "vgg", "squeeze"), "lpips.net must be alex, vgg or squeeze"),
            (self.geometry.num_points >= 100, "geometry.num_points must be >= 100"),
            (self.geometry.fscore_threshold > 0, "geometry.fscore_threshold must be > 0"),
            (self.geometry.alignment in ("none", "bbox"), "geometry.alignment must be none or bbox"),
        ])
        return self


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


def _coerce(value: Any, annotation: Any, path: str) -> Any:
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return from_dict(annotation, value, path)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, path)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{path}: invalid value {value!r}")
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
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in {path}" if path else ""
        raise ConfigError(f"unknown key(s){where}: {', '.join(unknown)} (valid: {', '.join(sorted(names))})")
    kwargs = {name: _coerce(value, hints[name], f"{path}.{name}" if path else name) for name, value in data.items()}
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
    """Write a config as indented JSON (what stages write next to their outputs)."""
    Path(path).write_text(json.dumps(to_dict(config), indent=2) + "\n")
