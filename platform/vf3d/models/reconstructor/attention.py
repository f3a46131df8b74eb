"""Multi-head attention through `scaled_dot_product_attention`, or xformers when selected."""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F


def xformers_available() -> bool:
    """True when the optional `xformers` package is importable."""
    return importlib.util.find_spec("xformers") is not None


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map "auto" to a concrete backend; xformers has no CPU kernels, so CPU always gets sdpa."""
    if backend == "auto":
        return "xformers" if device.type == "cuda" and xformers_available() else "sdpa"
    if backend == "xformers" and not xformers_available():
        raise RuntimeError("attention_backend='xformers' but xformers is not installed (pip install 'vf3d[gpu]')")
    return backend


def multi_head_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, num_heads: int, backend: str = "auto"
) -> torch.Tensor:
    """Scaled dot-product attention over heads.

    Args:
        query: [B, Lq, D]; key, value: [B, Lk, D] (already projected).
    Returns:
        [B, Lq, D].
    """
    batch, query_length, width = query.shape
    head_dim = width // num_heads
    backend = resolve_backend(backend, query.device)
    split = lambda x: x.reshape(batch, x.shape[1], num_heads, head_dim)  # noqa: E731
    if backend == "xformers":
        import xformers.ops

        out = xformers.ops.memory_efficient_attention(split(query), split(key), split(value))
    else:
        out = F.scaled_dot_product_attention(
            split(query).transpose(1, 2), split(key).transpose(1, 2), split(value).transpose(1, 2)
        ).transpose(1, 2)
    return out.reshape(batch, query_length, width)


class CrossAttention(torch.nn.Module):
    """Queries of width `dim` attend to context tokens of width `context_dim`; no biases."""

    def __init__(self, dim: int, context_dim: int, num_heads: int, backend: str = "auto") -> None:
        super().__init__()
        self.num_heads, self.backend = num_heads, backend
        self.to_q = torch.nn.Linear(dim, dim, bias=False)
        self.to_k = torch.nn.Linear(context_dim, dim, bias=False)
        self.to_v = torch.nn.Linear(context_dim, dim, bias=False)
        self.to_out = torch.nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x: [B, L, dim], context: [B, Lc, context_dim] → [B, L, dim]."""
        attended = multi_head_attention(self.to_q(x), self.to_k(context), self.to_v(context), self.num_heads, self.backend)
        return self.to_out(attended)


class SelfAttention(torch.nn.Module):
    """Self-attention with a fused qkv projection (rows q; k; v) and no biases."""

    def __init__(self, dim: int, num_heads: int, backend: str = "auto") -> None:
        super().__init__()
        self.num_heads, self.backend = num_heads, backend
        self.to_qkv = torch.nn.Linear(dim, 3 * dim, bias=False)
        self.to_out = torch.nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, L, dim] → [B, L, dim]."""
        query, key, value = self.to_qkv(x).chunk(3, dim=-1)
        return self.to_out(multi_head_attention(query, key, value, self.num_heads, self.backend))
