"""``SegDataModule``: read once, validate, split (persisted), train-split statistics, in-memory cache,
random crops for training and whole images for evaluation."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from segkit import rundir
from segkit.data.augment import BatchAugment
from segkit.data.datasets import (
    PadCollate,
    RandomCropDataset,
    SameSizeBatchSampler,
    ShardSampler,
    WholeImageDataset,
    mix_seed,
)
from segkit.data.formats import ReadContext, Reading, read_dataset
from segkit.data.regions import STORAGE_MODES, choose_storage, decode, join_tiles
from segkit.data.stats import DatasetStats, compute_stats
from segkit.data.synthetic import SyntheticSpec, ensure_synthetic
from segkit.data.validate import check_samples, check_train_classes
from segkit.errors import SegkitError

SPLITS = ("train", "val", "test")


def make_split(
    stems: list[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    groups: dict[str, str] | None = None,
    fold: int | None = None,
    num_folds: int = 5,
) -> dict[str, list[str]]:
    """A seeded random split of ``stems`` into train/val/test that never divides a group (patient,
    slice, region: ``groups`` maps stem -> group; by default every image is its own group).

    Fractions count groups. Val and test get at least one group each when their fraction is positive.
    With ``fold`` (0-based) the groups left after the test split are dealt into ``num_folds`` folds and
    fold ``fold`` is the validation split (k-fold cross-validation; ``val_fraction`` is then unused).
    """
    for key, frac in (("data.val_fraction", val_fraction), ("data.test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise SegkitError(f"{key} is {frac}; expected a fraction in [0, 1)")
    groups = groups or {s: s for s in stems}
    units = sorted({groups[s] for s in stems})
    n = len(units)
    order = [units[i] for i in np.random.default_rng(seed).permutation(n)]
    n_test = max(int(round(n * test_fraction)), 1) if test_fraction > 0 else 0
    test, rest = order[:n_test], order[n_test:]
    if fold is not None:
        if not 0 <= fold < num_folds or num_folds < 2:
            raise SegkitError(f"data.fold is {fold} with data.num_folds={num_folds}; expected 0 <= fold < num_folds and num_folds >= 2")
        if len(rest) < num_folds:
            raise SegkitError(f"{len(rest)} groups cannot be dealt into data.num_folds={num_folds} folds; expected at least one group per fold")
        val = rest[fold::num_folds]
    else:
        n_val = max(int(round(n * val_fraction)), 1) if val_fraction > 0 else 0
        val = rest[:n_val]
    train = [u for u in rest if u not in set(val)]
    if not train:
        raise SegkitError(
            f"{n} images/groups cannot be split with data.val_fraction={val_fraction} and data.test_fraction={test_fraction}; "
            "expected at least one left for training"
        )
    pick = {u: name for name, us in (("test", test), ("val", val), ("train", train)) for u in us}
    return {name: sorted(s for s in stems if pick[groups[s]] == name) for name in ("test", "val", "train")}


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


def problem_summary(problems: list[str], root: Path) -> str:
    """The first problem, then the count and the others one per line (the CLI prints it as is)."""
    if len(problems) == 1:
        return problems[0]
    return f"{problems[0]}\n  ... and {len(problems) - 1} more problems under '{root}':\n  " + "\n  ".join(problems[1:])


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
        class_names: list[str] | None,
        num_classes: int | None,
        in_channels: int = 3,
        ignore_index: int = 255,
        name: str = "dataset",
        format: str = "darkfield",
        format_options: dict | None = None,
        value_map: dict | None = None,
        source: str = "",
        synthetic: dict | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.0,
        split_seed: int = 0,
        split_file: str | None = None,
        fold: int | None = None,
        num_folds: int = 5,
        crop_size: int = 256,
        crops_per_image: int = 1,
        sampling: str = "uniform",
        batch_size: int = 8,
        val_batch_size: int = 1,
        num_workers: int = 0,
        augment: dict | None = None,
        normalize: str = "dataset",
        layout: str = "",
        cache_dir: str | None = None,
        object_classes: list[str] | None = None,
        edge_class: str | None = None,
        storage: str = "auto",
        tile_size: int = 2048,
    ) -> None:
        super().__init__()
        if class_names is not None and num_classes is not None and len(class_names) != num_classes:
            raise SegkitError(
                f"data.class_names has {len(class_names)} names {list(class_names)} but data.num_classes is "
                f"{num_classes}; expected one name per class"
            )
        if normalize not in ("dataset", "none"):
            raise SegkitError(f"data.normalize is '{normalize}'; expected 'dataset' or 'none'")
        self.root = Path(root)
        self.format, self.format_options, self.value_map = format, dict(format_options or {}), value_map
        self.fold, self.num_folds = fold, int(num_folds)
        #: filled from codes.txt by prepare() when data.class_names is null
        self.class_names: list[str] = list(class_names) if class_names is not None else []
        self.num_classes = int(num_classes) if num_classes is not None else len(self.class_names)
        self.in_channels = int(in_channels)
        self.ignore_index = int(ignore_index)
        self.name, self.source, self.layout = name, source, layout
        self.synthetic = SyntheticSpec(**synthetic) if synthetic else None
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.split_file = split_file
        self.crop_size, self.crops_per_image = int(crop_size), int(crops_per_image)
        self.sampling = sampling
        self.cache_dir = Path(cache_dir) if cache_dir else None
        #: names of the classes whose connected components are objects (evaluation / prediction only)
        self.object_classes, self.edge_class = list(object_classes or []), edge_class
        #: "cached" when the train statistics came from the cache, "computed" otherwise
        self.stats_source = ""
        self.batch_size, self.val_batch_size = int(batch_size), int(val_batch_size)
        self.num_workers = int(num_workers)
        self.augment = dict(augment or {})
        #: training augmentation, applied to whole batches on the training device after transfer
        self.augmenter = BatchAugment.from_config(self.augment, ignore_index=self.ignore_index, value_range=255.0)
        #: the next training batch's seed (set before its transfer to the device, used after)
        self._batch_seed: int | None = None
        self.normalize = normalize
        if storage not in STORAGE_MODES:
            raise SegkitError(f"data.storage is '{storage}'; expected one of {', '.join(STORAGE_MODES)}")
        if int(tile_size) < 64:
            raise SegkitError(f"data.tile_size is {tile_size}; expected at least 64 px (large images are cut into tiles of this size)")
        self.storage, self.tile_size = storage, int(tile_size)
        #: how the samples are kept (memory or disk), why, and the numbers behind it (see segkit.data.regions)
        self.storage_record: dict[str, Any] = {}
        self.split: dict[str, list[str]] = {}
        self.stats: DatasetStats | None = None
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.tile_boxes: dict[str, tuple[int, int, int, int]] = {}
        self._seed = 0

    # ------------------------------------------------------------------ preparation
    def read(self) -> Reading:
        """Read every sample with the configured format and check it; problems are collected, not raised."""
        if self.synthetic is not None:
            ensure_synthetic(self.root, self.synthetic)
        ctx = ReadContext(self.root, self.in_channels, self.num_classes or None, self.value_map, self.layout, self.source, self.tile_size)
        reading = read_dataset(self.format, ctx, self.format_options)
        if reading.class_names and not self.class_names:
            self.class_names, self.num_classes = list(reading.class_names), len(reading.class_names)
        elif reading.class_names and list(reading.class_names) != self.class_names:
            reading.notes.append(f"'{self.root / 'codes.txt'}' names {reading.class_names} but data.class_names is {self.class_names}; using data.class_names")
        if not self.class_names:
            raise SegkitError(
                f"data.class_names is not set and '{self.root / 'codes.txt'}' does not exist; expected a list of class names "
                "(data.class_names=[background,cell]) or a codes.txt with one name per line"
            )
        reading.problems += check_samples(reading.samples, self.num_classes, self.ignore_index, self.value_map)
        return reading

    def make_split(self, reading: Reading) -> dict[str, list[str]]:
        stems = [s.stem for s in reading.samples]
        if self.split_file:
            return load_split_file(self.split_file, stems)
        if reading.split is not None:
            return {k: list(reading.split.get(k, [])) for k in SPLITS}
        groups = {s.stem: s.group for s in reading.samples}
        try:
            return make_split(stems, self.val_fraction, self.test_fraction, self.split_seed, groups, self.fold, self.num_folds)
        except SegkitError as err:
            if not self.storage_record.get("region_tiles"):
                raise
            raise SegkitError(f"{err} (the tiles of a large image are one group; data.format_options.tile_groups=tile splits "
                              "them like images, with neighbouring tiles in train and val)") from None

    def prepare(self) -> None:
        """Read, validate, split and compute train statistics (idempotent). Every problem found is
        reported in one error, one line per problem."""
        if self.stats is not None:
            return
        reading = self.read()
        if reading.problems:
            raise SegkitError(problem_summary(reading.problems, self.root))
        self.storage_record = choose_storage(reading.samples, self.storage)
        if self.storage_record["mode"] == "memory":
            decode(reading.samples)
        self._cache = {s.stem: (s.image, s.mask) for s in reading.samples}
        self.groups = {s.stem: s.group for s in reading.samples}
        self.tile_boxes = {s.stem: s.tile for s in reading.samples if s.tile is not None}  # tiles of large images
        self.split = self.make_split(reading)
        train = [self._cache[s] for s in self.split["train"]]
        self.stats = self._cached_stats(reading, lambda: compute_stats([t[0] for t in train], [t[1] for t in train], self.num_classes, self.ignore_index))
        missing = check_train_classes(self.stats.class_pixels, self.class_names, len(train))
        if missing:
            self.stats = None
            raise SegkitError(problem_summary(missing, self.root))
        self._seed = int(torch.initial_seed() % 2**31)

    def stats_key(self, reading: Reading) -> str:
        """Hash of what the train statistics depend on: the train files (path, size, mtime), the split,
        the reader and its options, the value map and the class count."""
        by_stem = {s.stem: s for s in reading.samples}
        files = []
        for stem in self.split["train"]:
            sample = by_stem[stem]
            for src in (sample.source, sample.mask_source):
                path = Path(src.split("[", 1)[0]) if src else None
                st = path.stat() if path is not None and path.exists() else None
                files.append([src, st.st_size if st else None, st.st_mtime_ns if st else None])
        payload = {"files": files, "format": self.format, "options": self.format_options, "value_map": self.value_map,
                   "num_classes": self.num_classes, "ignore_index": self.ignore_index, "in_channels": self.in_channels, "version": 1}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _cached_stats(self, reading: Reading, compute) -> DatasetStats:
        """Train statistics from ``<cache_dir>/stats-<name>-<key>.json`` when present, else computed and
        written there (atomically; an unwritable cache dir only costs the recomputation)."""
        if self.cache_dir is None:
            self.stats_source = "computed"
            return compute()
        #: the key of the train split's cached records (statistics, fingerprint)
        self.stats_key_value = self.stats_key(reading)
        path = self.cache_dir / f"stats-{self.name}-{self.stats_key_value}.json"
        if path.is_file():
            try:
                data = json.loads(path.read_text())
                self.stats_source = "cached"
                return DatasetStats(**{k: data[k] for k in ("num_images", "num_pixels", "mean", "std", "class_pixels", "present_pixels")})
            except (OSError, ValueError, KeyError, TypeError):
                pass  # unreadable cache entry: recompute and overwrite it
        stats = compute()
        self.stats_source = "computed"
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(stats.to_dict(), indent=2) + "\n")
            tmp.replace(path)
        except OSError:
            pass
        return stats

    def write_records(self, output_dir: str | os.PathLike, extra_stats: dict[str, Any] | None = None) -> None:
        """Write ``splits.json`` and ``data_stats.json`` (with anything in ``extra_stats``, e.g. the
        class weights used) into the run directory."""
        assert self.stats is not None, "call prepare() first"
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        splits = {"root": str(self.root), "seed": self.split_seed, "fold": self.fold, **self.split}
        rundir.write_json(rundir.RunDir(out).splits, splits)
        stats = {"split": "train", "class_names": self.class_names, "stats_source": self.stats_source, **self.stats.to_dict(),
                 "storage": self.storage_record, **(extra_stats or {})}
        rundir.write_json(rundir.RunDir(out).data_stats, stats)

    @property
    def norm_mean_std(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std (in [0, 1] units) the model normalises with."""
        if self.normalize == "none" or self.stats is None:
            return [0.0] * self.in_channels, [1.0] * self.in_channels
        return self.stats.mean, self.stats.std

    def arrays(self, split: str) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
        """Images, masks and stems of ``split`` (``train``/``val``/``test``, or ``all``: every sample read)."""
        stems = sorted(self._cache) if split == "all" else self.split.get(split, [])
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
        images, masks, stems = self.arrays("train")
        # the train tiles of a large image joined into one: crops may span tile borders (segkit.data.regions)
        images, masks, _ = join_tiles(images, masks, stems, self.groups, self.tile_boxes)
        # the loader only crops; flips, rotations, warps and intensity changes happen on the device
        ds = RandomCropDataset(images, masks, self.crop_size, self.crops_per_image, ignore_index=self.ignore_index,
                               sampling=self.sampling, num_classes=self.num_classes, seed=self._seed)
        # class_balanced: item i is centred on class i % K (at a random pixel of a random image), so an
        # unshuffled sampler makes every batch cycle through the classes: equal counts per batch
        sampler = ShardSampler(len(ds), shuffle=self.sampling != "class_balanced", seed=self._seed, drop_uneven=True, epoch_keys=True)
        # Lightning builds the first iterator before it calls set_epoch; a resumed run must start with
        # the resumed epoch's order and keys, exactly as the uninterrupted run reached it
        if self.trainer is not None:
            sampler.set_epoch(self.trainer.fit_loop.epoch_progress.current.processed)
        return self._loader(ds, batch_size=self.batch_size, sampler=sampler, drop_last=False)

    def on_before_batch_transfer(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> dict[str, torch.Tensor]:
        """Derive the training batch's seed from its key while the key is still on the host (no device
        sync per step)."""
        trainer = self.trainer
        if trainer is not None and trainer.training and "key" in batch:
            self._batch_seed = mix_seed(self._seed, trainer.global_rank, int(batch["key"][0]))
        return batch

    def on_after_batch_transfer(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> dict[str, torch.Tensor]:
        """Augment training batches where they now live (GPU or CPU); evaluation batches never."""
        trainer = self.trainer
        if trainer is None or not trainer.training:
            return batch
        generator = None  # a batch without keys (not from train_dataloader): torch's global generator
        if self._batch_seed is not None:
            # A batch's randomness (augmentation here, dropout in the model) depends on the seed, the
            # process rank and the batch's first sample key (epoch * len + index) only, never on what
            # ran before it: a run killed and resumed at epoch e trains exactly as one that never stopped.
            torch.manual_seed(self._batch_seed)
            generator = torch.Generator().manual_seed(self._batch_seed)
            self._batch_seed = None
        image, mask = self.augmenter(batch["image"], batch["mask"], generator=generator)
        return {**batch, "image": image, "mask": mask}

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
