"""`train-recon`: the reconstructor trained on orbit shards with VFusion3D's recipe (the paper; OpenLRM's released trainer where it is silent; docs/vfusion3d.md#training-recipe).

Driver: orbit shards (synthetic `--data`, real renders `--data-3d`) → Ray Data
(`vf3d.data.training_input`: held-out ids filtered out, views chosen per (seed, epoch, id) and only
those decoded, in CPU map tasks, uint8) → `TorchTrainer` running `train_recon_loop` on every worker
with DeepSpeed → the last checkpoint consolidated into a reconstructor directory (`config.json` +
`model.safetensors`, loadable with `Reconstructor.from_pretrained` and `vf3d image-to-3d`).

One training sample: one source view, recentred on white and resized to the encoder's input (in the
map stage); k target views, turned into floats on the worker's device, composited on random
background colours, resized to the stage's render resolution and cut to a random crop that is the
only part rendered (patch rendering: high-resolution supervision at a bounded cost). Every camera
is expressed in the frame where the source camera is the canonical one (what the model sees at
inference), then perturbed by the configured camera noise. The stage schedule (`stages`) switches resolution, crop,
data and pixel loss at fixed steps; a resumed run continues in the stage its step belongs to.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.compute as pc

from vf3d import config as config_lib
from vf3d import storage
from vf3d.atomic import write_json_atomic
from vf3d.data.reconstruction_views import source_inputs, validation_views
from vf3d.training.config import ReconStage, TrainReconConfig
from vf3d.training.loop import (
    LoopState,
    TrainTask,
    Window,
    finished_rerun,
    progress_line,
    run_loop,
    run_summary,
    use_default_storage,
    worker_print,
)

if TYPE_CHECKING:
    import torch

VALIDATION_LOG = "validation.jsonl"
TRAIN_LOG = "train_log.jsonl"
DRIVER_FILES = {"summary": "train_recon_summary.json", "config": "train_recon_config.json", "export": "model.safetensors"}
"""What the driver writes beside the exported model (`export`: a file every export has)."""


def stage_at(stages: list[ReconStage], step: int) -> tuple[int, ReconStage]:
    """(index, stage) that optimizer step `step` (0-based: the step about to run) belongs to."""
    boundary = 0
    for index, stage in enumerate(stages):
        boundary += stage.steps
        if step < boundary:
            return index, stage
    return len(stages) - 1, stages[-1]


def holdout_ids(ids: list[str], count: int, seed: int = 0) -> list[str]:
    """The `count` ids with the smallest hash: a held-out set that does not depend on file order,
    and that stays the same as a dataset grows (new ids only displace old ones with larger hashes)."""
    return heapq.nsmallest(count, ids, key=lambda identifier: hashlib.sha256(f"{seed}:{identifier}".encode()).digest())


def _unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (0..255) or floats already in [0, 1] → float32 in [0, 1]."""
    import torch

    return images.float() / 255 if images.dtype == torch.uint8 else images.float()


