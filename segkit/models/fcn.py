"""Fully convolutional networks: FCN-32s/16s/8s (Long, Shelhamer & Darrell, 2015) and the small
FCN of the NVIDIA DIGITS Sunnybrook left-ventricle segmentation lab."""

from __future__ import annotations

import torch
from torch import nn

from ._layers import bilinear_upsampler, conv_bn_relu, crop_to, init_relu_convs

FCN_VARIANTS = ("32s", "16s", "8s")
# VGG16: convs per stage and stage widths as multiples of base_width (64 in the paper).
_VGG16_CONVS = (2, 2, 3, 3, 3)
_VGG16_MULTIPLIERS = (1, 2, 4, 8, 8)


class FCN(nn.Module):
    """FCN-32s / FCN-16s / FCN-8s on a VGG16-style encoder.

    Encoder: 5 stages of 2, 2, 3, 3, 3 conv3x3-(BN)-ReLU at widths base_width * (1, 2, 4, 8, 8), each
    followed by a 2x2 max-pool (pool1..pool5, strides 2..32). fc6/fc7 become convolutions; departures
    from the paper, so the model trains from scratch at small input sizes:
    - fc6 is a 3x3 conv (padding 1) instead of 7x7 (the paper pads the input by 100 pixels and crops);
    - fc6/fc7 have 8 * base_width channels (512 at base 64) instead of 4096;
    - optional BatchNorm after each conv (`batch_norm`).
    fc6 and fc7 are followed by Dropout2d(`dropout`), as the paper's fc layers are.

    Heads: `score_fr` (1x1 conv to num_classes) on fc7. 32s upsamples it x32. 16s upsamples it x2, adds
    `score_pool4` (1x1 on pool4) and upsamples x16. 8s additionally upsamples that sum x2, adds
    `score_pool3` (1x1 on pool3) and upsamples x8. Every upsampling is a learnable ConvTranspose2d
    initialised to bilinear interpolation; the skip score layers start at zero (the paper's
    initialisation), so at step 0 every variant predicts exactly what FCN-32s would.

    Input [N, in_channels, H, W] -> logits [N, num_classes, H, W]; exact by construction for H, W multiples
    of 32, and other sizes are handled with ceil-mode pooling plus a final crop.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 3,
        variant: str = "8s",
        base_width: int = 64,
        batch_norm: bool = True,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        variant = str(variant)
        if variant not in FCN_VARIANTS:
            raise ValueError(f"model.variant must be one of {', '.join(FCN_VARIANTS)}, found {variant!r}")
        if base_width < 1:
            raise ValueError(f"model.base_width must be positive, found {base_width}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), found {dropout}")
        self.variant = variant
        self.output_stride = 32
        widths = [base_width * m for m in _VGG16_MULTIPLIERS]

        # stages[i] ends with its pooling, so its output is pool{i+1} (stride 2**(i+1)).
        self.stages = nn.ModuleList()
        channels = in_channels
        for width, n_convs in zip(widths, _VGG16_CONVS, strict=True):
            blocks: list[nn.Module] = []
            for _ in range(n_convs):
                blocks.append(conv_bn_relu(channels, width, batch_norm=batch_norm))
                channels = width
            # ceil_mode: Caffe's pooling rounding; keeps every pool map >= its share of odd inputs.
            blocks.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            self.stages.append(nn.Sequential(*blocks))

        fc_width = 8 * base_width
        self.fc = nn.Sequential(
            conv_bn_relu(widths[4], fc_width, kernel_size=3, batch_norm=batch_norm),  # fc6
            nn.Dropout2d(dropout),
            conv_bn_relu(fc_width, fc_width, kernel_size=1, batch_norm=batch_norm),  # fc7
            nn.Dropout2d(dropout),
        )
        self.score_fr = nn.Conv2d(fc_width, num_classes, kernel_size=1)
        init_relu_convs(self)
        nn.init.normal_(self.score_fr.weight, std=0.01)  # feeds a softmax, not a ReLU

        if variant == "32s":
            self.upscore32 = bilinear_upsampler(num_classes, 32)
        else:
            self.upscore2 = bilinear_upsampler(num_classes, 2)
            self.score_pool4 = self._zero_score(widths[3], num_classes)
            if variant == "16s":
                self.upscore16 = bilinear_upsampler(num_classes, 16)
            else:
                self.upscore_pool4 = bilinear_upsampler(num_classes, 2)
                self.score_pool3 = self._zero_score(widths[2], num_classes)
                self.upscore8 = bilinear_upsampler(num_classes, 8)

    @staticmethod
    def _zero_score(in_channels: int, num_classes: int) -> nn.Conv2d:
        score = nn.Conv2d(in_channels, num_classes, kernel_size=1)
        nn.init.zeros_(score.weight)
        nn.init.zeros_(score.bias)
        return score

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, in_channels, H, W] -> logits [N, num_classes, H, W]."""
        height, width = x.shape[-2:]
        pools: list[torch.Tensor] = []
        for stage in self.stages:
            x = stage(x)
            pools.append(x)
        score = self.score_fr(self.fc(pools[4]))  # [N, C, H/32, W/32]
        if self.variant == "32s":
            out = self.upscore32(score)
        else:
            pool4 = pools[3]
            score = crop_to(self.upscore2(score), *pool4.shape[-2:]) + self.score_pool4(pool4)  # stride 16
            if self.variant == "16s":
                out = self.upscore16(score)
            else:
                pool3 = pools[2]
                score = crop_to(self.upscore_pool4(score), *pool3.shape[-2:]) + self.score_pool3(pool3)
                out = self.upscore8(score)  # stride 8 -> 1
        return crop_to(out, height, width)


