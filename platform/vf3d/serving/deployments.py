"""The endpoint's three Serve deployments.

    HTTP ──► Ingress (CPU)  auth, limits, decode + preprocess, triplane cache
                │ image [3, S, S]                         │ triplanes, format, resolution
                ▼                                         ▼
         ReconstructorModel (GPU)                  MeshBuilder (CPU)
         @serve.batch: N images → one forward      density queries → marching cubes → GLB/OBJ/PLY
         turntable rendering                        turntable frames → MP4

The model replica only runs the transformer (batched across concurrent requests) and volume
rendering; decoding and mesh extraction never hold the GPU. Every replica gets the same plain-dict
`ServeConfig`, so a config file changes all of them consistently.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time

import numpy as np
from ray import serve

from vf3d import storage

logger = logging.getLogger("ray.serve")

PROBE_INTERVAL_S = 5.0
"""/healthz reuses a model probe younger than this instead of running another forward pass."""


def _replica_id() -> str | None:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a replica (the class used directly, as in unit tests)
        return None


def _serve_config(config: dict):
    from vf3d.config import from_dict
    from vf3d.serving.config import ServeConfig

    return from_dict(ServeConfig, config).validate()


def _load_pipeline(model_dir: str, config):
    from dataclasses import replace

    from vf3d.inference import ImageTo3D

    pipeline = ImageTo3D.from_pretrained(model_dir, config.inference)
    # A mesh resolution taken from the model stays within what requests may ask for.
    if pipeline.config.mesh_resolution > config.max_mesh_resolution:
        pipeline.config = replace(pipeline.config, mesh_resolution=config.max_mesh_resolution)
    return pipeline


@serve.deployment
class ReconstructorModel:
    """Images → triplanes, batched; triplanes → turntable frames. One GPU per replica on a cluster."""

    def __init__(self, model_dir: str, config: dict) -> None:
        import torch

        from vf3d.ray_runtime import require_usable_gpus

        require_usable_gpus("ReconstructorModel")  # a GPU replica must never serve from the CPU
        self.config = _serve_config(config)
        self.pipeline = _load_pipeline(model_dir, self.config)
        self.model_name = storage.name(model_dir)  # a local directory or an object-store URI
        self.encode_batch.set_max_batch_size(self.config.max_batch_size)
        self.encode_batch.set_batch_wait_timeout_s(self.config.batch_wait_timeout_s)
        # One model call at a time: concurrent calls would only contend for the same device,
        # while queued requests keep filling the next batch.
        self._lock = asyncio.Lock()
        # Health probes never wait on that lock: behind a long turntable render a probe would time
        # out and Serve would replace a healthy replica. A probe's forward pass on one image runs
        # next to whatever holds the lock (inference only reads the weights); this lock only
        # keeps probes from piling up on each other.
        self._probe_lock = asyncio.Lock()
        size = self.pipeline.model.config.encoder.image_size
        self._probe_image = torch.ones(1, 3, size, size)
        self.images_encoded = 0
        self.batch_sizes: list[int] = []
        self.turntables = 0
        self._last_probe = float("-inf")
        logger.info(
            "reconstructor %s loaded on %s (batches of up to %d)", self.model_name, self.pipeline.device, self.config.max_batch_size
        )

    async def _run(self, function, *args):
        async with self._lock:
            return await asyncio.to_thread(function, *args)

    def _encode(self, images: list[np.ndarray]) -> np.ndarray:
        import torch

        planes = self.pipeline.encode(torch.from_numpy(np.stack(images)))
        return planes.cpu().numpy()

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)  # both reset from the config in __init__
    async def encode_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Prepared images, each float32 [3, S, S] → triplanes, each float32 [1, 3, C, R, R]."""
        planes = await self._run(self._encode, images)
        self.images_encoded += len(images)
        self.batch_sizes.append(len(images))
        return [planes[index : index + 1] for index in range(len(images))]

    async def encode(self, image: np.ndarray) -> np.ndarray:
        """One prepared image float32 [3, S, S] → triplanes float32 [1, 3, C, R, R] (joins a batch)."""
        return await self.encode_batch(image)

    def _turntable(self, planes: np.ndarray, seed: int | None) -> np.ndarray:
        import torch

        # np.array copies: Ray hands over read-only arrays, which torch does not wrap safely.
        return self.pipeline.turntable(torch.from_numpy(np.array(planes)).to(self.pipeline.device), seed=seed)

    async def turntable(self, planes: np.ndarray, seed: int | None = None) -> np.ndarray:
        """Triplanes [1, 3, C, R, R] → uint8 frames [M, H, W, 3] of one revolution."""
        frames = await self._run(self._turntable, planes, seed)
        self.turntables += 1
        return frames

    async def info(self) -> dict:
        """What /healthz reports about this replica, after checking that the model still works
        (the probe of `check_health`, at most once per PROBE_INTERVAL_S: load balancers poll)."""
        if time.monotonic() - self._last_probe > PROBE_INTERVAL_S:
            await self.check_health()
        sizes = self.batch_sizes[-1000:]
        return {
            "model": self.model_name,
            "device": str(self.pipeline.device),
            "images_encoded": self.images_encoded,
            "batches": len(self.batch_sizes),
            "largest_batch": max(sizes, default=0),
            "mean_batch": round(sum(sizes) / len(sizes), 3) if sizes else 0.0,
            "turntables": self.turntables,
            "replica": _replica_id(),
        }

    def _probe(self) -> None:
        planes = self.pipeline.encode(self._probe_image)
        if not bool(planes.isfinite().all()):
            raise RuntimeError("the model produced non-finite triplanes for the health-check image")

    async def check_health(self) -> None:
        """Called by Serve every `health_check_period_s`: a forward pass on a fixed image must run
        and give finite triplanes, or the replica is replaced (e.g. a wedged or corrupted GPU).
        Runs outside the lock that batches and renders take, so it never queues behind them."""
        async with self._probe_lock:
            await asyncio.to_thread(self._probe)
        self._last_probe = time.monotonic()


