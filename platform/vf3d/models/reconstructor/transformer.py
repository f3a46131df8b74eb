"""Camera embedder, camera-modulated triplane transformer and the shared deconv upsampler."""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from vf3d.models.reconstructor.attention import CrossAttention, SelfAttention
from vf3d.models.reconstructor.config import TransformerConfig, TriplaneConfig

LAYER_NORM_EPS = 1e-6


class CameraEmbedder(torch.nn.Module):
    """16-D source-camera vector → embedding: Linear → SiLU → Linear."""

    def __init__(self, embed_dim: int, camera_dim: int = 16) -> None:
        super().__init__()
        self.linear_in = torch.nn.Linear(camera_dim, embed_dim)
        self.linear_out = torch.nn.Linear(embed_dim, embed_dim)

    def forward(self, source_cameras: torch.Tensor) -> torch.Tensor:
        """source_cameras: [N, 16] → [N, embed_dim]."""
        return self.linear_out(torch.nn.functional.silu(self.linear_in(source_cameras)))


class ModulatedLayerNorm(torch.nn.Module):
    """LayerNorm whose output is scaled and shifted by the camera: LN(x)·(1 + scale) + shift."""

    def __init__(self, dim: int, condition_dim: int) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.modulation = torch.nn.Linear(condition_dim, 2 * dim)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """x: [N, L, dim], condition: [N, condition_dim] → [N, L, dim]."""
        shift, scale = self.modulation(torch.nn.functional.silu(condition)).unsqueeze(1).chunk(2, dim=-1)
        return self.norm(x) * (1 + scale) + shift


class TriplaneBlock(torch.nn.Module):
    """Pre-norm block: cross-attention to image tokens → self-attention → MLP, each residual."""

    def __init__(self, config: TransformerConfig, context_dim: int) -> None:
        super().__init__()
        width = config.width
        self.norm_cross = ModulatedLayerNorm(width, config.camera_embed_dim)
        self.cross_attn = CrossAttention(width, context_dim, config.num_heads, config.attention_backend)
        self.norm_self = ModulatedLayerNorm(width, config.camera_embed_dim)
        self.self_attn = SelfAttention(width, config.num_heads, config.attention_backend)
        self.norm_mlp = ModulatedLayerNorm(width, config.camera_embed_dim)
        hidden = int(width * config.mlp_ratio)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, image_tokens: torch.Tensor, camera_embedding: torch.Tensor) -> torch.Tensor:
        """x: [N, L, width], image_tokens: [N, T, context_dim], camera_embedding: [N, E] → [N, L, width]."""
        x = x + self.cross_attn(self.norm_cross(x, camera_embedding), image_tokens)
        x = x + self.self_attn(self.norm_self(x, camera_embedding))
        return x + self.mlp(self.norm_mlp(x, camera_embedding))


class TriplaneTransformer(torch.nn.Module):
    """Learned triplane queries [1, 3·R², width] refined by camera-modulated blocks."""

    def __init__(self, config: TransformerConfig, triplane: TriplaneConfig, context_dim: int) -> None:
        super().__init__()
        self.config, self.triplane = config, triplane
        num_tokens = 3 * triplane.token_resolution**2
        self.triplane_queries = torch.nn.Parameter(torch.randn(1, num_tokens, config.width) * (1.0 / config.width) ** 0.5)
        self.blocks = torch.nn.ModuleList(TriplaneBlock(config, context_dim) for _ in range(config.num_layers))
        self.final_norm = torch.nn.LayerNorm(config.width, eps=LAYER_NORM_EPS)

    def forward(self, image_tokens: torch.Tensor, camera_embedding: torch.Tensor) -> torch.Tensor:
        """image_tokens: [N, T, context_dim], camera_embedding: [N, E] → tokens [N, 3·R², width]."""
        x = self.triplane_queries.expand(image_tokens.shape[0], -1, -1).to(image_tokens.dtype)
        for block in self.blocks:
            if self.config.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, image_tokens, camera_embedding, use_reentrant=False)
            else:
                x = block(x, image_tokens, camera_embedding)
        return self.final_norm(x)


class TriplaneUpsampler(torch.nn.Module):
    """One ConvTranspose2d shared by the three planes: [N, 3·R², width] → [N, 3, C, R·f, R·f]."""

    def __init__(self, width: int, triplane: TriplaneConfig) -> None:
        super().__init__()
        self.triplane = triplane
        factor = triplane.upsample_factor
        self.deconv = torch.nn.ConvTranspose2d(width, triplane.channels, kernel_size=factor, stride=factor)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens are plane-major, then row-major over (H, W) within each plane."""
        batch, _, width = tokens.shape
        side = self.triplane.token_resolution
        grids = tokens.reshape(batch, 3, side, side, width).permute(0, 1, 4, 2, 3).reshape(batch * 3, width, side, side)
        planes = self.deconv(grids)
        return planes.reshape(batch, 3, *planes.shape[1:])
