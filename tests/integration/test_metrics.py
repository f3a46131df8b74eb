"""Metrics and dashboards: vf3d's Ray metrics scraped from a real local cluster's Prometheus
endpoint during a synthesis run, the Grafana dashboard against the metric definitions, and
training scalars sent to MLflow (when the client is installed). A training run's TensorBoard
scalars are checked on train-recon's run (tests/integration/test_train_recon.py)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from vf3d import metrics

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "cluster" / "grafana" / "vf3d-dashboard.json"


def test_every_metric_is_charted_and_every_charted_series_is_defined():
    exprs = [target["expr"] for panel in json.loads(DASHBOARD.read_text())["panels"] for target in panel["targets"]]
    queried = set(re.findall(r"\bray_vf3d_[a-z0-9_]+", " ".join(exprs)))
    defined = {name: spec for spec in metrics.METRICS.values() for name in metrics.prometheus_names(spec)}
    assert queried <= set(defined), f"the dashboard queries series no metric defines: {sorted(queried - set(defined))}"
    uncharted = sorted(spec.name for spec in metrics.METRICS.values() if not queried & set(metrics.prometheus_names(spec)))
    assert not uncharted, f"metrics missing from {DASHBOARD.name}: {uncharted}"


# ---------------------------------------------------------------------------------------------
# A synthesis run on its own local cluster, scraped while it runs
# ---------------------------------------------------------------------------------------------

SYNTHESIS_SCRIPT = r"""
import json, sys
from pathlib import Path
import pyarrow as pa, pyarrow.parquet as pq
import ray
from vf3d import config as config_lib
from vf3d.models.video import build_video_pipeline
from vf3d.models.video.config import VIDEO_MODEL_PRESETS
from vf3d.synthesis.config import SYNTHESIZE_PRESETS
from vf3d.synthesis.synthesize import synthesize

port, root = int(sys.argv[1]), Path(sys.argv[2])
# A known metrics port, and workers reporting every second (Ray's default is every 10 s). Ray gives
# the raylet a fixed 30 s to register, which a heavily loaded machine can miss: try twice.
for attempt in (1, 2):
    try:
        ray.init(address="local", num_cpus=4, num_gpus=1, include_dashboard=False, _metrics_export_port=port,
                 _system_config={"metrics_report_interval_ms": 1000})
        break
    except Exception:
        ray.shutdown()
        if attempt == 2:
            raise
build_video_pipeline(VIDEO_MODEL_PRESETS["debug"]()).save_pretrained(root / "video-model")
rows = [{"id": f"m{i}", "prompt": f"a toy number {i}"} for i in range(8)] + [{"id": "bad", "prompt": ""}]
pq.write_table(pa.Table.from_pylist(rows), root / "prompts.parquet")
# Generation on a logical GPU (VF3D_ALLOW_LOGICAL_GPUS=1), so GPU held/busy seconds are recorded.
config = config_lib.merge(config_lib.preset(SYNTHESIZE_PRESETS, "debug"),
                          {"generate_pool": {"num_gpus": 1.0, "max_actors": 1}, "generation": {"num_inference_steps": 8}})
summary = synthesize(root / "prompts.parquet", root / "video-model", root / "out", config, log=lambda line: None)
print("SUMMARY " + json.dumps(summary), flush=True)
sys.stdin.read()  # keep the cluster up until the test has scraped it (it closes stdin)
ray.shutdown()
"""

_SAMPLE = re.compile(r"^(?P<name>ray_vf3d_[a-z0-9_]+)\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, str], float]:
    """{(series name, labels): value} of every vf3d sample at http://127.0.0.1:PORT/metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            samples[(match["name"], match["labels"])] = float(match["value"])
    return samples


def total(samples: dict[tuple[str, str], float], name: str, **labels: str) -> float:
    """Sum of a series over every process (WorkerId) whose labels include `labels`."""
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    return sum(value for (series, text), value in samples.items() if series == name and all(label in text for label in wanted))


