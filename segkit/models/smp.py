"""segmentation_models_pytorch architectures behind segkit's model interface (never downloads weights)."""

from __future__ import annotations

from pathlib import Path
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
    validates `arch` / `encoder` with messages naming the config key, and takes pretrained encoder weights only
    from a local file: segkit never downloads anything at run time, so `encoder_weights` is None (from scratch)
    or the path of a state dict (:func:`load_encoder_weights`).
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
        weights_file = _weights_file(encoder_weights, str(encoder))
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

        if weights_file is not None:
            load_encoder_weights(self.net.encoder, weights_file)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, in_channels, H, W] -> logits [N, num_classes, H, W]."""
        return self.net(x)


def _weights_file(encoder_weights: Any, encoder: str) -> Path | None:
    """``model.encoder_weights``: null (from scratch) or the path of a local state dict; never a download."""
    if encoder_weights is None:
        return None
    path = Path(str(encoder_weights)).expanduser()
    if path.is_file():
        return path
    example = (f"python -c \"import torch, segmentation_models_pytorch as smp; torch.save(smp.encoders.get_encoder("
               f"'{encoder}', weights='imagenet').state_dict(), '{encoder}_imagenet.pt')\"")
    raise ValueError(
        f"model.encoder_weights is {encoder_weights!r}, which is not a file, and segkit never downloads weights at run time; "
        f"expected null (from scratch) or the path of an encoder state dict: make one once where you have internet, e.g. "
        f"{example}, then model.encoder_weights={encoder}_imagenet.pt"
    )


def load_encoder_weights(encoder: nn.Module, path: Path) -> None:
    """A state dict file (tensors only; keys as the encoder's own, or prefixed ``encoder.``) into ``encoder``,
    every key matched and every shape equal, or one sentence naming the file and the first mismatch."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling errors come in many types
        raise ValueError(f"model.encoder_weights '{path}' could not be loaded safely ({type(err).__name__}); "
                         "expected a state dict of tensors saved with torch.save") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"model.encoder_weights '{path}' holds a {type(state).__name__}; expected a state dict of tensors")
    if state and all(k.startswith("encoder.") for k in state):
        state = {k[len("encoder."):]: v for k, v in state.items()}
    own = encoder.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"model.encoder_weights '{path}' does not fit model.encoder: {len(missing)} of the encoder's {len(own)} tensors "
            f"missing (e.g. {missing[:2]}), {len(unexpected)} unknown (e.g. {unexpected[:2]}); expected a state dict of the same encoder"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(
                f"model.encoder_weights '{path}': '{k}' has shape {tuple(v.shape)}, the encoder's {tuple(own[k].shape)}; "
                "expected weights of the same encoder and data.in_channels"
            )
    encoder.load_state_dict(state, strict=True)
