"""`synthesize`: prompts (or images) → filtered synthetic orbit shards, as a resumable Ray Data job.

    plan (driver)      read the inputs' ids (only that column), refuse null/duplicate ids, list ids
                       already finished in the output (kept, rejected or failed), check the models
    prepare (tasks)    drop finished ids, validate, seed each id    ─┐
    FirstFrames        text-to-image or the given image              │ each on its own elastic
    GenerateOrbits     the fine-tuned orbit video model              │ actor pool (min/max/initial
    ForegroundMasks    masks against the white background            │ actors, CPUs, GPUs, batch
    FilterOrbits       heuristics + probe → kept / rejected          │ size from the config)
    WriteSynthesized   orbits / _rejected / _errors                 ─┘

Exactly once: every input id ends in exactly one of the three tables; files are named by the ids
they hold and written atomically, and a rerun skips ids present in any table before any model
runs, so a killed run rerun with the same arguments processes only what is missing. Ray Data
restarts a dead actor and retries its batch; seeds come from ids, so a retried batch computes the
same orbits and rewrites the same file names.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vf3d import config as config_lib
from vf3d.config import ConfigError, SynthesizeConfig
from vf3d.data import shards
from vf3d.data.assets import asset_id, caption_for, load_captions
from vf3d.synthesis.stages import STAGES, FilterOrbits, FirstFrames, ForegroundMasks, GenerateOrbits, WriteSynthesized, prepare_inputs

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
TABLE_SUFFIXES = (".parquet", ".pq", ".csv", ".jsonl")
SUMMARY_NAME = "synthesize_summary.json"
RETRIED_DIRNAME = "_retried"
"""Sub-folder of `_errors/` where error files go when `retry_errors` retries their ids (kept, not
deleted, and invisible to readers)."""


class InputError(ConfigError):
    """The --prompts input cannot be used as it is (missing columns, null or duplicate ids)."""


@dataclass
class SynthesisInputs:
    """The inputs of a run: every id, whether any row needs a text-to-image first frame, and how
    Ray Data reads the rows."""

    ids: list[str]
    needs_text_to_image: bool
    images_root: str
    parquet_path: Path | None = None
    table: pa.Table | None = None

    def dataset(self):
        """The input rows as a Ray Dataset (Parquet is streamed; small tables are passed as they are)."""
        import ray

        if self.parquet_path is not None:
            return ray.data.read_parquet(str(self.parquet_path))
        return ray.data.from_arrow(self.table)


def read_inputs(prompts: Path) -> SynthesisInputs:
    """Index --prompts: a Parquet/CSV/JSONL table (`id`, `prompt`, optional `image`, `elevation`)
    or a folder of images (ids from their relative paths, prompts from captions or file names)."""
    prompts = Path(prompts)
    if prompts.is_dir():
        paths = sorted((path for path in prompts.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()), key=lambda path: path.relative_to(prompts).as_posix())
        if not paths:
            raise InputError(f"--prompts folder holds no images ({', '.join(IMAGE_SUFFIXES)}): {prompts}")
        captions = load_captions(prompts)
        relative = [path.relative_to(prompts).as_posix() for path in paths]
        table = pa.table({"id": [asset_id(name) for name in relative], "prompt": [caption_for(path, prompts, captions) for path in paths], "image": relative})
        ids = _checked_ids(table.column("id"), prompts)
        return SynthesisInputs(ids=ids, needs_text_to_image=False, images_root=str(prompts), table=table)
    if not prompts.is_file():
        raise InputError(f"--prompts not found: {prompts}")
    suffix = prompts.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise InputError(f"--prompts must be a folder of images or a {'/'.join(TABLE_SUFFIXES)} file, got {prompts.name!r}")
    try:
        if suffix in (".parquet", ".pq"):
            schema = pq.read_schema(prompts)
            _check_columns(schema.names, prompts)
            ids_column = pq.read_table(prompts, columns=["id"]).column("id")
            return SynthesisInputs(ids=_checked_ids(ids_column, prompts), needs_text_to_image=_parquet_needs_text_to_image(prompts, schema.names), images_root=str(prompts.parent), parquet_path=prompts)
        if suffix == ".csv":
            import pyarrow.csv as pacsv

            # ids stay text even when they look like numbers ("007" is not 7).
            table = pacsv.read_csv(prompts, convert_options=pacsv.ConvertOptions(column_types={"id": pa.string(), "prompt": pa.string(), "image": pa.string()}))
        else:
            import pyarrow.json as pajson

            table = pajson.read_json(prompts)
    except (pa.ArrowInvalid, OSError) as error:
        raise InputError(f"--prompts {prompts} cannot be read: {' '.join(str(error).split())[:300]}") from None
    _check_columns(table.column_names, prompts)
    needs = "image" not in table.column_names or table.column("image").null_count > 0
    return SynthesisInputs(ids=_checked_ids(table.column("id"), prompts), needs_text_to_image=needs, images_root=str(prompts.parent), table=table)


def _check_columns(names: list[str], path: Path) -> None:
    if "id" not in names:
        raise InputError(f"{path}: no 'id' column (columns: {names}); every input needs a stable id")
    if "prompt" not in names and "image" not in names:
        raise InputError(f"{path}: needs a 'prompt' or an 'image' column (columns: {names})")


def _checked_ids(column: pa.ChunkedArray, path: Path) -> list[str]:
    """Ids as strings; null, empty or repeated ids are refused (they would break exactly-once)."""
    if column.null_count:
        row = int(pc.index(pc.is_null(column), True).as_py())
        raise InputError(f"{path}: row {row} has a null id")
    ids = [str(value) for value in column.to_pylist()]
    seen: set[str] = set()
    repeated = []
    for row, identifier in enumerate(ids):
        if not identifier.strip():
            raise InputError(f"{path}: row {row} has an empty id")
        if identifier in seen and len(repeated) < 5:
            repeated.append(identifier)
        seen.add(identifier)
    if repeated:
        raise InputError(f"{path}: ids must be unique; repeated: {repeated}")
    return ids


def _parquet_needs_text_to_image(path: Path, names: list[str]) -> bool:
    """Whether any row has no image, from the Parquet footer's null counts (no image is read)."""
    if "image" not in names:
        return True
    metadata = pq.ParquetFile(path).metadata
    column = names.index("image")
    for group in range(metadata.num_row_groups):
        statistics = metadata.row_group(group).column(column).statistics
        if statistics is None or not statistics.has_null_count or statistics.null_count > 0:
            return True
    return False