@pytest.fixture(scope="module")
def scraped_synthesis(tmp_path_factory):
    """Run a 9-input synthesis (one bad prompt) in a subprocess with its own Ray cluster on a known
    metrics port; scrape the port every second while it runs and after, keeping each series' last
    value (a finished actor's series may disappear when its process ends)."""
    root = tmp_path_factory.mktemp("metrics-synthesis")
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "VF3D_ALLOW_LOGICAL_GPUS": "1"}
    env.pop("RAY_ADDRESS", None)
    process = subprocess.Popen(
        [sys.executable, "-c", SYNTHESIS_SCRIPT, str(port), str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)
    reader.start()
    seen: dict[tuple[str, str], float] = {}
    summary = None
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and process.poll() is None:
            try:
                seen.update(scrape(port))
            except OSError:
                pass  # the cluster (and its metrics agent) is still starting
            summary_lines = [line for line in output if line.startswith("SUMMARY ")]
            if summary is None and summary_lines:
                summary = json.loads(summary_lines[0].removeprefix("SUMMARY "))
                settle = time.monotonic() + 60
            # After the run: wait until every written row has been reported (workers flush every second).
            if summary is not None and (
                total(seen, "ray_vf3d_rows_written_total", pipeline="synthesize") >= summary["inputs"] or time.monotonic() > settle
            ):
                break
            time.sleep(1)
    finally:
        if process.poll() is None:
            process.stdin.close()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
        reader.join(timeout=10)
    assert summary is not None, "the synthesis run did not finish:\n" + "".join(output[-40:])
    return seen, summary


def test_synthesis_metrics_are_scraped_from_the_cluster_with_plausible_values(scraped_synthesis):
    seen, summary = scraped_synthesis
    sums: dict[str, float] = {}
    for (name, labels), value in seen.items():
        if not name.endswith("_bucket"):
            wanted = sorted(label for label in labels.split(",") if label.split("=")[0] in ("pipeline", "stage", "outcome"))
            key = f"{name}{{{','.join(wanted)}}}"
            sums[key] = sums.get(key, 0.0) + value
    print("scraped vf3d series, summed over processes:\n" + "\n".join(f"{key} {value:g}" for key, value in sorted(sums.items())))
    generated = summary["stages"]["generate"]["items"]
    assert generated == 8 and summary["errors_total"] == 1
    # Every defined metric of the synthesis path was exported (the vf3d_train_* ones come from trainings).
    exported = {name for name, _ in seen}
    synthesis_metrics = [spec for name, spec in metrics.METRICS.items() if not name.startswith("vf3d_train")]
    for spec in synthesis_metrics:
        assert set(metrics.prometheus_names(spec)) & exported, f"{spec.name} was never scraped"
    assert 0 < total(seen, "ray_vf3d_videos_generated_total") <= generated
    written = {
        outcome: total(seen, "ray_vf3d_rows_written_total", pipeline="synthesize", outcome=outcome)
        for outcome in ("kept", "rejected", "error")
    }
    assert written["kept"] + written["rejected"] + written["error"] == summary["inputs"], written
    assert written["kept"] == summary["kept_this_run"] and written["error"] == summary["errors_this_run"]
    assert 0 < total(seen, "ray_vf3d_stage_items_total", pipeline="synthesize", stage="generate") <= generated
    assert total(seen, "ray_vf3d_stage_busy_seconds_total", stage="generate") > 0
    assert total(seen, "ray_vf3d_stage_batch_seconds_count", stage="generate") >= 1
    assert total(seen, "ray_vf3d_pool_actors", stage="generate") >= 1 and total(seen, "ray_vf3d_pool_actors", stage="write") >= 1
    busy = total(seen, "ray_vf3d_gpu_busy_seconds_total", stage="generate")
    held = total(seen, "ray_vf3d_gpu_held_seconds_total", stage="generate")
    assert 0 < busy <= held, (busy, held)
    # The run summary: billed GPU-hours (held) beside busy GPU-hours, both from the one GPU actor.
    print("summary:", {key: summary[key] for key in ("videos_this_run", "seconds", "gpu_hours_billed", "gpu_hours_busy")})
    assert 0 < summary["gpu_hours_busy"] <= summary["gpu_hours_billed"], (summary["gpu_hours_busy"], summary["gpu_hours_billed"])


def test_render_assets_stages_export_their_metrics(ray_local, sample_assets, tmp_path):
    """The render and write stages of render-assets, run in this (connected) driver on two real
    meshes and a corrupt file, show up at this node's metrics endpoint (ray.nodes()' port)."""
    import numpy as np
    import ray

    from vf3d import config as config_lib
    from vf3d.synthesis.config import RENDER_ASSETS_PRESETS
    from vf3d.synthesis.render_assets import RenderOrbits, WriteShards

    assets = sorted(path.relative_to(sample_assets).as_posix() for path in sample_assets.rglob("*.obj") if path.stat().st_size)[:2]
    assets.append("broken/corrupt.glb")
    config = config_lib.to_dict(config_lib.preset(RENDER_ASSETS_PRESETS, "debug"))
    port = next(node["MetricsExportPort"] for node in ray.nodes() if node["Alive"])

    def written() -> dict[str, float]:
        samples = scrape(port)
        return {
            outcome: total(samples, "ray_vf3d_rows_written_total", pipeline="render-assets", outcome=outcome)
            for outcome in ("rendered", "error")
        }

    before = written()
    batch = {"id": np.array([f"a{index}" for index in range(len(assets))]), "asset": np.array(assets), "prompt": np.array(assets)}
    table = RenderOrbits(str(sample_assets), config, str(tmp_path))(batch)
    counts = WriteShards(str(tmp_path), config)(table)
    assert counts["orbits"] == [2] and counts["errors"] == [1]
    deadline = time.monotonic() + 90  # the driver reports its metrics every few seconds
    while (now := written()) != {"rendered": before["rendered"] + 2, "error": before["error"] + 1} and time.monotonic() < deadline:
        time.sleep(2)
    print("render-assets rows written (before → after):", before, "→", now)
    assert now == {"rendered": before["rendered"] + 2, "error": before["error"] + 1}
    samples = scrape(port)
    assert total(samples, "ray_vf3d_stage_items_total", pipeline="render-assets", stage="render") >= 3
    assert total(samples, "ray_vf3d_stage_busy_seconds_total", pipeline="render-assets", stage="render") > 0


# ---------------------------------------------------------------------------------------------
# Training scalars to MLflow (TensorBoard's are checked on train-recon's run:
# tests/integration/test_train_recon.py)
# ---------------------------------------------------------------------------------------------


def test_scalars_go_to_mlflow_only_when_a_tracking_uri_is_set(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the mlflow client is an optional extra")
    import mlflow

    from vf3d.training.config import RunSettings, TrainingConfig
    from vf3d.training.tracking import ScalarTracker

    training = TrainingConfig(run=RunSettings(name="tracked", max_steps=8))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert ScalarTracker(training, "regression").mlflow is None  # no URI: no MLflow run
    # MLflow 3 refuses its file store unless asked (a server or a database is what it wants).
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracker = ScalarTracker(training, "regression")
    for step in (4, 8):
        tracker.log(step, {"loss": 1.0 / step}, learning_rate=1e-3, steps_per_second=2.0, samples_per_second=16.0)
    tracker.close({"steps": 8})
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("vf3d").experiment_id])
    assert run.info.run_name == "tracked" and run.data.params["pipeline"] == "regression"
    assert [(entry.step, entry.value) for entry in client.get_metric_history(run.info.run_id, "loss.loss")] == [(4, 0.25), (8, 0.125)]
    assert run.data.metrics["lr"] == 1e-3 and run.data.metrics["steps"] == 8
