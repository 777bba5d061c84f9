"""A small convolutional network for fast experiments on 64 px images.

Four blocks of 3×3 convolution, GroupNorm, ReLU and 2×2 max pooling, with ``width``, 2×, 4× and 4×
channels, then global average pooling and one linear output. At 64 px the blocks halve the maps to
32, 16, 8 and 4 pixels; the global pooling makes any input size from 16 px up work.

Small convolutional networks of this shape are the usual DP-SGD baselines (Abadi et al. 2016;
Papernot et al., "Tempered Sigmoid Activations for Deep Learning with Differential Privacy", 2021,
who also find that fewer parameters suffer less from the noise, which is added to every coordinate).
It has 0.24 M parameters at width 32 and 0.96 M at the config's default width 64, against 11.2 M
for ResNet-18 at width 64. As in models/resnet.py:
GroupNorm rather than BatchNorm (per-example gradients need each example normalized on its own)
and no in-place operations (Opacus' hooks).
"""

from __future__ import annotations

from torch import nn

from models import MODELS
from models.resnet import group_norm, image_channels
from utils.config import ModelConfig


class SmallCNN(nn.Module):
    """Four conv blocks and a linear head giving one logit per example.

    Args:
        in_channels: channels of the input images (3 for RGB).
        width: channels of the first block; the blocks have width, 2·width, 4·width, 4·width
            (the last block is not widened again, which would double the parameters for little gain
            at 8×8 and 4×4 resolution).
    """

    def __init__(self, in_channels: int = 3, width: int = 32):
        super().__init__()
        blocks = []
        channels = in_channels
        for out_channels in (width, 2 * width, 4 * width, 4 * width):
            blocks += [
                nn.Conv2d(channels, out_channels, 3, padding=1, bias=False),
                group_norm(out_channels),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, 1)

    def forward(self, x):
        return self.head(self.pool(self.features(x)).flatten(1)).squeeze(-1)


@MODELS.register("cnn")
def build_cnn(config: ModelConfig, input_shape: tuple[int, ...]) -> SmallCNN:
    """The small CNN for images of ``input_shape`` with ``model.width`` channels in its first block."""
    return SmallCNN(image_channels(input_shape, config.name), config.width)


build_cnn.size_key = "model.width"  # named by build_model's size check
