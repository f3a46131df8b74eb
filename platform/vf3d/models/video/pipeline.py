"""`OrbitVideoPipeline`: first frame + prompt + elevation → a 360° orbit video and its cameras."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLWan, DiffusionPipeline, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
from diffusers.utils import BaseOutput
from PIL import Image
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from vf3d import cameras
from vf3d.atomic import write_text_atomic
from vf3d.models.video.conditioning import (
    check_frame_size,
    decode_latents,
    encode_video,
    first_frame_condition,
    latent_frames,
    orbit_video_frames,
    vae_compression,
)
from vf3d.models.video.config import is_orbit_video_index
from vf3d.models.video.elevation import ElevationEmbedder, added_to_timestep_embedding
from vf3d.models.video.text import encode_prompts

ImageInput = Image.Image | np.ndarray


@dataclass
class OrbitVideoOutput(BaseOutput):
    """Generated orbits.

    frames: uint8 [B, V, H, W, 3]; view i is seen from azimuth 360°·i/V, view 0 is the given
        first frame (after a VAE round trip).
    cameras: float32 [B, V, 25] render-camera vectors of the views (cameras.py conventions):
        orbit poses at the requested elevation, radius `cameras.RENDER_RADIUS`, default intrinsics.
    """

    frames: np.ndarray
    cameras: np.ndarray


def predict_velocity(
    transformer: WanTransformer3DModel,
    elevation_embedder: ElevationEmbedder,
    noisy_latents: torch.Tensor,
    condition: torch.Tensor,
    timesteps: torch.Tensor,
    text_embeddings: torch.Tensor,
    elevations_deg: torch.Tensor,
) -> torch.Tensor:
    """The flow-matching velocity (noise − data) the DiT predicts.

    Args:
        noisy_latents: [B, z, T, h, w]; condition: [B, m + z, T, h, w] (`first_frame_condition`).
        timesteps: [B] noise levels σ·1000 (the scheduler's timestep scale).
        text_embeddings: [B, L, D_text]; elevations_deg: [B].
    Returns:
        [B, z, T, h, w].
    """
    dtype = transformer.dtype
    hidden_states = torch.cat([noisy_latents, condition], dim=1).to(dtype)
    elevation_embedding = elevation_embedder(elevations_deg.to(elevation_embedder.device))
    with added_to_timestep_embedding(transformer, elevation_embedding):
        return transformer(
            hidden_states=hidden_states, timestep=timesteps, encoder_hidden_states=text_embeddings.to(dtype), return_dict=False
        )[0]


def images_to_tensor(images: Sequence[ImageInput], resolution: int) -> torch.Tensor:
    """RGB images (PIL or uint8 [H, W, 3] arrays) → [B, 3, S, S] float32 in [0, 1], resized to S."""
    tensors = []
    for image in images:
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"first frames must be uint8 [H, W, 3] arrays or PIL images, got {image.dtype} {image.shape}")
            image = Image.fromarray(image)
        image = image.convert("RGB")
        if image.size != (resolution, resolution):
            image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
        tensors.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
    return torch.stack(tensors).float() / 255


def orbit_cameras(num_views: int, elevation_deg: float) -> torch.Tensor:
    """Render cameras of a generated orbit: [V, 25] (orbit poses at radius 1.5, default intrinsics)."""
    return cameras.render_camera_vector(cameras.orbit_poses(num_views, elevation_deg=elevation_deg, radius=cameras.RENDER_RADIUS))


DIFFUSERS_ENTRY_MODULE = "pipeline"
"""The module beside model_index.json through which diffusers' generic loader finds this class.

diffusers' convention for pipelines it does not ship: model_index.json names `[module, class]` and
`module.py` lies in the directory, so `DiffusionPipeline.from_pretrained(directory,
trust_remote_code=True)` imports it (diffusers refuses code from a model directory without that
flag). Ours holds one import of the installed vf3d class, nothing else to trust."""

DIFFUSERS_ENTRY_SOURCE = '''"""Entry point for diffusers: `DiffusionPipeline.from_pretrained(this_directory, trust_remote_code=True)`.

The pipeline's code is the installed `vf3d` package (pip install vf3d); this file only imports it.
`vf3d.models.video.OrbitVideoPipeline.from_pretrained(this_directory)` loads without running it.
"""

from vf3d.models.video.pipeline import OrbitVideoPipeline

__all__ = ["OrbitVideoPipeline"]
'''


class OrbitVideoPipeline(DiffusionPipeline):
    """Wan-style DiT + Wan VAE + text encoder + elevation embedder, sampled with flow-matching Euler.

    Saved with `save_pretrained` in the standard diffusers layout (model_index.json + one folder per
    component); `OrbitVideoPipeline.from_pretrained(directory)` loads it back, and each component
    loads with its own diffusers/transformers class. `resolution`, `num_views` and
    `max_text_tokens` are recorded in model_index.json.
    """

    model_cpu_offload_seq = "text_encoder->elevation_embedder->transformer->vae"

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """diffusers' layout, plus `pipeline.py` and `_class_name: ["pipeline", "OrbitVideoPipeline"]`
        in model_index.json, so that diffusers' generic `DiffusionPipeline` loads it too."""
        super().save_pretrained(save_directory, **kwargs)
        directory = Path(save_directory)
        write_text_atomic(directory / f"{DIFFUSERS_ENTRY_MODULE}.py", DIFFUSERS_ENTRY_SOURCE)
        index_path = directory / "model_index.json"
        index = json.loads(index_path.read_text())
        index["_class_name"] = [DIFFUSERS_ENTRY_MODULE, type(self).__name__]
        write_text_atomic(index_path, json.dumps(index, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load_config(cls, *args, **kwargs):
        """model_index.json as diffusers reads it, with our own `[module, class]` entry read as this
        class: `OrbitVideoPipeline.from_pretrained` never imports (runs) the directory's pipeline.py."""
        loaded = super().load_config(*args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        if is_orbit_video_index(config):
            config["_class_name"] = cls.__name__
        return loaded

    def __init__(
        self,
        transformer: WanTransformer3DModel,
        vae: AutoencoderKLWan,
        scheduler: FlowMatchEulerDiscreteScheduler,
        text_encoder: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        elevation_embedder: ElevationEmbedder,
        resolution: int = 512,
        num_views: int = 16,
        max_text_tokens: int = 512,
    ) -> None:
        super().__init__()
        self.register_modules(
            transformer=transformer,
            vae=vae,
            scheduler=scheduler,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            elevation_embedder=elevation_embedder,
        )
        self.register_to_config(resolution=resolution, num_views=num_views, max_text_tokens=max_text_tokens)

    @torch.no_grad()
    def generate_orbit(
        self,
        first_frame: ImageInput | Sequence[ImageInput],
        prompt: str | Sequence[str],
        elevation: float | Sequence[float],
        num_frames: int | None = None,
        steps: int = 50,
        guidance: float = 5.0,
        seed: int | Sequence[int] = 0,
    ) -> OrbitVideoOutput:
        """Generate the orbit that starts at each first frame.

        Args:
            first_frame: one image or B images (PIL or uint8 [H, W, 3]); resized to the model's
                resolution when needed.
            prompt: one prompt or B prompts (a single value is used for every sample).
            elevation: camera elevation in degrees, one or B values.
            num_frames: orbit views V (a multiple of 4); the model's `num_views` when None.
            steps: Euler steps; guidance: classifier-free guidance on the prompt against the empty
                prompt (1 disables it).
            seed: sample i draws its noise from its own generator seeded `seed + i` (or `seed[i]`),
                so a sample does not depend on what it is batched with, and runs are reproducible.
        Returns:
            OrbitVideoOutput with frames uint8 [B, V, S, S, 3] and cameras float32 [B, V, 25].
        """
        single_image = isinstance(first_frame, Image.Image) or (isinstance(first_frame, np.ndarray) and first_frame.ndim == 3)
        images = [first_frame] if single_image else list(first_frame)
        batch = len(images)
        prompts = _per_sample([prompt] if isinstance(prompt, str) else list(prompt), batch, "prompt")
        elevations = _per_sample(np.atleast_1d(np.asarray(elevation, dtype=np.float64)).tolist(), batch, "elevation")
        seeds = (
            [int(seed) + index for index in range(batch)]
            if np.ndim(seed) == 0
            else _per_sample([int(value) for value in seed], batch, "seed")
        )
        num_views = num_frames or self.config.num_views
        device = self._execution_device
        resolution = self.config.resolution
        check_frame_size(self.vae, self.transformer, resolution, resolution)
        temporal = vae_compression(self.vae)[0]

        first_latents = encode_video(self.vae, images_to_tensor(images, resolution)[:, :, None].to(device))
        num_latent_frames = latent_frames(orbit_video_frames(num_views), temporal)
        condition = first_frame_condition(first_latents, num_latent_frames, temporal)
        latent_shape = (first_latents.shape[1], num_latent_frames, *first_latents.shape[-2:])
        noise = torch.stack([torch.randn(latent_shape, generator=torch.Generator().manual_seed(value)) for value in seeds]).to(device)
        latents = torch.cat([first_latents, noise[:, :, 1:]], dim=2)

        use_guidance = guidance > 1
        text = encode_prompts(
            self.text_encoder, self.tokenizer, prompts + ([""] * batch if use_guidance else []), self.config.max_text_tokens
        )
        elevations_tensor = torch.tensor(elevations, device=device)
        if use_guidance:
            condition, elevations_tensor = condition.repeat(2, 1, 1, 1, 1), elevations_tensor.repeat(2)

        self.scheduler.set_timesteps(steps, device=device)
        for timestep in self.scheduler.timesteps:
            model_input = latents.repeat(2, 1, 1, 1, 1) if use_guidance else latents
            velocity = predict_velocity(
                self.transformer,
                self.elevation_embedder,
                model_input,
                condition,
                timestep.expand(model_input.shape[0]),
                text,
                elevations_tensor,
            ).float()
            if use_guidance:
                conditional, unconditional = velocity.chunk(2)
                velocity = unconditional + guidance * (conditional - unconditional)
            latents = self.scheduler.step(velocity, timestep, latents, return_dict=False)[0]
            # The first frame is given, not generated: keep it exact at every step.
            latents = torch.cat([first_latents, latents[:, :, 1:]], dim=2)

        video = decode_latents(self.vae, latents)[:, :, :num_views]  # drop the closing view
        frames = (video.permute(0, 2, 3, 4, 1) * 255).round().to(torch.uint8).cpu().numpy()
        orbit = np.stack([orbit_cameras(num_views, value).numpy() for value in elevations]).astype(np.float32)
        return OrbitVideoOutput(frames=frames, cameras=orbit)


def _per_sample(values: list, batch: int, name: str) -> list:
    """One value per sample: a single value is repeated, otherwise the count must match."""
    if len(values) == 1:
        return values * batch
    if len(values) != batch:
        raise ValueError(f"got {len(values)} values of {name} for {batch} first frames")
    return values
