"""Configs of the data engine's stages: `vf3d render-assets`, `vf3d train-filter` and
`vf3d synthesize` (actor and writer pools, failure handling, the output lease, generation, the
quality filter), with their presets.

Import-light: standard library and config modules only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vf3d.config import ConfigBase, FieldPath, Precision, bounded
from vf3d.data.config import OrbitRenderConfig
from vf3d.models.config import FilterEncoderConfig, debug_filter_encoder
from vf3d.models.reconstructor.config import EncoderConfig, MaskMethod


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


TRAIN_FILTER_PRESETS = {
    "debug": lambda: TrainFilterConfig(encoder=debug_filter_encoder()),
    # DINOv2 ViT-B/14 from a local directory (set encoder.encoder.pretrained_path in --config).
    "dinov2-base": lambda: TrainFilterConfig(encoder=FilterEncoderConfig(encoder=EncoderConfig(image_size=224, position_image_size=518))),
}


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
