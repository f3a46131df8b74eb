"""Autoscaling, shown locally: cluster/aws.yaml's node types on Ray's own autoscaler with the fake
multi-node provider (cluster/local_autoscaling.py). A synthesis job (jobs/synthesize.py, the job
file unchanged from a real cluster's apart from sizes) starts with no worker nodes; the
autoscaler adds GPU nodes for the generation pool and removes every node after the idle timeout.
The node count is recorded over time and printed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from vf3d.data import shards

REPO = Path(__file__).resolve().parents[2]


def _load_cluster_module():
    spec = importlib.util.spec_from_file_location("local_autoscaling", REPO / "cluster" / "local_autoscaling.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


local_autoscaling = _load_cluster_module()


def test_the_local_cluster_has_aws_yaml_node_types_scaled_down():
    from ray.autoscaler._private.util import validate_config

    aws = yaml.safe_load((REPO / "cluster" / "aws.yaml").read_text())
    config = local_autoscaling.local_autoscaling_config()
    # Ray's schema and checks, as the autoscaler applies them (the fake provider has no defaults to merge).
    validate_config(config)
    types = config["available_node_types"]
    worker_types = {name for name in aws["available_node_types"] if name != aws["head_node_type"]}
    assert set(types) == worker_types | {local_autoscaling.FAKE_HEAD_NODE_TYPE}
    assert types[local_autoscaling.FAKE_HEAD_NODE_TYPE]["resources"] == {"CPU": 0}  # nothing runs on the head
    for name in worker_types:
        source = aws["available_node_types"][name]["resources"]
        scaled = types[name]["resources"]
        assert bool(scaled.get("GPU")) == bool(source.get("GPU")), name  # GPU types keep (logical) GPUs, the CPU type has none
        assert 0 < types[name]["max_workers"] <= aws["available_node_types"][name]["max_workers"]
        assert types[name]["min_workers"] == 0
    assert config["max_workers"] == sum(node.get("max_workers", 0) for node in types.values())
    assert config["upscaling_speed"] == aws["upscaling_speed"] and config["idle_timeout_minutes"] < aws["idle_timeout_minutes"]


@pytest.fixture(scope="module")
def autoscaled(tmp_path_factory):
    """12 prompts through the synthesis job on the local autoscaling cluster (its own Ray
    instance: a private temporary directory and port, never the session's)."""
    run = local_autoscaling.run_autoscaled_synthesis(tmp_path_factory.mktemp("autoscaling"), prompts=12)
    progress = [line.strip() for line in run.output.splitlines() if " inputs: " in line or line.startswith("synthesize: ")]
    print("\n".join(["node timeline (GCS node table; autoscaler's own view):", *run.timeline.lines()]))
    print(f"job driver ran from t={run.job_started}s to t={run.job_finished}s; its last lines:", *progress[-2:], sep="\n")
    return run


def test_gpu_nodes_come_up_for_the_generation_pool_and_go_after_the_idle_timeout(autoscaled):
    timeline = autoscaled.timeline
    lines = "\n".join(timeline.lines())
    workers, gpu_nodes = timeline.worker_nodes(), timeline.gpu_nodes()
    gpu_types = [name for name, node in autoscaled.config["available_node_types"].items() if node["resources"].get("GPU")]
    most_gpu_nodes = sum(autoscaled.config["available_node_types"][name]["max_workers"] for name in gpu_types)
    generators = local_autoscaling.AUTOSCALE_JOB_CONFIG["config"]["generate_pool"]["max_actors"]
    # 0 → N → 0: the job starts with no worker node, GPU nodes join, and every node leaves again.
    assert workers[0] == 0 and gpu_nodes[0] == 0, lines
    assert generators <= max(gpu_nodes) <= most_gpu_nodes, lines
    assert workers[-1] == 0 and gpu_nodes[-1] == 0, lines
    # The GPU nodes came while the job ran, and went only after it ended (idle timeout).
    first_gpu = next(sample.seconds for sample in timeline.samples if sample.gpu_workers)
    assert autoscaled.job_started < first_gpu < autoscaled.job_finished < timeline.samples[-1].seconds, lines
    # The autoscaler itself reported launching GPU node types (not just raylets appearing).
    assert any(sample.by_type.get(name) for sample in timeline.samples for name in gpu_types), lines


def test_the_job_wrote_every_prompt_exactly_once(autoscaled):
    assert autoscaled.returncode == 0, autoscaled.output[-3000:]
    out = autoscaled.out_dir / "synthetic"
    ids = [
        value
        for table in ("orbits", "rejected", "errors")
        for file in shards.list_shard_files(out, table)
        for value in pq.read_table(file, columns=["id"])["id"].to_pylist()
    ]
    assert sorted(ids) == [f"p{index:03d}" for index in range(12)]
    summary_line = next(line for line in autoscaled.output.splitlines() if line.startswith("synthesize: "))
    print(summary_line)
    assert "of 12 inputs" in summary_line
