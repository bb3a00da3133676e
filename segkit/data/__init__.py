"""Data: reading, validation, splits, statistics and the Lightning DataModule."""

from segkit.data.datamodule import SegDataModule

__all__ = ["SegDataModule"]
