"""`synthesize`: prompts (or images) → filtered synthetic orbit shards, as a resumable Ray Data job.

    plan (driver)      read the inputs' ids (only that column), refuse null/duplicate ids, list ids
                       already finished in the output (kept, rejected or failed), check the models
    prepare (tasks)    drop finished ids, validate, seed each id    ─┐
    FirstFrames        text-to-image or the given image (GPU)        │ each on its own elastic
    GenerateOrbits     the fine-tuned orbit video model (GPU)        │ actor pool (min/max/initial
    ForegroundMasks    masks, heuristics, views to probe (CPU)       │ actors, CPUs, GPUs, batch
    FilterOrbits       the probe on those views only (GPU; if any)   │ size from the config)
    EncodeOrbits       PNG-encode frames and masks into rows (CPU)   │
    WriteSynthesized   orbits / _rejected / _errors (writer pool)   ─┘

Exactly once: every input id ends in exactly one of the three tables; files are named by the ids
they hold and written atomically, and a rerun skips ids present in any table before any model
runs, so a killed run rerun with the same arguments processes only what is missing. Ray Data
restarts a dead actor and retries its batch; seeds come from ids, so a retried batch computes the
same orbits and rewrites the same file names.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vf3d import config as config_lib
from vf3d import storage
from vf3d.atomic import write_json_atomic
from vf3d.config import ConfigError
from vf3d.data import shards
from vf3d.data.assets import asset_id, caption_for, load_captions
from vf3d.data.manifest import IdSet
from vf3d.models.video.config import is_orbit_video_index
from vf3d.synthesis.config import SynthesizeConfig
from vf3d.synthesis.failures import failure_summary
from vf3d.synthesis.lease import LeaseHeldError, OutputLease
from vf3d.synthesis.stages import (
    PIPELINE_STAGES,
    STAGES,
    FilterOrbits,
    FirstFrames,
    ForegroundMasks,
    GenerateOrbits,
    WriteSynthesized,
    prepare_inputs,
    stage_pools,
)

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
    Ray Data reads the rows. Only the ids are ever held by the driver; rows are streamed."""

    ids: pa.Array
    """string [n], unique and non-empty."""
    needs_text_to_image: bool
    images_root: str
    path: Path | str | None = None
    """The --prompts table (Parquet, CSV or JSONL; a local path or a URI), read by Ray Data; None
    for a folder."""
    format: str = "parquet"
    """"parquet", "csv" or "jsonl" (with `path`)."""
    table: pa.Table | None = None
    """A folder's index (id, prompt, image path), small enough to pass as it is."""
    _id_set: IdSet | None = field(default=None, repr=False)

    def id_set(self) -> IdSet:
        """The ids as an `IdSet` (built by the uniqueness check, else on first use)."""
        if self._id_set is None:
            self._id_set = IdSet(self.ids)
        return self._id_set

    def dataset(self):
        """The input rows as a Ray Dataset, streamed by Ray Data's readers (a folder's small index
        is passed as it is)."""
        import ray

        if self.table is not None:
            return ray.data.from_arrow(self.table)
        path, filesystem = storage.arrow_source(self.path)
        if self.format == "csv":
            import pyarrow.csv as pacsv

            return ray.data.read_csv(path, filesystem=filesystem, convert_options=pacsv.ConvertOptions(column_types=CSV_COLUMN_TYPES))
        if self.format == "jsonl":
            if filesystem is None:
                return ray.data.read_json(path, lines=True, file_extensions=None)
            # Ray Data refuses `filesystem=` with lines=True (its pandas reader); pyarrow's JSON
            # reader, which it uses otherwise, reads JSON Lines itself (as `read_inputs` does).
            return ray.data.read_json(path, filesystem=filesystem, file_extensions=None)
        from vf3d.synthesis.datasets import footer_readers_for

        with footer_readers_for(1):  # --prompts is one table
            return ray.data.read_parquet(path, filesystem=filesystem)


CSV_COLUMN_TYPES = {"id": pa.string(), "prompt": pa.string(), "image": pa.string()}
"""ids stay text even when they look like numbers ("007" is not 7)."""
INPUT_BLOCK_BYTES = 16 << 20
"""CSV/JSONL inputs are parsed in blocks of this size; only the ids of each block are kept."""


