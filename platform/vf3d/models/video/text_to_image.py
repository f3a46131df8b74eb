"""First frames from prompts: any diffusers text-to-image pipeline, or a tiny random one for debug.

The base model factorises text → image → video (the VFusion3D paper; docs/vfusion3d.md#data-engine): synthesis starts from prompts
alone by drawing each orbit's first frame with a text-to-image model, then generating the orbit.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image

from vf3d.config import ConfigError
from vf3d.models.video.config import VideoModelConfig
from vf3d.models.video.text import clip_tokenizer, random_clip_text_encoder


class FirstFrameGenerator:
    """Prompts → square RGB images at the video model's resolution.

    Wraps a diffusers text-to-image pipeline; images are generated at the pipeline's own default
    size (what it was trained at) and resized to `resolution`.
    """

    def __init__(self, pipeline: DiffusionPipeline, resolution: int, num_inference_steps: int = 30, guidance_scale: float = 7.5) -> None:
        self.pipeline = pipeline
        self.resolution = resolution
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, resolution: int, num_inference_steps: int = 30, guidance_scale: float = 7.5, **kwargs
    ) -> FirstFrameGenerator:
        """Load any diffusers text-to-image pipeline from a local directory (kwargs go to
        `DiffusionPipeline.from_pretrained`, e.g. dtype)."""
        pipeline = DiffusionPipeline.from_pretrained(directory, local_files_only=True, **kwargs)
        pipeline.set_progress_bar_config(disable=True)
        return cls(pipeline, resolution, num_inference_steps, guidance_scale)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the wrapped pipeline in the diffusers layout."""
        self.pipeline.save_pretrained(directory)

    def to(self, device: str | torch.device) -> FirstFrameGenerator:
        """Move the wrapped pipeline to `device`."""
        self.pipeline.to(device)
        return self

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], seed: int | Sequence[int] = 0) -> np.ndarray:
        """Generate one image per prompt.

        Args:
            prompts: B prompts.
            seed: image i uses its own generator seeded `seed + i` (or `seed[i]`), so an image does
                not depend on its batch and runs are reproducible.
        Returns:
            uint8 [B, S, S, 3], S = resolution.
        """
        prompts = list(prompts)
        seeds = [seed + index for index in range(len(prompts))] if isinstance(seed, int) else list(seed)
        if len(seeds) != len(prompts):
            raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
        generators = [torch.Generator().manual_seed(value) for value in seeds]
        images = self.pipeline(
            prompt=prompts,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            generator=generators,
            output_type="pil",
        ).images
        size = (self.resolution, self.resolution)
        return np.stack(
            [
                np.asarray(image.convert("RGB").resize(size, Image.Resampling.BICUBIC) if image.size != size else image.convert("RGB"))
                for image in images
            ]
        )


def tiny_text_to_image_pipeline(config: VideoModelConfig) -> StableDiffusionPipeline:
    """A tiny random Stable-Diffusion-style pipeline (UNet + KL VAE + the debug CLIP text encoder)
    whose default output size is `config.resolution`; seeded by `config.seed`."""
    architecture = config.architecture
    vae_blocks = (8, 16, 16)
    latent_size = config.resolution // 2 ** (len(vae_blocks) - 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        tokenizer = clip_tokenizer(config.max_text_tokens)
        text_encoder = random_clip_text_encoder(architecture, config.max_text_tokens, tokenizer)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * len(vae_blocks),
            up_block_types=("UpDecoderBlock2D",) * len(vae_blocks),
            block_out_channels=vae_blocks,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=config.resolution,
        )
        unet = UNet2DConditionModel(
            sample_size=latent_size,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(16, 32),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=architecture.text_hidden_size,
            attention_head_dim=8,
            norm_num_groups=8,
        )
    # Stable Diffusion's noise schedule; DDIM with eta 0 samples deterministically from the seed.
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1
    )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def build_first_frame_generator(config: VideoModelConfig) -> FirstFrameGenerator:
    """The first-frame model of `config`: loaded from `text_to_image_path`, or tiny and random."""
    config.validate()
    if config.text_to_image_path is not None:
        return FirstFrameGenerator.from_pretrained(
            config.text_to_image_path, config.resolution, config.text_to_image_steps, config.text_to_image_guidance
        )
    if not config.random_init:
        raise ConfigError(
            "video model: text_to_image_path is required (a local diffusers text-to-image pipeline directory); only random_init presets such as debug build a random one"
        )
    return FirstFrameGenerator(
        tiny_text_to_image_pipeline(config), config.resolution, config.text_to_image_steps, config.text_to_image_guidance
    )
