"""Stages with every path on s3://, against a real S3 API (moto's server on 127.0.0.1, over HTTP).

Each stage runs as the `vf3d` command: through the console script's `main` in the test process, on
the session's local Ray cluster, whose workers were started with the AWS_* variables pointing at the
session's S3 server (tests/integration/conftest.py: `ray_local`), as a user's cluster would be
against S3 or MinIO. The synthesis that is killed with SIGKILL runs in a process of its own, a
driver on that cluster.
`vf3d serve` with its model on S3 is the session's endpoint (tests/conftest.py), which the serve
tests use.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import s3_fixtures
from processes import kill_when, start_vf3d
from test_synthesize import write_prompts

from vf3d import storage
from vf3d.data import shards
from vf3d.models.video.config import VIDEO_MODEL_PRESETS

TABLES = ("orbits", "rejected", "errors")


@pytest.fixture(scope="module")
def bucket(s3_server):
    with s3_fixtures.s3_bucket_on(s3_server) as uri:
        yield uri


@pytest.fixture(scope="module")
def video_model_uri(bucket, tmp_path_factory):
    """A debug orbit video model (random weights, real classes) uploaded to the bucket."""
    from vf3d.models.video import build_video_pipeline

    local = tmp_path_factory.mktemp("video-model")
    build_video_pipeline(VIDEO_MODEL_PRESETS["debug"]()).save_pretrained(local)
    uri = f"{bucket}/models/video"
    storage.upload_tree(local, uri, last=("model_index.json",))
    return uri


def table_ids(out: str) -> dict[str, list[str]]:
    """Every id of every table of a shard directory on S3, with repeats (a duplicate would show)."""
    return {
        table: shards.read_table(shards.list_shard_files(out, table), columns=["id"], table=table)["id"].to_pylist() for table in TABLES
    }


def listing(prefix: str) -> list[str]:
    """Every object under `prefix` with its size, for the record."""
    return [f"{name} ({storage.size(storage.join(prefix, name))} B)" for name in storage.walk_files(prefix)]


@pytest.mark.timeout(1800)
def test_killed_synthesis_on_s3_rerun_ends_exactly_once(ray_local, bucket, video_model_uri, tmp_path, vf3d_main):
    """Prompts, video model and output all on s3://. The first run (a process of its own, a driver
    on the session's cluster, as a job on a user's cluster is) is killed with SIGKILL, with its
    actors, once a few shards are published; the rerun, the same command (in this process),
    finishes exactly the rest: every input id in exactly one table, once, and no partial key left."""
    local_prompts = tmp_path / "prompts.parquet"
    write_prompts(local_prompts, good=12)
    inputs = 12 + 10
    prompts = f"{bucket}/inputs/prompts.parquet"
    storage.upload_tree(tmp_path, f"{bucket}/inputs")
    out = f"{bucket}/synthetic"
    config = tmp_path / "small_shards.yaml"
    config.write_text("rows_per_shard: 2\n")
    command = [
        "synthesize",
        "--prompts",
        prompts,
        "--video-model",
        video_model_uri,
        "--out",
        out,
        "--preset",
        "debug",
        "--config",
        str(config),
    ]
    process = start_vf3d(*command, ray_address=ray_local)
    kill_when(process, lambda: sum(len(shards.list_shard_files(out, table)) for table in ("orbits", "rejected")) >= 2, timeout_s=400)
    finished = sum(len(ids) for ids in table_ids(out).values())
    assert 0 < finished < inputs, "the kill should land mid-run"
    assert storage.is_file(f"{out}/.vf3d-lease.json"), "a killed run leaves its lease, which the rerun takes over"

    result = vf3d_main(*command)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"{inputs - finished} to synthesize" in result.stdout
    assert "taking over a stale lease" in result.stdout
    ids = table_ids(out)
    every = [value for table in TABLES for value in ids[table]]
    assert len(every) == len(set(every)) == inputs, "every input in exactly one table, once"
    summary = storage.read_json(f"{out}/synthesize_summary.json")
    assert summary["missing"] == 0 and summary["ids_in_two_tables"] == 0 and summary["duplicate_rows"] == 0
    assert summary["kept_total"] + summary["rejected_total"] + summary["errors_total"] == inputs
    objects = listing(out)
    assert not [name for name in objects if ".partial" in name or name.startswith(".vf3d-lease")], objects
    print(
        f"\nkilled after {finished}/{inputs} inputs; rerun synthesized {inputs - finished}; "
        f"kept {summary['kept_total']}, rejected {summary['rejected_total']}, errors {summary['errors_total']}, "
        f"missing {summary['missing']}, ids in two tables {summary['ids_in_two_tables']}, duplicate rows {summary['duplicate_rows']}\n"
        f"objects under {out}:\n  " + "\n  ".join(objects)
    )
    Path(os.environ.get("VF3D_S3_EVIDENCE", tmp_path / "evidence.json")).write_text(
        json.dumps({"finished_before_kill": finished, "inputs": inputs, "summary": summary, "objects": objects}, indent=2)
    )


TRAIN_RECON_OVERRIDES = """\
stages:
  - {name: low, steps: 3, data: synthetic, render_resolution: 32, crop_size: 32, pixel_loss: false}
  - {name: high, steps: 3, data: 3d, render_resolution: 32, crop_size: 32, pixel_loss: true}
validation: {every_n_steps: 6}
training:
  run: {max_steps: 6, log_every_n_steps: 3}
  checkpoint: {every_n_steps: 3}
  scaling: {num_workers: 1}