def read_inputs(prompts: Path | str) -> SynthesisInputs:
    """Index --prompts: a Parquet/CSV/JSONL table (`id`, `prompt`, optional `image`, `elevation`)
    or a folder of images (ids from their relative paths, prompts from captions or file names);
    a local path or an object-store URI.

    Tables are streamed: the driver keeps the `id` column only (and whether any `image` is null),
    whatever the size of the rows."""
    prompts = storage.local_or_uri(prompts)
    if storage.is_dir(prompts):
        # Relative POSIX paths, sorted; on an object store one recursive listing of the folder.
        relative = [name for name in storage.walk_files(prompts) if Path(name).suffix.lower() in IMAGE_SUFFIXES]
        if not relative:
            raise InputError(f"--prompts folder holds no images ({', '.join(IMAGE_SUFFIXES)}): {prompts}")
        captions = load_captions(prompts)
        table = pa.table(
            {
                "id": [asset_id(name) for name in relative],
                "prompt": [caption_for(name, ".", captions) for name in relative],
                "image": relative,
            }
        )
        ids, id_set = _checked_ids(table.column("id"), prompts)
        return SynthesisInputs(ids=ids, needs_text_to_image=False, images_root=str(prompts), table=table, _id_set=id_set)
    if not storage.is_file(prompts):
        raise InputError(f"--prompts not found: {prompts}")
    prompts_name = storage.name(prompts)
    suffix = Path(prompts_name).suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise InputError(f"--prompts must be a folder of images or a {'/'.join(TABLE_SUFFIXES)} file, got {prompts_name!r}")
    source, filesystem = storage.arrow_source(prompts)
    try:
        if suffix in (".parquet", ".pq"):
            schema = pq.read_schema(source, filesystem=filesystem)
            _check_columns(schema.names, prompts)
            ids, id_set = _checked_ids(pq.read_table(source, columns=["id"], filesystem=filesystem).column("id"), prompts)
            return SynthesisInputs(
                ids=ids,
                needs_text_to_image=_parquet_needs_text_to_image(prompts, schema.names),
                images_root=str(storage.parent(prompts)),
                path=prompts,
                _id_set=id_set,
            )
        if suffix == ".csv":
            import pyarrow.csv as pacsv

            read_options = pacsv.ReadOptions(block_size=INPUT_BLOCK_BYTES)
            with pacsv.open_csv(
                storage.open_input(prompts),
                read_options=read_options,
                convert_options=pacsv.ConvertOptions(column_types=CSV_COLUMN_TYPES, include_columns=[]),
            ) as reader:
                names = reader.schema.names  # the header (with include_columns=[], no cell is converted)
            _check_columns(names, prompts)
            wanted = [name for name in ("id", "image") if name in names]
            batches = pacsv.open_csv(
                storage.open_input(prompts),
                read_options=read_options,
                convert_options=pacsv.ConvertOptions(column_types=CSV_COLUMN_TYPES, include_columns=wanted),
            )
            fmt = "csv"
        else:
            import pyarrow.json as pajson

            batches = pajson.open_json(storage.open_input(prompts), read_options=pajson.ReadOptions(block_size=INPUT_BLOCK_BYTES))
            names = None
            fmt = "jsonl"
        chunks, needs, seen_names = [], "image" not in (names or ["image"]), set()
        for batch in batches:
            seen_names.update(batch.schema.names)
            if "id" in batch.schema.names:
                chunks.append(batch.column("id").cast(pa.string()))
            if "image" in batch.schema.names:
                needs = needs or batch.column("image").null_count > 0
            else:
                needs = True
    except (pa.ArrowInvalid, OSError) as error:
        raise InputError(f"--prompts {prompts} cannot be read: {' '.join(str(error).split())[:300]}") from None
    _check_columns(names if names is not None else sorted(seen_names), prompts)
    ids_column = pa.chunked_array(chunks, pa.string()) if chunks else pa.chunked_array([], pa.string())
    ids, id_set = _checked_ids(ids_column, prompts)
    return SynthesisInputs(
        ids=ids, needs_text_to_image=needs, images_root=str(storage.parent(prompts)), path=prompts, format=fmt, _id_set=id_set
    )


def _check_columns(names: list[str], path: Path) -> None:
    if "id" not in names:
        raise InputError(f"{path}: no 'id' column (columns: {names}); every input needs a stable id")
    if "prompt" not in names and "image" not in names:
        raise InputError(f"{path}: needs a 'prompt' or an 'image' column (columns: {names})")


