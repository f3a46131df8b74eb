"""cluster/aws.yaml's autoscaling, run on this machine: Ray's fake multi-node provider.

`ray start --autoscaling-config` with a provider of type `fake_multinode` runs Ray's real
autoscaler (the same `StandardAutoscaler` that `ray up` runs on a cloud head node); only its node
provider differs: a "node" is a raylet started on this machine with the node type's resources,
logical GPUs included, and terminating it stops that raylet. So pending actors of an elastic pool
make the autoscaler add nodes, and idle nodes are removed after `idle_timeout_minutes`, as on AWS.

The node types are derived from cluster/aws.yaml itself (they cannot drift): the same names, the
head advertising 0 CPUs, every worker type's GPU count kept but capped, CPUs and `max_workers`
scaled down to what one small machine holds, and a short idle timeout. Jobs and pools run
unchanged on it; only the simulation switch VF3D_ALLOW_LOGICAL_GPUS=1 is set on the cluster's
processes, so actors given logical GPUs run on the CPU.

    python cluster/local_autoscaling.py config          # print the derived autoscaling config
    python cluster/local_autoscaling.py demo            # a debug synthesis job on it; prints the node timeline

The cluster is private: its own temporary directory (so `ray.init()` elsewhere on the machine
never finds it) and its own GCS port; `stop()` ends only the processes it started (its session),
never other Ray instances on the machine (`ray stop` would end them all).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
AWS_CONFIG = REPO / "cluster" / "aws.yaml"

FAKE_HEAD_NODE_TYPE = "ray.head.default"
"""The head's node type name the fake provider requires (ray.autoscaler._private.fake_multi_node)."""


@dataclass
class Scale:
    """How cluster/aws.yaml's node types shrink to one machine.

    Resources are logical: Ray schedules against them, the OS shares the real cores."""

    cpus_per_node: float = 2
    """Logical CPUs of every worker node (a p5.48xlarge's 192 would let one node take everything)."""
    max_gpus_per_node: int = 1
    """GPU nodes keep their GPUs up to this many (one generation actor per node makes scale-up visible)."""
    max_workers_per_gpu_type: int = 2
    """Upper bound of each GPU node type's `max_workers` (aws.yaml: 20 and 8)."""
    max_workers_per_cpu_type: int = 1
    """Upper bound of each CPU-only node type's `max_workers` (aws.yaml: 16)."""
    idle_timeout_minutes: float = 0.25
    """Idle worker nodes are terminated after this long (aws.yaml: 10 minutes)."""
    object_store_bytes: int = 200 * 1024**2
    """Object store of each node (the machine's memory is shared by every node)."""


