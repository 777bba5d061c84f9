"""ResNet-18 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016), DP-ready as built.

The architecture is the paper's 18-layer network: a 7×7 stride-2 stem and 3×3 max pool, then four
stages of two basic blocks (two 3×3 convolutions and a shortcut) with ``width``, 2×, 4× and 8×
channels, the last three starting with stride 2, global average pooling and one linear output. Three
changes make Opacus (Yousefpour et al. 2021) accept it without any module surgery:

* **GroupNorm instead of BatchNorm** (Wu and He, "Group Normalization", ECCV 2018). BatchNorm
  normalizes each example with statistics of the whole batch, so one example's gradient depends on
  the others and there is no per-example gradient to clip. GroupNorm normalizes each example over
  groups of its own channels. Kurakin et al. (2022) and De et al. (2022) use it for the same reason
  in their DP-SGD ImageNet and CIFAR models.
* **No in-place operations**: the residual is added as ``out = out + shortcut`` and ReLU is not in
  place. An in-place op overwrites a tensor that Opacus' hooks (and autograd) still need.
* **One logit** per example, shape (batch,), for the binary targets of this project.

Global *adaptive* average pooling makes the network independent of the input size: at 128 px the
last stage's maps are 4×4, at 64 px 2×2, at 32 px 1×1.
"""

from __future__ import annotations

from torch import nn

from models import MODELS
from utils.config import ModelConfig
from utils.errors import ConfigError

# Wu and He's default is 32 groups; they report 16 channels per group about as good, and one
# channel per group (instance norm) clearly worse.
MAX_GROUPS = 32


def num_groups(channels: int) -> int:
    """GroupNorm groups for ``channels``: the largest divisor of ``channels`` that is at most 32 and
    leaves at least two channels per group.

    The standard widths (64 to 512 channels) get Wu and He's 32 groups. Narrow test-size networks
    (width 8 or 16) would otherwise get one channel per group, i.e. instance normalization, which
    discards each channel's contrast within the image; two channels per group keep some of it.
    """
    limit = max(1, min(MAX_GROUPS, channels // 2))
    return max(g for g in range(1, limit + 1) if channels % g == 0)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups(channels), channels)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions, each followed by GroupNorm, plus a shortcut; ReLU after the sum.

    Where the block changes the resolution or the channel count, the shortcut is a 1×1 convolution
    with the block's stride and a GroupNorm (He et al.'s projection shortcut, option B); otherwise
    the identity.
    """

    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        # No bias before a normalization: its mean subtraction would cancel it.
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = group_norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.norm2 = group_norm(channels)
        self.relu = nn.ReLU()  # not in place: Opacus' hooks keep references to activations
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), group_norm(channels)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        out = out + self.shortcut(x)  # a new tensor, not `out += ...`
        return self.relu(out)


class ResNet18(nn.Module):
    """ResNet-18 with GroupNorm and one output logit; see the module docstring.

    Args:
        in_channels: channels of the input images (3 for RGB).
        width: channels of the stem and first stage (64 in He et al.); the stages have
            width, 2·width, 4·width, 8·width.
    """

    def __init__(self, in_channels: int = 3, width: int = 64):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
            group_norm(width),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages = []
        channels = width
        for i, out_channels in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(channels, out_channels, stride),
                                        BasicBlock(out_channels, out_channels, 1)))
            channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, 1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # He et al.'s initialization for ReLU networks (fan_out, as in their code).
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        features = self.pool(self.stages(self.stem(x))).flatten(1)
        return self.head(features).squeeze(-1)


def image_channels(input_shape: tuple[int, ...], name: str) -> int:
    """The channel count of (C, H, W) image inputs, or a ConfigError for inputs that are not images."""
    if len(input_shape) != 3:
        raise ConfigError(
            f"model.name: {name!r} is a convolutional network for images (channels, height, width), but the "
            f"data gives inputs of shape {tuple(input_shape)}. Use model.name: mlp for tabular data."
        )
    return int(input_shape[0])


@MODELS.register("resnet18")
def build_resnet18(config: ModelConfig, input_shape: tuple[int, ...]) -> ResNet18:
    """ResNet-18 for images of ``input_shape`` with ``model.width`` channels in its first stage."""
    return ResNet18(image_channels(input_shape, config.name), config.width)


build_resnet18.size_key = "model.width"  # named by build_model's size check