def _checked_ids(column: pa.ChunkedArray | pa.Array, path: Path) -> tuple[pa.Array, IdSet]:
    """Ids as one string array [n], and their `IdSet` (the uniqueness check builds it; planning
    reuses it); null, empty or repeated ids are refused (they would break exactly-once).
    Vectorised: 4M ids take seconds and no Python string per id."""
    if column.null_count:
        row = int(pc.index(pc.is_null(column), True).as_py())
        raise InputError(f"{path}: row {row} has a null id")
    ids = column.cast(pa.string())
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    blank = pc.equal(pc.utf8_trim_whitespace(ids), "")
    if pc.any(blank).as_py():
        raise InputError(f"{path}: row {int(pc.index(blank, True).as_py())} has an empty id")
    id_set = IdSet(ids)
    repeats = id_set.repeated()
    if len(repeats):
        # In input order, like a reader would find them.
        examples = list(dict.fromkeys(ids.take(pa.array(np.sort(repeats)[:50])).to_pylist()))[:5]
        raise InputError(f"{path}: ids must be unique; repeated: {examples}")
    return ids, id_set


def _parquet_needs_text_to_image(path: Path | str, names: list[str]) -> bool:
    """Whether any row has no image, from the Parquet footer's null counts (no image is read)."""
    if "image" not in names:
        return True
    with storage.open_input(path) as file:
        metadata = pq.ParquetFile(file).metadata
    column = names.index("image")
    for group in range(metadata.num_row_groups):
        statistics = metadata.row_group(group).column(column).statistics
        if statistics is None or not statistics.has_null_count or statistics.null_count > 0:
            return True
    return False


@dataclass
class ResumePlan:
    """What is already in the output directory, measured against this run's inputs."""

    index: shards.ShardIndex
    """Every finished file's ids (from the id manifests), folded into one manifest file."""
    done: IdSet
    """Input ids already in a table this run does not redo (kept, rejected and, unless errors
    are retried, failed): the filter the prepare tasks apply, built once."""
    counts: dict[str, int]
    """Input ids found per table ("orbits", "rejected", "errors")."""
    pending: int
    """Inputs left to synthesize."""
    retried_files: int = 0
    """Error files moved to `_errors/_retried/` because their ids are retried."""


def plan_resume(inputs: SynthesisInputs, out_dir: Path | str, retry_errors: bool) -> ResumePlan:
    """Index the output directory once (manifests, plus the id column of shards without one),
    fold the index into one manifest file, and work out what this run has left to do.

    Call it holding the directory's lease (it removes partial files and folds manifests).
    """
    shards.remove_partials(out_dir)
    index = shards.index_shards(out_dir)
    inputs_set = inputs.id_set()
    # One bool per input and table: which inputs a table holds. Input ids are unique, so counting
    # marks counts distinct ids without hashing any string twice.
    held = {table: _marks(inputs_set, index.ids(table)) for table in shards.TABLES}
    counts = {table: int(marks.sum()) for table, marks in held.items()}
    retried_files = 0
    if retry_errors:
        retried = held["errors"] & ~held["orbits"] & ~held["rejected"]
        if retried.any():
            retried_files = _archive_retried_errors(out_dir, index.files_holding("errors", inputs_set.subset(retried)))
            index = shards.index_shards(out_dir, previous=index)  # the moved files drop out
    done_tables = ("orbits", "rejected") if retry_errors else shards.TABLES
    index = shards.compact_index(out_dir, index)
    done_marks = np.logical_or.reduce([held[table] for table in done_tables])
    done = inputs_set.subset(done_marks)
    return ResumePlan(index=index, done=done, counts=counts, pending=len(inputs.ids) - len(done), retried_files=retried_files)


def _marks(inputs_set: IdSet, ids: pa.Array) -> np.ndarray:
    """bool [len(inputs_set)]: which inputs appear in `ids` (string [m]; ids that are not inputs
    are ignored)."""
    marks = np.zeros(len(inputs_set), bool)
    positions = inputs_set.positions(ids)
    marks[positions[positions >= 0]] = True
    return marks


def finished_ids(out_dir: Path | str, retry_errors: bool) -> tuple[set[str], set[str], set[str]]:
    """(kept, rejected, failed) ids already in `out_dir`; failed is empty when errors are retried."""
    index = shards.index_shards(out_dir)
    as_set = lambda table: set(index.ids(table).to_pylist())  # noqa: E731
    return as_set("orbits"), as_set("rejected"), set() if retry_errors else as_set("errors")


