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
from test_synthesize import BAD_PROMPTS

from vf3d import storage
from vf3d.data import shards

TABLES = ("orbits", "rejected", "errors")


@pytest.fixture(scope="module")
def bucket(s3_server):
    with s3_fixtures.s3_bucket_on(s3_server) as uri:
        yield uri


def table_ids(out: str) -> dict[str, list[str]]:
    """Every id of every table of a shard directory on S3, with repeats (a duplicate would show)."""
    return {
        table: shards.read_table(shards.list_shard_files(out, table), columns=["id"], table=table)["id"].to_pylist() for table in TABLES
    }


def listing(prefix: str) -> list[str]:
    """Every object under `prefix` with its size, for the record."""
    return [f"{name} ({storage.size(storage.join(prefix, name))} B)" for name in storage.walk_files(prefix)]


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


def stage(seconds: dict, vf3d_main, name: str, *args: str) -> str:
    """`vf3d NAME ARGS` in this process, timed into `seconds`; its stdout (it must succeed)."""
    started = time.monotonic()
    result = vf3d_main(name, *args)
    seconds[name] = round(seconds.get(name, 0) + time.monotonic() - started, 1)
    assert result.returncode == 0, f"{name}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def killed_and_rerun_synthesis(ray_local, root: str, tmp_path: Path, seconds: dict, vf3d_main) -> dict:
    """`vf3d synthesize` from prompts on S3 with the video model on S3 into S3, in a process of its
    own (a driver on the session's cluster, as a job on a user's cluster is) killed with SIGKILL,
    with its actors, once a few shards are published; then the same command in this process.
    → what the kill left and what the rerun said, for the test of that run."""
    # JSON Lines (read from S3 by pyarrow's reader: Ray Data's own refuses a filesystem there): 12
    # prompts and the bad ones JSON can hold, each becoming an error row.
    rows = [
        {"id": f"p{index:02d}", "prompt": f"a toy number {index}", "elevation": 10.0 if index % 5 == 0 else None} for index in range(12)
    ]
    rows += [{"id": "bad-elevation", "prompt": "a bowl", "elevation": 95.0}]
    rows += [
        {"id": name, "prompt": None if prompt is None else prompt.decode()}
        for name, (prompt, _) in BAD_PROMPTS.items()
        if name != "bad-utf8"
    ]
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "prompts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    inputs = len(rows)
    storage.upload_tree(tmp_path / "prompts", f"{root}/prompts")
    out = f"{root}/synthetic"
    small_shards = tmp_path / "small_shards.yaml"
    small_shards.write_text("rows_per_shard: 2\n")
    command = [
        *("synthesize", "--prompts", f"{root}/prompts/prompts.jsonl", "--video-model", f"{root}/video-model", "--out", out),
        *("--preset", "debug", "--config", str(small_shards)),
    ]
    started = time.monotonic()
    process = start_vf3d(*command, ray_address=ray_local)
    kill_when(process, lambda: sum(len(shards.list_shard_files(out, table)) for table in ("orbits", "rejected")) >= 2, timeout_s=400)
    seconds["synthesize (killed)"] = round(time.monotonic() - started, 1)
    killed = {
        "inputs": inputs,
        "finished_before_kill": sum(len(ids) for ids in table_ids(out).values()),
        "lease_left": storage.is_file(f"{out}/.vf3d-lease.json"),
    }
    return {**killed, "rerun_stdout": stage(seconds, vf3d_main, *command)}


