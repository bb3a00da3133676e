"""Region-by-region prediction of images larger than memory: (OME-)TIFF and OME-Zarr in, tiled OME-TIFF
or OME-Zarr labels out, equal to the whole-image sliding window."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from torch import nn

from segkit.errors import SegkitError
from segkit.inference import sliding_window_probs
from segkit.inference.large import (
    ZarrRows,
    check_streamable_postprocess,
    intensity_map,
    is_zarr,
    ngff_group,
    open_labels,
    open_source,
    predict_large,
    stream_predict,
    window_probs_fn,
)
from segkit.models.network import SegNetwork

zarr = pytest.importorskip("zarr")
NAMES = ["background", "cell", "edge"]


def network(in_channels: int = 3, seed: int = 0) -> SegNetwork:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(in_channels, 8, 5, padding=2), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    return SegNetwork(net, NAMES, [0.5] * in_channels, [0.25] * in_channels).eval()


def image(h: int, w: int, c: int = 3, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 127 + 100 * np.sin(yy / 17.0) * np.cos(xx / 23.0)
    return np.clip(base[..., None] + rng.normal(0, 30, (h, w, c)), 0, 255).astype(np.uint8)


def reference_labels(modules, img: np.ndarray, tile: int, overlap: float) -> tuple[np.ndarray, np.ndarray]:
    x = torch.from_numpy(img).permute(2, 0, 1)
    with torch.inference_mode():
        probs = sum(sliding_window_probs(m, x, 3, tile=tile, overlap=overlap, stride=1, batch_size=3) for m in modules) / len(modules)
    return probs.argmax(0).numpy().astype(np.uint8), probs.numpy()


@pytest.mark.parametrize("h,w,tile,overlap", [(300, 410, 64, 0.25), (257, 129, 64, 0.6), (100, 700, 128, 0.25), (50, 60, 64, 0.25)])
def test_streamed_windows_equal_the_whole_image_sliding_window(tmp_path, h, w, tile, overlap):
    img = image(h, w)
    tifffile.imwrite(tmp_path / "a.tif", img, tile=(64, 64))
    modules = [network(), network(seed=3)]  # an ensemble: per-window averages equal the blended average
    expected, probs = reference_labels(modules, img, tile, overlap)
    source = open_source(tmp_path / "a.tif")
    assert source.shape == (h, w) and source.channels == 3
    strips = list(stream_predict(source, window_probs_fn(modules, {}), 3, 3, tile=tile, overlap=overlap, batch_size=3,
                                 with_probs=True))
    assert [s.y0 for s in strips] == sorted(s.y0 for s in strips) and strips[0].y0 == 0
    got = np.concatenate([s.labels for s in strips])
    got_probs = np.concatenate([s.probs for s in strips])
    margin = np.sort(probs, axis=0)[-1] - np.sort(probs, axis=0)[-2]
    decided = margin > 1e-5  # float summation order differs: exact ties may go either way
    assert got.shape == (h, w) and np.array_equal(got[decided], expected[decided])
    assert np.abs(got_probs.astype(np.float32) - np.moveaxis(probs, 0, -1) * 255).max() <= 0.51


def test_region_by_region_tallies_a_class_its_threshold_removes_everywhere(tmp_path):
    img = image(300, 410)
    tifffile.imwrite(tmp_path / "a.tif", img, tile=(64, 64))
    modules = [network()]
    _, probs = reference_labels(modules, img, 64, 0.25)
    argmax = probs.argmax(0)
    top = {c: float(probs[c][argmax == c].max()) for c in (1, 2) if (argmax == c).any()}
    assert set(top) == {1, 2}, "the random network predicts both classes somewhere"
    thresholds = {1: min(1.0, top[1] + 1e-3), 2: 0.0}  # class 1 goes everywhere; class 2 keeps all of its pixels
    tally: dict = {}
    strips = list(stream_predict(open_source(tmp_path / "a.tif"), window_probs_fn(modules, {}), 3, 3, tile=64, overlap=0.25,
                                 batch_size=3, thresholds=thresholds, tally=tally))
    labels = np.concatenate([s.labels for s in strips])
    assert not (labels == 1).any() and tally[1][1] == 0 and tally[2][1] == tally[2][0] > 0
    assert abs(tally[1][0] - int((argmax == 1).sum())) <= 0.001 * argmax.size  # blending order: near-ties may differ
    assert tally[1][2] == pytest.approx(top[1], abs=1e-4)
    (tmp_path / "out").mkdir()
    info = predict_large(tmp_path / "a.tif", modules, tmp_path / "out", inference={"tile": 64, "overlap": 0.25, "batch_size": 3},
                         tta={}, post={"thresholds": thresholds})
    assert [(n["class"], n["threshold"], n["argmax_pixels"]) for n in info["emptied_by_thresholds"]] == [(1, thresholds[1], tally[1][0])]


def test_predict_large_tiff_writes_a_tiled_ome_tiff_with_class_names(tmp_path):
    img = image(600, 520)
    path = tmp_path / "slide.ome.tif"
    tifffile.imwrite(path, img, tile=(128, 128), ome=True, metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})
    modules = [network()]
    out = tmp_path / "out"
    out.mkdir()
    info = predict_large(path, modules, out, inference={"tile": 128, "overlap": 0.25, "batch_size": 2}, tta={}, post=None,
                         save_probabilities=True)
    expected, probs = reference_labels(modules, img, 128, 0.25)
    labels_path = out / "slide_labels.ome.tif"
    assert info["labels"] == str(labels_path) and info["pixel_size_um"] == pytest.approx(0.25)
    with tifffile.TiffFile(labels_path) as tif:
        page = tif.pages[0]
        assert page.is_tiled and page.tilewidth == 256 and page.compression == 8 and tif.is_bigtiff  # 8: zlib
        assert "0=background, 1=cell, 2=edge" in tif.ome_metadata and 'PhysicalSizeX="0.25"' in tif.ome_metadata
        got = tif.asarray()
    margin = np.sort(probs, axis=0)[-1] - np.sort(probs, axis=0)[-2]
    assert np.array_equal(got[margin > 1e-5], expected[margin > 1e-5])
    p = zarr.open_group(str(out / "slide_probs.ome.zarr"), mode="r")
    assert p["0"].shape == (3, 600, 520)
    assert [c["label"] for c in p.attrs["omero"]["channels"]] == NAMES
    assert np.abs(p["0"][:].astype(np.float32) - probs * 255).max() <= 0.51
    assert not list(out.glob("*.part"))
    preview = np.asarray(__import__("PIL.Image").Image.open(out / "slide_preview.png"))
    assert preview.shape == (600, 520, 3)  # under 2048 px a side: every pixel


def write_ome_zarr(path, arr_cyx: np.ndarray, levels: int = 2, scale_um: float = 0.5):
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    datasets = []
    for lv in range(levels):
        a = arr_cyx[:, :: 2**lv, :: 2**lv]
        group.create_array(str(lv), shape=a.shape, chunks=(1, 128, 128), dtype=a.dtype)[:] = a
        datasets.append({"path": str(lv), "coordinateTransformations": [{"type": "scale", "scale": [1, scale_um * 2**lv, scale_um * 2**lv]}]})
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "micrometer"},
                                                               {"name": "x", "type": "space", "unit": "micrometer"}], "datasets": datasets}]


def test_predict_ome_zarr_16_bit_writes_ngff_labels_and_maps_intensities_from_the_small_level(tmp_path, monkeypatch):
    import segkit.inference.large as large

    monkeypatch.setattr(large, "SMALL_LEVEL_PIXELS", 100_000)  # the 400 x 300 level is "too large": the 200 x 150 one is read
    rng = np.random.default_rng(5)
    img16 = (image(400, 300, 1).astype(np.uint16) * 200 + 1000)[..., 0] + rng.integers(0, 7, (400, 300)).astype(np.uint16)
    path = tmp_path / "plate.ome.zarr"
    write_ome_zarr(path, img16[None], levels=2)
    source = open_source(path)
    assert is_zarr(path) and source.shape == (400, 300) and source.channels == 1 and source.pixel_size == pytest.approx(0.5)
    lo, hi, how = intensity_map(source)
    small = img16[::2, ::2].astype(np.float32)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(small, (0.5, 99.5))))
    assert "200 x 150 pyramid level" in how
    modules = [network(in_channels=1)]
    out = tmp_path / "out"
    out.mkdir()
    info = predict_large(path, modules, out, inference={"tile": 96, "overlap": 0.25}, tta={}, post=None)
    assert info["format"] == "zarr" and info["stem"] == "plate"
    labels = zarr.open_group(str(out / "plate_labels.ome.zarr"), mode="r")
    props = labels.attrs["image-label"]["properties"]
    assert [p["class"] for p in props] == NAMES
    assert labels.attrs["multiscales"][0]["name"] == "plate_labels"  # not the temporary name it was written under
    scaled = np.clip((img16.astype(np.float32) - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)
    expected, probs = reference_labels(modules, scaled[..., None], 96, 0.25)
    margin = np.sort(probs, axis=0)[-1] - np.sort(probs, axis=0)[-2]
    got = labels["0"][:]
    assert np.array_equal(got[margin > 1e-5], expected[margin > 1e-5])
    assert np.array_equal(open_labels(out / "plate_labels.ome.zarr")[:], got)
    # level 1 predicts the half-resolution image, at twice the pixel size
    info1 = predict_large(path, modules, out, inference={"tile": 96}, tta={}, post=None, level=1)
    assert info1["pixel_size_um"] == pytest.approx(1.0)
    assert zarr.open_group(str(out / "plate_labels.ome.zarr"), mode="r")["0"].shape == (200, 150)


def test_bad_inputs_are_one_sentence(tmp_path):
    stack = np.zeros((3, 40, 50), np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", stack, metadata={"axes": "ZYX"})
    with pytest.raises(SegkitError, match=r"3 planes along its 'Z' axis"):
        open_source(tmp_path / "stack.tif")
    with pytest.raises(SegkitError, match="level=2 but"):
        open_source(tmp_path / "stack.tif", level=2)
    (tmp_path / "x.zarr").mkdir()
    (tmp_path / "x.zarr" / ".zattrs").write_text(json.dumps({}))
    with pytest.raises(SegkitError, match="cannot open OME-Zarr .*x.zarr.*GroupNotFoundError"):
        open_source(tmp_path / "x.zarr")
    zarr.open_group(str(tmp_path / "y.zarr"), mode="w", zarr_format=2)
    with pytest.raises(SegkitError, match="no 'multiscales' metadata"):
        open_source(tmp_path / "y.zarr")
    with pytest.raises(SegkitError, match="median_size, min_object_size"):
        check_streamable_postprocess({"median_size": 3, "min_object_size": 20, "thresholds": {1: 0.8}})
    assert check_streamable_postprocess({"thresholds": {"1": 0.8}}) == {1: 0.8}


def test_zarr_rows_writes_whole_chunks_and_the_rest(tmp_path):
    group, arr = ngff_group(tmp_path / "a.zarr", (10, 7), "uint8", None, 4, "yx")
    rows = ZarrRows(arr, 4)
    full = np.arange(70, dtype=np.uint8).reshape(10, 7)
    for a, b in ((0, 3), (3, 5), (5, 9), (9, 10)):
        rows.add(full[a:b])
    rows.close()
    assert np.array_equal(arr[:], full)
