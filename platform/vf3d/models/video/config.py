"""Config of the orbit video model (architecture, first-frame generator, sampling), with presets.

Import-light: standard library and `vf3d.config` only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vf3d.config import ConfigBase, FieldPath, bounded


@dataclass
class VideoArchitectureConfig(ConfigBase):
    """Sizes of a randomly initialised video model (`random_init`); pretrained ones bring their own."""

    transformer_layers: int = bounded(2, ge=1)
    """DiT blocks (`WanTransformer3DModel.num_layers`)."""
    transformer_heads: int = bounded(2, ge=1)
    """Attention heads per DiT block."""
    transformer_head_dim: int = bounded(12, ge=2)
    """Channels per head; even, because the 3-D rotary embedding splits it over time, height, width."""
    transformer_ffn_dim: int = bounded(48, ge=1)
    """Hidden width of each DiT block's feed-forward layer."""
    patch_size: list[int] = bounded(factory=lambda: [1, 2, 2], ge=1, length=3)
    """(frames, height, width) of the DiT's latent patches."""
    vae_base_dim: int = bounded(4, ge=1)
    """Channels of the Wan VAE's first stage (96 in Wan 2.1)."""
    vae_dim_mult: list[int] = bounded(factory=lambda: [1, 1, 1], ge=1)
    """Channel multiplier per VAE stage; every stage after the first halves height and width."""
    vae_temporal_downsample: list[bool] = field(default_factory=lambda: [True, True])
    """Per downsampling stage (len(vae_dim_mult) − 1 of them), whether it also halves time."""
    vae_latent_channels: int = bounded(4, ge=1)
    """Latent channels of the VAE (16 in Wan 2.1, 48 in Wan 2.2)."""
    text_hidden_size: int = bounded(32, ge=1)
    """Width of the random CLIP text encoder (and of the DiT's text input)."""
    text_layers: int = bounded(2, ge=1)
    """Layers of the random CLIP text encoder."""
    text_heads: int = bounded(2, ge=1)
    """Attention heads of the random CLIP text encoder."""

    def rules(self, at: FieldPath) -> list[tuple[bool, str]]:
        return [
            (self.transformer_head_dim % 2 == 0, f"{at.transformer_head_dim} must be even, got {self.transformer_head_dim}"),
            (
                len(self.vae_temporal_downsample) == len(self.vae_dim_mult) - 1,
                f"{at.vae_temporal_downsample} needs one entry per VAE downsampling stage (len(vae_dim_mult) - 1)",
            ),
            (
                self.text_hidden_size % self.text_heads == 0,
                f"{at.text_hidden_size} must be divisible by {at.text_heads}, got {self.text_hidden_size} and {self.text_heads}",
            ),
        ]