@pytest.fixture(scope="module")
def s3_pipeline(ray_local, bucket, tmp_path_factory, vf3d_main):
    """render-assets → finetune-video → synthesize (killed, then rerun) → train-recon (run, then
    run again) → evaluate, each as the `vf3d` command with every input, output and checkpoint
    location an s3:// URI. The synthesis is the one `test_killed_synthesis_on_s3_rerun_ends_exactly_once`
    checks; every other stage is checked by `test_every_stage_runs_with_every_path_on_s3`.
    → {"root": the run's prefix, "seconds": per stage, "synthesis": what the kill left and the
    rerun said, "train_recon": the first train-recon's summary, "train_recon_again": the second
    one's CompletedProcess}."""
    from vf3d.data.assets import gather_sample_assets

    tmp_path = tmp_path_factory.mktemp("s3-pipeline")
    root = f"{bucket}/e2e"
    gather_sample_assets(tmp_path / "assets", limit=3)
    storage.upload_tree(tmp_path / "assets", f"{root}/assets")
    recon_overrides = tmp_path / "train-recon.yaml"
    recon_overrides.write_text(TRAIN_RECON_OVERRIDES)
    video_overrides = tmp_path / "finetune-video.yaml"
    video_overrides.write_text(ONE_WORKER)
    seconds: dict[str, float] = {}

    stage(seconds, vf3d_main, "render-assets", "--assets", f"{root}/assets", "--out", f"{root}/orbits", "--preset", "debug")
    stage(
        seconds,
        vf3d_main,
        "finetune-video",
        *("--data", f"{root}/orbits", "--out", f"{root}/video-model", "--storage-path", f"{root}/runs", "--name", "video"),
        *("--max-steps", "2", "--preset", "debug", "--config", str(video_overrides)),
    )
    synthesis = killed_and_rerun_synthesis(ray_local, root, tmp_path, seconds, vf3d_main)
    synthesized = storage.read_json(f"{root}/synthetic/synthesize_summary.json")
    # A debug video model trained for 2 steps makes blobs the filter rejects: the synthetic stage
    # trains on the renders unless some orbit was kept (as the demo does).
    synthetic = f"{root}/synthetic" if synthesized["kept_total"] else f"{root}/orbits"
    recon = [
        *("--data", synthetic, "--data-3d", f"{root}/orbits", "--out", f"{root}/reconstructor"),
        *("--storage-path", f"{root}/runs", "--name", "recon", "--preset", "debug", "--config", str(recon_overrides)),
    ]
    stage(seconds, vf3d_main, "train-recon", *recon)
    trained = storage.read_json(f"{root}/reconstructor/train_recon_summary.json")
    # The same command again: the run's record and export on S3 say it is done; no workers start.
    again = vf3d_main("train-recon", *recon)
    stage(
        seconds,
        vf3d_main,
        "evaluate",
        *("--model", f"{root}/reconstructor", "--data", f"{root}/orbits", "--assets", f"{root}/assets"),
        *("--out", f"{root}/evaluation", "--limit", "2", "--preset", "debug"),
    )
    return {"root": root, "seconds": seconds, "synthesis": synthesis, "train_recon": trained, "train_recon_again": again}


@pytest.mark.timeout(3600)  # the whole pipeline (two trainings) when this test runs first
def test_killed_synthesis_on_s3_rerun_ends_exactly_once(s3_pipeline, tmp_path):
    """Prompts, video model and output all on s3://. The first run, killed mid-run with its actors,
    leaves its lease; the rerun takes it over and finishes exactly the rest: every input id in
    exactly one table, once, and no partial key left."""
    run, out = s3_pipeline["synthesis"], f"{s3_pipeline['root']}/synthetic"
    inputs, finished = run["inputs"], run["finished_before_kill"]
    assert 0 < finished < inputs, "the kill should land mid-run"
    assert run["lease_left"], "a killed run leaves its lease, which the rerun takes over"
    assert f"{inputs - finished} to synthesize" in run["rerun_stdout"]
    assert "taking over a stale lease" in run["rerun_stdout"]
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


@pytest.mark.timeout(3600)  # the whole pipeline (two trainings) when this test runs first
def test_every_stage_runs_with_every_path_on_s3(s3_pipeline, tmp_path):
    """Each stage's outputs on S3, read back from S3 by the next stage. (`vf3d serve` reads its
    model from S3 in every test of the session's endpoint: tests/conftest.py, `running_serve_endpoint`.)"""
    root = s3_pipeline["root"]
    assert len(table_ids(f"{root}/orbits")["orbits"]) == 3
    assert storage.is_file(f"{root}/video-model/model_index.json") and storage.list_dir(f"{root}/runs/video")
    trained = s3_pipeline["train_recon"]
    assert trained["steps"] == 6 and trained["resumed_from"] == 0
    again = s3_pipeline["train_recon_again"]
    assert again.returncode == 0 and "no workers started" in again.stdout, again.stdout[-2000:] + again.stderr[-2000:]
    assert storage.read_json(f"{root}/reconstructor/train_recon_summary.json")["already_finished"] is True
    written = storage.walk_files(f"{root}/reconstructor")
    assert {"config.json", "model.safetensors", "train_log.jsonl", "validation.jsonl"} <= set(written)
    assert any(name.startswith("tensorboard/events.out.tfevents.") for name in written), "TensorBoard's files beside the model"
    metrics = storage.read_json(f"{root}/evaluation/metrics.json")
    assert len(metrics["objects"]) == 2 and metrics["models"][0]["dir"] == f"{root}/reconstructor"
    assert metrics["aggregate"]["reconstructor"]["chamfer"]["count"] == 2, "the true meshes were read from S3"

    objects = listing(root)
    assert not [name for name in objects if ".partial" in name]
    print(f"\nstage seconds: {s3_pipeline['seconds']}\nobjects under {root} ({len(objects)}):\n  " + "\n  ".join(objects))
    Path(os.environ.get("VF3D_S3_E2E_EVIDENCE", tmp_path / "e2e.json")).write_text(
        json.dumps({"seconds": s3_pipeline["seconds"], "objects": objects, "train_recon_steps": trained["steps"]}, indent=2)
    )
