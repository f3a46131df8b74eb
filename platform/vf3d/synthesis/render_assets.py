"""`render-assets`: a folder of 3D assets → orbit shards, as a resumable Ray Data pipeline.

    plan (driver)            list assets, derive stable ids, drop ids already in a finished
                             shard (or in the errors table), clean up partial files
    RenderOrbits (actors)    load + normalise + render each asset on an elastic actor pool
                             (min/max actors from the config); bad assets become error rows
    WriteShards (actors)     a pool of writers (writer_pool): finished orbits / errors as Parquet
                             files named by their ids, atomically: a file either holds its whole
                             batch or does not exist, and two writers never pick the same name

Failures are sorted as in synthesize (vf3d.synthesis.failures): a bad asset is an error row; an
infrastructure error (EGL/CUDA, storage OSError) makes Ray retry the batch, finitely.

Exactly once: an id is "done" only when the file holding it is complete, a rerun skips done ids
before any rendering, and file names come from the ids they hold, so a retried write replaces
rather than duplicates. A killed run, rerun with the same arguments, renders only what is missing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vf3d import config as config_lib
from vf3d import metrics, storage
from vf3d.atomic import write_json_atomic
from vf3d.data import shards
from vf3d.data.assets import UNSUPPORTED_3D_SUFFIXES, asset_id, caption_for, find_assets, load_captions
from vf3d.data.manifest import IdSet
from vf3d.synthesis.config import RenderAssetsConfig
from vf3d.synthesis.failures import failure_summary
from vf3d.synthesis.lease import holding_lease

RENDER_STAGE = "render"


@dataclass
class RenderPlan:
    """What a run has to do: pending assets, and how many were already done."""

    pending: list[dict[str, str]]
    total: int
    already_rendered: int
    already_failed: int
    duplicate_ids: list[str] = field(default_factory=list)


def plan_render(assets_dir: Path, out_dir: Path, config: RenderAssetsConfig) -> RenderPlan:
    """List the assets under `assets_dir` that have no finished orbit (nor error) in `out_dir`.

    The finished ids come from the id manifests (vf3d.data.manifest; shards without one are read),
    folded into one manifest file for the next resume: call it holding `out_dir`'s lease."""
    # Known 3D formats we cannot read are listed too, so each gets an error row with its reason.
    paths = find_assets(assets_dir, [*config.extensions, *UNSUPPORTED_3D_SUFFIXES])  # Paths, or URIs under an object-store folder
    captions = load_captions(assets_dir)
    shards.remove_partials(out_dir)
    index = shards.compact_index(out_dir, shards.index_shards(out_dir, tables=("orbits", "errors")))
    rendered = IdSet(index.ids("orbits"))
    failed = IdSet(None if config.retry_errors else index.ids("errors"))
    relatives = [storage.relative_to(path, assets_dir) for path in paths]
    identifiers = [asset_id(relative) for relative in relatives]
    is_rendered = rendered.contains(identifiers)
    is_failed = failed.contains(identifiers)
    pending, seen, duplicates = [], set(), []
    already_rendered = already_failed = 0
    for relative, identifier, done, fail in zip(relatives, identifiers, is_rendered, is_failed):
        if identifier in seen:  # two paths hashing alike would break exactly-once; refuse loudly
            duplicates.append(relative)
            continue
        seen.add(identifier)
        already_rendered += int(done)
        already_failed += int(fail and not done)
        if done or fail:
            continue
        pending.append({"id": identifier, "asset": relative, "prompt": caption_for(relative, ".", captions)})
    return RenderPlan(
        pending=pending, total=len(seen), already_rendered=already_rendered, already_failed=already_failed, duplicate_ids=duplicates
    )


ERROR_COLUMN = "error"
"""Extra column between the stages: null for a rendered orbit, the reason for a failed asset."""


