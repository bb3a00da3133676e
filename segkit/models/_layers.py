"""Building blocks shared by the segkit models (private: import the models from `segkit.models`)."""

from __future__ import annotations

import torch
from torch import nn


def conv_bn_relu(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    batch_norm: bool = True,
    bias: bool | None = None,
) -> nn.Sequential:
    """`kernel_size` conv ("same" padding) -> optional BatchNorm -> ReLU; [N, Cin, H, W] -> [N, Cout, H, W].

    `bias=None` means "bias only without BatchNorm": a bias in front of BN is cancelled by BN's mean.
    """
    if bias is None:
        bias = not batch_norm
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """Weight [channels, channels, k, k] that makes a ConvTranspose2d a per-channel bilinear upsampler.

    The FCN recipe (Long et al., `surgery.upsample_filt`): a separable tent filter on the diagonal
    (channel i -> channel i) and zeros elsewhere, so no channel mixing at initialisation.
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    coords = torch.arange(kernel_size, dtype=torch.float32)
    tent = 1 - (coords - center).abs() / factor
    filt = tent[:, None] * tent[None, :]
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    idx = torch.arange(channels)
    weight[idx, idx] = filt
    return weight


def bilinear_upsampler(channels: int, factor: int, kernel_size: int | None = None) -> nn.ConvTranspose2d:
    """Learnable ConvTranspose2d, initialised to bilinear upsampling by `factor`, without bias.

    Default kernel 2*factor with padding factor/2: [N, C, h, w] -> [N, C, factor*h, factor*w] exactly.
    With an explicit `kernel_size` no padding is used and the caller crops.
    """
    if kernel_size is None:
        layer = nn.ConvTranspose2d(
            channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False
        )
    else:
        layer = nn.ConvTranspose2d(channels, channels, kernel_size, stride=factor, bias=False)
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(channels, layer.kernel_size[0]))
    return layer


def init_relu_convs(module: nn.Module) -> None:
    """He (Kaiming) normal init for every Conv2d, zero biases, unit-gamma BatchNorm.

    He et al. init keeps activations from vanishing in deep plain ReLU stacks (VGG-style encoders),
    which the PyTorch default (uniform, a=sqrt(5)) does not aim for; SegNet's paper uses it too.
    ConvTranspose2d layers are left to their callers (bilinear or default init).
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def crop_to(x: torch.Tensor, height: int, width: int, center: bool = False) -> torch.Tensor:
    """Crop [N, C, H', W'] (H' >= height, W' >= width) to [N, C, height, width].

    Top-left by default (what a padded stride-s transposed conv aligns to), centred if `center`.
    """
    h, w = x.shape[-2:]
    if h < height or w < width:
        raise ValueError(
            f"cannot crop a {h}x{w} feature map to {height}x{width}: the upsampled map is smaller than the target"
        )
    top = (h - height) // 2 if center else 0
    left = (w - width) // 2 if center else 0
    return x[..., top : top + height, left : left + width]
