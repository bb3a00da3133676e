"""Export to ONNX / TorchScript (``python -m segkit.export``): the wrappers, the exporters, the check against
PyTorch, and the metadata readers. The names below are loaded on first use, so ``python -m segkit.export``
checks its values before it imports torch.export and onnx."""

from __future__ import annotations

from typing import Any

__all__ = ["FORMATS", "export", "load_exported", "read_metadata"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from segkit.export import exporters

        return getattr(exporters, name)
    raise AttributeError(f"module 'segkit.export' has no attribute {name!r}")