@serve.deployment
class MeshBuilder:
    """Triplanes → mesh bytes (GLB/OBJ/PLY) and frames → MP4, off the model replicas."""

    def __init__(self, model_dir: str, config: dict) -> None:
        self.config = _serve_config(config)
        self.pipeline = _load_pipeline(model_dir, self.config)
        # Meshing only queries the triplane decoder: drop the image encoder and the transformer,
        # most of the weights, so each replica holds a few megabytes instead of the full model.
        for name in ("encoder", "transformer", "upsampler", "camera_embedder"):
            setattr(self.pipeline.model, name, None)
        self.meshes = 0

    def _mesh(self, planes: np.ndarray, fmt: str, resolution: int | None) -> dict:
        import torch

        from vf3d.mesh import EmptyMeshError, export_mesh

        started = time.perf_counter()
        try:
            result = self.pipeline.mesh(torch.from_numpy(np.array(planes)).to(self.pipeline.device), resolution=resolution)
        except EmptyMeshError as error:
            # A property of this image's reconstruction, not of the service: the ingress says 422.
            return {"error": f"the reconstruction has no surface ({error})"}
        data = export_mesh(result.mesh, fmt)
        return {
            "data": data,
            "vertices": len(result.mesh.vertices),
            "faces": len(result.mesh.faces),
            "seconds": time.perf_counter() - started,
        }

    async def mesh(self, planes: np.ndarray, fmt: str, resolution: int | None = None) -> dict:
        """Triplanes [1, 3, C, R, R] → {"data": bytes, "vertices", "faces", "seconds"} or {"error"}."""
        result = await asyncio.to_thread(self._mesh, planes, fmt, resolution)
        self.meshes += 1
        return result

    def _video(self, frames: np.ndarray) -> bytes:
        from vf3d.mesh import write_video

        # From the frame count the model replica's device chose (this replica may run elsewhere).
        fps = self.config.inference.frame_rate(len(frames))
        with tempfile.TemporaryDirectory() as directory:
            path = write_video(frames, os.path.join(directory, "turntable.mp4"), fps=fps)
            return path.read_bytes()

    async def video(self, frames: np.ndarray) -> bytes:
        """uint8 frames [M, H, W, 3] → H.264 MP4 bytes."""
        return await asyncio.to_thread(self._video, frames)
