"""Training data from large images: TIFF / OME-Zarr cut into tiles read from disk (segkit.data.regions)."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
import tifffile
import torch
import zarr

from segkit.data import SegDataModule
from segkit.data.datasets import RandomCropDataset
from segkit.data.io import map_to_uint8
from segkit.data.regions import RegionArray, choose_storage, tile_grid
from segkit.errors import SegkitError
from tests.conftest import TINY_MODELS, compose_cfg, write_pair

TILE = 128  # a TIFF over 4 x 128^2 = 65,536 px is large


def scene(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image whose colour follows its mask (3 classes: discs and a thin line) plus noise."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(max(4, h * w // 20000)):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(8, 30)
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 1
    mask[h // 3 : h // 3 + 3, :] = 2
    image = np.stack([40 + 150 * (mask == 1), 40 + 150 * (mask == 2), np.full((h, w), 60)], -1)
    image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
    return image, mask


def write_large_tiff(root, stem, image, mask):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(root / "images" / f"{stem}.ome.tif", image, tile=(64, 64), compression="zlib", photometric="rgb" if image.ndim == 3 else "minisblack")
    tifffile.imwrite(root / "masks" / f"{stem}.tif", mask, tile=(64, 64), compression="zlib")


def datamodule(root, **kw) -> SegDataModule:
    args = dict(root=str(root), class_names=["background", "disc", "line"], num_classes=3, format="folder", tile_size=TILE,
                val_fraction=0.34, crop_size=64, crops_per_image=3, batch_size=4)
    args.update(kw)
    dm = SegDataModule(**args)
    dm.prepare()
    return dm


@pytest.fixture
def mixed_root(tmp_path):
    """One large TIFF (300 x 420: 3 x 4 tiles of 128) and three small PNG pairs."""
    root = tmp_path / "data"
    big = scene(300, 420, seed=1)
    write_large_tiff(root, "slide", *big)
    small = [scene(96, 112, seed=10 + i) for i in range(3)]
    for i, (img, m) in enumerate(small):
        write_pair(root, f"small{i}", img, m)
    return root, big, small


def test_region_array_reads_only_its_part_and_equals_the_file(tmp_path):
    image, mask = scene(300, 420, seed=2)
    write_large_tiff(tmp_path, "a", image, mask)
    view = RegionArray(str(tmp_path / "images" / "a.ome.tif"), 0, 100, 260, 50, 400, "image", 3)
    assert view.shape == (160, 350, 3) and view.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(view), image[100:260, 50:400])
    np.testing.assert_array_equal(view[10:70, 300:], image[110:170, 350:400])  # a part: read from the file alone
    np.testing.assert_array_equal(view[5], image[105, 50:400])  # any other index reads the region first
    m = RegionArray(str(tmp_path / "masks" / "a.tif"), 0, 0, 300, 0, 420, "mask", value_map={2: 1})
    np.testing.assert_array_equal(np.asarray(m), np.where(mask == 2, 1, mask))
    again = pickle.loads(pickle.dumps(view))  # loader workers get the path and the region, never an open file
    np.testing.assert_array_equal(np.asarray(again), image[100:260, 50:400])


def test_a_large_tiff_becomes_tiles_of_one_group_and_the_stats_are_the_whole_images(mixed_root):
    root, (big_img, big_mask), small = mixed_root
    dm = datamodule(root, storage="disk")
    tiles = [s for s in sorted(dm._cache) if s.startswith("slide_")]
    assert len(tiles) == 3 * 4 and "slide_y256_x384" in tiles  # rows 0/128/256, columns 0/128/256/384
    assert dm.storage_record["mode"] == "disk" and dm.storage_record["region_tiles"] == 12
    assert dm.storage_record["region_images"] == 1 and dm.storage_record["chosen_by"] == "data.storage"
    assert all(isinstance(dm._cache[s][0], RegionArray) for s in tiles)
    where = {name for name, stems in dm.split.items() for s in stems if s.startswith("slide_")}
    assert len(where) == 1  # one image's tiles are never split apart
    # the train statistics equal a numpy count over the train images (the large one whole, if it is in train)
    train = [(big_img, big_mask)] if where == {"train"} else []
    train += [small[int(s[-1])] for s in dm.split["train"] if s.startswith("small")]
    pixels = np.concatenate([i.reshape(-1, 3) for i, _ in train]).astype(np.float64)
    np.testing.assert_allclose(dm.stats.mean, pixels.mean(0) / 255, rtol=1e-9)
    np.testing.assert_allclose(dm.stats.std, pixels.std(0) / 255, rtol=1e-6)
    counts = np.bincount(np.concatenate([m.ravel() for _, m in train]), minlength=3)
    assert dm.stats.class_pixels == counts.tolist()
    # every tile holds exactly its part of the file
    for y0, y1, x0, x1 in tile_grid(300, 420, TILE):
        img, m = dm._cache[f"slide_y{y0}_x{x0}"]
        np.testing.assert_array_equal(np.asarray(img), big_img[y0:y1, x0:x1])
        np.testing.assert_array_equal(np.asarray(m), big_mask[y0:y1, x0:x1])


@pytest.mark.parametrize("sampling", ["uniform", "class_balanced"])
def test_crops_read_from_disk_equal_the_decoded_ones(mixed_root, sampling):
    root, _, _ = mixed_root
    disk = datamodule(root, storage="disk", sampling=sampling)
    memory = datamodule(root, storage="memory", sampling=sampling)
    assert memory.storage_record["mode"] == "memory"
    assert all(isinstance(memory._cache[s][0], np.ndarray) for s in memory._cache)
    assert disk.split == memory.split
    ds = [RandomCropDataset(*dm.arrays("all")[:2], 64, 3, sampling=sampling, num_classes=3, seed=5) for dm in (disk, memory)]
    for key in range(0, 3 * len(ds[0]), 7):
        a, b = ds[0][key], ds[1][key]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        assert a["image"].shape == (3, 64, 64)


def test_crop_first_gives_the_same_crops_as_before_for_decoded_images():
    """The crop is cut before the conversion to a tensor now: the same pixels, the same padding as cutting the whole."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((50, 90), (130, 70), (200, 200))]
    masks = [rng.integers(0, 3, im.shape[:2], dtype=np.uint8) for im in images]
    ds = RandomCropDataset(images, masks, 64, 2, ignore_index=255, seed=3)
    for key in range(12):
        item = ds[key]
        i = key % len(ds) % 3
        g = torch.Generator().manual_seed(__import__("segkit.data.datasets", fromlist=["mix_seed"]).mix_seed(3, key))
        h, w = max(images[i].shape[0], 64), max(images[i].shape[1], 64)
        y = int(torch.randint(0, h - 64 + 1, (), generator=g))
        x = int(torch.randint(0, w - 64 + 1, (), generator=g))
        padded = np.zeros((h, w, 3), np.uint8)
        padded[: images[i].shape[0], : images[i].shape[1]] = images[i]
        pm = np.full((h, w), 255, np.uint8)
        pm[: masks[i].shape[0], : masks[i].shape[1]] = masks[i]
        np.testing.assert_array_equal(item["image"].permute(1, 2, 0).numpy(), padded[y : y + 64, x : x + 64])
        np.testing.assert_array_equal(item["mask"].numpy(), pm[y : y + 64, x : x + 64])