def _archive_retried_errors(out_dir: Path | str, files: list[str]) -> int:
    """Move the error files `files` (they hold ids about to be retried) into `_errors/_retried/`
    (nothing is deleted; readers skip the folder), so a retried id cannot end up in two tables.
    Returns files moved."""
    folder = storage.join(out_dir, shards.ERRORS_DIRNAME)
    archive = storage.join(folder, RETRIED_DIRNAME)
    storage.makedirs(archive)
    for name in files:
        storage.move(storage.join(folder, name), storage.join(archive, f"{time.strftime('%Y%m%dT%H%M%S')}-{name}"))
    return len(files)


def video_model_settings(video_model: Path | str) -> dict[str, Any]:
    """model_index.json of a fine-tuned orbit video model (resolution, num_views); clear errors for
    anything else (a missing folder, a base Wan model not yet fine-tuned)."""
    index = storage.join(video_model, "model_index.json")
    if not storage.is_file(index):
        raise ConfigError(
            f"--video-model {video_model} is not a diffusers pipeline directory (no model_index.json); make one with `vf3d finetune-video`"
        )
    settings = json.loads(storage.read_text(index))
    if not is_orbit_video_index(settings):
        raise ConfigError(
            f"--video-model {video_model} holds a {settings.get('_class_name')} pipeline, not a fine-tuned orbit video model; run `vf3d finetune-video` on it first"
        )
    return settings


def synthesize(prompts: Path | str, video_model: Path | str, out_dir: Path | str, config: SynthesizeConfig, log=print) -> dict[str, Any]:
    """Run the synthesis pipeline on the connected Ray cluster; returns (and writes) the summary.

    Every location may be a local path or an object-store URI (vf3d.storage). Holds `out_dir`'s
    lease (vf3d.synthesis.lease) from planning to the summary: a second run on the same directory
    refuses with the holder's host, pid and start time."""
    config = config.validate()
    out_dir = storage.local_or_uri(out_dir)
    video_model = video_model if storage.is_uri(video_model) else Path(video_model).resolve()
    settings = video_model_settings(video_model)
    inputs = read_inputs(prompts)
    if inputs.needs_text_to_image and config.generation.text_to_image_path is None and not config.generation.random_text_to_image:
        raise ConfigError(
            "some inputs have no image, so first frames must be drawn: set generation.text_to_image_path to a local diffusers text-to-image pipeline"
        )
    if config.filter.probe_path is not None:
        from vf3d.models.quality_filter import QualityProbe

        QualityProbe.load_config(storage.cached_local_copy(config.filter.probe_path))  # a wrong directory fails now, not in every actor
    storage.makedirs(out_dir)
    with OutputLease(out_dir, config.lease, command="synthesize", log=log) as lease:
        config_lib.save_json(config, storage.join(out_dir, "synthesize_config.json"))
        plan = plan_resume(inputs, out_dir, config.retry_errors)
        if plan.retried_files:
            log(f"retrying inputs that failed before ({plan.retried_files} error files moved to _errors/{RETRIED_DIRNAME}/)")
        failed_before = 0 if config.retry_errors else plan.counts["errors"]
        log(
            f"{len(inputs.ids)} inputs in {prompts}: {plan.counts['orbits']} kept, {plan.counts['rejected']} rejected and {failed_before} failed before; {plan.pending} to synthesize"
        )
        if not config.filter.probe_path:
            log("quality filter: heuristics only (no filter.probe_path; train one with `vf3d train-filter`)")

        started, started_at = time.perf_counter(), time.time()
        totals: dict[str, Any] = {"kept": 0, "rejected": 0, "errors": 0, "stages": {}, "reasons": {}, "error_stages": {}}
        if plan.pending:
            written = _build_pipeline(inputs, plan.done, video_model, int(settings.get("resolution", 512)), out_dir, config)
            for row in written.iter_rows():
                if lease.lost:
                    raise LeaseHeldError(
                        f"{out_dir}: another run took over this directory's lease; stopping so the two do not write the same ids"
                    )
                _accumulate(totals, row)
                finished = totals["kept"] + totals["rejected"] + totals["errors"]
                elapsed = time.perf_counter() - started
                actors = ", ".join(f"{stage} {len(totals['stages'].get(stage, {}).get('actors', []))}" for stage in STAGES)
                log(
                    f"  {finished}/{plan.pending} inputs: {totals['kept']} kept, {totals['rejected']} rejected, {totals['errors']} errors; "
                    f"{(totals['kept'] + totals['rejected']) / max(elapsed, 1e-9):.2f} videos/s; actors used: {actors}"
                )
        seconds = time.perf_counter() - started
        index = shards.compact_index(out_dir, shards.index_shards(out_dir, previous=plan.index))  # this run's manifests only
        summary = _summary(index, inputs, config, totals, plan.pending, len(inputs.ids) - plan.pending, seconds, str(video_model))
        finished = totals["kept"] + totals["rejected"] + totals["errors"]
        summary["failures"] = failure_summary(
            out_dir, since=started_at, pending=plan.pending, finished=finished, max_errored_blocks=config.failures.max_errored_blocks
        )
        write_json_atomic(storage.join(out_dir, SUMMARY_NAME), summary)
    log(
        f"synthesize: {summary['kept_total']} kept, {summary['rejected_total']} rejected, {summary['errors_total']} errors of {summary['inputs']} inputs in {out_dir} "
        f"({summary['videos_this_run']} videos in {summary['seconds']} s, {summary['videos_per_second']} videos/s, pass rate {summary['pass_rate']})"
    )
    return summary


