"""segmentation_models_pytorch architectures behind segkit's model interface (never downloads weights)."""

from __future__ import annotations

from typing import Any

import segmentation_models_pytorch as smp
import torch
from torch import nn


def _allowed(values: list[str], limit: int = 12) -> str:
    shown = ", ".join(values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def available_archs() -> list[str]:
    """Architecture names smp.create_model accepts (case-insensitive), e.g. unet, fpn, deeplabv3plus."""
    return list(smp.MODEL_ARCHITECTURES_MAPPING)


def available_encoders() -> list[str]:
    """smp's own encoder names; any timm model also works as `tu-<timm name>`."""
    return list(smp.encoders.get_encoder_names())


def _is_known_encoder(name: str) -> bool:
    if name.startswith("tu-"):
        import timm  # a dependency of smp

        return bool(timm.is_model(name[3:]))
    return name in smp.encoders.encoders


class SMPModel(nn.Module):
    """Any `segmentation_models_pytorch` architecture, built with `smp.create_model` and stored as `self.net`.

    The wrapper keeps state_dict keys stable (`net.encoder...`, `net.decoder...`) whatever the arch,
    validates `arch` / `encoder` with messages naming the config key, and refuses pretrained weights:
    segkit never downloads anything at run time, so `encoder_weights` must be None (`encoder_weights: null`).
    Extra keyword arguments (e.g. `decoder_channels`, `encoder_depth`) go to the smp constructor.

    Input [N, in_channels, H, W] with H, W multiples of 32 (smp checks) -> logits [N, num_classes, H, W].
    """

    output_stride = 32

    def __init__(
        self,
        arch: str = "Unet",
        encoder: str = "resnet34",
        in_channels: int = 3,
        num_classes: int = 3,
        encoder_weights: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if encoder_weights is not None:
            raise ValueError(
                f"model.encoder_weights is {encoder_weights!r}, but segkit never downloads weights at run time: "
                "use encoder_weights: null (model.encoder_weights=null) to train from scratch"
            )
        if str(arch).lower() not in smp.MODEL_ARCHITECTURES_MAPPING:
            raise ValueError(
                f"model.arch must name a segmentation_models_pytorch architecture, found {arch!r}; "
                f"allowed (case-insensitive): {_allowed(available_archs())}"
            )
        if not _is_known_encoder(str(encoder)):
            raise ValueError(
                f"model.encoder must name a segmentation_models_pytorch encoder, found {encoder!r}; "
                f"allowed: {_allowed(available_encoders())}, or tu-<timm model name>"
            )
        self.arch = str(arch)
        self.encoder_name = str(encoder)
        try:
            self.net = smp.create_model(
                self.arch,
                encoder_name=self.encoder_name,
                encoder_weights=None,
                in_channels=in_channels,
                classes=num_classes,
                **kwargs,
            )
        except (KeyError, ValueError) as err:
            # Valid names that do not fit together (e.g. DPT needs a tu- ViT encoder) or bad extra kwargs.
            msg = err.args[0] if err.args else err
            raise ValueError(
                f"model.arch={self.arch!r} with model.encoder={self.encoder_name!r} could not be built: {msg}"
            ) from err

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, in_channels, H, W] -> logits [N, num_classes, H, W]."""
        return self.net(x)
