"""Torch datasets over images decoded once into memory, a padding collate, and a DDP sampler that
never repeats an evaluation image."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler


def _to_chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)


class RandomCropDataset(Dataset):
    """Random ``crop_size`` crops for training, ``crops_per_image`` per image per epoch.

    Images smaller than the crop are padded (image with 0, mask with ``ignore_index``). Flips,
    rotations and every other augmentation happen later, on whole batches on the training device
    (:class:`segkit.data.augment.BatchAugment`). Items are
    ``{"image": uint8 [C, S, S], "mask": uint8 [S, S], "key": int}``.

    Randomness is a pure function of ``(seed, key)``: the sampler yields *keys*
    ``epoch * len(dataset) + index`` (``ShardSampler(epoch_keys=True)``), and each item draws its crop
    from a generator seeded by the key. So epoch ``e`` draws the same crops whether the run went
    straight through or was killed and resumed at ``e``, with or without loader workers.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        crop_size: int,
        crops_per_image: int = 1,
        ignore_index: int = 255,
        sampling: str = "uniform",
        num_classes: int | None = None,
        max_centres: int = 4096,
        seed: int = 0,
    ) -> None:
        self.seed = int(seed)
        if sampling not in ("uniform", "class_balanced"):
            from segkit.errors import SegkitError

            raise SegkitError(f"data.sampling is '{sampling}'; expected 'uniform' or 'class_balanced'")
        self.images, self.masks = images, masks
        self.crop_size = int(crop_size)
        self.crops_per_image = int(crops_per_image)
        self.ignore_index = ignore_index
        self.sampling = sampling
        if sampling == "class_balanced":
            # per class: (image index, flat pixel index) of up to max_centres random pixels per image
            k = int(num_classes if num_classes is not None else max(int(m.max()) for m in masks) + 1)
            rng = np.random.default_rng(0)
            centres: list[list[np.ndarray]] = [[] for _ in range(k)]
            for i, m in enumerate(masks):
                flat = np.asarray(m).ravel()  # a tile of a large image is read here (once, at the start)
                for c in range(k):
                    where = np.flatnonzero(flat == c)
                    if len(where) > max_centres:
                        where = rng.choice(where, max_centres, replace=False)
                    if len(where):
                        centres[c].append(np.stack([np.full(len(where), i), where], 1))
            self.classes = [c for c in range(k) if centres[c]]
            self.centres = {c: np.concatenate(centres[c]) for c in self.classes}

    def __len__(self) -> int:
        return len(self.images) * self.crops_per_image

    def _centre(self, index: int, g: torch.Generator) -> tuple[int, int, int]:
        """Class-balanced sampling: item ``index`` is centred on a random pixel of class
        ``classes[index % K]`` (so every class gets the same number of crop centres per epoch)."""
        c = self.classes[index % len(self.classes)]
        pool = self.centres[c]
        i, flat = pool[int(torch.randint(0, len(pool), (), generator=g))]
        w = self.masks[int(i)].shape[1]
        return int(i), int(flat) // w, int(flat) % w

    def __getitem__(self, key: int) -> dict[str, torch.Tensor]:
        key = int(key)
        index = key % len(self)
        g = torch.Generator().manual_seed(mix_seed(self.seed, key))
        centre = self._centre(index, g) if self.sampling == "class_balanced" else None
        i = centre[0] if centre else index % len(self.images)
        source, labels = self.images[i], self.masks[i]
        s = self.crop_size
        h0, w0 = labels.shape
        # a tile joined with its neighbours (segkit.data.regions.TileView) may read past its border by `reach`;
        # it draws the crops whose top-left pixel it holds, so each position of the whole image is drawn by one tile
        up, down, left, right = getattr(labels, "reach", (0, 0, 0, 0))
        hi_y, hi_x = h0 + down - s, w0 + right - s  # the last top-left rows / columns at which a whole crop fits
        if centre:  # the crop's centre pixel (s // 2, s // 2) is the chosen pixel, shifted inside the image
            y = min(max(centre[1] - s // 2, -up), max(-up, hi_y))
            x = min(max(centre[2] - s // 2, -left), max(-left, hi_x))
        else:  # uniform over the top-left rows / columns this image (tile) holds; smaller than the crop: one, padded
            lo_y, top_y = (0, min(h0 - 1, hi_y)) if hi_y >= 0 else (max(-up, hi_y),) * 2
            lo_x, top_x = (0, min(w0 - 1, hi_x)) if hi_x >= 0 else (max(-left, hi_x),) * 2
            y = lo_y + int(torch.randint(0, top_y - lo_y + 1, (), generator=g))
            x = lo_x + int(torch.randint(0, top_x - lo_x + 1, (), generator=g))
        y1, x1 = min(y + s, h0 + down), min(x + s, w0 + right)
        # only the crop is read: a view of a decoded array, or the region of a large image on disk
        if hasattr(labels, "reach"):
            image, mask = _to_chw(source.read(y, y1, x, x1)), torch.from_numpy(labels.read(y, y1, x, x1))
        else:
            image = _to_chw(np.asarray(source[y:y1, x:x1]))
            mask = torch.from_numpy(np.asarray(labels[y:y1, x:x1]))
        ch, cw = mask.shape
        if ch < s or cw < s:
            image = torch.nn.functional.pad(image, (0, s - cw, 0, s - ch), value=0)
            mask = torch.nn.functional.pad(mask, (0, s - cw, 0, s - ch), value=self.ignore_index)
        return {"image": image.contiguous(), "mask": mask.contiguous(), "key": key}


class WholeImageDataset(Dataset):
    """Whole images for validation and test: ``{"image": uint8 [C, H, W], "mask": uint8 [H, W],
    "index": int}``."""

    def __init__(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], stems: Sequence[str]) -> None:
        self.images, self.masks, self.stems = images, masks, list(stems)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        # np.asarray: a tile of a large image (segkit.data.regions) is read here
        return {"image": _to_chw(np.asarray(self.images[index])), "mask": torch.from_numpy(np.asarray(self.masks[index])), "index": index}


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (SplitMix64 over the parts): nearby inputs give unrelated seeds."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 29
    return x & 0x7FFFFFFFFFFFFFFF


class PadCollate:
    """Stack samples of different sizes by padding to the largest height and width in the batch
    (image with 0, mask with ``ignore_index`` so padded pixels never count in loss or metrics).
    Adds ``"size"``: ``[N, 2]`` original (H, W)."""

    def __init__(self, ignore_index: int) -> None:
        self.ignore_index = ignore_index

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        h = max(s["image"].shape[-2] for s in samples)
        w = max(s["image"].shape[-1] for s in samples)
        c = samples[0]["image"].shape[0]
        images = torch.zeros((len(samples), c, h, w), dtype=samples[0]["image"].dtype)
        masks = torch.full((len(samples), h, w), self.ignore_index, dtype=samples[0]["mask"].dtype)
        for k, s in enumerate(samples):
            sh, sw = s["mask"].shape
            images[k, :, :sh, :sw] = s["image"]
            masks[k, :sh, :sw] = s["mask"]
        batch = {
            "image": images,
            "mask": masks,
            "size": torch.tensor([s["mask"].shape for s in samples], dtype=torch.long),
        }
        for name in ("index", "key"):
            if name in samples[0]:
                batch[name] = torch.tensor([s[name] for s in samples], dtype=torch.long)
        return batch


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``, optionally shuffled per epoch.

    Unlike ``DistributedSampler`` it never pads with repeated indices, so evaluation metrics summed
    over processes count each image exactly once. For training, ``drop_uneven=True`` trims the
    shuffled list to a multiple of the world size so that every process takes the same number of steps.
    """

    def __init__(self, length: int, shuffle: bool, seed: int = 0, drop_uneven: bool = False, epoch_keys: bool = False) -> None:
        self.length, self.shuffle, self.seed, self.drop_uneven = length, shuffle, seed, drop_uneven
        #: yield ``epoch * length + index`` (training: :class:`RandomCropDataset` seeds each item by it)
        self.epoch_keys = epoch_keys
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> list[int]:
        world, rank = _world()
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        if self.drop_uneven and world > 1:
            order = order[: (self.length // world) * world]
        offset = self.epoch * self.length if self.epoch_keys else 0
        return [offset + i for i in order[rank::world]]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        world, rank = _world()
        n = (self.length // world) * world if (self.drop_uneven and world > 1) else self.length
        return max(0, math.ceil((n - rank) / world))


class SameSizeBatchSampler(Sampler[list[int]]):
    """Batches of up to ``batch_size`` indices from ``sampler`` whose images have the same size.

    Evaluation pads images only to the network stride, never to a batch neighbour's size: padding
    changes predictions near the border, so a score must not depend on which images share a batch.
    """

    def __init__(self, sampler: Sampler[int], sizes: Sequence[tuple[int, int]], batch_size: int) -> None:
        self.sampler, self.sizes, self.batch_size = sampler, list(sizes), max(1, int(batch_size))

    def _batches(self) -> list[list[int]]:
        groups: dict[tuple[int, int], list[int]] = {}
        for i in self.sampler:
            groups.setdefault(tuple(self.sizes[i]), []).append(i)
        out = []
        for idx in groups.values():
            out += [idx[k : k + self.batch_size] for k in range(0, len(idx), self.batch_size)]
        return sorted(out, key=lambda b: b[0])

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())