def finished_ids(out_dir: Path, retry_errors: bool) -> tuple[set[str], set[str], set[str]]:
    """(kept, rejected, failed) ids already in `out_dir`; failed is empty when errors are retried."""
    failed = set() if retry_errors else shards.read_ids(out_dir, table="errors")
    return shards.read_ids(out_dir, table="orbits"), shards.read_ids(out_dir, table="rejected"), failed


def _archive_retried_errors(out_dir: Path, retried: set[str]) -> int:
    """Move error files holding ids about to be retried into `_errors/_retried/` (nothing is deleted;
    readers skip the folder), so a retried id cannot end up in two tables. Returns files moved."""
    moved = 0
    for path in shards.list_shard_files(out_dir, table="errors"):
        if retried & set(pq.read_table(path, columns=["id"]).column("id").to_pylist()):
            archive = path.parent / RETRIED_DIRNAME
            archive.mkdir(exist_ok=True)
            path.replace(archive / f"{time.strftime('%Y%m%dT%H%M%S')}-{path.name}")
            moved += 1
    return moved


def video_model_settings(video_model: Path) -> dict[str, Any]:
    """model_index.json of a fine-tuned orbit video model (resolution, num_views); clear errors for
    anything else (a missing folder, a base Wan model not yet fine-tuned)."""
    index = Path(video_model) / "model_index.json"
    if not index.is_file():
        raise ConfigError(f"--video-model {video_model} is not a diffusers pipeline directory (no model_index.json); make one with `vf3d finetune-video`")
    settings = json.loads(index.read_text())
    if settings.get("_class_name") != "OrbitVideoPipeline":
        raise ConfigError(f"--video-model {video_model} holds a {settings.get('_class_name')} pipeline, not a fine-tuned orbit video model; run `vf3d finetune-video` on it first")
    return settings


