"""A small transformer text encoder: INT64 token ids and attention mask [N, S] -> [N, 256] embedding.

Pre-norm encoder layers with masked self-attention, then mean pooling over the unmasked tokens
and a linear projection (the shape of sentence-embedding models). The sequence length S is
variable from 1 to MAX_LENGTH. Weights are drawn from a fixed seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TextEncoder", "build"]

VOCAB_SIZE = 8192
MAX_LENGTH = 128
EMBEDDING_SIZE = 256
SEED = 0


class EncoderLayer(nn.Module):
    """Pre-norm self-attention and feed-forward, each with a residual connection."""

    def __init__(self, width: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.ffn = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, attention_bias: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_bias)
        x = x + self.out(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.ffn(self.norm2(x))


class TextEncoder(nn.Module):
    """Token and position embeddings, `layers` encoder layers, masked mean pooling, projection."""

    def __init__(self, width: int = 192, heads: int = 4, layers: int = 3, hidden: int = 384) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB_SIZE, width)
        self.positions = nn.Embedding(MAX_LENGTH, width)
        self.layers = nn.ModuleList(EncoderLayer(width, heads, hidden) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.projection = nn.Linear(width, EMBEDDING_SIZE)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tokens(input_ids) + self.positions(positions)[None]
        mask = attention_mask.to(x.dtype)
        # Padding keys get a large negative bias rather than -inf, so a row that is all padding
        # stays finite instead of turning into NaN.
        bias = ((1.0 - mask) * -1e4)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, bias)
        x = self.norm(x)
        pooled = (x * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
        return self.projection(pooled)


def build() -> TextEncoder:
    """The example encoder with seeded weights."""
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        model = TextEncoder()
    return model.eval()
