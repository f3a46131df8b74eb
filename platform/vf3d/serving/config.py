"""Config of `vf3d serve` (the Ray Serve image→3D application: replicas, limits, inference), with
presets.

Import-light: standard library and config modules only, so the ingress replica reads it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vf3d.config import ConfigBase, FieldPath, bounded
from vf3d.models.reconstructor.config import INFERENCE_PRESETS, InferenceConfig


@dataclass
class ReplicaConfig(ConfigBase):
    """One Serve deployment's replicas: autoscaling bounds and what each replica reserves."""

    min_replicas: int = bounded(1, ge=0)
    """Replicas kept even when idle."""
    max_replicas: int = bounded(1, ge=1)
    """Upper bound the autoscaler (and a cluster autoscaler behind it) grows to under load."""
    initial_replicas: int | None = bounded(None, ge=0)
    """Replicas started with the application (defaults to min_replicas)."""
    target_ongoing_requests: float = bounded(2.0, gt=0)
    """Requests in flight per replica the autoscaler aims for (more → add replicas)."""
    max_ongoing_requests: int = bounded(8, ge=1)
    """Requests a replica accepts at once; the rest wait in the caller's queue."""
    max_queued_requests: int = bounded(-1, ge=-1)
    """Requests that wait in one caller's queue for a free replica before more are refused (Serve's
    load shedding: the endpoint answers 503 JSON with `Retry-After`); -1 queues without bound."""
    num_cpus: float = bounded(1.0, ge=0)
    """CPUs reserved per replica."""
    num_gpus: float = bounded(0.0, ge=0)
    """GPUs per replica (1 for the model on a cluster; a fraction lets mesh replicas share one)."""

    def rules(self, at: FieldPath) -> list[tuple[bool, str]]:
        initial = self.min_replicas if self.initial_replicas is None else self.initial_replicas
        return [
            (
                self.min_replicas <= initial <= self.max_replicas,
                f"need {at.min_replicas} <= initial_replicas <= max_replicas, got {self.min_replicas} <= {initial} <= {self.max_replicas}",
            ),
            (self.max_queued_requests != 0, f"{at.max_queued_requests} must be -1 (no limit) or >= 1, got 0"),
        ]