def synthesize(prompts: Path, video_model: Path, out_dir: Path, config: SynthesizeConfig, log=print) -> dict[str, Any]:
    """Run the synthesis pipeline on the connected Ray cluster; returns (and writes) the summary."""
    config = config.validate()
    out_dir, video_model = Path(out_dir), Path(video_model).resolve()
    settings = video_model_settings(video_model)
    inputs = read_inputs(prompts)
    if inputs.needs_text_to_image and config.generation.text_to_image_path is None and not config.generation.random_text_to_image:
        raise ConfigError("some inputs have no image, so first frames must be drawn: set generation.text_to_image_path to a local diffusers text-to-image pipeline")
    if config.filter.probe_path is not None:
        from vf3d.models.quality_filter import QualityProbe

        QualityProbe.load_config(config.filter.probe_path)  # a wrong directory fails now, not in every actor
    out_dir.mkdir(parents=True, exist_ok=True)
    config_lib.save_json(config, out_dir / "synthesize_config.json")
    shards.remove_partials(out_dir)
    all_ids = set(inputs.ids)
    kept, rejected, failed = finished_ids(out_dir, config.retry_errors)
    done = (kept | rejected | failed) & all_ids
    pending = len(all_ids) - len(done)
    if config.retry_errors:
        retried = shards.read_ids(out_dir, table="errors") & (all_ids - kept - rejected)
        if retried:
            log(f"retrying {len(retried)} inputs that failed before ({_archive_retried_errors(out_dir, retried)} error files moved to _errors/{RETRIED_DIRNAME}/)")
    log(f"{len(all_ids)} inputs in {prompts}: {len(kept & all_ids)} kept, {len(rejected & all_ids)} rejected and {len(failed & all_ids)} failed before; {pending} to synthesize")
    if not config.filter.probe_path:
        log("quality filter: heuristics only (no filter.probe_path; train one with `vf3d train-filter`)")

    started = time.perf_counter()
    totals: dict[str, Any] = {"kept": 0, "rejected": 0, "errors": 0, "stages": {}, "reasons": {}, "error_stages": {}}
    if pending:
        written = _build_pipeline(inputs, done, video_model, int(settings.get("resolution", 512)), out_dir, config)
        for row in written.iter_rows():
            _accumulate(totals, row)
            finished = totals["kept"] + totals["rejected"] + totals["errors"]
            elapsed = time.perf_counter() - started
            actors = ", ".join(f"{stage} {len(totals['stages'].get(stage, {}).get('actors', []))}" for stage in STAGES)
            log(f"  {finished}/{pending} inputs: {totals['kept']} kept, {totals['rejected']} rejected, {totals['errors']} errors; "
                f"{(totals['kept'] + totals['rejected']) / max(elapsed, 1e-9):.2f} videos/s; actors used: {actors}")
    summary = _summary(out_dir, inputs, config, totals, pending, len(done), time.perf_counter() - started, str(video_model))
    (out_dir / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    log(f"synthesize: {summary['kept_total']} kept, {summary['rejected_total']} rejected, {summary['errors_total']} errors of {summary['inputs']} inputs in {out_dir} "
        f"({summary['videos_this_run']} videos in {summary['seconds']} s, {summary['videos_per_second']} videos/s, pass rate {summary['pass_rate']})")
    return summary


def _build_pipeline(inputs: SynthesisInputs, done: set[str], video_model: Path, resolution: int, out_dir: Path, config: SynthesizeConfig):
    import ray

    as_dict = config_lib.to_dict(config)
    common = {"config": as_dict, "out_dir": str(out_dir)}
    done_ids = pa.array(sorted(done), pa.string())
    rows = inputs.dataset().map_batches(prepare_inputs, fn_kwargs={"done_ids": done_ids, "config": as_dict, "images_root": inputs.images_root}, batch_format="pyarrow", batch_size=4096, num_cpus=0.25)
    # Small blocks spread the work over every actor of a pool (a whole input file is one block).
    smallest_batch = min(pool.batch_size for pool in (config.first_frame_pool, config.generate_pool, config.mask_pool, config.filter_pool))
    rows = rows.repartition(target_num_rows_per_block=smallest_batch)
    stages = [
        (FirstFrames, config.first_frame_pool, {**common, "resolution": resolution}),
        (GenerateOrbits, config.generate_pool, {**common, "video_model": str(video_model)}),
        (ForegroundMasks, config.mask_pool, common),
        (FilterOrbits, config.filter_pool, {**common, "video_model": str(video_model)}),
    ]
    for stage_class, pool, kwargs in stages:
        rows = rows.map_batches(
            stage_class,
            fn_constructor_kwargs=kwargs,
            batch_size=pool.batch_size,
            compute=ray.data.ActorPoolStrategy(min_size=pool.min_actors, max_size=pool.max_actors, initial_size=pool.initial_actors or pool.min_actors),
            num_cpus=pool.num_cpus,
            num_gpus=pool.num_gpus,
            batch_format="numpy",
        )
    return rows.map_batches(WriteSynthesized, fn_constructor_kwargs={"out_dir": str(out_dir)}, batch_size=config.rows_per_shard, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.25, batch_format="pyarrow")


def _accumulate(totals: dict[str, Any], row: dict[str, Any]) -> None:
    for key in ("kept", "rejected", "errors"):
        totals[key] += int(row[key])
    for stage, entry in json.loads(row["stages"]).items():
        stage_totals = totals["stages"].setdefault(stage, {"items": 0, "seconds": 0.0, "actors": []})
        stage_totals["items"] += entry["items"]
        stage_totals["seconds"] += entry["seconds"]
        stage_totals["actors"].extend(actor for actor in entry["actors"] if actor not in stage_totals["actors"])
    for key in ("reasons", "error_stages"):
        for name, count in json.loads(row[key]).items():
            totals[key][name] = totals[key].get(name, 0) + count


def _summary(out_dir: Path, inputs: SynthesisInputs, config: SynthesizeConfig, totals: dict[str, Any], pending: int, skipped: int, seconds: float, video_model: str) -> dict[str, Any]:
    """The run summary: what is on disk now (the exactly-once check) and what this run did."""
    all_ids = set(inputs.ids)
    tables = {name: shards.read_ids(out_dir, table=name) for name in ("orbits", "rejected", "errors")}
    rows = {name: shards.read_table(out_dir, columns=["id"], table=name).num_rows for name in tables}
    in_two_tables = (tables["orbits"] & tables["rejected"]) | (tables["orbits"] & tables["errors"]) | (tables["rejected"] & tables["errors"])
    accounted = (tables["orbits"] | tables["rejected"] | tables["errors"]) & all_ids
    videos = totals["kept"] + totals["rejected"]
    pools = {"first_frame": config.first_frame_pool, "generate": config.generate_pool, "mask": config.mask_pool, "filter": config.filter_pool}
    stages = {}
    for stage in STAGES:
        entry = totals["stages"].get(stage, {"items": 0, "seconds": 0.0, "actors": []})
        pool = pools[stage]
        stages[stage] = {
            "items": entry["items"],
            "busy_seconds": round(entry["seconds"], 3),
            "items_per_actor_second": round(entry["items"] / entry["seconds"], 4) if entry["seconds"] > 0 else None,
            "actors_used": len(entry["actors"]),
            "pool": {"min": pool.min_actors, "max": pool.max_actors, "gpus_per_actor": pool.num_gpus, "cpus_per_actor": pool.num_cpus, "batch_size": pool.batch_size},
            "gpu_hours": round(entry["seconds"] * pool.num_gpus / 3600, 6),
        }
    kept_total, rejected_total = len(tables["orbits"] & all_ids), len(tables["rejected"] & all_ids)
    return {
        "inputs": len(all_ids),
        "kept_total": kept_total,
        "rejected_total": rejected_total,
        "errors_total": len(tables["errors"] & all_ids),
        "missing": len(all_ids - accounted),
        "ids_in_two_tables": len(in_two_tables),
        "duplicate_rows": sum(rows.values()) - sum(len(ids) for ids in tables.values()),
        "pass_rate": round(kept_total / (kept_total + rejected_total), 4) if kept_total + rejected_total else None,
        "skipped_already_done": skipped,
        "pending_this_run": pending,
        "kept_this_run": totals["kept"],
        "rejected_this_run": totals["rejected"],
        "errors_this_run": totals["errors"],
        "videos_this_run": videos,
        "seconds": round(seconds, 2),
        "videos_per_second": round(videos / seconds, 4) if seconds > 0 and videos else 0.0,
        "gpu_hours": round(sum(stage["gpu_hours"] for stage in stages.values()), 6),
        "stages": stages,
        "reject_reasons": totals["reasons"],
        "errors_by_stage": totals["error_stages"],
        "quality_filter": "probe + heuristics" if config.filter.probe_path else "heuristics only",
        "video_model": video_model,
    }
