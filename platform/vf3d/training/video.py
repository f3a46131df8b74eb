"""`finetune-video`: the orbit video model fine-tuned on orbit shards with Ray Train + DeepSpeed.

Driver: orbit shards → Ray Data (decode, pick the model's views, resize) → `TorchTrainer` running
`finetune_video_loop` on every worker → the last checkpoint consolidated and exported in the
diffusers `save_pretrained` layout (`OrbitVideoPipeline.from_pretrained(out)` loads it).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from vf3d import config as config_lib
from vf3d import storage
from vf3d.atomic import write_json_atomic
from vf3d.models.video.config import VideoModelConfig
from vf3d.training.config import FinetuneVideoConfig
from vf3d.training.loop import LoopState, TrainTask, Window, finished_rerun, run_loop, run_summary, use_default_storage

DRIVER_FILES = {"summary": "finetune_summary.json", "config": "finetune_config.json", "export": "model_index.json"}
"""What the driver writes beside the exported pipeline (`export`: a file every export has)."""

CACHE_MAX_ORBITS = 4096
"""Datasets up to this many orbits are prepared once and kept in the object store, instead of
re-reading and re-decoding the shards every epoch (which dominates small runs)."""


def orbit_clips(batch: dict[str, np.ndarray], num_views: int, resolution: int) -> dict[str, np.ndarray]:
    """Ray Data stage: decoded orbit rows → the model's clips.

    Keeps the uniform-azimuth orbit views (dropping extra random views), subsamples them to the
    model's `num_views` (the orbit's view count must be a multiple of it, so azimuth steps stay
    uniform), and resizes frames to the model's resolution.
    Output: frames float32 [B, N, 3, R, R] in [0, 1], prompt, elevation (degrees).
    """
    import torch

    clips = []
    for identifier, frames, orbit_views in zip(batch["id"], batch["frames"], batch["num_orbit_views"]):
        orbit = np.asarray(frames)[: int(orbit_views)]
        if len(orbit) % num_views:
            raise ValueError(f"orbit {identifier} has {len(orbit)} orbit views; the video model needs a multiple of {num_views}")
        views = torch.from_numpy(np.ascontiguousarray(orbit[:: len(orbit) // num_views]))
        if views.shape[-1] != resolution:
            views = torch.nn.functional.interpolate(
                views, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False
            ).clamp(0, 1)
        clips.append(views.numpy())
    return {
        "frames": np.stack(clips).astype(np.float32),
        "prompt": np.asarray(batch["prompt"]),
        "elevation": np.asarray(batch["elevation"], dtype=np.float32),
    }


class VideoTask(TrainTask):
    """The orbit video model's part of the training loop (`vf3d.training.loop.run_loop`).

    `config` holds "model" (VideoModelConfig as a dict), "eval_seed", "export_dir" and the
    harness's "training" settings. Checkpoints carry the mean loss since the previous one and the
    evaluation loss: the same timesteps and noise on the first batch every time, so the numbers
    are comparable across steps.
    """

    label = "finetune-video"

    def __init__(self, config: dict[str, Any], training, rank: int) -> None:
        super().__init__(config, training, rank)
        self.model_config = config_lib.from_dict(VideoModelConfig, config["model"])
        self.log_every_n_steps = training.run.log_every_n_steps  # the default progress line

    def build_model(self):
        from vf3d.models.video import OrbitVideoModel

        return OrbitVideoModel.from_config(self.model_config)

    def start(self, engine, step: int) -> None:
        import ray.train
        import torch

        from vf3d.training import batches_forever

        self.engine = engine
        self.batches = batches_forever(ray.train.get_dataset_shard("train"), self.training.run.batch_size)
        self.fixed = self.inputs(next(self.batches))
        self.initial_eval = self.evaluation_loss()
        self.generator = torch.Generator(device=engine.device).manual_seed(self.training.run.seed * 7919 + self.rank * 104729 + step)

    def inputs(self, batch):
        import torch

        device = self.engine.device
        # Copies: Ray Data hands out read-only arrays, which from_numpy would share (and warn about).
        frames, elevation = torch.tensor(batch["frames"], device=device), torch.tensor(batch["elevation"], device=device)
        return frames, [str(p) for p in batch["prompt"]], elevation

    def evaluation_loss(self) -> float:
        import torch

        engine = self.engine
        engine.eval()
        with torch.no_grad():
            loss = engine(*self.fixed, generator=torch.Generator(device=engine.device).manual_seed(self.config["eval_seed"]))
        engine.train()
        return float(loss)

    def train_step(self, engine, step: int) -> dict[str, float]:
        loss = engine(*self.inputs(next(self.batches)), generator=self.generator)
        engine.backward(loss)
        engine.step()
        return {"loss": loss.item()}

    def checkpoint_metrics(self, step: int, window: Window, state: LoopState) -> dict[str, Any]:
        return {
            "step": step,
            "loss": window.mean("loss"),
            "eval_loss": self.evaluation_loss(),
            "initial_eval_loss": self.initial_eval,
            "resumed_from": state.start,
            "steps_per_second": window.steps_per_second(),
        }

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"model": self.config["model"], "epoch_note": "data order restarts on resume"}

    def finish(self, engine, state: LoopState) -> dict[str, Any]:
        final_eval = self.evaluation_loss()
        return {"initial_eval_loss": self.initial_eval, "final_eval_loss": final_eval, "resumed_from": state.start, "steps": state.step}

    def export(self, checkpoint) -> None:
        if self.config.get("export_dir"):
            export_video_model(checkpoint, self.model_config, storage.local_or_uri(self.config["export_dir"]), self.training.run.seed)


def finetune_video_loop(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train worker: train the orbit video model with DeepSpeed, checkpointing as it goes
    (`VideoTask` over `run_loop`). Returns (rank 0) the evaluation losses and where it resumed."""
    return run_loop(VideoTask, config)