def _build_pipeline(
    inputs: SynthesisInputs, done: IdSet, video_model: Path | str, resolution: int, out_dir: Path | str, config: SynthesizeConfig
):
    """The Ray Data chain: prepare → FirstFrames → GenerateOrbits (GPU pools) → ForegroundMasks
    (CPU: masks, heuristics, probe views) → FilterOrbits (GPU, only with a probe) → EncodeOrbits
    (CPU: PNG shard rows) → WriteSynthesized (writer pool). Returns the dataset of per-batch counts.

    Every actor pool has bounded restarts and batch retries, and the datasets retry
    `InfrastructureError` and tolerate `failures.max_errored_blocks` failed blocks
    (vf3d.synthesis.failures; `failures.failure_summary` reports what that cost)."""
    from vf3d.synthesis.failures import failure_policy, map_on_pool
    from vf3d.synthesis.stages import EncodeOrbits

    as_dict = config_lib.to_dict(config)
    common = {"config": as_dict, "out_dir": str(out_dir)}
    done_ids = done  # built once at planning; Ray Data ships it once with the prepare stage
    # FirstFrames and GenerateOrbits are looked up in this module when the chain is built (a
    # benchmark puts stand-ins there).
    stages = [
        (FirstFrames, config.first_frame_pool, {**common, "resolution": resolution}),
        (GenerateOrbits, config.generate_pool, {**common, "video_model": str(video_model)}),
        (ForegroundMasks, config.mask_pool, common),
    ]
    if config.filter.probe_path:  # without a probe there is no GPU work left in filtering
        stages.append((FilterOrbits, config.filter_pool, {**common, "video_model": str(video_model)}))
    stages.append((EncodeOrbits, config.encode_pool, {**common, "video_model": str(video_model)}))
    with failure_policy(config.failures):
        rows = inputs.dataset().map_batches(
            prepare_inputs,
            fn_kwargs={"done_ids": done_ids, "config": as_dict, "images_root": inputs.images_root},
            batch_format="pyarrow",
            batch_size=4096,
            num_cpus=0.25,
        )
        # Small blocks spread the work over every actor of a pool (a whole input file is one block).
        rows = rows.repartition(target_num_rows_per_block=min(pool.batch_size for _, pool, _ in stages))
        for stage_class, pool, kwargs in stages:
            # EncodeOrbits hands the writers Arrow rows (nested lists of PNG bytes).
            rows = map_on_pool(rows, stage_class, kwargs, pool, config.failures)
        writer_kwargs = {"out_dir": str(out_dir), "config": as_dict}
        return map_on_pool(
            rows,
            WriteSynthesized,
            writer_kwargs,
            config.writer_pool,
            config.failures,
            batch_size=config.rows_per_shard,
            batch_format="pyarrow",
        )


def _accumulate(totals: dict[str, Any], row: dict[str, Any]) -> None:
    for key in ("kept", "rejected", "errors"):
        totals[key] += int(row[key])
    for stage, entry in json.loads(row["stages"]).items():
        stage_totals = totals["stages"].setdefault(stage, {"items": 0, "seconds": 0.0, "actors": [], "alive": {}})
        stage_totals["items"] += entry["items"]
        stage_totals["seconds"] += entry["seconds"]
        stage_totals["actors"].extend(actor for actor in entry["actors"] if actor not in stage_totals["actors"])
        for actor, alive in entry.get("alive", {}).items():
            stage_totals["alive"][actor] = max(stage_totals["alive"].get(actor, 0.0), alive)
    for key in ("reasons", "error_stages"):
        for name, count in json.loads(row[key]).items():
            totals[key][name] = totals[key].get(name, 0) + count


