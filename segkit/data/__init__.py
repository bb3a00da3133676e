"""Data: readers (``io``, ``formats/``), the checker (``validate``), statistics, augmentation, synthetic data and
the Lightning datamodule. ``SegDataModule`` is imported on first use, so that reading images (``segkit.data.io``,
as inference does) does not import Lightning."""

from __future__ import annotations

from typing import Any

__all__ = ["SegDataModule"]


def __getattr__(name: str) -> Any:
    if name == "SegDataModule":
        from segkit.data.datamodule import SegDataModule

        return SegDataModule
    raise AttributeError(f"module 'segkit.data' has no attribute {name!r}")
