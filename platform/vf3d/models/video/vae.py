"""Fitting a small Wan VAE to orbit videos: what a `random_init` video model needs to learn anything.

A random VAE decodes every latent to noise, so a random DiT fine-tuned on its latents makes orbits
no filter keeps. Pretrained Wan VAEs cannot be downloaded everywhere, so the demo loads a small one
fitted to its own sample renders (`VideoModelConfig.vae_path`; recipe: `vf3d.demo.fit_demo_vae`).
"""

from __future__ import annotations

import time

import torch
from diffusers import AutoencoderKLWan


def decode_unclamped(vae: AutoencoderKLWan, latents: torch.Tensor) -> torch.Tensor:
    """What `vae.decode(latents).sample` computes, before its final clamp to [−1, 1].

    Fitting needs it: an orbit's background is white (+1), and wherever the decoder overshoots it
    the clamp passes no gradient, so a fit through `decode` can stall at the blank-frame level.
    Follows diffusers' `AutoencoderKLWan._decode` (latent frame by latent frame, with its causal
    cache); tests/unit/test_video_model.py checks it against `decode`.

    Args:
        latents: raw (not normalised) latents [B, z, T, h, w].
    Returns:
        pixels [B, 3, F, H, W], about [−1, 1] but not clamped.
    """
    if vae.config.patch_size is not None:
        raise ValueError("decode_unclamped supports VAEs without a patch size (Wan 2.1 layout)")
    vae.clear_cache()
    hidden = vae.post_quant_conv(latents)
    frames = []
    for index in range(hidden.shape[2]):
        vae._conv_idx = [0]
        frames.append(
            vae.decoder(hidden[:, :, index : index + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=index == 0)
        )
    vae.clear_cache()
    return torch.cat(frames, dim=2)


def psnr(pixels: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of pixels in [−1, 1] against `target` (peak-to-peak 2)."""
    return float(10 * torch.log10(4 / (pixels - target).pow(2).mean().clamp_min(1e-12)))


def fit_vae(
    vae: AutoencoderKLWan,
    videos: torch.Tensor,
    steps: int,
    lr: float = 1e-3,
    batch_size: int = 4,
    kl_weight: float = 1e-6,
    seed: int = 0,
    log=print,
    log_every: int = 50,
) -> dict[str, float]:
    """Fit `vae` (in place) to reconstruct `videos`, then record its latents' per-channel mean and
    std in its config (`latents_mean`, `latents_std`: what the video model normalises by).

    Loss: MSE + ½·L1 on the unclamped decoding of a posterior sample, + `kl_weight`·KL.

    Args:
        videos: [N, 3, F, H, W] in [0, 1], F = 1 + 4k (the Wan VAE's frame chunks).
        steps: Adam steps on random batches of `batch_size` videos.
    Returns:
        {"psnr": reconstruction PSNR (dB, the posterior mode, all videos), "blank_psnr": that of a
        white video, "seconds": fitting time}.
    """
    generator = torch.Generator().manual_seed(seed)
    pixels = videos.float() * 2 - 1
    vae.requires_grad_(True).train()
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    started = time.perf_counter()
    for step in range(1, steps + 1):
        batch = pixels[torch.randperm(len(pixels), generator=generator)[:batch_size]]
        posterior = vae.encode(batch).latent_dist
        error = decode_unclamped(vae, posterior.sample(generator=generator)) - batch
        loss = error.pow(2).mean() + 0.5 * error.abs().mean() + kl_weight * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % log_every == 0 or step == steps:
            log(f"fitting the VAE: step {step}/{steps}, loss {loss.item():.4f} ({time.perf_counter() - started:.0f}s)")
    vae.requires_grad_(False).eval()
    with torch.no_grad():
        latents = torch.cat(
            [vae.encode(pixels[index : index + batch_size]).latent_dist.mode() for index in range(0, len(pixels), batch_size)]
        )
        decoded = torch.cat([vae.decode(latents[index : index + batch_size]).sample for index in range(0, len(latents), batch_size)])
    vae.register_to_config(latents_mean=latents.mean(dim=(0, 2, 3, 4)).tolist(), latents_std=latents.std(dim=(0, 2, 3, 4)).tolist())
    return {"psnr": psnr(decoded, pixels), "blank_psnr": psnr(torch.ones_like(pixels), pixels), "seconds": time.perf_counter() - started}
