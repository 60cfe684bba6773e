"""Tiny PyTorch models for the builder's tests: each is a `source:` a test spec points at."""

from __future__ import annotations

import torch
from torch import nn


def _seeded(factory: type[nn.Module], *args: int) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return factory(*args).eval()


def linear() -> nn.Module:
    """[N, 4] -> [N, 3]."""
    return _seeded(nn.Linear, 4, 3)


class ConvPool(nn.Module):
    """[N, 1, 8, 8] -> [N, 2]: one convolution, averaged over the image."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, kernel_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


def conv_pool() -> nn.Module:
    return _seeded(ConvPool)


class SumProduct(nn.Module):
    """Two inputs, two outputs: x + y and x * y."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x + y, x * y


def sum_product() -> nn.Module:
    return SumProduct()


class SequenceMean(nn.Module):
    """[N, S, 4] with variable S -> [N, 4]: projects each step and averages over the sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).mean(dim=1)


def sequence_mean() -> nn.Module:
    return _seeded(SequenceMean)


class TokenEmbedding(nn.Module):
    """INT64 ids [N, S] -> mean embedding [N, 8]; its ONNX graph has an internal value named
    'embedding', which a spec output of that name must not collide with."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(32, 8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids).mean(dim=1)


def token_embedding() -> nn.Module:
    return _seeded(TokenEmbedding)


class ExportDiffers(nn.Module):
    """Computes something else while being exported, so ONNX Runtime disagrees with PyTorch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting():
            return x * 2 + 0.5
        return x * 2


def export_differs() -> nn.Module:
    return ExportDiffers()


class FixedBatch(nn.Module):
    """Only works for a batch of exactly 2: `view(2, 4)` pins the batch dimension when exported."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(2, 4) * 3


def fixed_batch() -> nn.Module:
    return FixedBatch()


def raises() -> nn.Module:
    raise RuntimeError("checkpoint server unreachable")


def not_a_module() -> int:
    return 42


def calibration_batches() -> list[dict[str, object]]:
    """Calibration data as a callable source: batches of linear()'s input."""
    import numpy as np

    rng = np.random.default_rng(0)
    return [{"x": rng.normal(size=(5, 4)).astype(np.float32)} for _ in range(2)]


class DataDependent(nn.Module):
    """Branches on a tensor's value: one graph cannot hold both paths."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x[:, :3] * 2
        return x[:, :3]


def data_dependent() -> nn.Module:
    return DataDependent()


class GruTagger(nn.Module):
    """[N, T, 16] with variable T -> [N, T, 5]: a GRU over the sequence and a tag per step. The
    exporter's static shapes pin T at the traced length; the graph runs at every T all the same."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(16, 32, batch_first=True)
        self.tags = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps, _ = self.gru(x)
        return self.tags(steps)


def gru_tagger() -> nn.Module:
    return _seeded(GruTagger)


class ValueBranch(nn.Module):
    """[N, 4] -> [N, 4], branching on the input's values: no exported graph can do that."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x


def value_branch() -> nn.Module:
    return ValueBranch()
