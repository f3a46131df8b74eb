"""Elevation conditioning: the orbit's elevation is added to the DiT's timestep embedding.

Where it goes: Wan's timestep embedding (`condition_embedder.time_embedder`, temb [B, D]) drives
every block's adaptive-norm shift/scale/gate (through `time_proj`) and the output norm. Adding an
elevation embedding there conditions the whole network the way the noise level does.

How it gets there without forking diffusers: a forward hook on `time_embedder` that adds the
embedding to its output, registered for exactly one transformer call (`added_to_timestep_embedding`)
and removed afterwards. The transformer stays a plain `WanTransformer3DModel` (same class, same
state-dict keys, loadable by diffusers alone), no per-call state lingers on it between calls, and
autograd sees the addition, so gradients reach the `ElevationEmbedder`. Because the embedder's last
layer starts at zero, a pretrained transformer computes exactly what it did before fine-tuning.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from diffusers import ModelMixin, WanTransformer3DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn


class ElevationEmbedder(ModelMixin, ConfigMixin):
    """Orbit elevation in degrees → an embedding of the DiT's width.

    Sinusoidal features (frequencies from 1 to 1/`max_period` radians per degree, so the whole
    [−90°, 90°] range is resolved) → Linear → SiLU → Linear. The last Linear is zero-initialised:
    at initialisation the embedding is exactly zero.
    """

    @register_to_config
    def __init__(self, embedding_dim: int, frequency_dim: int = 256, max_period: float = 100.0) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(frequency_dim, embedding_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(embedding_dim, embedding_dim)
        nn.init.zeros_(self.linear_2.weight)
        nn.init.zeros_(self.linear_2.bias)

    def forward(self, elevations_deg: torch.Tensor) -> torch.Tensor:
        """Elevations [B] in degrees → embeddings [B, embedding_dim]."""
        features = get_timestep_embedding(
            elevations_deg.float(),
            self.config.frequency_dim,
            flip_sin_to_cos=True,
            downscale_freq_shift=0,
            max_period=self.config.max_period,
        )
        return self.linear_2(self.act(self.linear_1(features.to(self.linear_1.weight.dtype))))


@contextlib.contextmanager
def added_to_timestep_embedding(transformer: WanTransformer3DModel, embedding: torch.Tensor) -> Iterator[None]:
    """Inside this block, `transformer`'s timestep embedding gets `embedding` [B, D] added.

    B must be the batch size of the transformer call made inside the block.
    """

    def add_embedding(module: nn.Module, inputs: tuple, temb: torch.Tensor) -> torch.Tensor:
        # temb is [B, D], or [B, tokens, D] when a Wan 2.2 caller passes per-token timesteps.
        return temb + embedding.to(temb.dtype).reshape(embedding.shape[0], *[1] * (temb.ndim - 2), embedding.shape[-1])

    handle = transformer.condition_embedder.time_embedder.register_forward_hook(add_embedding)
    try:
        yield
    finally:
        handle.remove()
