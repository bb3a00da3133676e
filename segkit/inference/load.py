"""Loading trained checkpoints for inference, and choosing the device."""

from __future__ import annotations

from pathlib import Path

import torch

from segkit.errors import SegkitError
from segkit.training.module import SegModule


def load_checkpoint(path: str | Path, device: torch.device) -> SegModule:
    """A segkit checkpoint as an eval-mode :class:`SegModule` (weights only: no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise SegkitError(f"ckpt_path '{path}' does not exist; expected a .ckpt written by segkit.train (e.g. <run>/checkpoints/best.ckpt)")
    try:
        module = SegModule.load_from_checkpoint(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - anything that is not a segkit checkpoint
        raise SegkitError(f"'{path}' is not a segkit checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:200]}); expected a .ckpt written by segkit.train") from None
    return module.eval().to(device)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