def export_video_model(checkpoint, model_config: VideoModelConfig, out_dir: Path | str, seed: int) -> Path | str:
    """Consolidate a (ZeRO-sharded) checkpoint and write the diffusers pipeline layout to `out_dir`
    (a local directory, or an object-store URI: saved to a local temporary directory, then every
    file published with model_index.json last, the file readers check first).

    Frozen parts (VAE, text encoder) are not in the optimizer's checkpoint: they are rebuilt
    exactly as training built them (same config and seed) and every trained tensor is loaded.
    """
    import torch

    from vf3d.models.video import OrbitVideoModel
    from vf3d.training import consolidate

    state = consolidate(checkpoint)
    torch.manual_seed(seed)
    model = OrbitVideoModel.from_config(model_config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    trained = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    if unexpected or trained & set(missing):
        raise RuntimeError(
            f"checkpoint does not match the model: missing trained {sorted(trained & set(missing))[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    if storage.is_uri(out_dir):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="vf3d-export-") as local:
            model.save_pretrained(local)
            storage.upload_tree(local, str(out_dir), last=("model_index.json",))
        return out_dir
    model.save_pretrained(out_dir)
    return out_dir


def finetune_video(data_dir: Path | str, out_dir: Path | str, config: FinetuneVideoConfig, log=print) -> dict[str, Any]:
    """Driver: fine-tune on the orbit shards in `data_dir`, export to `out_dir`; returns a summary."""
    from vf3d.synthesis.datasets import read_orbit_dataset
    from vf3d.training import run_training

    called = time.perf_counter()
    config = config.validate()
    out_dir = storage.local_or_uri(out_dir)  # a local directory or an object-store URI
    storage.makedirs(out_dir)
    training = config.training
    use_default_storage(training, out_dir)
    finished = finished_rerun(
        training,
        out_dir,
        label="finetune-video",
        model_config=config_lib.to_dict(config.model),
        files=DRIVER_FILES,
        started=called,
        log=log,
    )
    if finished is not None:
        return finished
    config_lib.save_json(config, storage.join(out_dir, DRIVER_FILES["config"]))

    orbits = read_orbit_dataset(data_dir)
    count = orbits.count()
    clips = orbits.map_batches(
        orbit_clips, fn_kwargs={"num_views": config.model.num_views, "resolution": config.model.resolution}, batch_size=4
    )
    if count <= CACHE_MAX_ORBITS:
        clips = clips.materialize()
    # Every worker needs at least one full batch per epoch; tiny datasets (one orbit to overfit)
    # are repeated rather than leaving a worker without data.
    needed = training.scaling.num_workers * training.run.batch_size
    if count < needed:
        clips = clips.union(*[clips] * (math.ceil(needed / count) - 1))
    log(
        f"fine-tuning the video model on {count} orbits from {data_dir}: {training.scaling.num_workers} workers, ZeRO-{training.deepspeed.zero_stage}, {training.run.max_steps} steps; checkpoints in {training.run.storage_path}/{training.run.name}"
    )
    started = time.perf_counter()
    export_dir = str(out_dir) if storage.is_uri(out_dir) else str(out_dir.resolve())
    loop_config = {"model": config_lib.to_dict(config.model), "eval_seed": config.eval_seed, "export_dir": export_dir}
    result = run_training(finetune_video_loop, loop_config, training, datasets={"train": clips})
    outcome = result.return_value or {}
    summary = run_summary(outcome, result, started, out_dir, orbits=count)
    write_json_atomic(storage.join(out_dir, DRIVER_FILES["summary"]), summary)
    log(
        f"finetune-video: eval loss {outcome.get('initial_eval_loss', float('nan')):.4f} → {outcome.get('final_eval_loss', float('nan')):.4f} over {outcome.get('steps')} steps (resumed from {outcome.get('resumed_from')}); model in {out_dir}"
    )
    return summary