class RenderOrbits:
    """Ray Data stage: rows (id, asset, prompt) → orbit rows, plus an `error` column.

    One OpenGL context per actor, created once; every asset of every batch reuses it. An asset
    that cannot be loaded or rendered becomes a row with its reason instead of failing the run.
    """

    def __init__(self, assets_dir: str, config: dict[str, Any], out_dir: str = ".") -> None:
        import ray

        from vf3d.data.orbit_renderer import OrbitRenderer
        from vf3d.ray_runtime import require_usable_gpus
        from vf3d.synthesis.failures import FailureTracker, actor_name

        # EGL renders on the GPU when the pool assigns one: fail at start when CUDA cannot use it.
        require_usable_gpus("render-assets RenderOrbits")
        self.assets_dir = storage.local_or_uri(assets_dir)
        self.config = config_lib.from_dict(RenderAssetsConfig, config)
        # Draw on this actor's own GPU (EGL device of ray.get_gpu_ids()[0]), a CPU device without one.
        gpu_ids = ray.get_gpu_ids() if ray.is_initialized() else None
        self.renderer = OrbitRenderer(self.config.render.resolution, ambient=self.config.render.ambient, gpu_ids=gpu_ids)
        self.failures = FailureTracker(RENDER_STAGE, out_dir, self.config.failures.max_consecutive_failures, actor_name())
        self.meter = metrics.StageMeter("render-assets", RENDER_STAGE, gpus=self.config.pool.num_gpus if gpu_ids else 0.0)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        started = time.perf_counter()
        table = self.failures.call(self._call, batch)
        self.meter.batch(len(table), time.perf_counter() - started)
        return table

    def _load(self, relative: str, load_asset):
        """Load one asset: from the assets folder itself, or from a temporary local copy of it (and
        the files it refers to) when the folder is on an object store."""
        if not storage.is_uri(self.assets_dir):
            return load_asset(self.assets_dir / relative, margin=self.config.render.margin)
        import tempfile

        from vf3d.data.assets import local_asset_copy

        with tempfile.TemporaryDirectory(prefix="vf3d-asset-") as scratch:
            return load_asset(local_asset_copy(str(self.assets_dir), relative, scratch), margin=self.config.render.margin)

    def _call(self, batch: dict[str, np.ndarray]) -> pa.Table:
        from vf3d.data.assets import AssetError, load_asset
        from vf3d.data.orbit_renderer import render_orbit

        records, failures = [], []
        for identifier, relative, prompt in zip(batch["id"], batch["asset"], batch["prompt"]):
            identifier, relative, prompt = str(identifier), str(relative), str(prompt)
            started = time.perf_counter()
            try:
                asset = self._load(relative, load_asset)
                orbit = render_orbit(self.renderer, asset, self.config.render, identifier, self.config.seed)
            except AssetError as error:
                failures.append(self._failure_row(identifier, relative, prompt, str(error)))
                continue
            records.append(
                shards.OrbitRecord(
                    id=identifier,
                    source="render",
                    prompt=prompt,
                    asset=relative,
                    rgba=orbit.rgba,
                    cameras=orbit.cameras,
                    num_orbit_views=orbit.num_orbit_views,
                    elevation=orbit.elevation_deg,
                    metadata={
                        "render_seconds": round(time.perf_counter() - started, 4),
                        "seed": self.config.seed,
                        "margin": self.config.render.margin,
                    },
                )
            )
        orbits = shards.records_to_table(records) if records else shards.ORBIT_SCHEMA.empty_table()
        orbits = orbits.append_column(ERROR_COLUMN, pa.nulls(len(orbits), pa.string()))
        return pa.concat_tables([orbits, pa.Table.from_pylist(failures, schema=orbits.schema)])

    def _failure_row(self, identifier: str, relative: str, prompt: str, reason: str) -> dict[str, Any]:
        return {
            "id": identifier,
            "source": "render",
            "prompt": prompt,
            "asset": relative,
            "frames": [],
            "masks": [],
            "cameras": [],
            "num_orbit_views": 0,
            "elevation": float("nan"),
            "resolution": self.config.render.resolution,
            "quality": None,
            "format_version": shards.FORMAT_VERSION,
            "metadata": "{}",
            ERROR_COLUMN: reason,
        }


class WriteShards:
    """Ray Data stage, on a pool of writers: a batch of rendered rows → one orbit file and/or one
    error file (named by their ids: writers never collide, a retried batch rewrites the same
    files). A storage OSError is retried by Ray (`failures`), never written as a row's error."""

    def __init__(self, out_dir: str, config: dict[str, Any] | None = None) -> None:
        from vf3d.synthesis.failures import FailureTracker, actor_name

        failures = config_lib.from_dict(RenderAssetsConfig, config or {}).failures
        self.writer = shards.OrbitShardWriter(out_dir)
        self.failures = FailureTracker("write", out_dir, failures.max_consecutive_failures, actor_name())
        self.meter = metrics.StageMeter("render-assets", "write")

    def __call__(self, batch: pa.Table) -> dict[str, list]:
        started = time.perf_counter()
        counts = self.failures.call(self._call, batch)
        self.meter.batch(batch.num_rows, time.perf_counter() - started)
        metrics.count("vf3d_rows_written", counts["orbits"][0], pipeline="render-assets", outcome="rendered")
        metrics.count("vf3d_rows_written", counts["errors"][0], pipeline="render-assets", outcome="error")
        return counts

    def _call(self, batch: pa.Table) -> dict[str, list]:
        failed = batch[ERROR_COLUMN].is_valid()
        orbits = batch.filter(pc.invert(failed)).drop_columns([ERROR_COLUMN])
        errors = batch.filter(failed)
        self.writer.write(orbits)
        self.writer.write_errors(
            [
                {"id": row["id"], "asset": row["asset"], "stage": RENDER_STAGE, "reason": row[ERROR_COLUMN]}
                for row in errors.select(["id", "asset", ERROR_COLUMN]).to_pylist()
            ]
        )
        frames = pc.sum(pc.list_value_length(orbits["frames"])).as_py() if len(orbits) else 0
        return {"orbits": [len(orbits)], "frames": [frames or 0], "errors": [len(errors)]}


