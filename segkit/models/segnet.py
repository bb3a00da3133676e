"""SegNet (Badrinarayanan, Kendall & Cipolla, 2015): encoder-decoder with max-unpooling by indices."""

from __future__ import annotations

import torch
from torch import nn

from ._layers import conv_bn_relu, init_relu_convs

# Convolutions per encoder stage of VGG16 (13 conv layers); stages past the fifth get 3.
VGG16_CONVS_PER_STAGE = (2, 2, 3, 3, 3)


def default_convs_per_stage(depth: int) -> list[int]:
    """The first `depth` VGG16 stage sizes (depth 3 -> [2, 2, 3], the darkfield write-up), then 3s."""
    return [VGG16_CONVS_PER_STAGE[i] if i < len(VGG16_CONVS_PER_STAGE) else 3 for i in range(depth)]


class SegNet(nn.Module):
    """SegNet: VGG-style encoder, mirrored decoder that upsamples with the encoder's pooling indices.

    Encoder stage i: `convs_per_stage[i]` x (conv3x3-BN-ReLU) at width min(base_width * 2**i, max_width),
    then `MaxPool2d(2, 2, return_indices=True)`. Decoder stage i (deepest first):
    `MaxUnpool2d(2, 2)` with the stored indices (values go back to the arg-max positions, zeros elsewhere),
    then the same number of conv3x3-BN-ReLU blocks; the last block of a stage maps to the width of the
    stage above, as in the reference Caffe model. As in the paper, the very last decoder conv is a plain
    3x3 conv that outputs `num_classes` logits (no BN/ReLU), followed by the softmax in the loss.
    Convs keep their biases (as VGG16 does), so the encoder at depth 5, base 64 has VGG16's 13 conv layers.

    Input [N, in_channels, H, W] with H, W multiples of 2**depth -> logits [N, num_classes, H, W].
    (Other sizes also work: unpooling restores the exact pre-pool size, odd rows/cols included.)
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 3,
        depth: int = 5,
        base_width: int = 64,
        max_width: int = 512,
        convs_per_stage: list[int] | None = None,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"model.depth must be at least 1, found {depth}")
        if base_width < 1 or max_width < 1:
            raise ValueError(
                f"model.base_width and model.max_width must be positive, found {base_width} and {max_width}"
            )
        if convs_per_stage is None:
            convs_per_stage = default_convs_per_stage(depth)
        convs_per_stage = [int(n) for n in convs_per_stage]
        if len(convs_per_stage) != depth or min(convs_per_stage) < 1:
            raise ValueError(
                f"model.convs_per_stage must list {depth} positive ints (one per stage, model.depth={depth}), "
                f"found {convs_per_stage}; use null for the VGG16 layout {default_convs_per_stage(depth)}"
            )
        self.depth = depth
        self.convs_per_stage = convs_per_stage
        self.widths = [min(base_width * 2**i, max_width) for i in range(depth)]
        self.output_stride = 2**depth

        self.encoder = nn.ModuleList()
        self.pools = nn.ModuleList()
        channels = in_channels
        for width, n_convs in zip(self.widths, convs_per_stage, strict=True):
            blocks = [conv_bn_relu(channels if j == 0 else width, width, bias=True) for j in range(n_convs)]
            self.encoder.append(nn.Sequential(*blocks))
            self.pools.append(nn.MaxPool2d(2, 2, return_indices=True))
            channels = width

        # decoder[k] mirrors encoder stage depth-1-k.
        self.unpools = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in reversed(range(depth)):
            width, n_convs = self.widths[i], convs_per_stage[i]
            blocks: list[nn.Module] = [conv_bn_relu(width, width, bias=True) for _ in range(n_convs - 1)]
            if i > 0:
                blocks.append(conv_bn_relu(width, self.widths[i - 1], bias=True))
            else:
                # The classifier: the paper's last decoder conv outputs class scores directly.
                blocks.append(nn.Conv2d(width, num_classes, 3, padding=1))
            self.unpools.append(nn.MaxUnpool2d(2, 2))
            self.decoder.append(nn.Sequential(*blocks))

        init_relu_convs(self)
        # The classifier feeds a softmax, not a ReLU: a plain normal init keeps the initial logits small.
        classifier = self.decoder[-1][-1]
        nn.init.normal_(classifier.weight, std=0.01)
        nn.init.zeros_(classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, in_channels, H, W] -> logits [N, num_classes, H, W]."""
        indices: list[torch.Tensor] = []
        sizes: list[torch.Size] = []
        for stage, pool in zip(self.encoder, self.pools, strict=True):
            x = stage(x)
            sizes.append(x.shape)  # pre-pool size, so unpooling restores odd sizes exactly
            x, idx = pool(x)
            indices.append(idx)
        for unpool, stage, idx, size in zip(
            self.unpools, self.decoder, reversed(indices), reversed(sizes), strict=True
        ):
            x = unpool(x, idx, output_size=size[-2:])
            x = stage(x)
        return x
