"""The patch classifier of the phase-contrast bacteria write-up, made fully convolutional.

The write-up classifies the centre pixel of a 31x31 patch with a small CNN: a 4x4 convolution, 2x2
max-pool, 3x3 convolution, 2x2 max-pool, 3x3 convolution, then two fully connected layers. Applied
per pixel, a 1040x1392 image needs 1.4 million forward passes. Here the same network is written so
that ONE forward pass over a whole image evaluates it at every pixel ("shift-and-stitch", Long et
al. 2015): the pools keep stride 1 and the layers after them are dilated by 2 and 4 instead, the
first fully connected layer is a 4x4 convolution dilated by 4 (it sees exactly the 4x4 grid of
features the patch network's flattening sees), the second a 1x1 convolution. All convolutions are
unpadded, so the receptive field is exactly 31x31 and every output pixel equals the patch network's
output for the 31x31 patch centred on it; the input is reflect-padded by 15 pixels per side so the
output has the input's size. Trained on crops, each output pixel is one patch sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

RECEPTIVE_FIELD = 31


class PatchCNN(nn.Module):
    """``[N, in_channels, H, W]`` -> logits ``[N, num_classes, H, W]``; receptive field 31x31."""

    output_stride = 1

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, int, int] = (32, 64, 64), hidden: int = 128, dropout: float = 0.5) -> None:
        super().__init__()
        w1, w2, w3 = (int(w) for w in widths)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w1, 4), nn.BatchNorm2d(w1), nn.ReLU(inplace=True),  # 31 -> 28
            nn.MaxPool2d(2, stride=1),                                                  # pool: 28 -> 14
            nn.Conv2d(w1, w2, 3, dilation=2), nn.BatchNorm2d(w2), nn.ReLU(inplace=True),  # 14 -> 12
            nn.MaxPool2d(2, stride=1, dilation=2),                                      # pool: 12 -> 6
            nn.Conv2d(w2, w3, 3, dilation=4), nn.BatchNorm2d(w3), nn.ReLU(inplace=True),  # 6 -> 4
        )
        self.classifier = nn.Sequential(
            nn.Conv2d(w3, hidden, 4, dilation=4), nn.ReLU(inplace=True),  # fc1 over the 4x4 grid
            nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(),
            nn.Conv2d(hidden, num_classes, 1),                            # fc2
        )
        self.pad = RECEPTIVE_FIELD // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = "reflect" if min(x.shape[-2:]) > self.pad else "replicate"
        x = F.pad(x, (self.pad,) * 4, mode=mode)
        return self.classifier(self.features(x))
