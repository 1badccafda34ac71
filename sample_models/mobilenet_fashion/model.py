"""FashionMobileNet: a MobileNetV3-style CNN for Fashion-MNIST (28x28 grey clothing images).

Entry point for edgepack: ``sample_models/mobilenet_fashion/model.py:build``.
Input: float32 (N, 1, 28, 28), pixels scaled to [0, 1] (raw 0..255 / 255).
Output: float32 logits (N, 10).

The blocks are the ones that make int8 hard on real phones: depthwise 3x3
convolutions, squeeze-and-excite (global pool -> 1x1 -> ReLU -> 1x1 ->
hardsigmoid -> scale) and hardswish activations, with batch norm folded at export.
"""

import os

import torch
from torch import nn

WEIGHTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights.pt")


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = nn.functional.hardsigmoid(self.fc2(nn.functional.relu(self.fc1(s))))
        return x * s


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
            act: type[nn.Module] | None = nn.Hardswish) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expand -> depthwise 3x3 -> (SE) -> 1x1 project, residual when shapes match."""

    def __init__(self, cin: int, expand: int, cout: int, stride: int, se: bool,
                 act: type[nn.Module]):
        super().__init__()
        self.block = nn.Sequential(
            conv_bn(cin, expand, 1, act=act),
            conv_bn(expand, expand, 3, stride, groups=expand, act=act),
            SqueezeExcite(expand, max(8, expand // 4)) if se else nn.Identity(),
            conv_bn(expand, cout, 1, act=None),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class FashionMobileNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        hs, re = nn.Hardswish, nn.ReLU
        self.features = nn.Sequential(
            conv_bn(1, 16, 3, stride=2),                       # 28 -> 14
            InvertedResidual(16, 32, 16, 1, se=True, act=re),
            InvertedResidual(16, 64, 24, 2, se=False, act=re),  # 14 -> 7
            InvertedResidual(24, 72, 24, 1, se=False, act=re),
            InvertedResidual(24, 96, 40, 2, se=True, act=hs),   # 7 -> 4
            InvertedResidual(40, 120, 40, 1, se=True, act=hs),
            conv_bn(40, 160, 1),
        )
        self.head = nn.Sequential(
            nn.Linear(160, 256), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(256, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean((2, 3))
        return self.head(x)


def build() -> nn.Module:
    """Construct FashionMobileNet, load the bundled weights.pt and return it in eval mode."""
    model = FashionMobileNet()
    state = torch.load(WEIGHTS_PATH, weights_only=True, map_location="cpu")
    model.load_state_dict(state)
    model.eval()
    return model