class CardiacFCN(nn.Module):
    """The small FCN of NVIDIA's DIGITS "medical image segmentation" lab (Sunnybrook LV MRI).

    conv1 5x5/2 pad 2 (width) ReLU -> maxpool 2x2 -> conv2 5x5/2 pad 2 (2*width) ReLU -> maxpool 2x2
    -> conv3 3x3 pad 1 (3*width) ReLU -> conv4 3x3 pad 1 (3*width) ReLU -> Dropout(dropout)
    -> score 1x1 (num_classes) -> upscore ConvTranspose2d(kernel 31, stride 16, no bias, bilinear init)
    -> centre crop to the input size (the lab's Crop layer against the data blob).
    Pooling rounds up, as Caffe's does; element-wise Dropout, as Caffe's is.

    Input [N, in_channels, H, W] (H, W multiples of 16 for a clean grid; any size works)
    -> logits [N, num_classes, H, W].
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        width: int = 100,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"model.width must be positive, found {width}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), found {dropout}")
        self.output_stride = 16
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 5, stride=2, padding=2),  # conv1
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2, ceil_mode=True),  # pool1
            nn.Conv2d(width, 2 * width, 5, stride=2, padding=2),  # conv2
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2, ceil_mode=True),  # pool2
            nn.Conv2d(2 * width, 3 * width, 3, padding=1),  # conv3
            nn.ReLU(inplace=True),
            nn.Conv2d(3 * width, 3 * width, 3, padding=1),  # conv4
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.score = nn.Conv2d(3 * width, num_classes, kernel_size=1)
        init_relu_convs(self)
        nn.init.normal_(self.score.weight, std=0.01)  # feeds a softmax, not a ReLU
        # [N, C, h, w] -> [N, C, 16(h-1)+31, 16(w-1)+31], always >= the input size.
        self.upscore = bilinear_upsampler(num_classes, 16, kernel_size=31)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, in_channels, H, W] -> logits [N, num_classes, H, W]."""
        height, width = x.shape[-2:]
        out = self.upscore(self.score(self.features(x)))
        return crop_to(out, height, width, center=True)
