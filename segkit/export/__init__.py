"""Export to ONNX / TorchScript (``python -m segkit.export``): the wrappers, the exporters, the check against
PyTorch, and the metadata readers."""

from segkit.export.exporters import FORMATS, export, load_exported, read_metadata

__all__ = ["FORMATS", "export", "load_exported", "read_metadata"]
