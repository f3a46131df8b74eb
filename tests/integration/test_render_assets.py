"""`vf3d render-assets` end to end on real meshes and a local Ray cluster."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from processes import kill_when, start_vf3d

from vf3d.data import shards


@pytest.fixture(scope="module")
def rendered(sample_assets, tmp_path_factory, ray_local, vf3d_main):
    """`vf3d render-assets` on the sample assets, in this process on the session's cluster (the
    killed run below goes through the console script in a process and cluster of its own)."""
    out = tmp_path_factory.mktemp("shards")
    result = vf3d_main("render-assets", "--assets", sample_assets, "--out", out, "--preset", "debug")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_every_asset_becomes_one_orbit_or_one_error(sample_assets, rendered):
    out, result = rendered
    orbit_ids = shards.read_ids(out)
    error_rows = shards.read_table(out, table="errors").to_pylist()
    assert len(orbit_ids) == 10
    assert sorted(Path(row["asset"]).name for row in error_rows) == ["corrupt.glb", "empty.obj", "notes.fbx"]
    assert all(row["reason"] for row in error_rows)
    assert not orbit_ids & {row["id"] for row in error_rows}
    summary = json.loads((out / "render_summary.json").read_text())
    assert summary["assets"] == 13 and summary["orbits_total"] == 10 and summary["errors_total"] == 3
    assert summary["duplicate_rows"] == 0 and summary["frames"] == 10 * 16 and summary["frames_per_second"] > 0
    # Bad assets are input errors (rows above), never infrastructure failures retried by Ray.
    assert summary["failures"]["infrastructure_failures"] == 0 and summary["failures"]["ids_dropped"] == 0
    assert "render-assets: 10 orbits and 3 errors" in result.stdout
    assert (out / "render_config.json").is_file()


def test_shards_hold_valid_orbits_with_prompts_and_cameras(rendered):
    out, _ = rendered
    table = shards.read_table(out)
    shards.validate_table(table)
    rows = {row["prompt"]: row for row in table.select(["prompt", "asset", "source", "elevation", "num_orbit_views"]).to_pylist()}
    assert "duck" in rows and rows["duck"]["source"] == "render" and 0 <= rows["duck"]["elevation"] <= 45
    record = next(record for record in shards.iter_records(out) if record["prompt"] == "duck")
    assert record["frames"].shape == (16, 3, 64, 64) and record["cameras"].shape == (16, 25)
    coverage = record["masks"].mean(dim=(1, 2, 3))
    assert (coverage > 0.02).all()


def test_rerun_renders_nothing_new(sample_assets, rendered, ray_local, vf3d_main):
    out, _ = rendered
    files_before = sorted(p.name for p in out.glob("*.parquet"))
    result = vf3d_main("render-assets", "--assets", sample_assets, "--out", out, "--preset", "debug")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "10 already rendered, 3 failed before, 0 to render" in result.stdout
    assert sorted(p.name for p in out.glob("*.parquet")) == files_before


def test_shards_stream_through_ray_data(rendered, ray_local):
    from vf3d.synthesis.datasets import read_orbit_dataset

    out, _ = rendered
    batches = list(read_orbit_dataset(out).iter_batches(batch_size=4, batch_format="numpy"))
    assert sum(len(batch["id"]) for batch in batches) == 10
    assert batches[0]["frames"].shape[1:] == (16, 3, 64, 64) and batches[0]["frames"].dtype == np.float32


def test_killed_run_resumes_with_exactly_one_row_per_asset(tmp_path, ray_local, vf3d_main):
    """The first run (its own process and local cluster) is killed mid-run with SIGKILL; the rerun
    (the same command, in this process on the session's cluster) renders exactly the rest."""
    from vf3d.data.assets import gather_sample_assets

    assets = tmp_path / "assets"
    total = 16
    gather_sample_assets(assets, limit=total)
    out = tmp_path / "shards"
    # Small shards so some are finished while others are still rendering when the kill lands.
    config = tmp_path / "small_shards.yaml"
    config.write_text("rows_per_shard: 2\npool:\n  batch_size: 1\n")
    process = start_vf3d("render-assets", "--assets", assets, "--out", out, "--preset", "debug", "--config", config)
    kill_when(process, lambda: len(shards.list_shard_files(out)) >= 2, timeout_s=300)
    finished_before = shards.read_ids(out)
    assert 0 < len(finished_before) < total, "the kill should land mid-run"

    result = vf3d_main("render-assets", "--assets", assets, "--out", out, "--preset", "debug", "--config", config)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    # A render or writer actor of the killed cluster can still publish a shard in the moment
    # between the kill and its own death, so the rerun may find more than was read here; what it
    # must do is skip everything already published and render exactly the rest.
    already = int(re.search(r"(\d+) already rendered", result.stdout).group(1))
    rendered_now = int(re.search(r"(\d+) rendered now", result.stdout).group(1))
    assert len(finished_before) <= already < total
    assert already + rendered_now == total
    ids = [value for file in shards.list_shard_files(out) for value in pq.read_table(file, columns=["id"])["id"].to_pylist()]
    assert len(ids) == len(set(ids)) == total
    assert not list(out.glob(".*.partial"))
