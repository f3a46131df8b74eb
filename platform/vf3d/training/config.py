"""Configs of training: the Ray Train + DeepSpeed harness shared by both trainers
(`TrainingConfig`), `vf3d finetune-video` and `vf3d train-recon`, with their presets.

Import-light: standard library and config modules only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vf3d.config import ConfigBase, FieldPath, Precision, bounded
from vf3d.models.config import ReconLossConfig
from vf3d.models.reconstructor.config import RECONSTRUCTOR_PRESETS, ReconstructorConfig
from vf3d.models.video.config import VIDEO_MODEL_PRESETS, VideoModelConfig


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
    cpu_shared_memory_comm: bool = False
    """On the CPU, let DeepSpeed reduce gradients through its shared-memory op instead of gloo.
    The op is C++ compiled on first use (minutes on a small machine, once per environment), so it
    is off by default: CPU training here is for debug-size runs, where gloo is fast enough."""

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
    upload: Literal["async", "sync"] = "async"
    """How a checkpoint reaches the run's storage. "async": each rank writes its files to a local
    directory and trains on while Ray Train uploads them in the background (a save first waits for
    the previous upload to be committed, so at most one is in flight per rank, and the run's end
    waits for the last one); a worker that dies mid-upload loses only that checkpoint, and the
    group restarts from the one before. "sync": training waits until each checkpoint is committed."""


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
class TrackingSettings(ConfigBase):
    """Where rank 0 logs the training scalars (loss terms, learning rate, throughput) every
    `run.log_every_n_steps` steps (vf3d.training.tracking)."""

    tensorboard: bool = True
    """Write TensorBoard event files (read them with `tensorboard --logdir DIR`; no server runs
    during training)."""
    tensorboard_dir: str | None = None
    """Directory of the event files, a local path or an object-store URI (written locally on rank 0
    and published there every minute and at the end); None: `tensorboard/` in the command's output
    directory."""
    mlflow_tracking_uri: str | None = None
    """MLflow tracking server or store (`http://host:5000`, `file:///path/mlruns`); None: the
    MLFLOW_TRACKING_URI environment variable; with neither, nothing is logged to MLflow. Needs
    the `mlflow` extra (`pip install mlflow-skinny` is enough for a client)."""
    mlflow_experiment: str = "vf3d"
    """MLflow experiment the runs are logged under (a run is named after `run.name`)."""


@dataclass
class TrainingConfig(ConfigBase):
    """Everything the shared training harness needs, apart from the model and its data."""

    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    scaling: ScalingSettings = field(default_factory=ScalingSettings)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    fault_injection: FaultInjection = field(default_factory=FaultInjection)
    run: RunSettings = field(default_factory=RunSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)

    def rules(self, at: FieldPath) -> list[tuple[bool, str]]:
        fault = self.fault_injection
        return [
            (
                fault.fail_at_step is None or fault.fail_at_step <= self.run.max_steps,
                f"{at.fault_injection.fail_at_step} must be <= {at.run.max_steps}",
            ),
            (fault.fail_rank < self.scaling.num_workers, f"{at.fault_injection.fail_rank} must be a rank below {at.scaling.num_workers}"),
        ]


@dataclass
class FinetuneVideoConfig(ConfigBase):
    """`vf3d finetune-video`: which video model, and how the shared harness trains it."""

    model: VideoModelConfig = field(default_factory=VideoModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval_seed: int = 1234
    """Seed of the fixed timesteps and noise of the evaluation loss (comparable across steps)."""


def _finetune_video_debug() -> FinetuneVideoConfig:
    model = VIDEO_MODEL_PRESETS["debug"]()
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
    held_out_from: Literal["first_stage", "synthetic", "3d"] = "first_stage"
    """Which data the held-out objects come from (and are removed from): the first stage's, or the
    named source. "3d" validates on real renders while the stages train on synthetic orbits first,
    as the paper evaluates on real objects; the synthetic orbits must not show those objects."""


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
        model=RECONSTRUCTOR_PRESETS["debug"](),
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
