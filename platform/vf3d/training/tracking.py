"""Experiment tracking of a training run, on rank 0: TensorBoard event files by default, MLflow
when a tracking URI is set (`training.tracking`, else MLFLOW_TRACKING_URI), and the Ray metrics
of vf3d.metrics (steps, loss terms, learning rate).

`run_loop` (vf3d.training.loop) opens one `ScalarTracker` on rank 0 and calls `log` every
`run.log_every_n_steps` steps with the window's mean loss terms; the tracker adds the learning
rate and the throughput. TensorBoard needs no server while training: `tensorboard --logdir DIR`
reads the event files later (or `tensorboard.backend.event_processing` in a script). mlflow is
imported only when a URI is set; without the package that is a clear error, not a silent skip.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from vf3d import metrics, storage
from vf3d.training.config import TrainingConfig

MLFLOW_URI_ENV = "MLFLOW_TRACKING_URI"
TENSORBOARD_UPLOAD_INTERVAL_S = 60.0
"""How often event files written for an object-store `tensorboard_dir` are published while training."""


class ScalarTracker:
    """Rank 0's scalar logging for one run (TensorBoard and/or MLflow, plus Ray gauges).

    Args:
        training: the run's harness settings (`tracking`, `run.name`).
        pipeline: the command (the `pipeline` tag of the Ray metrics, e.g. "train-recon").
        resumed_from: the step the run starts at (MLflow records it as a parameter).
    """

    def __init__(self, training: TrainingConfig, pipeline: str, resumed_from: int = 0) -> None:
        tracking = training.tracking
        self.pipeline = pipeline
        self.writer = None
        # TensorBoard's writer needs a local directory: for an object-store `tensorboard_dir` it
        # writes to a scratch directory whose event files are published to the URI (whole, each
        # time: they hold a few kB per thousand steps) every TENSORBOARD_UPLOAD_INTERVAL_S and on close.
        self.upload_to = None
        self.last_upload = time.monotonic()
        if tracking.tensorboard and tracking.tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            log_dir = tracking.tensorboard_dir
            if storage.is_uri(log_dir):
                self.upload_to, log_dir = log_dir, tempfile.mkdtemp(prefix="vf3d-tensorboard-")
            self.writer = SummaryWriter(log_dir=log_dir)
        self.mlflow = None
        uri = tracking.mlflow_tracking_uri or os.environ.get(MLFLOW_URI_ENV)
        if uri:
            try:
                import mlflow
            except ImportError as error:
                raise RuntimeError(
                    f"an MLflow tracking URI is set ({uri!r}) but mlflow is not installed: `pip install mlflow-skinny`, "
                    f"or unset {MLFLOW_URI_ENV} / training.tracking.mlflow_tracking_uri"
                ) from error
            mlflow.set_tracking_uri(uri)
            mlflow.set_experiment(tracking.mlflow_experiment)
            mlflow.start_run(run_name=training.run.name)
            mlflow.log_params({"pipeline": pipeline, "resumed_from": resumed_from, "max_steps": training.run.max_steps})
            self.mlflow = mlflow

    def log(
        self, step: int, terms: dict[str, float], learning_rate: float | None, steps_per_second: float, samples_per_second: float
    ) -> None:
        """Log the mean loss terms of the steps up to `step`, the learning rate and throughput."""
        scalars = {f"loss/{name}": value for name, value in terms.items()}
        scalars["throughput/steps_per_second"] = steps_per_second
        scalars["throughput/samples_per_second"] = samples_per_second
        if learning_rate is not None:
            scalars["lr"] = learning_rate
        if self.writer is not None:
            for name, value in scalars.items():
                self.writer.add_scalar(name, value, global_step=step)
            self.writer.flush()  # readable while the run goes on
            if self.upload_to is not None and time.monotonic() - self.last_upload >= TENSORBOARD_UPLOAD_INTERVAL_S:
                self._upload()
        if self.mlflow is not None:
            # MLflow metric names may not hold "/" on every store; use "." instead.
            self.mlflow.log_metrics({name.replace("/", "."): value for name, value in scalars.items()}, step=step)
        for name, value in terms.items():
            metrics.set_gauge("vf3d_train_loss", value, pipeline=self.pipeline, term=name)
        if learning_rate is not None:
            metrics.set_gauge("vf3d_train_learning_rate", learning_rate, pipeline=self.pipeline)

    def close(self, summary: dict[str, Any] | None = None) -> None:
        """Flush and close; `summary` (numbers only are kept) is logged to MLflow as the run's last metrics."""
        if self.writer is not None:
            self.writer.close()
            if self.upload_to is not None:
                self._upload()
                shutil.rmtree(self.writer.log_dir, ignore_errors=True)
        if self.mlflow is not None:
            if summary:
                self.mlflow.log_metrics({key: float(value) for key, value in summary.items() if isinstance(value, (int, float))})
            self.mlflow.end_run()

    def _upload(self) -> None:
        """Publish every event file of the scratch directory to `upload_to`, keeping relative paths."""
        root = Path(self.writer.log_dir)
        for local in sorted(path for path in root.rglob("*") if path.is_file()):
            storage.publish_file(local, str(storage.join(self.upload_to, *local.relative_to(root).parts)))
        self.last_upload = time.monotonic()


def learning_rate(engine: Any) -> float | None:
    """The first parameter group's learning rate of a DeepSpeed engine (None if it has none)."""
    rates = engine.get_lr() if hasattr(engine, "get_lr") else None
    return float(rates[0]) if rates else None