class _S:
    def __init__(self, image, mask):
        self.image, self.mask = image, mask


def test_storage_is_chosen_by_size_against_available_memory(tmp_path):
    view = RegionArray("x.tif", 0, 0, 1000, 0, 1000, "image", 3)
    mview = RegionArray("x.tif", 0, 0, 1000, 0, 1000, "mask")
    lazy = [_S(view, mview)]  # 3 MB + 1 MB decoded
    assert choose_storage(lazy, "auto", available=16_000_000)["mode"] == "memory"  # 25 % of 16 MB
    auto = choose_storage(lazy, "auto", available=15_999_999)
    assert auto["mode"] == "disk" and auto["decoded_bytes"] == 4_000_000 and "25.0 % of the available memory" in auto["reason"]
    assert choose_storage(lazy, "disk", available=10**12)["mode"] == "disk"
    with pytest.raises(SegkitError, match=r"data.storage is 'memory' but the decoded dataset needs 4.0 MB and 0.0 MB of memory"):
        choose_storage(lazy, "memory", available=1000)
    plain = [_S(np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10), np.uint8))]
    assert choose_storage(plain, "disk", available=1)["chosen_by"] == "reader"  # nothing to keep on disk
    with pytest.raises(SegkitError, match="data.storage is 'ram'; expected one of auto, memory, disk"):
        choose_storage(plain, "ram")