def exactly_once_counts(index: shards.ShardIndex, inputs: pa.Array | IdSet) -> dict[str, int]:
    """The exactly-once checks over an index (vectorised; no shard is read).

    Args:
        index: the output directory's index.
        inputs: the run's input ids (string [n], unique), or their `IdSet`.
    Returns kept_total / rejected_total / errors_total (distinct input ids per table), missing
    (inputs in no table), ids_in_two_tables and duplicate_rows (rows beyond one per id and table).
    """
    inputs_set = inputs if isinstance(inputs, IdSet) else IdSet(inputs)
    tables = {name: index.ids(name) for name in ("orbits", "rejected", "errors")}
    marks, outsiders = {}, {}
    for name, ids in tables.items():
        positions = inputs_set.positions(ids)
        marks[name] = np.zeros(len(inputs_set), bool)
        marks[name][positions[positions >= 0]] = True
        # Ids that are not this run's inputs (an earlier run's prompts): usually none.
        outsiders[name] = pc.unique(ids.filter(pa.array(positions < 0)))
    in_tables = np.sum([marks[name] for name in tables], axis=0, dtype=np.int64) if len(inputs_set) else np.zeros(0, np.int64)
    other = pa.concat_arrays(list(outsiders.values()))
    other_in_two = (
        int(pc.count_distinct(other.filter(pc.is_in(other, value_set=_repeated(other)))).as_py())
        if len(other) != len(pc.unique(other))
        else 0
    )
    return {
        "kept_total": int(marks["orbits"].sum()),
        "rejected_total": int(marks["rejected"].sum()),
        "errors_total": int(marks["errors"].sum()),
        "missing": int((in_tables == 0).sum()),
        "ids_in_two_tables": int((in_tables > 1).sum()) + other_in_two,
        "duplicate_rows": sum(len(tables[name]) - int(marks[name].sum()) - len(outsiders[name]) for name in tables),
    }


def _repeated(values: pa.Array) -> pa.Array:
    counts = pc.value_counts(values)
    return counts.filter(pc.greater(counts.field("counts"), 1)).field("values")


def _summary(
    index: shards.ShardIndex,
    inputs: SynthesisInputs,
    config: SynthesizeConfig,
    totals: dict[str, Any],
    pending: int,
    skipped: int,
    seconds: float,
    video_model: str,
) -> dict[str, Any]:
    """The run summary: what is on disk now (the exactly-once checks, from the id manifests: the
    index of planning plus this run's new files) and what this run did."""
    checks = exactly_once_counts(index, inputs.id_set())
    videos = totals["kept"] + totals["rejected"]
    pools = stage_pools(config)
    stages = {}
    for stage in PIPELINE_STAGES:
        entry = totals["stages"].get(stage, {"items": 0, "seconds": 0.0, "actors": []})
        pool = pools[stage]
        stages[stage] = {
            "items": entry["items"],
            "busy_seconds": round(entry["seconds"], 3),
            "items_per_actor_second": round(entry["items"] / entry["seconds"], 4) if entry["seconds"] > 0 else None,
            "actors_used": len(entry["actors"]),
            "pool": {
                "min": pool.min_actors,
                "max": pool.max_actors,
                "gpus_per_actor": pool.num_gpus,
                "cpus_per_actor": pool.num_cpus,
                "batch_size": pool.batch_size,
            },
            "gpu_hours": round(entry["seconds"] * pool.num_gpus / 3600, 6),
            # Billed: each actor's GPUs from its start to its last batch, busy or not (model loading,
            # waiting for inputs); the tail until Ray Data ends the actor is not seen here.
            "gpu_hours_billed": round(sum(entry.get("alive", {}).values()) * pool.num_gpus / 3600, 6),
        }
    kept_total, rejected_total = checks["kept_total"], checks["rejected_total"]
    return {
        "inputs": len(inputs.ids),
        **checks,
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
        "gpu_hours_busy": round(sum(stage["gpu_hours"] for stage in stages.values()), 6),
        "gpu_hours_billed": round(sum(stage["gpu_hours_billed"] for stage in stages.values()), 6),
        "stages": stages,
        "reject_reasons": totals["reasons"],
        "errors_by_stage": totals["error_stages"],
        "quality_filter": "probe + heuristics" if config.filter.probe_path else "heuristics only",
        "video_model": video_model,
    }
