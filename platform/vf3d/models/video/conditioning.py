"""Orbits as Wan video latents, and the first-frame conditioning of the denoiser.

Frame count — decided here and only here. The Wan VAE encodes a video causally: the first frame
alone, then chunks of 4 frames (`AutoencoderKLWan._encode` hard-codes the 4, with or without
temporal downsampling) and it silently drops frames that do not fill a chunk. An orbit of V views
(V a multiple of 4) is therefore closed with its first view again, seen from azimuth 360°: V + 1
frames (17 for 16 views), every view encoded. With Wan's 4× temporal compression the 17 frames
become 5 latent frames — view 0 alone, then views 1–4, 5–8, 9–12, and 13–15 + the closing view —
and the closing frame is dropped again after decoding.

First-frame conditioning (image-to-video style, channel order of Wan 2.1 I2V): the transformer
input is [noisy latents (z) | mask (m) | first-frame latent, zeros elsewhere (z)] along channels,
so `in_channels` = 2z + m. The mask has one channel per pixel frame a latent frame stands for
(m = the VAE's temporal compression: 4 for the Wan VAEs, the 16 + 16 + 4 = 36 of Wan 2.1 I2V),
all ones on latent frame 0 (view 0 is given) and zeros elsewhere. The first latent frame is also
kept clean in the noisy-latent slot, in training and sampling alike, and carries no loss: the
model only ever predicts the frames it is not given.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from torch import nn

VAE_FRAME_CHUNK = 4
"""Frames per causal chunk of the Wan VAE encoder after the first frame."""


def orbit_video_frames(num_views: int) -> int:
    """Frames of the video that holds a V-view orbit: the V views plus the closing view."""
    if num_views < VAE_FRAME_CHUNK or num_views % VAE_FRAME_CHUNK:
        raise ValueError(f"orbits must have a positive multiple of {VAE_FRAME_CHUNK} views for the Wan VAE, got {num_views}")
    return num_views + 1


def close_orbit(frames: torch.Tensor) -> torch.Tensor:
    """Append the closing view (view 0 again, at azimuth 360°): [B, V, ...] → [B, V + 1, ...]."""
    orbit_video_frames(frames.shape[1])
    return torch.cat([frames, frames[:, :1]], dim=1)


def vae_compression(vae: AutoencoderKLWan) -> tuple[int, int]:
    """(temporal, spatial) compression of a Wan VAE, read off its architecture.

    Every stage after the first halves height and width (and time where `temperal_downsample`
    says so); Wan 2.2's VAE also folds 2×2 pixel patches into channels (`patch_size`).
    """
    temporal = 2 ** sum(bool(flag) for flag in vae.config.temperal_downsample)
    spatial = 2 ** (len(vae.config.dim_mult) - 1) * (vae.config.patch_size or 1)
    return temporal, spatial


def check_frame_size(vae: AutoencoderKLWan, transformer: WanTransformer3DModel, height: int, width: int) -> None:
    """Frames must tile into whole DiT patches of latents: sides a multiple of VAE compression × patch."""
    spatial = vae_compression(vae)[1]
    _, patch_height, patch_width = transformer.config.patch_size
    if height % (spatial * patch_height) or width % (spatial * patch_width):
        raise ValueError(
            f"frames of {height}×{width} do not tile into latent patches: sides must be multiples of {spatial * patch_height}×{spatial * patch_width}"
        )


def latent_frames(num_frames: int, temporal_compression: int) -> int:
    """Latent frames of a video of `num_frames` (1 + 4k) frames."""
    return 1 + (num_frames - 1) // temporal_compression


def conditioned_in_channels(vae: AutoencoderKLWan) -> int:
    """Transformer input channels: noisy latents + mask + first-frame latent (2z + m)."""
    return 2 * vae.config.z_dim + vae_compression(vae)[0]


def _latent_statistics(vae: AutoencoderKLWan, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std that normalise the VAE's latents, each [1, z, 1, 1, 1] float32."""
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32, device=device).view(shape)
    std = torch.tensor(vae.config.latents_std, dtype=torch.float32, device=device).view(shape)
    return mean, std


def encode_video(vae: AutoencoderKLWan, video: torch.Tensor) -> torch.Tensor:
    """Video [B, 3, F, H, W] in [0, 1] → normalised latents [B, z, T, h, w] (float32).

    Deterministic: the posterior's mode, as Wan's image-to-video pipelines use for conditions.
    """
    pixels = (video * 2 - 1).to(device=vae.device, dtype=vae.dtype)
    latents = vae.encode(pixels).latent_dist.mode().float()
    mean, std = _latent_statistics(vae, latents.device)
    return (latents - mean) / std


def decode_latents(vae: AutoencoderKLWan, latents: torch.Tensor) -> torch.Tensor:
    """Normalised latents [B, z, T, h, w] → video [B, 3, F, H, W] in [0, 1] (float32)."""
    mean, std = _latent_statistics(vae, latents.device)
    pixels = vae.decode((latents.float() * std + mean).to(vae.dtype)).sample
    return ((pixels.float() + 1) / 2).clamp(0, 1)


def first_frame_condition(first_latents: torch.Tensor, num_latent_frames: int, mask_channels: int) -> torch.Tensor:
    """First-frame latents [B, z, 1, h, w] → condition channels [B, m + z, T, h, w]: mask, then latent."""
    batch, channels, _, height, width = first_latents.shape
    mask = first_latents.new_zeros(batch, mask_channels, num_latent_frames, height, width)
    mask[:, :, 0] = 1
    later_frames = first_latents.new_zeros(batch, channels, num_latent_frames - 1, height, width)
    return torch.cat([mask, torch.cat([first_latents, later_frames], dim=2)], dim=1)


def widen_patch_embedding(transformer: WanTransformer3DModel, in_channels: int) -> None:
    """Give a text-to-video transformer the conditioning input channels, in place.

    The patch embedding (a Conv3d) keeps its weights for the original channels; the new ones get
    zero weights, so the widened model computes exactly what it did, whatever the new channels hold,
    until fine-tuning teaches it to use them. The config is updated so `save_pretrained` records it.
    """
    old = transformer.patch_embedding
    if in_channels <= old.in_channels:
        raise ValueError(f"can only widen the patch embedding: it has {old.in_channels} input channels, asked for {in_channels}")
    new = nn.Conv3d(
        in_channels, old.out_channels, kernel_size=old.kernel_size, stride=old.stride, device=old.weight.device, dtype=old.weight.dtype
    )
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    transformer.patch_embedding = new
    transformer.register_to_config(in_channels=in_channels)