def test_16_bit_large_images_use_one_intensity_map_for_every_tile(tmp_path):
    rng = np.random.default_rng(4)
    img16 = (rng.gamma(2.0, 900.0, (280, 300)) + np.linspace(0, 20000, 300)[None]).astype(np.uint16)
    mask = (img16 > 12000).astype(np.uint8)
    write_large_tiff(tmp_path, "g", img16, mask)
    with pytest.raises(SegkitError, match="cannot be split .* data.format_options.tile_groups=tile splits them"):
        datamodule(tmp_path, class_names=["background", "bright"], num_classes=2, in_channels=1)
    dm = datamodule(tmp_path, class_names=["background", "bright"], num_classes=2, in_channels=1, storage="memory",
                    format_options={"tile_groups": "tile"})
    assert len({dm.groups[s] for s in dm._cache}) == 9 and dm.split["train"] and dm.split["val"]
    lo, hi = np.percentile(img16.astype(np.float32), (0.5, 99.5))  # the whole image is its own small level
    expected = map_to_uint8(img16, float(lo), float(hi))
    for y0, y1, x0, x1 in tile_grid(280, 300, TILE):
        np.testing.assert_array_equal(dm._cache[f"g_y{y0}_x{x0}"][0][..., 0], expected[y0:y1, x0:x1])


def write_ome_zarr(path, arr_cyx):
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("0", shape=arr_cyx.shape, chunks=(1, 64, 64), dtype=arr_cyx.dtype)[:] = arr_cyx
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"},
                                                               {"name": "x", "type": "space"}], "datasets": [{"path": "0"}]}]


def test_ome_zarr_image_and_labels_are_read_by_regions(tmp_path):
    image, mask = scene(200, 150, seed=6)  # small, but an OME-Zarr is always read by regions
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    write_ome_zarr(tmp_path / "images" / "plate.ome.zarr", image.transpose(2, 0, 1))
    write_ome_zarr(tmp_path / "masks" / "plate.ome.zarr", mask[None])
    write_pair(tmp_path, "other", *scene(96, 96, seed=7))
    dm = datamodule(tmp_path, storage="auto")
    assert dm.storage_record["mode"] == "memory" and dm.storage_record["chosen_by"] == "auto"  # a few kB
    stems = sorted(s for s in dm._cache if s.startswith("plate_"))
    assert stems == ["plate_y0_x0", "plate_y0_x128", "plate_y128_x0", "plate_y128_x128"]
    np.testing.assert_array_equal(dm._cache["plate_y128_x0"][0], image[128:, :128])
    np.testing.assert_array_equal(dm._cache["plate_y128_x0"][1], mask[128:, :128])


def test_bad_large_masks_are_one_sentence_naming_the_file(tmp_path):
    image, mask = scene(300, 420, seed=8)
    bad = mask.copy()
    bad[200, 400] = 7  # one stray value in the last tile row
    write_large_tiff(tmp_path / "a", "s", image, bad)
    write_pair(tmp_path / "a", "t", *scene(96, 96, seed=9))
    with pytest.raises(SegkitError, match=r"mask '.*s\.tif\[128:256, 384:420\]' holds values \[7\]"):
        datamodule(tmp_path / "a")
    write_large_tiff(tmp_path / "b", "s", image, mask[:, :400])
    write_pair(tmp_path / "b", "t", *scene(96, 96, seed=9))
    with pytest.raises(SegkitError, match=r"mask '.*s\.tif' is 400x300 but image '.*s\.ome\.tif' is 420x300"):
        datamodule(tmp_path / "b")


