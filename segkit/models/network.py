"""``SegNetwork``: a trained network as inference uses it, and the one copy of the rule
"normalise -> pad to the network stride -> network -> crop back".

The LightningModule trains a ``SegNetwork`` (``SegModule.network``); prediction, evaluation, comparison and
export load one with :func:`segkit.inference.load_network` (torch only: no Lightning, no Hydra).
Networks are built from a plain spec by :func:`build_network`, which accepts only segkit's own network
names (:data:`segkit.registry.MODELS`), never an arbitrary ``_target_``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segkit import registry
from segkit.errors import SegkitError

#: spec keys that are segkit's options, not the network constructor's
SEGKIT_MODEL_OPTIONS = ("compile",)


def stride_padding(h: int, w: int, stride: int) -> tuple[int, int]:
    """Rows and columns to add at the bottom/right so that ``(h, w)`` become multiples of ``stride``."""
    return (-h) % stride, (-w) % stride


def pad_to_stride(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Pad ``[N, C, H, W]`` at the bottom/right to multiples of ``stride``: reflect where both paddings are
    smaller than the image, else replicate. Integer images are padded through float32 (exact)."""
    h, w = x.shape[-2:]
    ph, pw = stride_padding(h, w, stride)
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    if x.is_floating_point():
        return F.pad(x, (0, pw, 0, ph), mode=mode)
    return F.pad(x.float(), (0, pw, 0, ph), mode=mode).to(x.dtype)


