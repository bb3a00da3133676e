"""U-Net (Ronneberger, Fischer & Brox, 2015) with size-preserving ("same") convolutions."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ._layers import conv_bn_relu, init_relu_convs

UPSAMPLING_MODES = ("transpose", "bilinear")


class DoubleConv(nn.Sequential):
    """Two conv3x3-(BN)-ReLU blocks: [N, Cin, H, W] -> [N, Cout, H, W]."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = True) -> None:
        super().__init__(
            conv_bn_relu(in_channels, out_channels, batch_norm=batch_norm),
            conv_bn_relu(out_channels, out_channels, batch_norm=batch_norm),
        )


class Up(nn.Module):
    """Decoder step: x2 upsampling that halves the channels, skip concatenation, DoubleConv.

    `transpose`: the paper's 2x2 "up-convolution" (ConvTranspose2d k=2, s=2).
    `bilinear`: parameter-free bilinear x2 then a 1x1 conv that halves the channels
    (the 3x3 convs right after do the spatial mixing, so a 1x1 is enough and cheaper).
    [N, Cin, h, w] + skip [N, Cin/2, 2h, 2w] -> [N, Cin/2, 2h, 2w].
    """

    def __init__(self, in_channels: int, out_channels: int, upsampling: str, batch_norm: bool) -> None:
        super().__init__()
        if upsampling == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        else:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, out_channels, kernel_size=1),
            )
        self.conv = DoubleConv(2 * out_channels, out_channels, batch_norm=batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        # Odd sizes: max-pool floored, so the upsampled map can be one row/col short; pad it bottom/right.
        dh, dw = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        if dh or dw:
            x = F.pad(x, [0, dw, 0, dh])
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """U-Net: contracting path of DoubleConv + max-pool, expanding path with skip concatenation.

    Widths base_width * 2**i for levels i = 0..depth (level `depth` is the bottleneck). Each decoder
    level upsamples x2 while halving the channels (see `Up`), concatenates the encoder features of the
    same resolution and applies a DoubleConv; a final 1x1 conv gives `num_classes` logits.

    Differences from the paper, on purpose:
    - 3x3 convs use padding 1, so the output has the input's size (the paper's valid convolutions shrink
      a 572x572 input to a 388x388 map and need overlap-tile inference with cropped skips);
    - optional BatchNorm after each conv (`batch_norm`; convs then drop their redundant bias).
    With `deep_supervision`, 1x1 heads on the decoder stages at 1/2 .. 1/2**(depth-2) resolution give auxiliary
    logits in training, each scored against the mask downsampled to its size (nnU-Net's deep supervision);
    evaluation, prediction and export use the full-resolution head only.
    With `dropout > 0`, nn.Dropout2d is applied to the deepest encoder stage and the bottleneck
    ("drop-out layers at the end of the contracting path", as in the paper / EM write-up).

    Input [N, in_channels, H, W] with H, W multiples of 2**depth -> logits [N, num_classes, H, W].
    (Other sizes work too: decoder maps are zero-padded to their skip's size.)
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 3,
        depth: int = 4,
        base_width: int = 64,
        upsampling: str = "transpose",
        batch_norm: bool = True,
        dropout: float = 0.0,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        if upsampling not in UPSAMPLING_MODES:
            raise ValueError(
                f"model.upsampling must be one of {', '.join(UPSAMPLING_MODES)}, found {upsampling!r}"
            )
        if depth < 1:
            raise ValueError(f"model.depth must be at least 1, found {depth}")
        if base_width < 1:
            raise ValueError(f"model.base_width must be positive, found {base_width}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), found {dropout}")
        if deep_supervision and depth < 3:
            raise ValueError(f"model.deep_supervision needs model.depth >= 3 (auxiliary outputs at 1/2 .. 1/2**(depth-2) "
                             f"resolution), found depth {depth}")
        self.depth = depth
        self.widths = [base_width * 2**i for i in range(depth + 1)]
        self.output_stride = 2**depth

        self.inc = DoubleConv(in_channels, self.widths[0], batch_norm)
        # down[i-1]: level i-1 -> level i; down[-1] produces the bottleneck.
        self.pool = nn.MaxPool2d(2, 2)
        self.down = nn.ModuleList(
            DoubleConv(self.widths[i - 1], self.widths[i], batch_norm) for i in range(1, depth + 1)
        )
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        # up[k]: level depth-k -> level depth-k-1.
        self.up = nn.ModuleList(
            Up(self.widths[i], self.widths[i - 1], upsampling, batch_norm) for i in range(depth, 0, -1)
        )
        self.head = nn.Conv2d(self.widths[0], num_classes, kernel_size=1)
        # deep supervision (nnU-Net): a 1x1 head on each decoder stage at 1/2 .. 1/2**(depth-2) resolution, i.e.
        # every stage but the lowest; aux[j - 1] reads level j
        levels = range(1, depth - 1) if deep_supervision else ()
        self.aux = nn.ModuleList(nn.Conv2d(self.widths[j], num_classes, kernel_size=1) for j in levels)

        init_relu_convs(self)
        # The head feeds a softmax, not a ReLU.
        for head in (self.head, *self.aux):
            nn.init.normal_(head.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """[N, in_channels, H, W] -> logits [N, num_classes, H, W]. In training with ``deep_supervision``: a
        list, the full-resolution logits first, then those at 1/2, 1/4, ... (inference never sees the list)."""
        x = self.inc(x)
        skips: list[torch.Tensor] = []
        for i, down in enumerate(self.down):
            if i == self.depth - 1:
                x = self.dropout(x)  # deepest encoder stage (feeds both its skip and the bottleneck)
            skips.append(x)
            x = down(self.pool(x))
        x = self.dropout(x)  # bottleneck
        aux: list[torch.Tensor] = []
        for k, (up, skip) in enumerate(zip(self.up, reversed(skips), strict=True)):
            x = up(x, skip)
            level = self.depth - 1 - k  # this stage's resolution is 1/2**level
            if self.training and 1 <= level <= len(self.aux):
                aux.append(self.aux[level - 1](x))
        out = self.head(x)
        return [out, *reversed(aux)] if aux else out