def test_training_on_a_large_tiff_from_disk_records_the_storage(tmp_path):
    from segkit.training.fit import train

    root = tmp_path / "big"
    write_large_tiff(root, "slide", *scene(300, 420, seed=1))
    for i in range(2):
        write_pair(root, f"small{i}", *scene(96, 112, seed=20 + i))
    (root / "codes.txt").write_text("background\ndisc\nline\n")
    cfg = compose_cfg(tmp_path, ["data=folder", f"data.root={root}", "data.class_names=null", "data.num_classes=null",
                                 "data.storage=disk", f"data.tile_size={TILE}", "data.crop_size=64", "data.batch_size=4",
                                 "data.val_batch_size=1", "data.test_fraction=0", "data.val_fraction=0.34", "plan=off",
                                 "trainer.max_epochs=1", "trainer.num_sanity_val_steps=0", "trainer.enable_model_summary=false",
                                 "callbacks.progress_bar=null", "postprocess_tuning=off", *TINY_MODELS["unet"]])
    metrics, objects = train(cfg)
    stats = json.loads((tmp_path / "run" / "data_stats.json").read_text())
    assert stats["storage"]["mode"] == "disk" and stats["storage"]["region_tiles"] == 12
    assert "data.storage=disk" in stats["storage"]["reason"]
    dm = objects["datamodule"]
    n_val = len(dm.split["val"])
    # validation scored every val pixel once: the pooled confusion matrix counts each val tile's pixels
    val_pixels = sum(math.prod(dm._cache[s][1].shape) for s in dm.split["val"])
    assert int(objects["module"].last_confusion["val"].sum()) == val_pixels and n_val >= 1
    assert np.isfinite(metrics["val/miou"])


def test_data_check_and_stats_read_large_images_by_tiles(mixed_root, capsys):
    from segkit.data.__main__ import main as data_main

    root, (big_img, big_mask), _ = mixed_root
    common = ["data=folder", f"data.root={root}", "data.class_names=[background,disc,line]", "data.num_classes=3",
              f"data.tile_size={TILE}", "data.test_fraction=0", "data.val_fraction=0.34"]
    assert data_main(["check", *common]) == 0
    out = capsys.readouterr().out
    assert "15 samples read" in out and "OK: no problems found" in out  # 12 tiles + 3 small images
    assert data_main(["stats", *common]) == 0
    out = capsys.readouterr().out
    assert "disc |" in out and "line |" in out