def local_autoscaling_config(source: Path = AWS_CONFIG, scale: Scale | None = None, gcs_address: str | None = None) -> dict[str, Any]:
    """The fake multi-node autoscaling config with `source`'s node types, scaled by `scale`.

    Returns a cluster config `ray start --autoscaling-config` accepts: provider `fake_multinode`
    (pointed at `gcs_address`), the source's `upscaling_speed`, its worker node types (same
    names, GPUs capped, CPUs and counts scaled) and its head as `ray.head.default` with the
    source's head resources (0 CPUs)."""
    scale = scale or Scale()
    cluster = yaml.safe_load(Path(source).read_text())
    head_type = cluster["head_node_type"]
    node_types: dict[str, Any] = {}
    for name, node in cluster["available_node_types"].items():
        if name == head_type:
            continue
        resources = dict(node.get("resources", {}))
        gpus = min(int(resources.get("GPU", 0)), scale.max_gpus_per_node)
        scaled = {"CPU": scale.cpus_per_node, "object_store_memory": scale.object_store_bytes}
        if gpus:
            scaled["GPU"] = gpus
        cap = scale.max_workers_per_gpu_type if gpus else scale.max_workers_per_cpu_type
        node_types[name] = {
            "resources": scaled,
            "node_config": {},
            "min_workers": min(int(node.get("min_workers", 0)), cap),
            "max_workers": min(int(node.get("max_workers", cap)), cap),
        }
    head_resources = dict(cluster["available_node_types"][head_type].get("resources", {}))
    node_types[FAKE_HEAD_NODE_TYPE] = {"resources": head_resources, "node_config": {}, "max_workers": 0}
    provider: dict[str, Any] = {
        "type": "fake_multinode",
        # The fake provider's nodes are processes here: no SSH updaters, no launch-config hashes.
        "use_node_id_as_ip": True,
        "disable_node_updaters": True,
        "disable_launch_config_check": True,
    }
    if gcs_address:
        provider["gcs_address"] = gcs_address  # else the fake provider assumes port 6379
    return {
        "cluster_name": f"{cluster['cluster_name']}-local",
        "max_workers": sum(node.get("max_workers", 0) for node in node_types.values()),
        "upscaling_speed": cluster.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": scale.idle_timeout_minutes,
        "provider": provider,
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": node_types,
        "head_node_type": FAKE_HEAD_NODE_TYPE,
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _session_processes(session_id: int) -> list[int]:
    """Pids of the live processes in session `session_id` (from /proc; Linux)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # /proc/PID/stat: "pid (comm) state ppid pgrp session ..."; comm may hold spaces.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session_id and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


@dataclass
class LocalAutoscalingCluster:
    """A private local Ray cluster whose autoscaler launches and removes local raylets as nodes.

    Use as a context manager (`with LocalAutoscalingCluster() as cluster: ...`); `cluster.address`
    is its GCS address (for `ray.init(address=...)` or RAY_ADDRESS)."""

    scale: Scale = field(default_factory=Scale)
    source: Path = AWS_CONFIG
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment of every process of the cluster (head, autoscaler, nodes, workers)."""
    metrics_export_port: int | None = None
    """The head's Prometheus metrics port (worker nodes pick free ports; `ray.nodes()` lists them)."""
    address: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    temp_dir: str = ""
    _session: int | None = None

    def start(self, timeout: float = 120, attempts: int = 3) -> LocalAutoscalingCluster:
        """Start the head (0 CPUs, as in aws.yaml) with the autoscaler; returns once it is up.

        `ray start` gives its raylet a fixed 30 s to register with the GCS, which a heavily loaded
        machine can miss: a failed start is cleaned up and tried again, `attempts` times in all."""
        for attempt in range(1, attempts + 1):
            try:
                return self._start_once(timeout)
            except RuntimeError:
                if attempt == attempts:
                    raise
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> LocalAutoscalingCluster:
        import ray._private.services

        port = _free_port()
        node_ip = ray._private.services.get_node_ip_address()
        self.address = f"{node_ip}:{port}"
        self.config = local_autoscaling_config(self.source, self.scale, gcs_address=self.address)
        # A short private path: Ray's Unix socket paths must stay under 107 characters.
        self.temp_dir = tempfile.mkdtemp(prefix="vf3d-as-", dir="/tmp")
        config_path = Path(self.temp_dir) / "autoscaling.json"
        config_path.write_text(json.dumps(self.config))
        head = self.config["available_node_types"][FAKE_HEAD_NODE_TYPE]["resources"]
        command = [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--head",
            f"--port={port}",
            f"--temp-dir={self.temp_dir}",
            f"--autoscaling-config={config_path}",
            f"--num-cpus={head.get('CPU', 0)}",
            f"--num-gpus={head.get('GPU', 0)}",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ]
        if self.metrics_export_port:
            command.append(f"--metrics-export-port={self.metrics_export_port}")
        env = {
            **os.environ,
            # The fake provider refuses to run without it; one autoscaler round per second.
            "RAY_FAKE_CLUSTER": "1",
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            **self.env,
        }
        env.pop("RAY_ADDRESS", None)
        # Its own session: every process of this cluster (the head's daemons, the autoscaler, the
        # nodes it launches and their workers) descends from `ray start` and keeps its session id
        # (the pid of `ray start`, the session's leader), which is how `stop` finds exactly them.
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self._session = process.pid
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError(f"ray start did not finish within {timeout:.0f} s") from None
        if process.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed ({process.returncode}): {stderr[-2000:] or stdout[-2000:]}")
        return self

    def stop(self, grace_seconds: float = 10) -> None:
        """End every process of this cluster (its session), SIGTERM first, then SIGKILL."""
        if self._session is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in _session_processes(self._session):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace_seconds
            while _session_processes(self._session) and time.monotonic() < deadline:
                time.sleep(0.2)
        self._session = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalAutoscalingCluster:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


@dataclass
class NodeSample:
    """The cluster's worker nodes at one moment."""

    seconds: float
    """Since the timeline started."""
    workers: int
    """Alive worker raylets (the head is not counted), from the GCS node table."""
    gpu_workers: int
    """Those of them with GPUs."""
    by_type: dict[str, int]
    """Active nodes per node type as the autoscaler reports them (its last status; may lag the
    node table by an autoscaler round)."""

    def line(self) -> str:
        types = ", ".join(f"{name} {count}" for name, count in sorted(self.by_type.items())) or "none"
        return f"t={self.seconds:6.1f}s  worker nodes {self.workers} (GPU nodes {self.gpu_workers}); autoscaler: {types}"


def autoscaler_active_nodes(gcs) -> dict[str, int]:
    """{node type: active worker nodes} from the autoscaler's last status report in the GCS
    (what `ray status` prints), {} before its first report. `gcs`: a `ray._raylet.GcsClient`."""
    from ray._private import ray_constants

    status = gcs.internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS.encode(), None)
    if not status:
        return {}
    report = json.loads(status).get("autoscaler_report") or {}
    return {name: count for name, count in (report.get("active_nodes") or {}).items() if name != FAKE_HEAD_NODE_TYPE}


