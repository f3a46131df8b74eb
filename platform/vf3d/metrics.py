"""The Ray metrics vf3d exports (`ray.util.metrics`), defined in one place.

Every stage actor and training worker records into these; Ray's per-node metrics agent serves
them to Prometheus at each node's metrics export port (`ray start --metrics-export-port`, listed
per node by `ray.nodes()` as MetricsExportPort), with a `ray_` prefix, `_total` after counters and
`_bucket`/`_sum`/`_count` after histograms (`prometheus_names`). cluster/grafana/vf3d-dashboard.json
charts every metric below (tests/integration/test_metrics.py checks both ways).

Tags: `pipeline` is the command ("synthesize", "render-assets", "train-recon", "finetune-video"),
`stage` the actor pool or loop ("first_frame", "generate", "mask", "filter", "encode", "write",
"render", "train_step"), `outcome` where a row went. Ray adds its own (WorkerId, NodeAddress,
SessionName, ...): sums over WorkerId give a pool's totals.

GPU seconds: a stage given GPUs counts them as *held* for as long as its process lives (a ticker
thread adds the elapsed time every `HELD_TICK_SECONDS`) and as *busy* while a batch runs, so
busy / held is the share of reserved GPU time that did work.

Ray is imported only when a metric is first recorded, and recording is a no-op outside a
connected Ray process (unit tests, a bare loop), so importing this module costs nothing.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

MetricKind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its Ray name (no `ray_` prefix), kind, meaning and tag keys."""

    name: str
    kind: MetricKind
    description: str
    tags: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()
    """Histogram bucket upper bounds (seconds)."""


BATCH_SECONDS_BOUNDARIES = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec(
            "vf3d_videos_generated", "counter", "Orbit videos the generation stage produced (before the quality filter).", ("pipeline",)
        ),
        MetricSpec(
            "vf3d_rows_written",
            "counter",
            "Rows published by the writers, by outcome: kept / rejected / error (synthesize), rendered / error (render-assets); "
            "a batch Ray retries counts again (the files themselves stay exactly once).",
            ("pipeline", "outcome"),
        ),
        MetricSpec(
            "vf3d_stage_items", "counter", "Items (inputs, orbits, assets, training samples) a stage finished.", ("pipeline", "stage")
        ),
        MetricSpec(
            "vf3d_stage_busy_seconds", "counter", "Seconds a stage's actors or workers spent working on batches.", ("pipeline", "stage")
        ),
        MetricSpec(
            "vf3d_stage_batch_seconds",
            "histogram",
            "Seconds per batch (or training step) of a stage.",
            ("pipeline", "stage"),
            BATCH_SECONDS_BOUNDARIES,
        ),
        MetricSpec(
            "vf3d_pool_actors",
            "gauge",
            "Live actors (or training workers) of a stage: 1 per process, sum for the pool size.",
            ("pipeline", "stage"),
        ),
        MetricSpec(
            "vf3d_gpu_held_seconds", "counter", "GPU-seconds reserved by a stage's processes (GPUs x seconds alive).", ("pipeline", "stage")
        ),
        MetricSpec(
            "vf3d_gpu_busy_seconds",
            "counter",
            "GPU-seconds a stage's processes spent running batches (GPUs x busy seconds).",
            ("pipeline", "stage"),
        ),
        MetricSpec("vf3d_train_steps", "counter", "Optimizer steps done (rank 0).", ("pipeline",)),
        MetricSpec("vf3d_train_loss", "gauge", "Training loss terms, mean over the last logging window (rank 0).", ("pipeline", "term")),
        MetricSpec("vf3d_train_learning_rate", "gauge", "Learning rate of the last step (rank 0).", ("pipeline",)),
    )
}
"""Every metric vf3d exports, by Ray name."""

HELD_TICK_SECONDS = 5.0
"""How often a GPU stage's held GPU-seconds are added (and how stale they may be)."""


