"""DigitsCNN: a small CNN for scikit-learn's 8x8 handwritten digits.

Entry point for edgepack: ``sample_models/digits/model.py:build``.
Input: float32 (N, 1, 8, 8), pixel values scaled to [0, 1] (raw 0..16 / 16).
Output: float32 logits (N, 10).
"""
import os

import torch
from torch import nn

WEIGHTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights.pt")


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(32 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def build() -> nn.Module:
    """Construct DigitsCNN, load the bundled weights.pt and return it in eval mode."""
    model = DigitsCNN()
    state = torch.load(WEIGHTS_PATH, weights_only=True, map_location="cpu")
    model.load_state_dict(state)
    model.eval()
    return model