@dataclass
class NodeTimeline:
    """The cluster's worker nodes over time, polled in a thread from the GCS node table and the
    autoscaler's status; `samples` holds one `NodeSample` per change. It talks to the GCS at
    `address` directly, so the polling process need not be connected to that cluster."""

    address: str
    interval: float = 0.5
    samples: list[NodeSample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _started: float = 0.0
    _gcs: Any = None

    def now(self) -> float:
        """Seconds since the timeline started (the samples' clock)."""
        return round(time.monotonic() - self._started, 1)

    def sample(self) -> NodeSample:
        """The worker nodes now."""
        from ray._raylet import GcsClient
        from ray.core.generated import gcs_pb2

        if self._gcs is None:
            self._gcs = GcsClient(address=self.address)
        nodes = self._gcs.get_all_node_info(timeout=10).values()
        alive = [node for node in nodes if node.state == gcs_pb2.GcsNodeInfo.GcsNodeState.ALIVE]
        workers = [node for node in alive if "node:__internal_head__" not in node.resources_total]
        gpu_workers = sum(1 for node in workers if node.resources_total.get("GPU", 0) > 0)
        return NodeSample(self.now(), len(workers), gpu_workers, autoscaler_active_nodes(self._gcs))

    def _poll(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a GCS hiccup must not end the timeline
                now = self.sample()
                last = self.samples[-1] if self.samples else None
                if last is None or (last.workers, last.gpu_workers, last.by_type) != (now.workers, now.gpu_workers, now.by_type):
                    self.samples.append(now)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> NodeTimeline:
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._poll, name="node-timeline", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def gpu_nodes(self) -> list[int]:
        """Alive GPU worker nodes at each sample."""
        return [sample.gpu_workers for sample in self.samples]

    def worker_nodes(self) -> list[int]:
        """Alive worker nodes (every type) at each sample."""
        return [sample.workers for sample in self.samples]

    def lines(self) -> list[str]:
        """The timeline as text: one line per change."""
        return [sample.line() for sample in self.samples]


def wait_for(condition, timeout: float, interval: float = 0.5, what: str = "condition") -> None:
    """Poll `condition()` until it is true; TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


AUTOSCALE_JOB_CONFIG = {
    "stage": "synthesize",
    "preset": "debug",
    "config": {
        # As on a GPU cluster: orbits on GPU actors; first frames stay on CPUs so that the
        # generation pool's demand alone brings GPU nodes up. The pool asks for its 2 actors up
        # front: whether Ray Data would grow a 1-actor pool to 2 depends on how long the backlog
        # lasts against a node's start-up, i.e. on the machine's speed (an idle 2-core machine
        # finished the job with one actor), and the run must show the same nodes everywhere.
        "generate_pool": {"min_actors": 2, "max_actors": 2, "num_gpus": 1.0, "num_cpus": 0.5, "batch_size": 2},
        # More sampling steps than the debug preset: generation is the slow stage, as on a real
        # cluster. More work than this adds nothing the run shows (the pool's 2 nodes are asked for
        # up front) and only brings up CPU nodes for the backlog of the other stages, which on one
        # small machine slows every node's start-up.
        "generation": {"num_inference_steps": 48},
        "rows_per_shard": 4,
    },
}
"""The job file of the demo and the autoscaling test: jobs/synthesize.py runs it as it would on
AWS (only the sizes are the debug preset's)."""


@dataclass
class AutoscaledRun:
    """A job run on the local autoscaling cluster, and the nodes it brought up and down."""

    returncode: int
    output: str
    """The job driver's stdout and stderr."""
    timeline: NodeTimeline
    out_dir: Path
    config: dict[str, Any]
    """The cluster's autoscaling config (derived from cluster/aws.yaml)."""
    job_started: float = 0.0
    job_finished: float = 0.0
    """When the job's driver started and exited, in the timeline's seconds."""


def run_autoscaled_synthesis(
    out_dir: Path, prompts: int = 12, scale: Scale | None = None, scale_down_timeout: float = 300
) -> AutoscaledRun:
    """Start the cluster, run `AUTOSCALE_JOB_CONFIG` with jobs/synthesize.py (a driver attached
    through RAY_ADDRESS, as `ray job submit` would start it) on `prompts` prompts, and record the
    worker nodes until every one has been removed again (TimeoutError after `scale_down_timeout`
    seconds). Writes the debug video model, prompts and job file under `out_dir`."""
    from vf3d.models.video import build_video_pipeline
    from vf3d.models.video.config import VIDEO_MODEL_PRESETS

    out_dir.mkdir(parents=True, exist_ok=True)
    video_model = out_dir / "video-model"
    if not (video_model / "model_index.json").is_file():
        build_video_pipeline(VIDEO_MODEL_PRESETS["debug"]()).save_pretrained(video_model)
    prompt_file = out_dir / "prompts.jsonl"
    prompt_file.write_text(
        "".join(json.dumps({"id": f"p{index:03d}", "prompt": f"a toy number {index}"}) + "\n" for index in range(prompts))
    )
    job_file = out_dir / "synthesize-autoscale.yaml"
    job_file.write_text(yaml.safe_dump(AUTOSCALE_JOB_CONFIG))
    command = [sys.executable, str(REPO / "jobs" / "synthesize.py"), "--config", str(job_file)]
    command += ["--prompts", str(prompt_file), "--video-model", str(video_model), "--out", str(out_dir / "synthetic")]
    # The simulation switch: actors Ray gives logical GPUs run on the CPU (never set on real GPUs).
    with LocalAutoscalingCluster(scale=scale or Scale(), env={"VF3D_ALLOW_LOGICAL_GPUS": "1"}) as cluster:
        with NodeTimeline(cluster.address) as timeline:
            env = {**os.environ, "RAY_ADDRESS": cluster.address}
            job_started = timeline.now()
            job = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
            job_finished = timeline.now()
            wait_for(
                lambda: timeline.samples and timeline.samples[-1].workers == 0, scale_down_timeout, what="the worker nodes to be removed"
            )
    return AutoscaledRun(job.returncode, job.stdout + job.stderr, timeline, out_dir, cluster.config, job_started, job_finished)


def demo(out_dir: Path, prompts: int = 12) -> int:
    """`run_autoscaled_synthesis`, printing the job's last lines and the node timeline."""
    run = run_autoscaled_synthesis(out_dir, prompts)
    print("\n".join([line for line in run.output.splitlines() if "logging_progress" not in line][-8:]))
    print("\n".join(["node timeline:", *run.timeline.lines()]))
    print(f"job driver ran from t={run.job_started}s to t={run.job_finished}s")
    return run.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("config", help="print the autoscaling config derived from cluster/aws.yaml")
    run = commands.add_parser("demo", help="run a debug synthesis job on the local autoscaling cluster")
    run.add_argument("--out", type=Path, default=Path("autoscale-demo"))
    run.add_argument("--prompts", type=int, default=12)
    args = parser.parse_args(argv)
    if args.command == "config":
        print(yaml.safe_dump(local_autoscaling_config(), sort_keys=False))
        return 0
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    return demo(args.out, args.prompts)


if __name__ == "__main__":
    sys.exit(main())