"""
"""A tiny two-stage train-recon on one worker. (Two ranks restoring their ZeRO shards from S3
after a killed worker: tests/integration/test_train_recon.py, whose checkpoints are on S3.)"""

ONE_WORKER = "training: {scaling: {num_workers: 1}}\n"
"""finetune-video on one worker: what this run checks is where its files go, not distribution."""


@pytest.mark.timeout(3600)  # five commands, two of them trainings
def test_every_stage_runs_with_every_path_on_s3(ray_local, bucket, tmp_path, vf3d_main):
    """render-assets → finetune-video → synthesize → train-recon → evaluate, each as the `vf3d`
    command with every input, output and checkpoint location an s3:// URI. (`vf3d serve` reads its
    model from S3 in every test of the session's endpoint: tests/conftest.py, `running_serve_endpoint`.)"""
    from vf3d.data.assets import gather_sample_assets

    root = f"{bucket}/e2e"
    gather_sample_assets(tmp_path / "assets", limit=3)
    storage.upload_tree(tmp_path / "assets", f"{root}/assets")
    (tmp_path / "inputs").mkdir()
    prompts = tmp_path / "inputs" / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{index}", "prompt": f"a toy number {index}"}) + "\n" for index in range(3)))
    storage.upload_tree(tmp_path / "inputs", f"{root}/inputs")
    recon_overrides = tmp_path / "train-recon.yaml"
    recon_overrides.write_text(TRAIN_RECON_OVERRIDES)
    video_overrides = tmp_path / "finetune-video.yaml"
    video_overrides.write_text(ONE_WORKER)
    seconds = {}

    def stage(name: str, *args: str) -> str:
        started = time.monotonic()
        result = vf3d_main(name, *args)
        seconds[name] = round(time.monotonic() - started, 1)
        assert result.returncode == 0, f"{name}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result.stdout

    stage("render-assets", "--assets", f"{root}/assets", "--out", f"{root}/orbits", "--preset", "debug")
    assert len(table_ids(f"{root}/orbits")["orbits"]) == 3
    stage(
        "finetune-video",
        *("--data", f"{root}/orbits", "--out", f"{root}/video-model", "--storage-path", f"{root}/runs", "--name", "video"),
        *("--max-steps", "2", "--preset", "debug", "--config", str(video_overrides)),
    )
    assert storage.is_file(f"{root}/video-model/model_index.json") and storage.list_dir(f"{root}/runs/video")
    stage(
        "synthesize",
        *("--prompts", f"{root}/inputs/prompts.jsonl", "--video-model", f"{root}/video-model", "--out", f"{root}/synthetic"),
        *("--preset", "debug"),
    )
    synthesized = storage.read_json(f"{root}/synthetic/synthesize_summary.json")
    assert synthesized["missing"] == 0 and synthesized["kept_total"] + synthesized["rejected_total"] + synthesized["errors_total"] == 3
    # A debug video model trained for 4 steps makes blobs the filter rejects: the synthetic stage
    # trains on the renders unless some orbit was kept (as the demo does).
    synthetic = f"{root}/synthetic" if synthesized["kept_total"] else f"{root}/orbits"
    out = stage(
        "train-recon",
        *("--data", synthetic, "--data-3d", f"{root}/orbits", "--out", f"{root}/reconstructor"),
        *("--storage-path", f"{root}/runs", "--name", "recon", "--preset", "debug", "--config", str(recon_overrides)),
    )
    trained = storage.read_json(f"{root}/reconstructor/train_recon_summary.json")
    assert trained["steps"] == 6 and trained["resumed_from"] == 0, out[-2000:]
    # The same command again: the run's record and export on S3 say it is done; no workers start.
    again = vf3d_main(
        "train-recon",
        *("--data", synthetic, "--data-3d", f"{root}/orbits", "--out", f"{root}/reconstructor"),
        *("--storage-path", f"{root}/runs", "--name", "recon", "--preset", "debug", "--config", str(recon_overrides)),
    )
    assert again.returncode == 0 and "no workers started" in again.stdout, again.stdout[-2000:] + again.stderr[-2000:]
    assert storage.read_json(f"{root}/reconstructor/train_recon_summary.json")["already_finished"] is True
    written = storage.walk_files(f"{root}/reconstructor")
    assert {"config.json", "model.safetensors", "train_log.jsonl", "validation.jsonl"} <= set(written)
    assert any(name.startswith("tensorboard/events.out.tfevents.") for name in written), "TensorBoard's files beside the model"
    stage(
        "evaluate",
        *("--model", f"{root}/reconstructor", "--data", f"{root}/orbits", "--assets", f"{root}/assets"),
        *("--out", f"{root}/evaluation", "--limit", "2", "--preset", "debug"),
    )
    metrics = storage.read_json(f"{root}/evaluation/metrics.json")
    assert len(metrics["objects"]) == 2 and metrics["models"][0]["dir"] == f"{root}/reconstructor"
    assert metrics["aggregate"]["reconstructor"]["chamfer"]["count"] == 2, "the true meshes were read from S3"

    objects = listing(root)
    assert not [name for name in objects if ".partial" in name]
    print(f"\nstage seconds: {seconds}\nobjects under {root} ({len(objects)}):\n  " + "\n  ".join(objects))
    Path(os.environ.get("VF3D_S3_E2E_EVIDENCE", tmp_path / "e2e.json")).write_text(
        json.dumps({"seconds": seconds, "objects": objects, "synthesize": synthesized, "train_recon_steps": trained["steps"]}, indent=2)
    )
