"""`OrbitVideoModel`: the trainable view of an `OrbitVideoPipeline` (pure torch, single device).

A training loop wraps this module (DeepSpeed, DDP, …) and calls it: `loss = model(frames, prompts,
elevations)`. The VAE and the text encoder are frozen and stay in eval mode; what the DiT trains is
chosen by `trainable_parameters(mode)`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from vf3d.models.pretrained import make_readable
from vf3d.models.video.conditioning import check_frame_size, close_orbit, encode_video, first_frame_condition, vae_compression
from vf3d.models.video.config import VideoModelConfig
from vf3d.models.video.pipeline import OrbitVideoPipeline, predict_velocity
from vf3d.models.video.text import encode_prompts

TRAINABLE_MODES = ("temporal", "full")


class OrbitVideoModel(nn.Module):
    """Flow-matching training of the orbit video model.

    Submodules: `transformer` (WanTransformer3DModel), `elevation_embedder`, and the frozen `vae` and
    `text_encoder`; the tokenizer and scheduler are plain attributes. The modules are shared with
    the pipeline it was made from, so training updates that pipeline too.
    """

    def __init__(self, pipeline: OrbitVideoPipeline, prompt_dropout: float = 0.1) -> None:
        super().__init__()
        self.transformer = pipeline.transformer
        self.elevation_embedder = pipeline.elevation_embedder
        self.vae = pipeline.vae.requires_grad_(False).eval()
        self.text_encoder = pipeline.text_encoder.requires_grad_(False).eval()
        self.tokenizer = pipeline.tokenizer
        self.scheduler = pipeline.scheduler
        self.pipeline_config = {name: pipeline.config[name] for name in ("resolution", "num_views", "max_text_tokens")}
        self.prompt_dropout = prompt_dropout

    @classmethod
    def from_config(cls, config: VideoModelConfig) -> OrbitVideoModel:
        """Build (random `debug`) or load (`pretrained_path`) the model a config describes, with its
        trainable subset selected and gradient checkpointing applied."""
        from vf3d.models.video.build import build_video_pipeline

        model = cls(build_video_pipeline(config), prompt_dropout=config.prompt_dropout)
        model.trainable_parameters(config.trainable)
        if config.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        return model

    def to_pipeline(self) -> OrbitVideoPipeline:
        """An inference pipeline sharing this model's modules."""
        return OrbitVideoPipeline(
            transformer=self.transformer,
            vae=self.vae,
            scheduler=self.scheduler,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            elevation_embedder=self.elevation_embedder,
            **self.pipeline_config,
        )

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the diffusers pipeline layout (model_index.json + one folder per component)."""
        self.to_pipeline().save_pretrained(directory)
        for weights in Path(directory).rglob("*.safetensors"):
            make_readable(weights)  # safetensors writes 0600

    def train(self, mode: bool = True) -> OrbitVideoModel:
        """Set the training mode of the trainable parts; the frozen VAE and text encoder stay in eval."""
        super().train(mode)
        self.vae.eval()
        self.text_encoder.eval()
        return self

    def trainable_parameters(self, mode: str) -> list[nn.Parameter]:
        """Choose what trains (sets requires_grad) and return those parameters for the optimiser.

        "full": the whole DiT and the elevation embedder.
        "temporal": a full-attention DiT has no temporal layers; the only layers that mix
        information across frames are the self-attention layers, so "temporal" trains every
        block's self-attention (`attn1`: q/k/v/o projections and their q/k RMSNorm gains), the
        patch embedding (it must learn the new mask and first-frame channels) and the elevation
        embedder. Norms, cross-attention, feed-forward and output layers stay as pretrained.
        LoRA needs `peft`, which vf3d does not install.
        """
        if mode not in TRAINABLE_MODES:
            hint = " (LoRA needs the peft package, which vf3d does not install)" if mode == "lora" else ""
            raise ValueError(f"unknown trainable mode {mode!r}{hint}; choose one of: {', '.join(TRAINABLE_MODES)}")
        self.transformer.requires_grad_(mode == "full")
        if mode == "temporal":
            self.transformer.patch_embedding.requires_grad_(True)
            for block in self.transformer.blocks:
                block.attn1.requires_grad_(True)
        self.elevation_embedder.requires_grad_(True)
        return [parameter for parameter in self.parameters() if parameter.requires_grad]

    def enable_gradient_checkpointing(self) -> None:
        """Recompute DiT blocks in the backward pass instead of storing their activations."""
        self.transformer.enable_gradient_checkpointing()

    def forward(
        self, frames: torch.Tensor, prompts: list[str], elevations: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Same as `training_loss` (so wrappers that call the module get the loss)."""
        return self.training_loss(frames, prompts, elevations, generator)

    def training_loss(
        self, frames: torch.Tensor, prompts: list[str], elevations: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Flow-matching loss of a batch of orbits.

        Sample σ (uniform, shifted like the sampler: σ' = sσ / (1 + (s − 1)σ)) and noise ε, form
        x_σ = (1 − σ)·x0 + σ·ε and regress the DiT's prediction on the velocity ε − x0 (MSE). The
        first latent frame (view 0 alone) is given: it stays clean in x_σ, sits in the condition
        channels, and is left out of the loss; the loss covers the other latent frames.

        Args:
            frames: [B, V, 3, H, W] orbit views in [0, 1], view i at azimuth 360°·i/V, H = W =
                the model's resolution.
            prompts: B prompts (each replaced by "" with probability `prompt_dropout`).
            elevations: [B] camera elevations in degrees.
            generator: source of σ, noise and prompt dropout (seeded runs are reproducible).
        Returns:
            Scalar loss.
        """
        if frames.ndim != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be [B, V, 3, H, W], got {tuple(frames.shape)}")
        check_frame_size(self.vae, self.transformer, frames.shape[3], frames.shape[4])
        batch = frames.shape[0]
        device = self.transformer.device
        random_device = generator.device if generator is not None else device
        keep_prompt = torch.rand(batch, generator=generator, device=random_device) >= self.prompt_dropout
        with torch.no_grad():
            latents = encode_video(self.vae, close_orbit(frames).transpose(1, 2))
            text = encode_prompts(
                self.text_encoder,
                self.tokenizer,
                [prompt if keep else "" for prompt, keep in zip(prompts, keep_prompt.tolist())],
                self.pipeline_config["max_text_tokens"],
            )
        first_latents = latents[:, :, :1]
        condition = first_frame_condition(first_latents, latents.shape[2], vae_compression(self.vae)[0])

        shift = self.scheduler.config.shift
        uniform = torch.rand(batch, generator=generator, device=random_device).to(device)
        sigmas = shift * uniform / (1 + (shift - 1) * uniform)
        noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=latents.dtype)
        sigma = sigmas.view(batch, 1, 1, 1, 1)
        noisy = (1 - sigma) * latents + sigma * noise
        noisy = torch.cat([first_latents, noisy[:, :, 1:]], dim=2)
        timesteps = sigmas * self.scheduler.config.num_train_timesteps

        velocity = predict_velocity(self.transformer, self.elevation_embedder, noisy, condition, timesteps, text, elevations.to(device))
        target = noise - latents
        return F.mse_loss(velocity[:, :, 1:].float(), target[:, :, 1:])