@dataclass
class ServeConfig(ConfigBase):
    """`vf3d serve` / serve/config.yaml: deployments, batching, request limits and HTTP options."""

    inference: InferenceConfig = field(default_factory=InferenceConfig)
    """Preprocessing, mesh and turntable settings (the request's `mesh_resolution` overrides)."""
    ingress: ReplicaConfig = field(
        default_factory=lambda: ReplicaConfig(
            max_replicas=4, num_cpus=2.0, max_ongoing_requests=64, target_ongoing_requests=16.0, max_queued_requests=256
        )
    )
    """HTTP ingress replicas (CPU): auth, body limits, image decoding and preprocessing, the triplane cache."""
    model: ReplicaConfig = field(
        default_factory=lambda: ReplicaConfig(
            max_replicas=8, num_cpus=4.0, num_gpus=1.0, max_ongoing_requests=16, target_ongoing_requests=8.0, max_queued_requests=64
        )
    )
    """Reconstructor replicas: batched encoding (image → triplanes) and turntable rendering."""
    mesh: ReplicaConfig = field(
        default_factory=lambda: ReplicaConfig(
            max_replicas=16, num_cpus=4.0, max_ongoing_requests=4, target_ongoing_requests=2.0, max_queued_requests=64
        )
    )
    """Mesh replicas (CPU by default): density queries, marching cubes, GLB/OBJ/PLY and MP4 encoding."""
    max_batch_size: int = bounded(8, ge=1)
    """Images encoded in one forward pass (`@serve.batch`); 1 turns batching off."""
    batch_wait_timeout_s: float = bounded(0.05, ge=0)
    """How long a partial batch waits for more requests before it runs."""
    max_body_bytes: int = bounded(20_000_000, ge=1)
    """Largest request body accepted (413 above it, checked before the body is read)."""
    max_pixels: int = bounded(40_000_000, ge=1)
    """Largest image (width × height, read from the header before decoding) accepted (413 above it)."""
    min_image_side: int = bounded(16, ge=1)
    """Smallest width or height accepted (422 below it)."""
    max_concurrent_decodes: int = bounded(2, ge=1)
    """Uploads one ingress replica decodes at once (the rest wait, holding only their bytes). Each
    decode peaks at about 16 bytes per pixel of `max_pixels` for WebP (the worst format; ~640 MB
    at 40 MP), 8 for PNG, 1 for JPEG (decoded at reduced scale), so an ingress replica's memory is
    bounded by about its base + this × that + `max_inflight_requests` × `max_body_bytes`."""
    max_inflight_requests: int = bounded(48, ge=1)
    """Image requests one ingress replica holds at once (reading, decoding, waiting on the model or
    the mesher); more are refused at once with 503 JSON and `Retry-After`. Below
    `ingress.max_ongoing_requests`, so the ingress refuses them (Serve's own refusal is plain text)."""
    retry_after_s: int = bounded(5, ge=0)
    """`Retry-After` seconds sent with every 503 of load shedding."""
    max_header_count: int = bounded(64, ge=8)
    """Request headers accepted (431 JSON above it, before the body is read)."""
    max_header_bytes: int = bounded(16_384, ge=1024)
    """Total size of the request headers' names and values accepted (431 JSON above it)."""
    api_docs: bool = False
    """Serve FastAPI's `/docs` and `/openapi.json` (the docs page loads its script from a CDN, so
    off by default: the endpoint then makes no page fetch anything from outside)."""
    max_mesh_resolution: int = bounded(384, ge=8, le=1024)
    """Largest `mesh_resolution` a request may ask for (marching-cubes cost grows with its cube)."""
    request_timeout_s: float = bounded(300.0, gt=0)
    """End-to-end limit of one request (504 after it, with a JSON error)."""
    triplane_cache_entries: int = bounded(64, ge=0)
    """Triplanes kept per ingress replica, keyed by image hash, so a turntable after a mesh of the
    same image skips the model (0 disables the cache)."""
    health_check_period_s: float = bounded(10.0, gt=0)
    """How often Serve checks each model replica (a tiny forward pass on a fixed image)."""
    health_check_timeout_s: float = bounded(60.0, gt=0)
    """A replica whose health check takes longer is considered unhealthy and replaced."""
    host: str = "127.0.0.1"
    """HTTP host of `vf3d serve` (0.0.0.0 to listen on every interface)."""
    port: int = bounded(8000, ge=1, le=65535)
    """HTTP port of `vf3d serve`."""

    def rules(self, at: FieldPath) -> list[tuple[bool, str]]:
        return [
            # A replica that accepts fewer requests than a batch holds can never fill a batch.
            (self.model.max_ongoing_requests >= self.max_batch_size, f"{at.model.max_ongoing_requests} must be >= {at.max_batch_size}"),
            (
                self.max_inflight_requests < self.ingress.max_ongoing_requests,
                f"{at.max_inflight_requests} must be >= 1 and < {at.ingress.max_ongoing_requests}",
            ),
            (
                self.inference.mesh_resolution is None or self.inference.mesh_resolution <= self.max_mesh_resolution,
                f"{at.inference.mesh_resolution} must be <= {at.max_mesh_resolution}",
            ),
        ]


def _serve_debug() -> ServeConfig:
    # One small replica of each deployment on a laptop's CPU; fractional CPUs so all three fit
    # on 2 cores next to Serve's controller and proxy. "auto" iso: debug models are often random.
    # A 64² turntable: a debug model renders at 32², too small to see anything in a video player.
    inference = InferenceConfig(
        mesh_resolution=64, mesh_iso="auto", turntable_views=16, turntable_size=64, turntable_fps=8, mask_method="estimate"
    )
    return ServeConfig(
        inference=inference,
        ingress=ReplicaConfig(num_cpus=0.25, max_ongoing_requests=32, target_ongoing_requests=16.0, max_queued_requests=64),
        model=ReplicaConfig(num_cpus=0.5, max_ongoing_requests=8, target_ongoing_requests=4.0, max_queued_requests=32),
        mesh=ReplicaConfig(num_cpus=0.5, max_ongoing_requests=4, target_ongoing_requests=2.0, max_queued_requests=32),
        max_concurrent_decodes=1,
        max_inflight_requests=24,
        max_batch_size=4,
        max_body_bytes=8_000_000,
        max_mesh_resolution=128,
        request_timeout_s=120.0,
        triplane_cache_entries=16,
    )


def _serve_cluster(model: str) -> ServeConfig:
    # GPU model replicas autoscale 1 → 8 (one GPU each); mesh replicas on CPU workers.
    return ServeConfig(inference=INFERENCE_PRESETS[model](), host="0.0.0.0")


SERVE_PRESETS = {
    "debug": _serve_debug,
    "base": lambda: _serve_cluster("base"),
    "vfusion3d": lambda: _serve_cluster("vfusion3d"),
}