def coordinate_scene(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """An image whose pixels name their own position (y % 256, x % 256, 16 * (y // 256) + x // 256) and a mask of
    classes 0/1 with class 2 on one pixel only, (128, 128): a corner where four tiles of 128 meet."""
    yy, xx = np.mgrid[:h, :w]
    image = np.stack([yy % 256, xx % 256, 16 * (yy // 256) + xx // 256], -1).astype(np.uint8)
    mask = ((yy // 7 + xx // 5) % 2).astype(np.uint8)
    mask[128, 128] = 2
    return image, mask


def origin(crop: torch.Tensor) -> tuple[int, int]:
    c = crop[:, 0, 0].tolist()
    return 256 * (c[2] // 16) + c[0], 256 * (c[2] % 16) + c[1]


@pytest.fixture
def slide_root(tmp_path):
    root = tmp_path / "data"
    image, mask = coordinate_scene(300, 420)
    write_large_tiff(root, "slide", image, mask)
    for i in range(2):
        img, m = scene(96, 112, seed=20 + i)
        write_pair(root, f"small{i}", img, np.where(m == 2, 1, m).astype(np.uint8))  # class 2: the slide's one pixel only
    return root, image, mask


def train_slide(root, **kw) -> SegDataModule:
    for split_seed in range(20):  # a split that puts the slide (one of three groups) in train
        dm = datamodule(root, split_seed=split_seed, **kw)
        if any(s.startswith("slide_") for s in dm.split["train"]):
            return dm
    raise AssertionError("no split seed put the slide in train")


@pytest.mark.parametrize("storage", ["disk", "memory"])
def test_train_crops_span_tile_borders_and_equal_the_whole_image(slide_root, storage):
    root, image, mask = slide_root
    dm = train_slide(root, storage=storage, crop_size=64, crops_per_image=8)
    ds = dm.train_dataloader().dataset
    slide = [i for i, s in enumerate(dm.split["train"]) if s.startswith("slide_")]
    assert len(slide) == 12 and all(tuple(ds.masks[i].reach) != (0, 0, 0, 0) for i in slide)
    crossing, origins = 0, set()
    for key in range(4 * len(ds)):
        item = ds[key]
        i = key % len(ds) % len(ds.images)
        if i not in slide:
            continue
        y, x = origin(item["image"])
        tile = dm.tile_boxes[dm.split["train"][i]]
        # drawn by the tile that holds its top-left pixel; a last tile shorter than the crop draws the last position
        assert (tile[0] <= y < tile[1] or (tile[1] - tile[0] < 64 and y == 300 - 64))
        assert (tile[2] <= x < tile[3] or (tile[3] - tile[2] < 64 and x == 420 - 64))
        np.testing.assert_array_equal(item["image"].permute(1, 2, 0).numpy(), image[y : y + 64, x : x + 64])
        np.testing.assert_array_equal(item["mask"].numpy(), mask[y : y + 64, x : x + 64])
        crossing += (y // TILE != (y + 63) // TILE) or (x // TILE != (x + 63) // TILE)
        origins.add((y, x))
    assert crossing > 50 and len(origins) > 300  # before: none crossed a border


def test_class_balanced_crops_centre_on_a_pixel_at_a_tile_corner(slide_root):
    root, image, mask = slide_root
    dm = train_slide(root, storage="disk", sampling="class_balanced", crop_size=64, crops_per_image=6)
    ds = dm.train_dataloader().dataset
    rare = [ds[k] for k in range(len(ds)) if ds.classes[k % len(ds.classes)] == 2]
    assert rare and all(item["mask"][32, 32] == 2 for item in rare)  # centred on (128, 128), across four tiles
    assert all(origin(item["image"]) == (96, 96) for item in rare)


def test_tiles_split_like_images_keep_their_crops_inside_the_tile(slide_root):
    root, image, _ = slide_root
    for split_seed in range(50):  # a split with the corner tile (the one pixel of class 2) in train
        try:
            dm = datamodule(root, storage="disk", crop_size=64, crops_per_image=4, format_options={"tile_groups": "tile"},
                            split_seed=split_seed)
            break
        except SegkitError:
            continue
    assert sum(s.startswith("slide_") for s in dm.split["train"]) >= 2
    ds = dm.train_dataloader().dataset
    assert not any(hasattr(m, "reach") for m in ds.masks)  # a neighbour may be a val tile: never read for training
    for key in range(len(ds)):
        i = key % len(ds.images)
        stem = dm.split["train"][i]
        if stem.startswith("slide_"):
            y0, y1, x0, x1 = dm.tile_boxes[stem]
            y, x = origin(ds[key]["image"])
            assert y0 <= y and x0 <= x and (y + 64 <= y1 or y1 - y0 < 64) and (x + 64 <= x1 or x1 - x0 < 64)


def test_a_tile_mosaic_reads_across_tiles_and_refuses_outside():
    from segkit.data.regions import TileMosaic, TileView, join_tiles

    image, mask = coordinate_scene(300, 420)
    boxes = tile_grid(300, 420, TILE)
    stems = [f"t{b[0]}_{b[2]}" for b in boxes]
    images = [image[y0:y1, x0:x1] for y0, y1, x0, x1 in boxes]
    masks = [mask[y0:y1, x0:x1] for y0, y1, x0, x1 in boxes]
    joined, jm, n = join_tiles(images, masks, stems, dict.fromkeys(stems, "slide"), dict(zip(stems, boxes, strict=True)))
    assert n == 1 and all(isinstance(v, TileView) for v in joined + jm)
    centre = joined[stems.index("t128_128")]
    assert centre.shape == (128, 128, 3) and centre.reach == (128, 300 - 256, 128, 420 - 256)
    np.testing.assert_array_equal(np.asarray(centre), image[128:256, 128:256])
    np.testing.assert_array_equal(centre.read(-20, 150, -5, 292), image[108:278, 123:420])
    np.testing.assert_array_equal(jm[stems.index("t128_128")].read(-20, 150, -5, 292), mask[108:278, 123:420])
    np.testing.assert_array_equal(centre[10:20, 5:9], image[138:148, 133:137])
    with pytest.raises(ValueError, match="outside the image"):
        centre.read(-200, 10, 0, 10)
    # a tile missing (e.g. in val): not joined, every tile as it was
    kept, _, n = join_tiles(images[1:], masks[1:], stems[1:], dict.fromkeys(stems, "slide"), dict(zip(stems, boxes, strict=True)))
    assert n == 0 and all(isinstance(v, np.ndarray) for v in kept)
    assert TileMosaic([(b, im, m) for b, im, m in zip(boxes, images, masks, strict=True)]).covered()
    again = pickle.loads(pickle.dumps(centre))  # loader workers
    np.testing.assert_array_equal(again.read(-3, 3, -3, 3), image[125:131, 125:131])
