"""A ResNet-style image classifier: FP32 images [N, 3, 224, 224] -> [N, 1000] logits.

The layout of ResNet-18 (stem, four stages of basic residual blocks, global pooling, linear
head) at half its width, so the example builds and serves quickly on a CPU. Weights are drawn
from a fixed seed, and the batch-norm statistics too, so exports are reproducible.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ResNetClassifier", "build"]

NUM_CLASSES = 1000
SEED = 0


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (projected when the shape changes)."""

    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride=stride, bias=False), nn.BatchNorm2d(channels_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetClassifier(nn.Module):
    """Stem, `blocks` residual blocks per stage at `widths` channels, pooled linear head."""

    def __init__(
        self, widths: tuple[int, ...] = (32, 64, 128, 256), blocks: int = 2, num_classes: int = NUM_CLASSES
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages: list[nn.Module] = []
        channels = widths[0]
        for index, width in enumerate(widths):
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                stages.append(BasicBlock(channels, width, stride))
                channels = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.pool(self.stages(self.stem(image)))
        return self.head(torch.flatten(features, 1))


def build() -> ResNetClassifier:
    """The example classifier with seeded weights and batch-norm statistics."""
    generator = torch.Generator().manual_seed(SEED)
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        model = ResNetClassifier()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            # Non-trivial statistics, so the exported graph's folded batch norm is really checked.
            num = module.num_features
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.copy_(torch.randn(num, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(num, generator=generator) * 0.5 + 0.75)
            module.weight.data.copy_(torch.rand(num, generator=generator) * 0.5 + 0.75)
            module.bias.data.copy_(torch.randn(num, generator=generator) * 0.1)
    return model.eval()