@dataclass
class VideoModelConfig(ConfigBase):
    """The orbit video model: a Wan-style DiT on Wan VAE latents, conditioned on the prompt, the
    first frame and the orbit's elevation, plus the text-to-image model that makes first frames."""

    pretrained_path: str | None = None
    """Local diffusers directory to start from: a Wan text-to-video pipeline (Wan 2.1 T2V, Wan 2.2
    TI2V) or a saved vf3d video model. Required unless `random_init`."""
    random_init: bool = False
    """Build every component randomly from `architecture` (debug and tests only)."""
    vae_path: str | None = None
    """With `random_init`: load the VAE from this directory (`AutoencoderKLWan.save_pretrained`)
    instead of building a random one, whose latents decode to noise whatever the DiT learns. The
    demo uses the small VAE fitted to its sample renders (`vf3d.demo.DEMO_VAE_DIR`)."""
    architecture: VideoArchitectureConfig = field(default_factory=VideoArchitectureConfig)
    text_to_image_path: str | None = None
    """Local diffusers text-to-image pipeline that draws first frames from prompts; None builds a
    tiny random one when `random_init`."""
    resolution: int = bounded(512, ge=16, le=4096)
    """Side of the square frames the model trains on and generates."""
    num_views: int = bounded(16, ge=4)
    """Orbit views per video at azimuth 360°·i/V; a multiple of 4 (the Wan VAE's frame chunk)."""
    max_text_tokens: int = bounded(512, ge=1)
    """Prompt tokens fed to the text encoder (padding is zeroed, as Wan does)."""
    elevation_frequency_dim: int = bounded(256, ge=2)
    """Sinusoidal features of the elevation before the elevation MLP; even."""
    frozen_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Dtype the frozen VAE and text encoder are loaded in from `pretrained_path`: "fp32", "bf16" or
    "fp16" (bf16 halves their memory on GPUs; random debug models stay fp32)."""
    trainable: Literal["temporal", "full"] = field(default="temporal", metadata={"note": "LoRA needs peft, which vf3d does not install"})
    """What fine-tuning trains: "temporal" (self-attention, patch embedding and elevation embedder)
    or "full" (the whole DiT and the elevation embedder)."""
    prompt_dropout: float = bounded(0.1, ge=0, lt=1)
    """Probability of training on the empty prompt (what classifier-free guidance contrasts with)."""
    flow_shift: float = bounded(3.0, gt=0)
    """Shift of the flow-matching noise levels, σ' = sσ / (1 + (s − 1)σ), in training and sampling."""
    gradient_checkpointing: bool = False
    """Recompute DiT blocks in the backward pass instead of storing their activations."""
    num_inference_steps: int = bounded(50, ge=1)
    """Euler steps of orbit generation."""
    guidance_scale: float = bounded(5.0, ge=1)
    """Classifier-free guidance on the prompt (1 disables it)."""
    text_to_image_steps: int = bounded(30, ge=1)
    """Denoising steps of the first-frame text-to-image model."""
    text_to_image_guidance: float = bounded(7.5, ge=1)
    """Classifier-free guidance of the first-frame text-to-image model."""
    seed: int = 0
    """Seed of a random initialisation."""

    def rules(self, at: FieldPath) -> list[tuple[bool, str]]:
        return [
            (
                self.num_views % 4 == 0,
                f"{at.num_views} must be a multiple of 4 (the Wan VAE encodes frames in chunks of 4 after the first), got {self.num_views}",
            ),
            (self.elevation_frequency_dim % 2 == 0, f"{at.elevation_frequency_dim} must be even, got {self.elevation_frequency_dim}"),
            (
                self.vae_path is None or self.random_init,
                f"{at.vae_path} is for random_init models (a pretrained pipeline brings its own VAE), got {self.vae_path!r}",
            ),
        ]


def _video_model_debug() -> VideoModelConfig:
    # Tiny and random: 32×32 frames → 8×8×5 latents (the VAE keeps Wan's 4× temporal compression,
    # so debug runs the same frame and mask layout as the real models).
    return VideoModelConfig(
        random_init=True,
        resolution=32,
        max_text_tokens=32,
        elevation_frequency_dim=32,
        num_inference_steps=4,
        guidance_scale=3.0,
        text_to_image_steps=4,
        text_to_image_guidance=3.0,
    )


VIDEO_MODEL_PRESETS = {
    "debug": _video_model_debug,
    # Wan 2.1 T2V 1.3B (diffusers layout) fine-tuned at 512² (the paper's video model ran at 512).
    "wan2.1-1.3b": lambda: VideoModelConfig(frozen_dtype="bf16", gradient_checkpointing=True, flow_shift=3.0),
    # Wan 2.2 TI2V 5B: 48-channel VAE with 16× spatial compression, so 512² frames are 32×32 latents.
    "wan2.2-5b": lambda: VideoModelConfig(frozen_dtype="bf16", gradient_checkpointing=True, flow_shift=5.0),
}


def is_orbit_video_index(index: dict) -> bool:
    """Whether a model_index.json dict describes an `OrbitVideoPipeline` (either spelling: the class
    name, as older exports wrote it, or diffusers' custom-pipeline `[module, class]`)."""
    name = index.get("_class_name")
    return name == "OrbitVideoPipeline" or (isinstance(name, list) and name[-1:] == ["OrbitVideoPipeline"])
