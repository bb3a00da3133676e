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


def test_group_aware_split_never_divides_a_group_and_k_fold_covers_each_group_once():
    stems = [f"p{p}_s{s}" for p in range(6) for s in range(3)]
    groups = {s: s.split("_")[0] for s in stems}
    split = make_split(stems, 0.34, 0.17, seed=0, groups=groups)
    owner = {}
    for name, members in split.items():
        for s in members:
            assert owner.setdefault(groups[s], name) == name  # a patient's slices all in one split
    assert sorted(sum(split.values(), [])) == sorted(stems)
    assert len({groups[s] for s in split["test"]}) == 1 and len({groups[s] for s in split["val"]}) == 2
    folds = [make_split(stems, 0.0, 0.0, seed=0, groups=groups, fold=k, num_folds=3) for k in range(3)]
    val_groups = [sorted({groups[s] for s in f["val"]}) for f in folds]
    assert sorted(sum(val_groups, [])) == [f"p{p}" for p in range(6)]  # each group validated exactly once
    with pytest.raises(SegkitError, match="data.fold"):
        make_split(stems, 0.0, 0.0, seed=0, groups=groups, fold=3, num_folds=3)


class _FakeTrainer:
    def __init__(self, training: bool) -> None:
        self.training, self.global_rank = training, 0


def test_training_batches_are_augmented_on_the_device_and_eval_batches_never(tmp_path):
    _folder(tmp_path / "d", [(32, 32)] * 6)
    dm = SegDataModule(root=str(tmp_path / "d"), class_names=["a", "b", "c"], num_classes=3, val_fraction=0.34,
                       crop_size=32, augment={"hflip": True, "vflip": True, "rot90": True, "brightness": 0.3})
    dm.prepare()
    batch = next(iter(dm.train_dataloader()))
    dm.trainer = _FakeTrainer(training=False)
    same = dm.on_after_batch_transfer(batch, 0)
    assert same["image"] is batch["image"] and same["mask"] is batch["mask"]
    dm.trainer = _FakeTrainer(training=True)
    out = dm.on_after_batch_transfer(batch, 0)
    assert out["image"].dtype == torch.float32 and out["image"].shape == batch["image"].shape
    assert not torch.equal(out["image"], batch["image"].float())
    for k in range(batch["mask"].shape[0]):  # each mask is one of the 8 flips/rotations of its input
        m = batch["mask"][k]
        variants = [torch.rot90(f, r, (0, 1)) for f in (m, m.flip(-1)) for r in range(4)]
        assert any(torch.equal(out["mask"][k], v) for v in variants)


def test_unknown_augmentation_key_is_named(tmp_path):
    with pytest.raises(SegkitError, match=r"data\.augment\.elastic "):
        SegDataModule(root=str(tmp_path), class_names=["a", "b"], num_classes=2, augment={"elastic": 1})


def test_class_balanced_sampling_centres_crops_equally_on_every_class():
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 20:40] = 1  # 400 px
    mask[30, 10:13] = 2  # 3 px: about 0.07 % of the image
    image = np.zeros((64, 64, 3), np.uint8)
    ds = RandomCropDataset([image], [mask], crop_size=9, crops_per_image=300,
                           sampling="class_balanced", num_classes=3)
    torch.manual_seed(0)
    centres = [int(ds[i]["mask"][4, 4]) for i in range(len(ds))]
    assert np.bincount(centres, minlength=3).tolist() == [100, 100, 100]
    uniform = RandomCropDataset([image], [mask], crop_size=9, crops_per_image=300)
    assert np.bincount([int(uniform[i]["mask"][4, 4]) for i in range(300)], minlength=3)[2] < 10


def test_class_balanced_batches_hold_equal_class_counts(tmp_path):
    root = tmp_path / "d"
    rng = np.random.default_rng(0)
    for i in range(4):
        m = np.zeros((40, 40), np.uint8)
        m[5:25, 5:25] = 1
        m[30, 30:33] = 2  # rare
        write_pair(root, f"{i:03d}", rng.integers(0, 255, (40, 40, 3), dtype=np.uint8), m)
    dm = SegDataModule(root=str(root), class_names=["a", "b", "c"], num_classes=3, val_fraction=0.25, crop_size=9,
                       crops_per_image=12, batch_size=6, sampling="class_balanced", augment={})
    dm.prepare()
    batches = list(dm.train_dataloader())
    assert len(batches) == 6  # 3 train images x 12 crops / 6
    for batch in batches:
        assert np.bincount(batch["mask"][:, 4, 4].numpy(), minlength=3).tolist() == [2, 2, 2]