@holding_lease("render-assets")
def render_assets(assets_dir: Path, out_dir: Path, config: RenderAssetsConfig, log=print) -> dict[str, Any]:
    """Run the pipeline on the connected Ray cluster; returns (and writes) the run summary.
    Holds `out_dir`'s lease throughout (a second run on it refuses, naming this one)."""
    import ray

    config = config.validate()
    # Each may be a local path or an object-store URI (vf3d.storage).
    assets_dir, out_dir = storage.local_or_uri(assets_dir), storage.local_or_uri(out_dir)
    if not storage.is_dir(assets_dir):
        raise config_lib.ConfigError(f"assets directory not found: {assets_dir}")
    storage.makedirs(out_dir)
    config_lib.save_json(config, storage.join(out_dir, "render_config.json"))
    plan = plan_render(assets_dir, out_dir, config)
    if plan.duplicate_ids:
        raise config_lib.ConfigError(f"asset ids collide for {plan.duplicate_ids[:3]}: rename those files")
    log(
        f"{plan.total} assets under {assets_dir}: {plan.already_rendered} already rendered, {plan.already_failed} failed before, {len(plan.pending)} to render"
    )

    started, started_at = time.perf_counter(), time.time()
    totals = {"orbits": 0, "frames": 0, "errors": 0}
    if plan.pending:
        from vf3d.synthesis.failures import failure_policy, map_on_pool

        pool, as_dict = config.pool, config_lib.to_dict(config)
        with failure_policy(config.failures):  # bounded retries of infrastructure errors, an error budget
            # Small blocks keep every actor busy and let finished batches reach the writers early.
            dataset = ray.data.from_items(plan.pending, override_num_blocks=max(1, min(len(plan.pending) // pool.batch_size, 10_000)))
            render_kwargs = {"assets_dir": str(assets_dir), "config": as_dict, "out_dir": str(out_dir)}
            rendered = map_on_pool(dataset, RenderOrbits, render_kwargs, pool, config.failures)
            writer_kwargs = {"out_dir": str(out_dir), "config": as_dict}
            written = map_on_pool(
                rendered,
                WriteShards,
                writer_kwargs,
                config.writer_pool,
                config.failures,
                batch_size=config.rows_per_shard,
                batch_format="pyarrow",
            )
        for row in written.iter_rows():
            for key in totals:
                totals[key] += int(row[key])
            done = totals["orbits"] + totals["errors"]
            elapsed = time.perf_counter() - started
            log(f"  {done}/{len(plan.pending)} assets ({totals['errors']} errors), {totals['frames'] / max(elapsed, 1e-9):.1f} frames/s")
    seconds = time.perf_counter() - started
    rendered_ids = shards.read_ids(out_dir, table="orbits")
    rows_on_disk = shards.read_table(out_dir, columns=["id"]).num_rows if rendered_ids else 0
    summary = {
        "assets": plan.total,
        "rendered_this_run": totals["orbits"],
        "errors_this_run": totals["errors"],
        "skipped_already_done": plan.already_rendered + plan.already_failed,
        "orbits_total": len(rendered_ids),
        "errors_total": len(shards.read_ids(out_dir, table="errors")),
        "duplicate_rows": rows_on_disk - len(rendered_ids),
        "frames": totals["frames"],
        "seconds": round(seconds, 2),
        "frames_per_second": round(totals["frames"] / seconds, 2) if seconds > 0 and totals["frames"] else 0.0,
        "views_per_orbit": config.render.num_views + config.render.num_random_views,
        "resolution": config.render.resolution,
        "failures": failure_summary(
            out_dir, started_at, len(plan.pending), totals["orbits"] + totals["errors"], config.failures.max_errored_blocks
        ),
    }
    write_json_atomic(storage.join(out_dir, "render_summary.json"), summary)
    log(
        f"render-assets: {summary['orbits_total']} orbits and {summary['errors_total']} errors in {out_dir} "
        f"({summary['rendered_this_run']} rendered now, {summary['frames']} frames at {summary['frames_per_second']} frames/s)"
    )
    return summary
