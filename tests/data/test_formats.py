"""Format readers on small crafted copies of each on-disk layout (the real copies are tested in
tests/test_realdata.py when ../shared/data is present)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from segkit.data.formats import ReadContext, read_dataset
from segkit.data.formats.sunnybrook import rasterise
from segkit.errors import SegkitError
from segkit.training.fit import train
from tests.conftest import compose_cfg

rng = np.random.default_rng(0)


def _isbi_labels(n: int) -> np.ndarray:
    lab = np.full((n, 32, 32), 255, np.uint8)
    lab[:, 10:12, :] = 0  # a horizontal membrane
    return lab


def test_isbi_png_pairs_and_tiff_stacks_read_the_same(tmp_path):
    vol = rng.integers(0, 255, (5, 32, 32), dtype=np.uint8)
    lab = _isbi_labels(5)
    for i in range(5):
        (tmp_path / "png" / "train" / "image").mkdir(parents=True, exist_ok=True)
        (tmp_path / "png" / "train" / "label").mkdir(parents=True, exist_ok=True)
        Image.fromarray(vol[i]).save(tmp_path / "png" / "train" / "image" / f"{i}.png")
        Image.fromarray(lab[i]).save(tmp_path / "png" / "train" / "label" / f"{i}.png")
    (tmp_path / "tif").mkdir()
    tifffile.imwrite(tmp_path / "tif" / "train-volume.tif", vol)
    tifffile.imwrite(tmp_path / "tif" / "train-labels.tif", lab)
    opts = {"val_slices": [3], "test_slices": [4]}
    a = read_dataset("isbi2012", ReadContext(tmp_path / "png", 1, 2), dict(opts))
    b = read_dataset("isbi2012", ReadContext(tmp_path / "tif", 1, 2), dict(opts))
    assert not a.problems and not b.problems
    assert [s.stem for s in a.samples] == [s.stem for s in b.samples] == ["0", "1", "2", "3", "4"]
    for sa, sb in zip(a.samples, b.samples, strict=True):
        np.testing.assert_array_equal(sa.image, sb.image)
        np.testing.assert_array_equal(sa.mask, sb.mask)
        assert sa.mask.sum() == 2 * 32 and sa.mask[10:12].all()  # membrane is class 1
    assert a.split == {"train": ["0", "1", "2"], "val": ["3"], "test": ["4"]}
    cell = read_dataset("isbi2012", ReadContext(tmp_path / "png", 1, 2), {"positive": "cell"})
    assert cell.samples[0].mask.sum() == 30 * 32


def test_isbi_slice_in_two_splits_is_a_problem(tmp_path):
    tifffile.imwrite(tmp_path / "train-volume.tif", rng.integers(0, 255, (3, 8, 8), dtype=np.uint8))
    tifffile.imwrite(tmp_path / "train-labels.tif", _isbi_labels(3)[:, :8, :8])
    r = read_dataset("isbi2012", ReadContext(tmp_path, 1, 2), {"val_slices": [1], "test_slices": [1, 7]})
    assert any("[7]" in p for p in r.problems) and any("both val_slices and test_slices" in p for p in r.problems)


def _sunnybrook(root, patients=("P1", "P2")):
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rows = ["patient_id,original_id"]
    for k, p in enumerate(patients):
        rows.append(f"{p},C-{k}")
        (root / "dicoms" / p).mkdir(parents=True)
        (root / "contourfiles" / f"C-{k}" / "i-contours").mkdir(parents=True)
        for n in (20, 40):
            meta = FileMetaDataset()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
            meta.MediaStorageSOPInstanceUID = generate_uid()
            ds = FileDataset(str(root / "dicoms" / p / f"{n}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
            arr = rng.integers(0, 900, (32, 32)).astype(np.int16)
            ds.Rows, ds.Columns = arr.shape
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.PixelData = arr.tobytes()
            pydicom.dcmwrite(ds.filename, ds, enforce_file_format=True)
            square = "\n".join(f"{x:.1f} {y:.1f}" for x, y in ((8, 8), (20, 8), (20, 20), (8, 20)))
            (root / "contourfiles" / f"C-{k}" / "i-contours" / f"IM-0001-{n:04d}-icontour-manual.txt").write_text(square + "\n")
    (root / "link.csv").write_text("\n".join(rows) + "\n")


def test_sunnybrook_contours_rasterise_to_masks_and_split_by_patient(tmp_path):
    _sunnybrook(tmp_path)
    r = read_dataset("sunnybrook", ReadContext(tmp_path, 1, 2), {"val_patients": ["P2"]})
    assert not r.problems
    assert [s.stem for s in r.samples] == ["P1_0020", "P1_0040", "P2_0020", "P2_0040"]
    mask = r.samples[0].mask
    assert mask.sum() == 13 * 13 and mask[8:21, 8:21].all()  # the square 8..20 inclusive
    assert r.split == {"train": ["P1_0020", "P1_0040"], "val": ["P2_0020", "P2_0040"], "test": []}
    assert r.samples[0].image.dtype == np.uint8 and r.samples[0].image.shape == (32, 32, 1)


def test_rasterised_polygon_area_matches_the_shoelace_formula():
    t = np.linspace(0, 2 * np.pi, 200, endpoint=False)
    pts = np.stack([50 + 30 * np.cos(t), 60 + 20 * np.sin(t)], 1)
    area = 0.5 * abs(np.dot(pts[:, 0], np.roll(pts[:, 1], 1)) - np.dot(pts[:, 1], np.roll(pts[:, 0], 1)))
    got = rasterise(pts, 128, 128).sum()
    assert abs(got - area) / area < 0.05  # PIL includes boundary pixels: a few percent over on a small ellipse


def _phase(root):
    (root / "Images").mkdir(parents=True)
    (root / "Masks").mkdir()
    tifffile.imwrite(root / "Images" / "phase_027.tif", rng.integers(300, 4000, (40, 100), dtype=np.uint16))
    cls = np.zeros((40, 100), np.uint8)
    cls[5:15, ::7] = 1
    cls[16, ::7] = 2
    for i, name in enumerate(("other", "cells", "edges")):
        np.save(root / "Masks" / f"image_027_mask_{name}.npy", ((cls == i) * 255).astype(np.uint8))
    return cls


def test_phase_bacteria_regions_and_guard_band(tmp_path):
    cls = _phase(tmp_path)
    regions = {"train": [0, 0, 40, 50], "val": [0, 60, 40, 100]}
    r = read_dataset("phase_bacteria", ReadContext(tmp_path, 1, 3), {"regions": regions, "guard": 10})
    assert not r.problems and r.split == {"train": ["027_train"], "val": ["027_val"]}
    np.testing.assert_array_equal(r.samples[1].mask, cls[:, 60:100])
    close = read_dataset("phase_bacteria", ReadContext(tmp_path, 1, 3), {"regions": regions, "guard": 11})
    assert len(close.problems) == 1 and "10 px apart" in close.problems[0]
    with pytest.raises(SegkitError, match="regions"):
        read_dataset("phase_bacteria", ReadContext(tmp_path, 1, 3), {"regions": {"train": [0, 0, 4, 4]}})


def test_folder_experiment_trains_on_rgb_tiff_gastruloids_with_0_1_labels(tmp_path):
    """The typical folder user: RGB TIFF images, labels 0/1 in labels/, LZW-compressed."""
    root = tmp_path / "gastruloids"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    yy, xx = np.mgrid[:64, :64]
    for i in range(8):
        blob = ((yy - 32 - i) ** 2 + (xx - 30) ** 2 < (12 + i) ** 2).astype(np.uint8)
        img = (rng.integers(0, 40, (64, 64, 3)) + blob[..., None] * 150).astype(np.uint8)
        tifffile.imwrite(root / "images" / f"g{i}.tif", img, compression="lzw")
        tifffile.imwrite(root / "labels" / f"g{i}.tif", blob, compression="lzw")
    cfg = compose_cfg(tmp_path, ["experiment=folder_unet", f"data.root={root}", "data.class_names=[background,gastruloid]",
                                 "debug=fast", "data.crop_size=32", "model.base_width=4", "model.depth=2", "callbacks.progress_bar=null"])
    metrics, objects = train(cfg)
    dm = objects["datamodule"]
    assert (len(dm.split["train"]), len(dm.split["val"]), len(dm.split["test"])) == (5, 2, 1)  # round(8 * 0.2), round(8 * 0.1)
    assert "test/iou/gastruloid" in metrics and "val/iou/gastruloid" in metrics
