"""``SegDataModule``: read once, validate, split (persisted), train-split statistics, in-memory cache,
random crops for training and whole images for evaluation."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from segkit.data.datasets import (
    PadCollate,
    RandomCropDataset,
    SameSizeBatchSampler,
    ShardSampler,
    WholeImageDataset,
)
from segkit.data.io import Pair, check_pair, find_pairs, read_image, read_mask
from segkit.data.stats import DatasetStats, compute_stats
from segkit.data.synthetic import SyntheticSpec, ensure_synthetic
from segkit.errors import SegkitError

SPLITS = ("train", "val", "test")


def make_split(stems: list[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[str]]:
    """A seeded random split of ``stems`` into train/val/test (val and test get at least one image
    each when their fraction is positive and there are images to spare)."""
    for key, frac in (("data.val_fraction", val_fraction), ("data.test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise SegkitError(f"{key} is {frac}; expected a fraction in [0, 1)")
    n = len(stems)
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction)) if test_fraction > 0 else 0
    n_val = int(round(n * val_fraction)) if val_fraction > 0 else 0
    n_test = max(n_test, 1) if test_fraction > 0 else 0
    n_val = max(n_val, 1) if val_fraction > 0 else 0
    if n - n_val - n_test < 1:
        raise SegkitError(
            f"{n} images cannot be split with data.val_fraction={val_fraction} and data.test_fraction={test_fraction}; "
            "expected at least one image left for training"
        )
    picked = [stems[i] for i in order]
    split = {"test": sorted(picked[:n_test]), "val": sorted(picked[n_test : n_test + n_val]), "train": sorted(picked[n_test + n_val :])}
    return split


def load_split_file(path: str | os.PathLike, stems: list[str]) -> dict[str, list[str]]:
    path = Path(path)
    try:
        split = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SegkitError(f"cannot read data.split_file '{path}': {err}; expected a splits.json written by segkit") from None
    known = set(stems)
    out = {}
    for name in SPLITS:
        names = split.get(name, [])
        unknown = [s for s in names if s not in known]
        if unknown:
            raise SegkitError(
                f"data.split_file '{path}' lists {len(unknown)} {name} images not found under data.root "
                f"(e.g. {unknown[:3]}); expected the stems of files in <root>/images"
            )
        out[name] = list(names)
    if not out["train"]:
        raise SegkitError(f"data.split_file '{path}' has no 'train' images; expected a non-empty train list")
    return out


class SegDataModule(pl.LightningDataModule):
    """Semantic-segmentation data from ``<root>/images`` + ``<root>/masks``.

    Call :meth:`prepare` (done by ``segkit.train``) before the module is built: it decodes every
    image once, validates masks, makes or loads the split and computes :attr:`stats` on the train
    split. Batches hold raw ``uint8`` images ``[N, C, H, W]`` and masks ``[N, H, W]``; normalisation
    happens on the training device inside the LightningModule.
    """

    def __init__(
        self,
        root: str,
        class_names: list[str],
        num_classes: int,
        in_channels: int = 3,
        ignore_index: int = 255,
        name: str = "dataset",
        format: str = "darkfield",
        source: str = "",
        synthetic: dict | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.0,
        split_seed: int = 0,
        split_file: str | None = None,
        crop_size: int = 256,
        crops_per_image: int = 1,
        batch_size: int = 8,
        val_batch_size: int = 1,
        num_workers: int = 0,
        augment: dict | None = None,
        normalize: str = "dataset",
        layout: str = "",
    ) -> None:
        super().__init__()
        if len(class_names) != num_classes:
            raise SegkitError(
                f"data.class_names has {len(class_names)} names {list(class_names)} but data.num_classes is "
                f"{num_classes}; expected one name per class"
            )
        if normalize not in ("dataset", "none"):
            raise SegkitError(f"data.normalize is '{normalize}'; expected 'dataset' or 'none'")
        if format != "darkfield":
            raise SegkitError(f"data.format is '{format}'; this version of segkit reads 'darkfield' (images/ + masks/ PNG)")
        self.root = Path(root)
        self.class_names = list(class_names)
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.ignore_index = int(ignore_index)
        self.name, self.source, self.layout = name, source, layout
        self.synthetic = SyntheticSpec(**synthetic) if synthetic else None
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.split_file = split_file
        self.crop_size, self.crops_per_image = int(crop_size), int(crops_per_image)
        self.batch_size, self.val_batch_size = int(batch_size), int(val_batch_size)
        self.num_workers = int(num_workers)
        self.augment = {"hflip": True, "vflip": True, "rot90": True, **(augment or {})}
        self.normalize = normalize
        self.split: dict[str, list[str]] = {}
        self.stats: DatasetStats | None = None
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._seed = 0

    # ------------------------------------------------------------------ preparation
    def prepare(self) -> None:
        """Decode, validate, split and compute train statistics (idempotent)."""
        if self.stats is not None:
            return
        if self.synthetic is not None:
            ensure_synthetic(self.root, self.synthetic)
        pairs = find_pairs(self.root, self.layout, self.source)
        self._load(pairs)
        stems = [p.stem for p in pairs]
        if self.split_file:
            self.split = load_split_file(self.split_file, stems)
        else:
            self.split = make_split(stems, self.val_fraction, self.test_fraction, self.split_seed)
        train = [self._cache[s] for s in self.split["train"]]
        self.stats = compute_stats([t[0] for t in train], [t[1] for t in train], self.num_classes, self.ignore_index)
        self._seed = int(torch.initial_seed() % 2**31)

    def _load(self, pairs: list[Pair]) -> None:
        problems: list[str] = []
        for pair in pairs:
            try:
                image = read_image(pair.image, self.in_channels)
                mask = read_mask(pair.mask)
            except SegkitError as err:
                problems.append(str(err))
                continue
            found = check_pair(pair, image, mask, self.num_classes, self.ignore_index)
            if found:
                problems.extend(found)
                continue
            self._cache[pair.stem] = (image, mask)
        if problems:
            more = f" (and {len(problems) - 1} more problems:\n  " + "\n  ".join(problems[1:]) + ")" if len(problems) > 1 else ""
            raise SegkitError(problems[0] + more)

    def write_records(self, output_dir: str | os.PathLike, extra_stats: dict[str, Any] | None = None) -> None:
        """Write ``splits.json`` and ``data_stats.json`` (with anything in ``extra_stats``, e.g. the
        class weights used) into the run directory."""
        assert self.stats is not None, "call prepare() first"
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        splits = {"root": str(self.root), "seed": self.split_seed, **self.split}
        (out / "splits.json").write_text(json.dumps(splits, indent=2) + "\n")
        stats = {"split": "train", "class_names": self.class_names, **self.stats.to_dict(), **(extra_stats or {})}
        (out / "data_stats.json").write_text(json.dumps(stats, indent=2) + "\n")

    @property
    def norm_mean_std(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std (in [0, 1] units) the model normalises with."""
        if self.normalize == "none" or self.stats is None:
            return [0.0] * self.in_channels, [1.0] * self.in_channels
        return self.stats.mean, self.stats.std

    def arrays(self, split: str) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
        stems = self.split.get(split, [])
        return [self._cache[s][0] for s in stems], [self._cache[s][1] for s in stems], list(stems)

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    def _loader(self, dataset, **batching) -> DataLoader:
        return DataLoader(
            dataset,
            num_workers=self.num_workers,
            collate_fn=PadCollate(self.ignore_index),
            persistent_workers=self.num_workers > 0,
            **batching,
        )

    def train_dataloader(self) -> DataLoader:
        images, masks, _ = self.arrays("train")
        ds = RandomCropDataset(images, masks, self.crop_size, self.crops_per_image, ignore_index=self.ignore_index, **self.augment)
        sampler = ShardSampler(len(ds), shuffle=True, seed=self._seed, drop_uneven=True)
        return self._loader(ds, batch_size=self.batch_size, sampler=sampler, drop_last=False)

    def _eval_loader(self, split: str) -> DataLoader:
        images, masks, stems = self.arrays(split)
        ds = WholeImageDataset(images, masks, stems)
        sizes = [m.shape for m in masks]
        batches = SameSizeBatchSampler(ShardSampler(len(ds), shuffle=False), sizes, self.val_batch_size)
        return self._loader(ds, batch_sampler=batches)

    def val_dataloader(self) -> DataLoader:
        if not self.split.get("val"):
            raise SegkitError("the validation split is empty; expected data.val_fraction > 0 or a 'val' list in data.split_file")
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    @property
    def has_test(self) -> bool:
        return bool(self.split.get("test"))
