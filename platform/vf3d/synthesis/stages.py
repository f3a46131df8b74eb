"""The Ray Data stages of `vf3d synthesize`: callable classes, one actor pool each.

    prepare_inputs (tasks)      drop finished ids, validate prompts/elevations, read image files,
                                derive each id's seed and elevation; bad inputs become error rows
    FirstFrames (actors)        text-to-image first frame, or the given image recentred on white
    GenerateOrbits (actors)     first frame + prompt + elevation → V-view orbit and its cameras
    ForegroundMasks (CPU)       masks of the views against the white background, the heuristics'
                                statistics and reasons, and the views the probe reads
    FilterOrbits (GPU)          linear probe on frozen DINOv2 features of those views only (left
                                out without a probe)
    EncodeOrbits (CPU)          kept or rejected, PNG-encoded as orbit-shard rows
    WriteSynthesized (pool)     orbits / rejected / errors, each to its own table, atomically

GPU actors do GPU work only: everything a GPU would wait on (masks, heuristics, PNG encoding,
Parquet writing) runs on autoscaling CPU pools. Failures are sorted (vf3d.synthesis.failures):
an input error is its row's outcome, an infrastructure error (CUDA, NCCL, ECC, GPU out of memory,
storage) makes Ray retry the batch and, repeated, restart the actor.

Every row carries `error` and `error_stage` ("" while it is healthy): a row that failed passes
through the later stages untouched and is written as an error row, so nothing is lost. Each stage
adds its actor and its share of the batch time to the row's `trace` (JSON), which the writer sums
into the run's per-stage throughput and GPU-hours.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import unicodedata
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vf3d import config as config_lib
from vf3d import metrics, storage
from vf3d.data import shards
from vf3d.synthesis.config import ActorPoolConfig, SynthesizeConfig
from vf3d.synthesis.failures import FailureTracker, actor_name, is_infrastructure_error, maybe_fire_fault, short_error

if TYPE_CHECKING:
    from vf3d.data.manifest import IdSet

STAGES = ("first_frame", "generate", "mask", "filter")
"""Model stages in pipeline order (each on its own actor pool); "prepare" runs as plain tasks."""
PIPELINE_STAGES = (*STAGES, "encode")
"""Every stage that records its time in the rows' traces (STAGES plus the CPU encoding pool)."""
FAULT_MARKER = ".fault-{stage}.fired"
"""File in the output directory recording that a configured fault already fired (it fires once)."""


def derived_seed(identifier: str, seed: int) -> int:
    """A 31-bit seed from the run seed and an input id: the same id always draws the same first
    frame, noise and elevation, whatever batch or run it lands in."""
    return int.from_bytes(hashlib.sha1(f"{seed}:{identifier}".encode()).digest()[:4], "big") >> 1


def drawn_elevation(identifier: str, seed: int, elevation_range_deg: list[float]) -> float:
    """Elevation (degrees) for an input without one: uniform in the range, seeded by the id."""
    low, high = elevation_range_deg
    return float(np.random.default_rng(derived_seed(identifier, seed + 1)).uniform(low, high))


# ---------------------------------------------------------------------------------------------
# prepare (plain Ray Data tasks)
# ---------------------------------------------------------------------------------------------


def _prompt_problem(prompt: Any, has_image: bool, max_chars: int) -> tuple[str, str]:
    """(clean prompt, "") or ("", reason). Bytes must be UTF-8; text must not be empty (unless an
    image is given), too long or hold control characters (binary junk in a text column)."""
    if prompt is None:
        return ("", "") if has_image else ("", "prompt is missing (null) and no image is given")
    if isinstance(prompt, (bytes, bytearray, memoryview)):
        try:
            prompt = bytes(prompt).decode("utf-8")
        except UnicodeDecodeError as error:
            return "", f"prompt is not valid UTF-8 ({error.reason} at byte {error.start})"
    prompt = str(prompt)
    if any(unicodedata.category(character) in ("Cc", "Cs") and character not in "\t\n\r" for character in prompt):
        return "", "prompt holds control characters (binary data, not text)"
    prompt = " ".join(prompt.split())
    if not prompt and not has_image:
        return "", "prompt is empty and no image is given"
    if len(prompt) > max_chars:
        return "", f"prompt is {len(prompt)} characters long (max_prompt_chars={max_chars})"
    return prompt, ""