def prometheus_names(spec: MetricSpec) -> list[str]:
    """The series names a metric has in Prometheus (what the dashboard queries)."""
    base = f"ray_{spec.name}"
    if spec.kind == "counter":
        return [f"{base}_total"]
    if spec.kind == "histogram":
        return [f"{base}_bucket", f"{base}_sum", f"{base}_count"]
    return [base]


_lock = threading.Lock()
_instances: dict[str, Any] = {}


def _connected() -> bool:
    """Whether this process is connected to Ray (metrics are recorded only then)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def metric(name: str):
    """This process's Ray metric object for `name` (created on first use)."""
    with _lock:
        if name not in _instances:
            from ray.util import metrics as ray_metrics

            spec = METRICS[name]
            if spec.kind == "counter":
                _instances[name] = ray_metrics.Counter(spec.name, description=spec.description, tag_keys=spec.tags)
            elif spec.kind == "gauge":
                _instances[name] = ray_metrics.Gauge(spec.name, description=spec.description, tag_keys=spec.tags)
            else:
                _instances[name] = ray_metrics.Histogram(
                    spec.name, description=spec.description, boundaries=list(spec.boundaries), tag_keys=spec.tags
                )
        return _instances[name]


def count(name: str, value: float = 1.0, **tags: str) -> None:
    """Add `value` to counter `name` (no-op outside Ray or for 0)."""
    if value and _connected():
        metric(name).inc(value, tags=tags)


def set_gauge(name: str, value: float, **tags: str) -> None:
    """Set gauge `name` (no-op outside Ray)."""
    if _connected():
        metric(name).set(value, tags=tags)


def observe(name: str, value: float, **tags: str) -> None:
    """Record `value` in histogram `name` (no-op outside Ray)."""
    if _connected():
        metric(name).observe(value, tags=tags)


class StageMeter:
    """One process's metrics for one stage of a pipeline: pool membership, items and busy
    seconds per batch, GPU-seconds held and busy.

    Create it in the actor's (or training worker's) constructor, call `batch(items, seconds)`
    after each batch. `gpus`: the GPUs Ray reserved for this process (0 for CPU stages)."""

    def __init__(self, pipeline: str, stage: str, gpus: float = 0.0) -> None:
        self.tags = {"pipeline": pipeline, "stage": stage}
        self.gpus = float(gpus)
        self.created = time.monotonic()
        self._held_since = self.created
        self._held_lock = threading.Lock()
        set_gauge("vf3d_pool_actors", 1.0, **self.tags)
        if self.gpus and _connected():
            # Held time accrues while the process idles too (that is the cost of an idle pool),
            # so it is counted by a clock, not by batches.
            threading.Thread(target=self._tick_held, name=f"vf3d-held-{stage}", daemon=True).start()

    def _tick_held(self) -> None:
        while True:
            time.sleep(HELD_TICK_SECONDS)
            self._add_held()

    def _add_held(self) -> None:
        with self._held_lock:
            now = time.monotonic()
            elapsed, self._held_since = now - self._held_since, now
        count("vf3d_gpu_held_seconds", self.gpus * elapsed, **self.tags)

    def alive_seconds(self) -> float:
        """Seconds since this meter (its process's stage) was created."""
        return time.monotonic() - self.created

    def batch(self, items: int, seconds: float) -> None:
        """Record a finished batch: `items` done in `seconds` of work."""
        # Re-set with every batch: a gauge set once, at start, can miss the first report of a
        # short-lived actor.
        set_gauge("vf3d_pool_actors", 1.0, **self.tags)
        count("vf3d_stage_items", items, **self.tags)
        count("vf3d_stage_busy_seconds", seconds, **self.tags)
        observe("vf3d_stage_batch_seconds", seconds, **self.tags)
        if self.gpus:
            count("vf3d_gpu_busy_seconds", self.gpus * seconds, **self.tags)
            self._add_held()


def assigned_gpus() -> float:
    """GPUs Ray assigned to this process (0 outside Ray)."""
    if not _connected():
        return 0.0
    import ray

    return float(len(ray.get_gpu_ids()))
