"""segkit's model zoo. Every model maps [N, in_channels, H, W] to logits [N, num_classes, H, W].

Each model has an `output_stride` (the factor H and W should be multiples of); `output_stride(model)`
reads it, defaulting to 32 for models that do not say. Networks are built by name with `build_network` (the
registry of segkit's own networks) and wrapped for inference in `SegNetwork`.
"""

from __future__ import annotations

from .fcn import FCN, CardiacFCN
from .network import SegNetwork, build_network, output_stride, pad_to_stride
from .patchcnn import PatchCNN
from .segnet import SegNet
from .unet import UNet


def __getattr__(name: str):
    # segmentation_models_pytorch (with timm: ~4.5 s to import here) only when an smp model is asked for
    if name == "SMPModel":
        from .smp import SMPModel

        return SMPModel
    raise AttributeError(f"module 'segkit.models' has no attribute {name!r}")


__all__ = ["FCN", "CardiacFCN", "PatchCNN", "SMPModel", "SegNet", "SegNetwork", "UNet", "build_network", "output_stride",
           "pad_to_stride"]