def _pad_index(n: int, before: int, after: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices into a dimension of size ``n`` that pad it by ``before``/``after``: reflect, replicate, and
    whether reflect is possible (both paddings smaller than ``n``)."""
    i = torch.arange(-before, n + after, device=device)
    last = n - 1
    reflect = torch.where(i < 0, -i, torch.where(i <= last, i, 2 * last - i))
    ok = (reflect.min() >= 0) & (reflect.max() <= last)
    return reflect.clamp(min=0, max=last), i.clamp(min=0, max=last), ok


def gather_pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """``F.pad(x, (left, right, top, bottom), mode)`` with mode reflect where every padding is smaller than
    the image, else replicate, as one gather without Python branches on the size (dynamic in exports)."""
    h, w = x.shape[-2], x.shape[-1]
    rh, ch, ok_h = _pad_index(h, top, bottom, x.device)
    rw, cw, ok_w = _pad_index(w, left, right, x.device)
    ok = ok_h & ok_w
    return x.index_select(2, torch.where(ok, rh, ch)).index_select(3, torch.where(ok, rw, cw))


def output_stride(net: nn.Module) -> int:
    """The network's ``output_stride`` attribute (input sizes should be multiples of it), else 32."""
    return int(getattr(net, "output_stride", 32))




def _smp_kwargs_check(kwargs: dict[str, Any], source: str | Path) -> None:
    """smp extra constructor arguments: only the chosen architecture's own parameters, as plain values."""
    import segmentation_models_pytorch as smp

    arch = str(kwargs.get("arch", "Unet")).lower()
    cls = smp.MODEL_ARCHITECTURES_MAPPING.get(arch)
    if cls is None:
        return  # SMPModel names the allowed architectures
    accepted = set(inspect.signature(cls.__init__).parameters) | {"arch", "encoder", "in_channels", "num_classes"}
    accepted -= {"self", "encoder_name", "classes", "kwargs"}
    unknown = sorted(k for k in kwargs if k not in accepted)
    if unknown:
        raise SegkitError(f"'{source}' gives model.{unknown[0]}, which segmentation_models_pytorch's {cls.__name__} does not take; "
                          f"expected some of {', '.join(sorted(accepted))}")


def build_network(spec: Mapping[str, Any], source: str | Path = "the model config") -> nn.Module:
    """A segkit network from a plain spec (``name`` or a segkit ``_target_``, plus constructor values).

    Only names in :data:`segkit.registry.MODELS` are built; nested specs are refused. ``source`` names the
    file (or config) the spec came from, for the error message.
    """
    if not isinstance(spec, Mapping):
        raise SegkitError(f"'{source}' holds model={spec!r}; expected a mapping naming a segkit network")
    name = registry.network_name(spec, source)
    kwargs = {k: v for k, v in spec.items() if k not in ("name", *SEGKIT_MODEL_OPTIONS) and k not in registry._HYDRA_KEYS}
    registry._check_values(kwargs, source, "model")
    if name == "smp":
        _smp_kwargs_check(kwargs, source)
    cls = registry.import_target(registry.MODELS[name])
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise SegkitError(f"'{source}': model {name} could not be built from {sorted(kwargs)} ({err}); "
                          f"expected the arguments of {cls.__name__}") from None
    except ValueError as err:  # segkit's networks name the key and what they expected (e.g. model.encoder_weights)
        raise SegkitError(str(err)) from None


class SegNetwork(nn.Module):
    """A network with what it needs at inference: uint8 ``[N, C, H, W]`` -> logits ``[N, K, H, W]``.

    ``forward`` normalises with the train split's ``norm_mean``/``norm_std`` (in [0, 1] units), pads to the
    network's ``stride`` at the bottom/right (reflect, or replicate where the image is smaller than the
    padding), runs ``net`` and crops back, so any image size works. ``traceable=True`` pads with an index
    gather that has no Python branch on the size (for ONNX / TorchScript graphs with dynamic shapes).

    ``state_dict`` keys are ``net.<...>`` (normalisation constants are rebuilt from the metadata).
    """

    def __init__(
        self,
        net: nn.Module,
        class_names: Sequence[str],
        norm_mean: Sequence[float] | None = None,
        norm_std: Sequence[float] | None = None,
        channels_last: bool = False,
        traceable: bool = False,
        model_spec: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.class_names = [str(c) for c in class_names]
        self.num_classes = len(self.class_names)
        self.stride = output_stride(net)
        self.channels_last = channels_last
        self.traceable = traceable
        self.model_spec = dict(model_spec or {})
        channels = len(norm_mean) if norm_mean is not None else 1  # no statistics: identity normalisation of one channel
        mean = torch.tensor(list(norm_mean) if norm_mean is not None else [0.0] * channels, dtype=torch.float32)
        std = torch.tensor(list(norm_std) if norm_std is not None else [1.0] * channels, dtype=torch.float32)
        self.register_buffer("norm_mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("norm_std", std.view(1, -1, 1, 1), persistent=False)

    @property
    def in_channels(self) -> int:
        return int(self.norm_mean.shape[1])

    @property
    def device(self) -> torch.device:
        return self.norm_mean.device

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, C, H, W]`` -> normalised float ``[N, C, H, W]``."""
        return (image.float() / 255.0 - self.norm_mean) / self.norm_std

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` padded at the bottom/right to multiples of :attr:`stride`."""
        if self.stride <= 1:
            return x
        if self.traceable:
            h, w = x.shape[-2], x.shape[-1]
            s = self.stride
            return gather_pad(x, 0, (h + s - 1) // s * s - h, 0, (w + s - 1) // s * s - w)
        return pad_to_stride(x, self.stride)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes, H, W]`` for a uint8 image batch ``[N, C, H, W]`` of any size."""
        h, w = image.shape[-2], image.shape[-1]
        x = self.pad(self.normalize(image))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.net(x)
        if isinstance(out, (list, tuple)):  # deep supervision in training: each output cropped at its own scale
            return [o[:, :, : -(-h * o.shape[-2] // x.shape[-2]), : -(-w * o.shape[-1] // x.shape[-1])] for o in out]
        return out[:, :, :h, :w]

    def metadata(self) -> dict[str, Any]:
        """What a deployment needs to feed the network and read its output (plain values)."""
        return {
            "class_names": list(self.class_names),
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "norm_mean": [float(v) for v in self.norm_mean.flatten().tolist()],
            "norm_std": [float(v) for v in self.norm_std.flatten().tolist()],
            "stride": self.stride,
            "model": self.model_spec.get("_target_") or self.model_spec.get("name", ""),
        }
