"""Inspecting a dataset as ``python -m segkit.data check|stats`` does: every problem of every file, and the train
split's statistics with the class weights each method would give. Both compose the same configuration as
``segkit.train``, so any override that works there works here."""

from __future__ import annotations

from collections import Counter

import numpy as np
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

from segkit import CONF_DIR
from segkit.data.datamodule import SPLITS, SegDataModule
from segkit.data.stats import WEIGHT_METHODS, class_weights, compute_stats
from segkit.data.validate import check_train_classes
from segkit.errors import SegkitError


def compose_data(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _datamodule(cfg: DictConfig) -> SegDataModule:
    return instantiate(cfg.data, _convert_="all")


def check(overrides: list[str]) -> int:
    """Print every problem; return the exit status (0 clean, 1 problems)."""
    cfg = compose_data(overrides)
    dm = _datamodule(cfg)
    print(f"checking data={cfg.data.get('name')} format={dm.format} root={dm.root}", flush=True)
    reading = dm.read()
    problems = list(reading.problems)
    for note in reading.notes:
        print(f"note: {note}")
    split: dict[str, list[str]] = {}
    if reading.samples:
        try:
            split = dm.make_split(reading)
        except SegkitError as err:
            problems.append(str(err))
    if split.get("train"):
        by_stem = {s.stem: s for s in reading.samples}
        train = [by_stem[s] for s in split["train"] if s in by_stem]
        stats = compute_stats([s.image for s in train], [s.mask for s in train], dm.num_classes, dm.ignore_index) if train and not problems else None
        if stats is not None:
            problems += check_train_classes(stats.class_pixels, dm.class_names, len(train))
            freq = ", ".join(f"{n} {f:.4f}" for n, f in zip(dm.class_names, stats.class_frequency, strict=True))
            print(f"train class pixel shares: {freq}")
    counts = ", ".join(f"{k} {len(split.get(k, []))}" for k in SPLITS) if split else "no split"
    print(f"{len(reading.samples)} samples read ({counts}); classes {dm.class_names}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    if problems:
        print(f"{len(problems)} problems found in data={cfg.data.get('name')} at '{dm.root}'", flush=True)
        return 1
    print("OK: no problems found", flush=True)
    return 0


def stats(overrides: list[str]) -> int:
    cfg = compose_data(overrides)
    dm = _datamodule(cfg)
    reading = dm.read()
    if reading.problems:
        raise SegkitError(f"{len(reading.problems)} problems in the data; run `python -m segkit.data check` with the same arguments. First: {reading.problems[0]}")
    dm.prepare()
    st = dm.stats
    assert st is not None
    by_stem = {s.stem: s for s in reading.samples}
    train = [by_stem[s] for s in dm.split["train"]]
    # the tiles of a large image (segkit.data.regions) enter the percentiles by every 4th pixel of every 4th row
    pixels = np.concatenate([(np.asarray(s.image) if isinstance(s.image, np.ndarray) else s.image.read()[::4, ::4]).reshape(-1, s.image.shape[-1])
                             for s in train])
    p1, p99 = np.percentile(pixels, [1, 99], axis=0)
    sizes = np.array([s.image.shape[:2] for s in train])
    print(f"data={cfg.data.get('name')} root={dm.root}  splits: " + ", ".join(f"{k} {len(dm.split.get(k, []))}" for k in SPLITS))
    print(f"stored as: {dict(Counter(s.dtype for s in reading.samples))} (segkit trains on 8-bit: >8-bit data scaled per image from its 0.5..99.5th percentile)")
    print(f"train image sizes (H x W): min {sizes.min(0).tolist()}, median {np.median(sizes, 0).astype(int).tolist()}, max {sizes.max(0).tolist()}")
    print("\nchannel | mean (0-255) | std (0-255) | 1st pct | 99th pct")
    for c in range(len(st.mean)):
        print(f"{c:7d} | {st.mean[c] * 255:12.2f} | {st.std[c] * 255:11.2f} | {p1[c]:7.0f} | {p99[c]:8.0f}")
    present = [set(np.unique(np.asarray(s.mask)).tolist()) for s in train]
    images_with = [sum(1 for p in present if i in p) for i in range(dm.num_classes)]
    weights = {m: class_weights(st, m) for m in WEIGHT_METHODS}
    print("\nclass | pixel share | images with it | " + " | ".join(f"w {m}" for m in WEIGHT_METHODS))
    for i, name in enumerate(dm.class_names):
        w = " | ".join(f"{weights[m][i]:.4g}" for m in WEIGHT_METHODS)
        print(f"{name} | {st.class_frequency[i]:.5f} | {images_with[i]}/{len(train)} | {w}")
    return 0
