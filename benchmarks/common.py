"""Helpers shared by the benchmarks: timing, composing segkit's config, in-memory data, plain loops."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils.data import DataLoader, Dataset

from segkit import CONF_DIR

CLASSES = ("background", "rbc", "spirochaete")


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def interleaved(fns: dict[str, Callable[[], object]], warmup: int, repeats: int,
                sync: Callable[[], None] | None = None) -> dict[str, float]:
    """Median seconds of each function over interleaved rounds (ABAB...) after ``warmup`` calls each, so that
    load from other jobs on a shared machine hits every function alike. ``sync`` (e.g. a CUDA synchronize)
    runs after the warm-up and inside each timing, so asynchronous device work is counted."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    if sync is not None:
        sync()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            if sync is not None:
                sync()
            times[k].append(time.perf_counter() - t)
    return {k: median(v) for k, v in times.items()}


def compose(tmp: Path, overrides: Sequence[str] = ()):
    """segkit's training config as the CLI composes it, with outputs under ``tmp``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    base = [f"paths.output_dir={tmp / 'run'}", f"paths.data_dir={tmp / 'data'}", f"paths.log_dir={tmp / 'outputs'}"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=base + list(overrides))


class TensorSamples(Dataset):
    """``{"image": uint8 [C, S, S], "mask": uint8 [S, S]}`` items from tensors already in memory."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, with_index: bool = False) -> None:
        self.images, self.masks, self.with_index = images, masks, with_index

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"image": self.images[i], "mask": self.masks[i]}
        if self.with_index:  # what segkit's evaluation loader adds (PadCollate)
            item |= {"index": i, "size": torch.tensor(self.masks[i].shape)}
        return item


def synthetic_tensors(n: int, size: int, channels: int = 3, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 images and blocky masks (``n`` samples of ``size`` x ``size``)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)
    coarse = torch.randint(0, classes, (n, 1, size // 16, size // 16), generator=g).float()
    masks = torch.nn.functional.interpolate(coarse, size=(size, size), mode="nearest")[:, 0].to(torch.uint8)
    return images, masks


def tensor_loader(images: torch.Tensor, masks: torch.Tensor, batch_size: int, with_index: bool = False) -> DataLoader:
    return DataLoader(TensorSamples(images, masks, with_index), batch_size=batch_size, shuffle=False, drop_last=True)


def data_stub(in_channels: int = 3):
    """What ``segkit.training.fit.build_module`` reads from a datamodule."""
    return SimpleNamespace(norm_mean_std=([0.5] * in_channels, [0.25] * in_channels), class_names=list(CLASSES), ignore_index=255)


class PlainStep:
    """One training step of a minimal PyTorch loop: normalise, channels_last, forward, loss, backward,
    AdamW step. ``net`` and ``criterion`` are the same objects segkit trains."""

    def __init__(self, net: torch.nn.Module, criterion: torch.nn.Module, mean: Sequence[float], std: Sequence[float],
                 lr: float = 2e-3, channels_last: bool = True, forward: Callable | None = None) -> None:
        self.net, self.criterion, self.channels_last = net, criterion, channels_last
        self.forward = forward or net
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self.opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = (image.float().div_(255.0) - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = self.criterion(self.forward(x), mask.long())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss


def now() -> float:
    return time.perf_counter()


def usage() -> tuple[int, float]:
    """(minor page faults, system CPU seconds) of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_minflt, r.ru_stime


def per_step_usage(marks: list[tuple[int, float]], skip: int) -> tuple[float, float]:
    """Page faults and system seconds per step between the ``skip``-th :func:`usage` mark and the last."""
    if len(marks) <= skip + 1:
        return float("nan"), float("nan")
    (f0, s0), (f1, s1) = marks[skip], marks[-1]
    n = len(marks) - 1 - skip
    return (f1 - f0) / n, (s1 - s0) / n
