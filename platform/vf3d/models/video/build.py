"""Build the orbit video pipeline a `VideoModelConfig` describes.

- `random_init` (debug): every component random from `config.architecture`, seeded by `config.seed`.
- `pretrained_path` holding a saved vf3d video model: loaded as it is.
- `pretrained_path` holding a Wan text-to-video pipeline (diffusers layout): its DiT, VAE, text
  encoder and tokenizer, plus the new conditioning: the patch embedding widened with zero weights
  for the mask and first-frame channels, and a zero-initialised elevation embedder. The result
  computes exactly what the pretrained model did until fine-tuning moves it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, DiffusionPipeline, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

from vf3d.config import ConfigError
from vf3d.models.video.conditioning import conditioned_in_channels, widen_patch_embedding
from vf3d.models.video.config import VideoModelConfig, is_orbit_video_index
from vf3d.models.video.elevation import ElevationEmbedder
from vf3d.models.video.pipeline import OrbitVideoPipeline
from vf3d.models.video.text import clip_tokenizer, random_clip_text_encoder

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_video_pipeline(config: VideoModelConfig) -> OrbitVideoPipeline:
    """The orbit video pipeline of `config` (on the CPU; move it with `.to(device)`)."""
    config.validate()
    if config.pretrained_path is None:
        if not config.random_init:
            raise ConfigError(
                "video model: pretrained_path is required (a local diffusers directory holding a Wan text-to-video pipeline or a saved vf3d video model); only random_init presets such as debug build without one"
            )
        return _random_pipeline(config)
    path = Path(config.pretrained_path)
    index_path = path / "model_index.json"
    if not index_path.is_file():
        raise ConfigError(f"video model: {path} is not a diffusers pipeline directory (no model_index.json)")
    component_dtypes = {"vae": DTYPES[config.frozen_dtype], "text_encoder": DTYPES[config.frozen_dtype], "default": torch.float32}
    if is_orbit_video_index(json.loads(index_path.read_text())):
        return OrbitVideoPipeline.from_pretrained(path, local_files_only=True, dtype=component_dtypes)
    source = DiffusionPipeline.from_pretrained(path, local_files_only=True, dtype=component_dtypes)
    return _add_orbit_conditioning(source, config)


def _random_pipeline(config: VideoModelConfig) -> OrbitVideoPipeline:
    architecture = config.architecture
    vae = _fitted_vae(config.vae_path) if config.vae_path else None
    latent_channels = vae.config.z_dim if vae is not None else architecture.vae_latent_channels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        vae = vae or AutoencoderKLWan(
            base_dim=architecture.vae_base_dim,
            z_dim=latent_channels,
            dim_mult=list(architecture.vae_dim_mult),
            num_res_blocks=1,
            temperal_downsample=list(architecture.vae_temporal_downsample),
            # A random VAE has no measured latent statistics: leave its latents as they come.
            latents_mean=[0.0] * latent_channels,
            latents_std=[1.0] * latent_channels,
            scale_factor_temporal=2 ** sum(architecture.vae_temporal_downsample),
            scale_factor_spatial=2 ** (len(architecture.vae_dim_mult) - 1),
        )
        tokenizer = clip_tokenizer(config.max_text_tokens)
        text_encoder = random_clip_text_encoder(architecture, config.max_text_tokens, tokenizer)
        transformer = WanTransformer3DModel(
            patch_size=tuple(architecture.patch_size),
            num_attention_heads=architecture.transformer_heads,
            attention_head_dim=architecture.transformer_head_dim,
            in_channels=conditioned_in_channels(vae),
            out_channels=latent_channels,
            text_dim=architecture.text_hidden_size,
            ffn_dim=architecture.transformer_ffn_dim,
            num_layers=architecture.transformer_layers,
        )
        elevation_embedder = ElevationEmbedder(
            embedding_dim=transformer.config.num_attention_heads * transformer.config.attention_head_dim,
            frequency_dim=config.elevation_frequency_dim,
        )
    return OrbitVideoPipeline(
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=config.flow_shift),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        elevation_embedder=elevation_embedder,
        resolution=config.resolution,
        num_views=config.num_views,
        max_text_tokens=config.max_text_tokens,
    )


def _fitted_vae(path: str) -> AutoencoderKLWan:
    """The VAE saved in `path` (`VideoModelConfig.vae_path`), frozen and in eval mode."""
    if not (Path(path) / "config.json").is_file():
        raise ConfigError(f"video model: vae_path {path} is not a saved AutoencoderKLWan directory (no config.json)")
    return AutoencoderKLWan.from_pretrained(path, local_files_only=True).requires_grad_(False).eval()


def _add_orbit_conditioning(source: DiffusionPipeline, config: VideoModelConfig) -> OrbitVideoPipeline:
    """Turn a loaded Wan text-to-video pipeline into an orbit pipeline (see the module docstring)."""
    components = source.components
    transformer, vae = components.get("transformer"), components.get("vae")
    if not isinstance(transformer, WanTransformer3DModel) or not isinstance(vae, AutoencoderKLWan):
        raise ConfigError(
            f"video model: {config.pretrained_path} must hold a WanTransformer3DModel transformer and an AutoencoderKLWan vae, found {type(transformer).__name__} and {type(vae).__name__}"
        )
    if components.get("transformer_2") is not None or transformer.config.image_dim is not None:
        raise ConfigError(
            f"video model: {config.pretrained_path} is a two-expert or CLIP-image-conditioned Wan model; start from a single-DiT text-to-video one (Wan 2.1 T2V, Wan 2.2 TI2V 5B)"
        )
    latent_channels, wanted = vae.config.z_dim, conditioned_in_channels(vae)
    if transformer.config.in_channels == latent_channels:
        widen_patch_embedding(transformer, wanted)
    elif transformer.config.in_channels != wanted:
        raise ConfigError(
            f"video model: the transformer takes {transformer.config.in_channels} input channels; expected {latent_channels} (text-to-video) or {wanted} (noisy + mask + first-frame latents)"
        )
    inner_dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        elevation_embedder = ElevationEmbedder(embedding_dim=inner_dim, frequency_dim=config.elevation_frequency_dim)
    return OrbitVideoPipeline(
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=config.flow_shift),
        text_encoder=components["text_encoder"],
        tokenizer=components["tokenizer"],
        elevation_embedder=elevation_embedder,
        resolution=config.resolution,
        num_views=config.num_views,
        max_text_tokens=config.max_text_tokens,
    )
