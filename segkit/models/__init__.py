"""segkit's model zoo. Every model maps [N, in_channels, H, W] to logits [N, num_classes, H, W].

Each model has an `output_stride` (the factor H and W should be multiples of); `output_stride(model)`
reads it, defaulting to 32 for models that do not say.
"""

from __future__ import annotations

from torch import nn

from .fcn import FCN, CardiacFCN
from .patchcnn import PatchCNN
from .segnet import SegNet
from .smp import SMPModel
from .unet import UNet

__all__ = ["FCN", "CardiacFCN", "PatchCNN", "SMPModel", "SegNet", "UNet", "output_stride"]


def output_stride(model: nn.Module) -> int:
    """The model's `output_stride` attribute (input sizes should be multiples of it), else 32."""
    return int(getattr(model, "output_stride", 32))