def batch_from_samples(
    samples: dict[str, torch.Tensor], stage: ReconStage, config: TrainReconConfig, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Sampled views (`vf3d.data.training_input.sample_views`, as torch tensors on the worker's
    device; pixels uint8 or already float) → one training batch for `stage`.

    Pixels become floats here, on the samples' device. Camera noise and crop offsets are drawn
    from `generator` (CPU). Returns source_images [B, 3, S, S], source_cameras [B, 16],
    target_cameras [B, k, 25] (at the render resolution's scale), crop_offsets [B, k, 2],
    target_images / target_masks [B, k, c, c], backgrounds [B, k, 3].
    """
    import torch

    from vf3d import cameras

    device = samples["target_frames"].device
    size = config.model.encoder.image_size
    source_images = _unit(samples["source_images"])
    if source_images.shape[-1] != size:
        source_images = torch.nn.functional.interpolate(
            source_images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        ).clamp(0, 1)
    frames, masks = _unit(samples["target_frames"]), _unit(samples["target_masks"])
    backgrounds = samples["target_backgrounds"].float()
    # Frames are stored on white: rgb_on_bg = frame − (1 − mask)·(1 − bg) (see shards.ViewSampler).
    images = (frames - (1 - masks) * (1 - backgrounds[..., None, None])).clamp(0, 1)
    source_camera, target_cameras = samples["source_cameras"].float().cpu(), samples["target_cameras"].float().cpu()
    target_cameras = cameras.relative_to_source(source_camera, target_cameras, azimuth_deg=config.model.source_camera_azimuth_deg)
    noise = config.camera_noise
    target_cameras = cameras.perturb_render_cameras(target_cameras, noise.target_rotation_deg, noise.target_translation, generator)
    batch, views = images.shape[:2]
    source_cameras = cameras.model_source_camera(config.model).expand(batch, 16)
    source_cameras = cameras.perturb_source_cameras(source_cameras, noise.source_rotation_deg, noise.source_translation, generator)

    resolution, crop = stage.render_resolution, stage.crop_size

    def resized(images: torch.Tensor) -> torch.Tensor:
        flat = images.flatten(0, 1)
        if flat.shape[-1] != resolution:
            flat = torch.nn.functional.interpolate(
                flat, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False
            )
        return flat.unflatten(0, (batch, views))

    images, masks = resized(images), resized(masks)
    offsets = torch.randint(0, resolution - crop + 1, (batch, views, 2), generator=generator)
    on_device = offsets.to(device)
    rows_index = on_device[..., 0, None] + torch.arange(crop, device=device)  # [B, k, c]
    cols_index = on_device[..., 1, None] + torch.arange(crop, device=device)

    def cropped(images: torch.Tensor) -> torch.Tensor:
        channels = images.shape[2]
        by_rows = torch.gather(images, 3, rows_index[:, :, None, :, None].expand(batch, views, channels, crop, resolution))
        return torch.gather(by_rows, 4, cols_index[:, :, None, None, :].expand(batch, views, channels, crop, crop))

    return {
        "source_images": source_images,
        "source_cameras": source_cameras,
        "target_cameras": target_cameras,
        "crop_offsets": offsets,
        "target_images": cropped(images).clamp(0, 1),
        "target_masks": cropped(masks).clamp(0, 1),
        "backgrounds": backgrounds,
    }


def build_batch(
    rows: list[dict[str, Any]], stage: ReconStage, config: TrainReconConfig, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Fully decoded orbit rows (`shards.decode_row`) → one training batch, for benchmarks and
    tests that hold orbits in memory; training streams samples instead (`batch_from_samples`).
    Views are drawn with `shards.ViewSampler` from `generator`, then noise and crops as in
    `batch_from_samples`, which gives the shapes."""
    import torch

    from vf3d.data.shards import ViewSampler

    sampler = ViewSampler(config.num_target_views)
    drawn = [sampler(row, generator=generator) for row in rows]
    stack = {key: torch.stack([sample[key] for sample in drawn]) for key in drawn[0]}
    samples = {
        "source_images": source_inputs(stack["source_image"], stack["source_mask"], config.model.encoder.image_size),
        "source_cameras": stack["source_camera"],
        # The sampler composited the targets already: on a white "background" the formula of
        # batch_from_samples leaves them as they are.
        "target_frames": stack["target_images"],
        "target_masks": stack["target_masks"],
        "target_cameras": stack["target_cameras"],
        "target_backgrounds": torch.ones_like(stack["target_backgrounds"]),
    }
    return {**batch_from_samples(samples, stage, config, generator), "backgrounds": stack["target_backgrounds"]}


class Validator:
    """Novel-view PSNR / SSIM / LPIPS on held-out orbits, plus a grid of input, predicted and true
    views (rank 0 only; writes into the output directory).

    Each validation also scores a blank white image against the same views (`blank_psnr`,
    `blank_ssim`): the floor a model must beat. An untrained reconstructor draws an almost flat
    image and scores about like it; SSIM then often falls while a small model first learns where
    the object is, because misplaced edges and texture cost SSIM more than flat colour does.
    """

    def __init__(self, records: list[dict[str, Any]], config: TrainReconConfig, lpips_module, out_dir: Path) -> None:
        from vf3d.image_metrics import LpipsMetric

        self.records = records
        self.config = config
        self.lpips = LpipsMetric(lpips_module)
        self.out_dir = out_dir

    def __call__(self, model, step: int, stage: str, device) -> dict[str, float]:
        import torch

        from vf3d import cameras
        from vf3d.image_metrics import psnr, ssim
        from vf3d.plots import image_grid

        settings = self.config.validation
        model.eval()
        scores: dict[str, list[float]] = {"psnr": [], "ssim": [], "lpips": [], "blank_psnr": [], "blank_ssim": []}
        grid = []
        with torch.no_grad():
            for record in self.records:
                source, mask, source_camera, truth, target_cameras = validation_views(record, settings.num_views, settings.resolution)
                image = source_inputs(source[None], mask[None], self.config.model.encoder.image_size).to(device)
                dtype = next(model.parameters()).dtype
                source_vector = cameras.model_source_camera(self.config.model)[None].to(device, dtype)
                azimuth = self.config.model.source_camera_azimuth_deg
                relative = cameras.relative_to_source(source_camera[None], target_cameras[None], azimuth_deg=azimuth).to(device, dtype)
                planes = model.encode(image.to(dtype), source_vector)
                predicted = model.render(planes, relative, render_size=settings.resolution, deterministic=True).rgb[0].float().clamp(0, 1)
                truth = truth.to(device)
                scores["psnr"] += psnr(predicted, truth).tolist()
                scores["ssim"] += ssim(predicted, truth).tolist()
                scores["lpips"] += self.lpips(predicted, truth).tolist()
                blank = torch.ones_like(truth)
                scores["blank_psnr"] += psnr(blank, truth).tolist()
                scores["blank_ssim"] += ssim(blank, truth).tolist()
                grid.append([image[0].float()] + list(predicted) + list(truth))
        model.train()
        metrics = {name: float(np.mean(values)) for name, values in scores.items()}
        as_images = [[(view.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8) for view in row] for row in grid]
        columns = (
            ["input"]
            + [f"predicted {index}" for index in range(settings.num_views)]
            + [f"true {index}" for index in range(settings.num_views)]
        )
        image_grid(
            as_images,
            self.out_dir / "validation_grid.png",
            row_labels=[str(record["id"])[:12] for record in self.records],
            column_labels=columns,
        )
        return {"step": step, "stage": stage, **metrics}


class ReconTask(TrainTask):
    """The reconstructor's part of the training loop (`vf3d.training.loop.run_loop`): the stage
    schedule, patch-rendered batches, the VFusion3D losses, validation on held-out orbits (rank 0)
    and the training log (train_log.jsonl, validation.jsonl and their plots in "out_dir").

    `config` holds "recon" (TrainReconConfig as a dict), "out_dir", "validation_records" (paths
    and ids of held-out orbits) and the harness's "training" settings.

    When "out_dir" is an object-store URI, rank 0 keeps the logs and plots in a local mirror
    directory (what appending and matplotlib need) and publishes each file to the URI after every
    change; the model is exported to the URI itself.
    """

    label = "train-recon"

    def __init__(self, config: dict[str, Any], training, rank: int) -> None:
        super().__init__(config, training, rank)
        self.recon = config_lib.from_dict(TrainReconConfig, config["recon"])
        self.out_uri = config["out_dir"] if storage.is_uri(config["out_dir"]) else None
        self.out_dir = _local_mirror(self.out_uri) if self.out_uri else Path(config["out_dir"])
        self.log_every_n_steps = training.run.log_every_n_steps
        self.validate_every_n_steps = self.recon.validation.every_n_steps
        self.iterators: dict[str, Any] = {}
        self.announced: str | None = None

    def build_model(self):
        from vf3d.models.reconstructor import Reconstructor

        recon = self.recon
        model = Reconstructor.from_pretrained(recon.init_path) if recon.init_path else Reconstructor(recon.model)
        model.config.transformer.gradient_checkpointing = recon.gradient_checkpointing
        return model

    def start(self, engine, step: int) -> None:
        from vf3d.data import training_input
        from vf3d.training.losses import ReconstructionLoss

        self.device = engine.device
        self.loss_fn = ReconstructionLoss(self.recon.losses).to(self.device)
        self.validator = None
        if self.rank == 0:
            # Only the held-out rows are read (a filter on `id`): the other ranks wait for rank 0 in
            # the first collective, so a scan of the whole dataset here would time them out.
            by_dir: dict[str, list[str]] = {}
            for entry in self.config["validation_records"]:
                by_dir.setdefault(entry["dir"], []).append(entry["id"])
            records = [record for directory in sorted(by_dir) for record in training_input.read_orbits_by_id(directory, by_dir[directory])]
            self.validator = Validator(records, self.recon, self.loss_fn.lpips, self.out_dir) if records else None
        self.stage = stage_at(self.recon.stages, step)[1]
        self.dtype = next(engine.module.parameters()).dtype

    def next_samples(self, source: str) -> dict[str, torch.Tensor]:
        if source not in self.iterators:
            import ray.train

            from vf3d.data import training_input

            shard = ray.train.get_dataset_shard(source)
            settings, seed = self.recon.input, self.training.run.seed * 7919 + self.rank
            self.iterators[source] = training_input.batches_forever(
                shard,
                self.training.run.batch_size,
                prefetch_batches=settings.prefetch_batches,
                shuffle_buffer_size=settings.shuffle_buffer_size,
                seed=seed,
                device=self.device,
            )
        return next(self.iterators[source])

    def begin_step(self, step: int) -> None:
        stages = self.recon.stages
        stage_index, self.stage = stage_at(stages, step)
        stage = self.stage
        if stage.name != self.announced:
            self.announced = stage.name
            if self.rank == 0:
                pixel_loss = "on" if stage.pixel_loss else "off"
                worker_print(
                    f"[train-recon] step {step}: stage {stage_index + 1}/{len(stages)} {stage.name!r} ({stage.data} data, "
                    f"{stage.render_resolution}px renders, {stage.crop_size}px crops, pixel loss {pixel_loss})"
                )

    def train_step(self, engine, step: int) -> dict[str, float]:
        import torch

        stage, dtype, device = self.stage, self.dtype, self.device
        generator = torch.Generator().manual_seed(self.training.run.seed * 1_000_003 + self.rank * 7919 + step)
        samples = self.next_samples(stage.data)
        batch = {key: value.to(device) for key, value in batch_from_samples(samples, stage, self.recon, generator).items()}
        planes, rendered = engine(
            batch["source_images"].to(dtype),
            batch["source_cameras"].to(dtype),
            batch["target_cameras"].to(dtype),
            render_size=stage.render_resolution,
            background=batch["backgrounds"].to(dtype),
            crop_offsets=batch["crop_offsets"],
            crop_size=(stage.crop_size, stage.crop_size),
        )
        rgb, opacity = rendered.rgb.float(), rendered.opacity.float()
        loss, terms = self.loss_fn(rgb, opacity, batch["target_images"], batch["target_masks"], planes.float(), pixel_loss=stage.pixel_loss)
        engine.backward(loss)
        engine.step()
        self.loss = loss.item()
        return {"loss": self.loss, **terms}

    def stage_ends(self, step: int) -> bool:
        return stage_at(self.recon.stages, step)[1].name != self.stage.name

    def log(self, step: int, window: Window) -> None:
        from vf3d.plots import append_jsonl, plot_curves, read_jsonl

        stage = self.stage.name
        record = {"step": step, "stage": stage, **window.means(), "steps_per_second": window.steps_per_second()}
        append_jsonl(self.out_dir / TRAIN_LOG, record)
        plot_curves(read_jsonl(self.out_dir / TRAIN_LOG), self.out_dir / "loss_curves.png")
        self._publish(TRAIN_LOG, "loss_curves.png")
        values = ", ".join(f"{key} {value:.4f}" for key, value in record.items() if key not in ("step", "stage", "steps_per_second"))
        worker_print(f"{progress_line(self.label, step, self.training.run.max_steps, window)} {stage}: {values}")

    def validate(self, engine, step: int) -> dict[str, Any] | None:
        from vf3d.plots import append_jsonl, plot_curves, read_jsonl

        if self.validator is None:
            return None
        metrics = self.validator(engine.module, step, self.stage.name, self.device)
        append_jsonl(self.out_dir / VALIDATION_LOG, metrics)
        plot_curves(read_jsonl(self.out_dir / VALIDATION_LOG), self.out_dir / "validation_curves.png", keys=["psnr", "ssim", "lpips"])
        self._publish(VALIDATION_LOG, "validation_curves.png", "validation_grid.png")
        return metrics

    def _publish(self, *names: str) -> None:
        """With an object-store output: upload the mirror's files `names` (each whole, atomically)."""
        if self.out_uri is None:
            return
        for name in names:
            if (self.out_dir / name).is_file():
                storage.publish_file(self.out_dir / name, str(storage.join(self.out_uri, name)))

    def checkpoint_metrics(self, step: int, window: Window, state: LoopState) -> dict[str, Any]:
        last = state.last_validation or {}
        validation = {"val_" + key: value for key, value in last.items() if key not in ("step", "stage")}
        return {"step": step, "stage": self.stage.name, "loss": self.loss, **validation}

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"stage": self.stage.name}

    def finish(self, engine, state: LoopState) -> dict[str, Any]:
        validations = {"first_validation": state.first_validation, "last_validation": state.last_validation}
        return {**validations, "resumed_from": state.start, "steps": state.step}

    def export(self, checkpoint) -> None:
        export_reconstructor(checkpoint, self.recon, self.out_uri or self.out_dir)


def _local_mirror(uri: str) -> Path:
    """Rank 0's local directory for the logs of an object-store output `uri` (one per URI on a
    node), seeded with the logs already there, so a resumed run appends to them."""
    import tempfile

    mirror = Path(tempfile.gettempdir(), "vf3d-train-recon", hashlib.sha1(uri.encode()).hexdigest()[:16])
    mirror.mkdir(parents=True, exist_ok=True)
    for name in (TRAIN_LOG, VALIDATION_LOG):
        if storage.is_file(storage.join(uri, name)):
            (mirror / name).write_bytes(storage.read_bytes(storage.join(uri, name)))
        else:
            (mirror / name).unlink(missing_ok=True)
    return mirror


def train_recon_loop(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train worker: train the reconstructor with DeepSpeed through the stage schedule
    (`ReconTask` over `run_loop`). Returns (rank 0) the first and last validation metrics and
    where it resumed."""
    return run_loop(ReconTask, config)


def export_reconstructor(checkpoint, config: TrainReconConfig, out_dir: Path | str) -> Path | str:
    """Consolidate a (ZeRO-sharded) checkpoint into a reconstructor directory at `out_dir`."""
    from vf3d.models.reconstructor import Reconstructor
    from vf3d.training import consolidate

    state = consolidate(checkpoint)
    model_config = Reconstructor.load_config(config.init_path) if config.init_path else config.model
    model = Reconstructor(model_config)
    model.load_state_dict(state, strict=True)
    model.config.transformer.gradient_checkpointing = False  # an inference default, not a property of the weights
    return model.save_pretrained(out_dir, metadata={"trained_with": "vf3d train-recon"})


def held_out_source(config: TrainReconConfig) -> str:
    """The data source ("synthetic" or "3d") the held-out objects are drawn from."""
    held_out_from = config.validation.held_out_from
    return config.stages[0].data if held_out_from == "first_stage" else held_out_from


def prepare_inputs(sources: dict[str, Path | None], config: TrainReconConfig, log=print) -> dict[str, Any]:
    """The held-out set and the lazy training datasets of every data source the stages use.

    Ids and per-file counts come from each directory's id manifests (`shards.index_shards`: one
    listing plus a few small files; shards written without a manifest have their `id` column
    read); nothing is decoded until a worker iterates a dataset. Returns {"datasets": {source:
    Dataset}, "counts": {source: training orbits}, "held_out": ids, "excluded": ids removed from
    training, "validation_source": directory of the held-out orbits}.
    """
    from vf3d.data import shards, training_input

    training = config.training
    needed = sorted({stage.data for stage in config.stages})
    # Held-out objects come from the first stage's data (or `validation.held_out_from`) and are
    # never trained on.
    held_out_from = held_out_source(config)
    indexes = {name: shards.index_shards(sources[name], tables=("orbits",)) for name in sorted({*needed, held_out_from})}
    # Shard directories may be local paths or object-store URIs (vf3d.storage); never Path() a URI.
    validation_source = storage.local_or_uri(sources[held_out_from])
    ids = pc.unique(indexes[held_out_from].ids("orbits")).to_pylist()
    held_out = holdout_ids(ids, config.validation.num_objects, training.run.seed) if len(ids) > config.validation.num_objects else []
    if not held_out:
        held_out = sorted(ids)[: max(1, config.validation.num_objects)]
        log(f"only {len(ids)} orbits in {validation_source}: validating on training objects {held_out[:3]} (no held-out set)")
        excluded: set[str] = set()
    else:
        excluded = set(held_out)
    datasets = {}
    counts = {}
    workers, batch_size = training.scaling.num_workers, training.run.batch_size
    for name in needed:
        folder = storage.local_or_uri(sources[name])
        files = [storage.join(folder, file) for file in sorted(indexes[name].files("orbits"))]
        skip = excluded if folder == validation_source else set()
        count = len(indexes[name].ids("orbits")) - len(skip)
        # Every worker needs a full batch per epoch; tiny datasets also repeat to a useful epoch size.
        repeats = max(training_input.epoch_repeats(count, config.input.min_samples_per_epoch), -(-workers * batch_size // count))
        datasets[name] = training_input.training_dataset(
            files,
            exclude_ids=skip,
            num_target_views=config.num_target_views,
            image_size=config.model.encoder.image_size,
            target_resolution=max(stage.render_resolution for stage in config.stages if stage.data == name),
            seed=training.run.seed,
            repeats=repeats,
        )
        counts[name] = count
    return {"datasets": datasets, "counts": counts, "held_out": held_out, "excluded": excluded, "validation_source": validation_source}


def train_recon(data_dir: Path | None, data_3d_dir: Path | None, out_dir: Path, config: TrainReconConfig, log=print) -> dict[str, Any]:
    """Driver: train on the orbit shards, export the reconstructor into `out_dir`; returns a summary."""
    from vf3d.data import shards
    from vf3d.models.reconstructor import Reconstructor
    from vf3d.training import run_training

    called = time.perf_counter()
    config = config.validate()
    sources = {"synthetic": data_dir, "3d": data_3d_dir}
    needed = {stage.data: f"a stage trains on {stage.data} data" for stage in config.stages}
    needed.setdefault(held_out_source(config), f"validation.held_out_from is {config.validation.held_out_from!r}")
    for name, why in sorted(needed.items()):
        directory = sources[name]
        if directory is None or not shards.list_shard_files(directory):
            flag = "--data" if name == "synthetic" else "--data-3d"
            raise config_lib.ConfigError(
                f"{why}, but {flag} {'is not given' if directory is None else f'holds no orbit shards: {directory}'}"
            )
    if config.init_path:
        config.model = Reconstructor.load_config(config.init_path)  # the weights decide the architecture
    # A local directory, or an object-store URI (then rank 0 mirrors its logs locally; see ReconTask).
    out_dir = str(out_dir) if storage.is_uri(out_dir) else Path(out_dir).resolve()
    storage.makedirs(out_dir)
    training = config.training
    use_default_storage(training, out_dir)
    finished = finished_rerun(
        training, out_dir, label="train-recon", model_config=config_lib.to_dict(config.model), files=DRIVER_FILES, started=called, log=log
    )
    if finished is not None:
        return finished
    config_lib.save_json(config, storage.join(out_dir, DRIVER_FILES["config"]))

    inputs = prepare_inputs(sources, config, log)
    datasets, counts, held_out, excluded, validation_source = (
        inputs["datasets"],
        inputs["counts"],
        inputs["held_out"],
        inputs["excluded"],
        inputs["validation_source"],
    )
    schedule = " → ".join(
        f"{stage.name} ({stage.steps} steps, {stage.render_resolution}px/{stage.crop_size}px, {stage.data})" for stage in config.stages
    )
    log(
        f"training the reconstructor on {counts} orbits ({len(excluded)} held out): {training.scaling.num_workers} workers, ZeRO-{training.deepspeed.zero_stage}; stages: {schedule}; checkpoints in {training.run.storage_path}/{training.run.name}"
    )
    if config.losses.lpips_random_backbone:
        log("WARNING: the LPIPS backbone is random (losses.lpips_random_backbone): fine for tests, not a perceptual loss")
    started = time.perf_counter()
    loop_config = {
        "recon": config_lib.to_dict(config),
        "out_dir": str(out_dir),
        "validation_records": [
            {"dir": str(validation_source if storage.is_uri(validation_source) else validation_source.resolve()), "id": identifier}
            for identifier in held_out
        ],
    }
    result = run_training(train_recon_loop, loop_config, training, datasets=datasets)
    outcome = result.return_value or {}
    # Rank 0's return value only knows what its own (possibly restarted) worker group saw: take the
    # validation history from the log every group appended to.
    from vf3d.plots import read_jsonl

    validation_log = storage.join(out_dir, VALIDATION_LOG)
    with storage.local_copy(validation_log) if storage.is_file(validation_log) else contextlib.nullcontext() as local_log:
        history = read_jsonl(local_log) if local_log is not None else []
    outcome["first_validation"] = history[0] if history and history[0]["step"] == 0 else outcome.get("first_validation")
    outcome["last_validation"] = history[-1] if history else outcome.get("last_validation")
    summary = run_summary(outcome, result, started, out_dir, orbits=counts, held_out=held_out)
    write_json_atomic(storage.join(out_dir, DRIVER_FILES["summary"]), summary)
    first, last = outcome.get("first_validation") or {}, outcome.get("last_validation") or {}
    nan = float("nan")
    log(
        f"train-recon: {outcome.get('steps')} steps (resumed from {outcome.get('resumed_from')}); novel-view PSNR "
        f"{first.get('psnr', nan):.2f} → {last.get('psnr', nan):.2f} dB (a blank white image: {last.get('blank_psnr', nan):.2f}), "
        f"SSIM {first.get('ssim', nan):.3f} → {last.get('ssim', nan):.3f} (blank: {last.get('blank_ssim', nan):.3f}), "
        f"LPIPS {first.get('lpips', nan):.3f} → {last.get('lpips', nan):.3f}; model in {out_dir}"
    )
    return summary