def _read_image(value: Any, images_root: str) -> tuple[bytes, str]:
    """(encoded image bytes, "") or (b"", reason). `value` is bytes or a path (relative to
    `images_root`); decoding is left to the first-frame stage."""
    if value is None:
        return b"", ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return (data, "") if data else (b"", "image is empty (0 bytes)")
    path = storage.join(images_root, str(value))  # a local folder or an object-store prefix
    try:
        data = storage.read_bytes(path)
    except OSError as error:
        return b"", f"image file cannot be read: {path} ({error.strerror or error})"
    return (data, "") if data else (b"", f"image is empty (0 bytes): {path}")


def prepare_inputs(batch: pa.Table, done_ids: IdSet | pa.Array, config: dict[str, Any], images_root: str) -> pa.Table:
    """Input rows (id, prompt, optional image / elevation) → the pipeline's working rows.

    Rows whose id is in `done_ids` (finished in an earlier run) are dropped here, before any model
    runs. `done_ids` is a `vf3d.data.manifest.IdSet`, built once at planning: its buffers
    deserialise without copying and each batch probes its sorted hashes (O(batch · log n)), where
    `pc.is_in` would rebuild a hash table of every finished id for every batch. A plain Arrow
    string array (small sets, tests) is filtered with `pc.is_in`.
    Returns columns id, prompt, elevation (degrees), elevation_given, seed, image (encoded bytes,
    b"" when none), error, error_stage, trace.
    """
    from vf3d.data.manifest import IdSet

    synthesize = config_lib.from_dict(SynthesizeConfig, config)
    batch = batch.set_column(batch.schema.get_field_index("id"), "id", batch.column("id").cast(pa.string()))
    if isinstance(done_ids, IdSet):
        if len(done_ids):
            batch = batch.filter(pa.array(~done_ids.contains(batch.column("id"))))
    elif len(done_ids):
        batch = batch.filter(pc.invert(pc.is_in(batch.column("id"), value_set=done_ids)))
    names = set(batch.column_names)
    ids = batch.column("id").to_pylist()
    prompts = batch.column("prompt").to_pylist() if "prompt" in names else [None] * len(ids)
    images = batch.column("image").to_pylist() if "image" in names else [None] * len(ids)
    elevations = batch.column("elevation").to_pylist() if "elevation" in names else [None] * len(ids)
    rows: dict[str, list] = {
        name: [] for name in ("id", "prompt", "elevation", "elevation_given", "seed", "image", "error", "error_stage", "trace")
    }
    for identifier, prompt, image, elevation in zip(ids, prompts, images, elevations):
        image_bytes, problem = _read_image(image, images_root)
        text, prompt_problem = _prompt_problem(prompt, image is not None, synthesize.max_prompt_chars)
        problem = problem or prompt_problem
        given = elevation is not None
        if given:
            try:
                elevation = float(elevation)
            except (TypeError, ValueError):
                elevation = math.nan
            if not (math.isfinite(elevation) and -90 < elevation < 90):
                problem = problem or f"elevation must be a number of degrees in (-90, 90), got {elevation!r}"
                elevation = 0.0
        else:
            elevation = drawn_elevation(identifier, synthesize.seed, synthesize.generation.elevation_range_deg)
        for name, value in (
            ("id", identifier),
            ("prompt", text),
            ("elevation", elevation),
            ("elevation_given", given),
            ("seed", derived_seed(identifier, synthesize.seed)),
            ("image", b"" if problem else image_bytes),
            ("error", problem),
            ("error_stage", "prepare" if problem else ""),
            ("trace", "{}"),
        ):
            rows[name].append(value)
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("prompt", pa.string()),
            ("elevation", pa.float64()),
            ("elevation_given", pa.bool_()),
            ("seed", pa.int64()),
            ("image", pa.binary()),
            ("error", pa.string()),
            ("error_stage", pa.string()),
            ("trace", pa.string()),
        ]
    )
    return pa.table(rows, schema=schema)


