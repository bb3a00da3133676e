import json

import numpy as np
import pytest
import torch

from segkit.data.datamodule import SegDataModule, make_split
from segkit.data.datasets import PadCollate, RandomCropDataset, ShardSampler
from segkit.errors import SegkitError
from tests.conftest import write_pair


def _folder(root, sizes):
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        write_pair(root, f"{i:03d}", rng.integers(0, 255, (h, w, 3), dtype=np.uint8), rng.integers(0, 3, (h, w), dtype=np.uint8))


def test_split_is_seeded_disjoint_and_complete():
    stems = [f"{i:03d}" for i in range(20)]
    a = make_split(stems, 0.2, 0.1, seed=3)
    assert a == make_split(stems, 0.2, 0.1, seed=3)
    assert a != make_split(stems, 0.2, 0.1, seed=4)
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (14, 4, 2)
    assert sorted(a["train"] + a["val"] + a["test"]) == stems


def test_split_needs_training_images():
    with pytest.raises(SegkitError, match="data.val_fraction"):
        make_split(["a"], 0.5, 0.0, 0)


def test_records_and_split_file_roundtrip(tmp_path):
    _folder(tmp_path / "d", [(20, 30)] * 6)
    dm = SegDataModule(root=str(tmp_path / "d"), class_names=["a", "b", "c"], num_classes=3, val_fraction=0.34, split_seed=1)
    dm.prepare()
    dm.write_records(tmp_path / "run", {"class_weights": [1.0, 2.0, 3.0]})
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    stats = json.loads((tmp_path / "run" / "data_stats.json").read_text())
    assert splits["train"] == dm.split["train"] and len(splits["val"]) == 2
    assert stats["split"] == "train" and stats["num_images"] == 4 and stats["class_weights"] == [1.0, 2.0, 3.0]
    # stats are from the train split only
    train_px = sum(np.count_nonzero(dm._cache[s][1] < 3) for s in dm.split["train"])
    assert sum(stats["class_pixels"]) == train_px
    again = SegDataModule(root=str(tmp_path / "d"), class_names=["a", "b", "c"], num_classes=3, split_file=str(tmp_path / "run" / "splits.json"))
    again.prepare()
    assert again.split["val"] == dm.split["val"]


def test_crops_pad_small_images_with_ignore():
    img = np.full((10, 12, 3), 7, np.uint8)
    mask = np.ones((10, 12), np.uint8)
    ds = RandomCropDataset([img], [mask], crop_size=16, crops_per_image=3, ignore_index=255)
    assert len(ds) == 3
    item = ds[0]
    assert item["image"].shape == (3, 16, 16) and item["mask"].shape == (16, 16)
    m = item["mask"]
    assert int((m == 1).sum()) == 120 and int((m == 255).sum()) == 256 - 120


def test_crop_augmentation_keeps_image_and_mask_aligned():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    mask = img[..., 0].copy()  # mask equal to the red channel: alignment is checkable
    ds = RandomCropDataset([img], [mask], crop_size=16, crops_per_image=20)
    torch.manual_seed(0)
    for i in range(20):
        item = ds[i]
        assert torch.equal(item["image"][0], item["mask"])


def test_pad_collate_marks_padding_as_ignored():
    batch = PadCollate(255)(
        [{"image": torch.ones(3, 4, 5, dtype=torch.uint8), "mask": torch.zeros(4, 5, dtype=torch.uint8), "index": 0},
         {"image": torch.ones(3, 6, 3, dtype=torch.uint8), "mask": torch.ones(6, 3, dtype=torch.uint8), "index": 1}]
    )
    assert batch["image"].shape == (2, 3, 6, 5)
    assert int((batch["mask"][0] == 255).sum()) == 30 - 20
    assert batch["size"].tolist() == [[4, 5], [6, 3]]


def test_shard_sampler_never_repeats(monkeypatch):
    import segkit.data.datasets as ds

    seen = []
    for rank in range(3):
        monkeypatch.setattr(ds, "_world", lambda r=rank: (3, r))
        s = ShardSampler(10, shuffle=False)
        assert len(s) == len(list(s))
        seen += list(s)
    assert sorted(seen) == list(range(10))
    # training: shuffled, equal length on every rank
    lengths = []
    for rank in range(3):
        monkeypatch.setattr(ds, "_world", lambda r=rank: (3, r))
        lengths.append(len(list(ShardSampler(10, shuffle=True, drop_uneven=True))))
    assert lengths == [3, 3, 3]


def test_eval_batches_hold_images_of_one_size():
    from segkit.data.datasets import SameSizeBatchSampler

    sizes = [(4, 4), (4, 5), (4, 4), (4, 4), (4, 5), (6, 6)]
    batches = list(SameSizeBatchSampler(range(6), sizes, batch_size=2))
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert all(len({sizes[i] for i in b}) == 1 and len(b) <= 2 for b in batches)
    assert batches == [[0, 2], [1, 4], [3], [5]]