# ---------------------------------------------------------------------------------------------
# Actor stages
# ---------------------------------------------------------------------------------------------


def _quiet_model_loading(*, with_diffusers: bool = True) -> None:
    """No per-actor loading progress bars: with dozens of actors they drown the run's own progress.

    Quiets transformers and, unless `with_diffusers=False`, diffusers. Importing them to do so is the
    cost (about 3.5 CPU-seconds per process on 2 cores, bench/process_imports.py), so a stage that
    loads no diffusers model does not import diffusers just to silence it."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    if with_diffusers:
        import diffusers

        diffusers.utils.logging.disable_progress_bar()


_short_error = short_error


class _ModelStage:
    """Shared machinery: device and precision, failure classes, trace, fault injection.

    Subclasses set `stage`, load their model in `__init__` and implement `process(batch, rows)`,
    which computes new columns for the healthy rows (`rows`: their indices) and returns
    ({column: [values per healthy row]}, {row index: reason} for rows that failed).
    `placeholders(batch)` gives the values error rows carry in the new columns.

    Input errors (anything `is_infrastructure_error` does not claim) become the row's reason;
    infrastructure errors leave the stage through `FailureTracker`: the batch is retried by Ray,
    and an actor that fails `failures.max_consecutive_failures` batches in a row exits.
    """

    stage: str = ""
    uses_torch: bool = True
    """False for a stage that computes with NumPy alone: the shared machinery does not import torch
    for it (about 2 CPU-seconds and a few hundred MB per actor), and its `device` and
    `autocast_dtype` are None."""

    def __init__(self, config: dict[str, Any], out_dir: str) -> None:
        import ray

        from vf3d.ray_runtime import require_usable_gpus

        self.config = config_lib.from_dict(SynthesizeConfig, config)
        self.out_dir = storage.local_or_uri(out_dir)
        self.batches_done = 0
        # Any stage may be given GPUs by its pool's config; one that CUDA cannot use fails here,
        # at start, instead of running at CPU speed on a GPU's reservation.
        require_usable_gpus(f"synthesize stage {self.stage!r}")
        # Outside Ray (tests, a bare loop) a stage is a plain object on this process's devices.
        in_ray = ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None
        self.actor = actor_name()
        self.device = self.autocast_dtype = None
        if self.uses_torch:
            import torch

            uses_gpu = bool(ray.get_gpu_ids()) if in_ray else True
            self.device = torch.device("cuda" if torch.cuda.is_available() and uses_gpu else "cpu")
            precision = self.config.generation.precision
            self.autocast_dtype = torch.bfloat16 if self.device.type == "cuda" and precision in ("auto", "bf16") else None
        self.failures = FailureTracker(self.stage, self.out_dir, self.config.failures.max_consecutive_failures, self.actor)
        self.meter = metrics.StageMeter("synthesize", self.stage, gpus=stage_pools(self.config)[self.stage].num_gpus if in_ray else 0.0)

    def autocast(self):
        """bf16 autocast on GPUs (weights stay fp32), nothing on the CPU."""
        import contextlib

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        import torch

        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _maybe_inject_fault(self) -> None:
        fault = self.config.fault
        if self.batches_done == fault.error_after_batches:
            if fault.cuda_error_stage == self.stage:
                maybe_fire_fault(self.out_dir, self.stage, "cuda")
            if fault.os_error_stage == self.stage:
                maybe_fire_fault(self.out_dir, self.stage, "oserror")
        if fault.kill_stage != self.stage or self.batches_done != fault.after_batches:
            return
        if not storage.create_exclusive(storage.join(self.out_dir, FAULT_MARKER.format(stage=self.stage))):
            return  # another actor fired it (exactly one does, on a local disk)
        print(f"[fault injection] {self.stage} actor {self.actor} exits mid-batch", flush=True)
        os._exit(1)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.failures.call(self._call, batch)

    def _call(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        self._maybe_inject_fault()
        errors = [str(value) for value in batch["error"]]
        healthy = [index for index, error in enumerate(errors) if not error]
        columns, failures = self.process(batch, healthy) if healthy else ({}, {})
        placeholders = self.placeholders(batch)
        output = {name: value for name, value in batch.items() if name not in self.drop_columns}
        for name, placeholder in placeholders.items():
            values = [placeholder] * len(errors)
            for index, value in zip(healthy, columns.get(name, [])):
                if value is not None:  # None: the row failed here and keeps the placeholder
                    values[index] = value
            output[name] = (
                np.stack(values)
                if isinstance(placeholder, np.ndarray)
                else np.array(values, dtype=object if not isinstance(placeholder, float) else np.float64)
            )
        stages = [str(value) for value in batch["error_stage"]]
        for index, reason in failures.items():
            errors[index], stages[index] = reason, self.stage
        seconds = (time.perf_counter() - started) / max(len(healthy), 1)
        traces = []
        for index, trace in enumerate(batch["trace"]):
            record = json.loads(str(trace))
            if index in healthy:
                # alive: seconds since this actor started (model loading and waits included), for billed GPU-hours.
                record[self.stage] = {"actor": self.actor, "seconds": round(seconds, 6), "alive": round(self.meter.alive_seconds(), 3)}
            traces.append(json.dumps(record))
        output.update(
            error=np.array(errors, dtype=object), error_stage=np.array(stages, dtype=object), trace=np.array(traces, dtype=object)
        )
        self.batches_done += 1
        self.meter.batch(len(healthy), time.perf_counter() - started)
        return output

    drop_columns: tuple[str, ...] = ()
    """Input columns the stage consumes and does not pass on."""

    def placeholders(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        raise NotImplementedError

    def process(self, batch: dict[str, np.ndarray], rows: list[int]) -> tuple[dict[str, list], dict[int, str]]:
        raise NotImplementedError

    def per_row(self, rows: list[int], on_batch) -> tuple[list, dict[int, str]]:
        """Run `on_batch(rows)` → list of results; if the batch raises an input error, retry row
        by row so one bad input costs only its own row (reason recorded), not its batch-mates'.
        An infrastructure error propagates (the batch is retried whole, no row is marked)."""
        try:
            return on_batch(rows), {}
        except Exception as error:  # noqa: BLE001 - sorted into input and infrastructure errors
            if is_infrastructure_error(error):
                raise
            if len(rows) == 1:
                return [None], {rows[0]: _short_error(error)}
        results, failures = [], {}
        for row in rows:
            try:
                results.append(on_batch([row])[0])
            except Exception as error:  # noqa: BLE001
                if is_infrastructure_error(error):
                    raise
                results.append(None)
                failures[row] = _short_error(error)
        return results, failures


class FirstFrames(_ModelStage):
    """Ray Data stage: rows → `first_frame` uint8 [S, S, 3] on white, at the video model's size.

    Inputs with an image: decoded, background removed, recentred on white (vf3d.preprocess).
    Inputs without: drawn by the text-to-image model (loaded on first need, so image-only runs never
    load it), each from its own seed.
    """

    stage = "first_frame"
    drop_columns = ("image",)

    def __init__(self, config: dict[str, Any], out_dir: str, resolution: int) -> None:
        super().__init__(config, out_dir)
        self.resolution = resolution
        self._generator = None

    def generator(self):
        """The text-to-image first-frame model, built once per actor, on the first prompt without an
        image: diffusers and transformers are imported only then, so an actor that only recentres
        given images never pays for them (8.6 vs 5.1 CPU-seconds for its start and first batch on
        2 cores, bench/process_imports.py)."""
        if self._generator is None:
            _quiet_model_loading()
            from vf3d.models.video import FirstFrameGenerator
            from vf3d.models.video.config import VideoModelConfig
            from vf3d.models.video.text_to_image import tiny_text_to_image_pipeline

            generation = self.config.generation
            if generation.text_to_image_path is not None:
                self._generator = FirstFrameGenerator.from_pretrained(
                    storage.cached_local_copy(generation.text_to_image_path),
                    self.resolution,
                    generation.text_to_image_steps,
                    generation.text_to_image_guidance,
                )
            else:
                tiny = VideoModelConfig(random_init=True, resolution=self.resolution, max_text_tokens=77, seed=self.config.seed)
                self._generator = FirstFrameGenerator(
                    tiny_text_to_image_pipeline(tiny), self.resolution, generation.text_to_image_steps, generation.text_to_image_guidance
                )
            self._generator.to(self.device)
        return self._generator

    def placeholders(self, batch):
        return {"first_frame": np.full((self.resolution, self.resolution, 3), 255, np.uint8), "first_frame_given": False}

    def process(self, batch, rows):
        from vf3d.preprocess import ImageInputError, prepare_image

        frames: dict[int, np.ndarray] = {}
        failures: dict[int, str] = {}
        to_draw = []
        for row in rows:
            image = bytes(batch["image"][row])
            if not image:
                to_draw.append(row)
                continue
            try:
                tensor = prepare_image(image, self.resolution, mask_method=self.config.generation.image_mask_method)
            except ImageInputError as error:
                failures[row] = f"image: {error}"
                continue
            frames[row] = (tensor.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        if to_draw:

            def draw(indices):
                with self.autocast():
                    return list(
                        self.generator()(
                            [str(batch["prompt"][index]) for index in indices], seed=[int(batch["seed"][index]) for index in indices]
                        )
                    )

            drawn, draw_failures = self.per_row(to_draw, draw)
            failures.update(draw_failures)
            frames.update({row: image for row, image in zip(to_draw, drawn) if image is not None})
        return {
            "first_frame": [frames.get(row) for row in rows],
            "first_frame_given": [bool(batch["image"][row]) for row in rows],
        }, failures


class GenerateOrbits(_ModelStage):
    """Ray Data stage: first frame + prompt + elevation → `frames` uint8 [V, S, S, 3] and `cameras`
    float32 [V, 25] (the orbit poses the elevation conditioning asked for)."""

    stage = "generate"
    drop_columns = ("first_frame",)

    def __init__(self, config: dict[str, Any], out_dir: str, video_model: str) -> None:
        super().__init__(config, out_dir)
        _quiet_model_loading()
        from vf3d.models.video import OrbitVideoPipeline

        # A model on an object store is downloaded once per actor (diffusers loads from a local directory).
        self.pipeline = OrbitVideoPipeline.from_pretrained(storage.cached_local_copy(video_model), local_files_only=True).to(self.device)
        self.pipeline.set_progress_bar_config(disable=True)
        self.num_views = int(self.pipeline.config.num_views)
        self.resolution = int(self.pipeline.config.resolution)

    def placeholders(self, batch):
        return {
            "frames": np.full((self.num_views, self.resolution, self.resolution, 3), 255, np.uint8),
            "cameras": np.zeros((self.num_views, shards.CAMERA_DIM), np.float32),
        }

    def process(self, batch, rows):
        generation = self.config.generation

        def generate(indices):
            with self.autocast():
                output = self.pipeline.generate_orbit(
                    [np.asarray(batch["first_frame"][index]) for index in indices],
                    [str(batch["prompt"][index]) for index in indices],
                    [float(batch["elevation"][index]) for index in indices],
                    steps=generation.num_inference_steps,
                    guidance=generation.guidance_scale,
                    seed=[int(batch["seed"][index]) for index in indices],
                )
            return list(zip(output.frames, output.cameras))

        results, failures = self.per_row(rows, generate)
        metrics.count("vf3d_videos_generated", len(rows) - len(failures), pipeline="synthesize")
        return {
            "frames": [None if result is None else result[0] for result in results],
            "cameras": [None if result is None else result[1] for result in results],
        }, failures


class ForegroundMasks(_ModelStage):
    """Ray Data stage (CPU): `frames` → `masks` uint8 [V, S, S] (255 = object, against the white
    background the model generates on), `statistics` (JSON: the heuristics' numbers), `reasons`
    (JSON list: the heuristics that failed) and, when a probe is configured, `probe_views` uint8
    [K, S, S, 3]: the K views the probe's encoder reads (evenly spaced), so the GPU filter stage
    receives them ready and does no CPU work of its own."""

    stage = "mask"
    uses_torch = False

    def __init__(self, config: dict[str, Any], out_dir: str) -> None:
        super().__init__(config, out_dir)
        probe_path = self.config.filter.probe_path
        self.probe_views = 0
        if probe_path:
            from vf3d.models.quality_filter import QualityProbe

            self.probe_views = int(QualityProbe.load_config(storage.cached_local_copy(probe_path)).encoder.num_views)

    def placeholders(self, batch):
        frames = batch["frames"]
        columns: dict[str, Any] = {"masks": np.zeros(frames.shape[1:4], np.uint8), "statistics": "{}", "reasons": "[]"}
        if self.probe_views:
            columns["probe_views"] = np.zeros((self.probe_views, *frames.shape[2:5]), np.uint8)
        return columns

    def process(self, batch, rows):
        from vf3d.models.orbit_views import evenly_spaced_views
        from vf3d.synthesis.heuristics import heuristic_reasons, orbit_statistics, white_background_masks

        threshold = self.config.filter.mask_threshold
        columns: dict[str, list] = {"masks": [], "statistics": [], "reasons": [], "probe_views": []}
        for row in rows:
            frames = np.asarray(batch["frames"][row])
            masks = white_background_masks(frames, threshold)
            statistics = orbit_statistics(frames, masks)
            columns["masks"].append(masks)
            columns["statistics"].append(json.dumps(statistics))
            columns["reasons"].append(json.dumps(heuristic_reasons(statistics, self.config.filter.heuristics)))
            if self.probe_views:
                columns["probe_views"].append(np.ascontiguousarray(frames[evenly_spaced_views(len(frames), self.probe_views)]))
        return columns, {}


class FilterOrbits(_ModelStage):
    """Ray Data stage (GPU): `probe_views` uint8 [K, S, S, 3] → `quality` float (the linear probe
    on frozen encoder features; NaN for error rows). Only in the pipeline when `filter.probe_path`
    is set; the heuristics and the encoding happen on CPU stages around it."""

    stage = "filter"
    drop_columns = ("probe_views",)

    def __init__(self, config: dict[str, Any], out_dir: str, video_model: str = "") -> None:
        super().__init__(config, out_dir)
        _quiet_model_loading(with_diffusers=False)  # the probe's encoder is a transformers model
        from vf3d.synthesis.quality import QualityFilter

        probe_path = self.config.filter.probe_path
        if not probe_path:
            raise config_lib.ConfigError("FilterOrbits needs filter.probe_path (without a probe the pipeline leaves the stage out)")
        probe_path = storage.cached_local_copy(probe_path)
        self.probe = QualityFilter.from_pretrained(probe_path, device=self.device, encoder=self._encoder_here(probe_path))

    def _encoder_here(self, probe_path: str):
        """The probe's recorded encoder config, pointed at `filter.encoder_path` when that is set."""
        if self.config.filter.encoder_path is None:
            return None
        from vf3d.models.quality_filter import QualityProbe

        encoder = QualityProbe.load_config(probe_path).encoder
        encoder.encoder.pretrained_path = self.config.filter.encoder_path
        return encoder

    def placeholders(self, batch):
        return {"quality": float("nan")}

    def process(self, batch, rows):
        def score(indices):
            with self.autocast():
                return [float(value) for value in self.probe.score(np.stack([batch["probe_views"][index] for index in indices]))]

        scores, failures = self.per_row(rows, score)
        return {"quality": scores}, failures


def probe_threshold(config: SynthesizeConfig) -> float | None:
    """The score below which the probe rejects an orbit: `filter.min_score`, else the probe's own
    threshold (read from its config, no weights loaded); None without a probe."""
    if config.filter.min_score is not None:
        return config.filter.min_score
    if not config.filter.probe_path:
        return None
    from vf3d.models.quality_filter import QualityProbe

    return float(QualityProbe.load_config(storage.cached_local_copy(config.filter.probe_path)).threshold)


class EncodeOrbits:
    """Ray Data stage (CPU): scored orbits → encoded shard rows (PNG views and masks) with an
    `outcome` ("kept", "rejected", "error"): `FILTERED_SCHEMA`, what the writers take.

    An orbit is kept when neither the heuristics (`reasons`, from ForegroundMasks) nor the probe
    (`quality` below `probe_threshold`) reject it; every reason is recorded.
    """

    stage = "encode"

    def __init__(self, config: dict[str, Any], out_dir: str, video_model: str) -> None:
        self.config = config_lib.from_dict(SynthesizeConfig, config)
        self.out_dir = storage.local_or_uri(out_dir)
        self.video_model = video_model
        self.min_score = probe_threshold(self.config)
        self.actor = actor_name()
        self.batches_done = 0
        self.failures = FailureTracker(self.stage, self.out_dir, self.config.failures.max_consecutive_failures, self.actor)
        self.meter = metrics.StageMeter("synthesize", self.stage)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        return self.failures.call(self._call, batch)

    def _call(self, batch: dict[str, np.ndarray]) -> pa.Table:
        fault = self.config.fault
        if fault.os_error_stage == self.stage and self.batches_done == fault.error_after_batches:
            maybe_fire_fault(self.out_dir, self.stage, "oserror")
        batch_started = time.perf_counter()
        rows = []
        for index, identifier in enumerate(batch["id"]):
            started = time.perf_counter()
            trace = json.loads(str(batch["trace"][index]))
            error, error_stage = str(batch["error"][index]), str(batch["error_stage"][index])
            row = {"id": str(identifier), "error": error, "error_stage": error_stage}
            if error:
                rows.append({**row, "outcome": "error", "trace": json.dumps(trace)})
                continue
            statistics = json.loads(str(batch["statistics"][index]))
            reasons = json.loads(str(batch["reasons"][index]))
            quality = float(batch["quality"][index]) if "quality" in batch and not math.isnan(float(batch["quality"][index])) else None
            if quality is not None and self.min_score is not None and quality < self.min_score:
                reasons.append("probe_score")
            record = shards.OrbitRecord(
                id=str(identifier),
                source="synthetic",
                prompt=str(batch["prompt"][index]),
                rgb=np.asarray(batch["frames"][index]),
                mask=np.asarray(batch["masks"][index]),
                cameras=np.asarray(batch["cameras"][index]),
                elevation=float(batch["elevation"][index]),
                quality=quality,
                metadata={
                    "seed": int(batch["seed"][index]),
                    "elevation_given": bool(batch["elevation_given"][index]),
                    "first_frame_given": bool(batch["first_frame_given"][index]),
                    "video_model": self.video_model,
                    "steps": self.config.generation.num_inference_steps,
                    "guidance": self.config.generation.guidance_scale,
                    "filter": {
                        **{key: round(value, 6) for key, value in statistics.items()},
                        "probe_score": quality,
                        "min_score": self.min_score,
                    },
                    "trace": trace,
                },
            )
            try:
                encoded = shards.encode_record(record)
            except shards.ShardFormatError as problem:  # the model made something that is no orbit
                rows.append(
                    {**row, "error": _short_error(problem), "error_stage": self.stage, "outcome": "error", "trace": json.dumps(trace)}
                )
                continue
            trace[self.stage] = {"actor": self.actor, "seconds": round(time.perf_counter() - started, 6)}
            rows.append({**row, **encoded, "reasons": reasons, "outcome": "rejected" if reasons else "kept", "trace": json.dumps(trace)})
        self.batches_done += 1
        self.meter.batch(len(rows), time.perf_counter() - batch_started)
        return _filtered_table(rows)


FILTERED_SCHEMA = (
    shards.REJECTED_SCHEMA.append(pa.field("outcome", pa.string()))
    .append(pa.field("error", pa.string()))
    .append(pa.field("error_stage", pa.string()))
    .append(pa.field("trace", pa.string()))
)
"""What EncodeOrbits hands the writers: every column of a rejected orbit plus the outcome, the
error (if any) and the trace. Error rows leave the orbit columns empty."""


def _filtered_table(rows: list[dict[str, Any]]) -> pa.Table:
    empty_orbit = {
        "source": "synthetic",
        "prompt": "",
        "asset": None,
        "frames": [],
        "masks": [],
        "cameras": [],
        "num_orbit_views": 0,
        "elevation": 0.0,
        "resolution": 0,
        "quality": None,
        "format_version": shards.FORMAT_VERSION,
        "metadata": "{}",
        "reasons": [],
    }
    return pa.Table.from_pylist([{**empty_orbit, **row} for row in rows], schema=FILTERED_SCHEMA)


class WriteSynthesized:
    """Ray Data stage, on a pool of writers: a batch of encoded rows → one file per table it has
    rows for. File names come from the ids they hold, so writers never collide and a retried
    batch rewrites the same files. A storage OSError is an infrastructure error: the batch is
    retried (`failures`), and a writer failing K batches in a row exits for Ray to restart.

    Returns one row of counts and the stage traces summed over the batch (for progress output
    and the run summary)."""

    stage = "write"

    def __init__(self, out_dir: str, config: dict[str, Any] | None = None) -> None:
        self.config = config_lib.from_dict(SynthesizeConfig, config or {})
        self.out_dir = out_dir
        self.writer = shards.OrbitShardWriter(out_dir, prefix="synthetic")
        self.batches_done = 0
        self.failures = FailureTracker(self.stage, out_dir, self.config.failures.max_consecutive_failures, actor_name())
        self.meter = metrics.StageMeter("synthesize", self.stage)

    def __call__(self, batch: pa.Table) -> dict[str, list]:
        return self.failures.call(self._call, batch)

    def _call(self, batch: pa.Table) -> dict[str, list]:
        fault = self.config.fault
        if fault.os_error_stage == self.stage and self.batches_done == fault.error_after_batches:
            maybe_fire_fault(self.out_dir, self.stage, "oserror")
        started = time.perf_counter()
        outcome = batch.column("outcome")
        kept = batch.filter(pc.equal(outcome, "kept"))
        rejected = batch.filter(pc.equal(outcome, "rejected"))
        errors = batch.filter(pc.equal(outcome, "error"))
        self.writer.write(kept.select(shards.ORBIT_SCHEMA.names))
        self.writer.write_rejected(rejected.select(shards.REJECTED_SCHEMA.names))
        self.writer.write_errors(
            [
                {"id": row["id"], "stage": row["error_stage"] or "unknown", "reason": row["error"]}
                for row in errors.select(["id", "error", "error_stage"]).to_pylist()
            ]
        )
        self.batches_done += 1
        self.meter.batch(batch.num_rows, time.perf_counter() - started)
        for name, table in (("kept", kept), ("rejected", rejected), ("error", errors)):
            metrics.count("vf3d_rows_written", table.num_rows, pipeline="synthesize", outcome=name)
        stages: dict[str, dict[str, Any]] = {}
        for trace in batch.column("trace").to_pylist():
            for stage, entry in json.loads(trace).items():
                totals = stages.setdefault(stage, {"items": 0, "seconds": 0.0, "actors": [], "alive": {}})
                totals["items"] += 1
                totals["seconds"] += entry["seconds"]
                if entry["actor"] not in totals["actors"]:
                    totals["actors"].append(entry["actor"])
                if "alive" in entry:  # the longest an actor had lived at any of its batches
                    totals["alive"][entry["actor"]] = max(totals["alive"].get(entry["actor"], 0.0), entry["alive"])
        reasons: dict[str, int] = {}
        for row_reasons in rejected.column("reasons").to_pylist():
            for reason in row_reasons:
                reasons[reason] = reasons.get(reason, 0) + 1
        error_stages: dict[str, int] = {}
        for stage in errors.column("error_stage").to_pylist():
            error_stages[stage] = error_stages.get(stage, 0) + 1
        return {
            "kept": [kept.num_rows],
            "rejected": [rejected.num_rows],
            "errors": [errors.num_rows],
            "stages": [json.dumps(stages)],
            "reasons": [json.dumps(reasons)],
            "error_stages": [json.dumps(error_stages)],
        }


def stage_pools(config: SynthesizeConfig) -> dict[str, ActorPoolConfig]:
    """Every traced stage's actor pool, by stage name (PIPELINE_STAGES), for the run summary."""
    return {
        "first_frame": config.first_frame_pool,
        "generate": config.generate_pool,
        "mask": config.mask_pool,
        "filter": config.filter_pool,
        "encode": config.encode_pool,
    }
