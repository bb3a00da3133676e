"""``segkit.predict`` and ``segkit.tune_postprocess`` on a tiny trained model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from segkit.errors import SegkitError
from segkit.evaluation.postprocess_search import run_tune
from segkit.inference.files import run_predict
from segkit.training.fit import train
from tests.conftest import REPO, TINY_DATA, TINY_MODELS, cli_env, compose_cfg


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Two tiny U-Nets trained with different seeds on the same tiny data."""
    out = []
    for seed in (1, 2):
        tmp = tmp_path_factory.mktemp(f"seed{seed}")
        cfg = compose_cfg(tmp, TINY_DATA + TINY_MODELS["unet"] + [f"seed={seed}", f"paths.data_dir={tmp_path_factory.getbasetemp() / 'data'}"])
        train(cfg)
        out.append(Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt")
    return out


def _predict(tmp: Path, *overrides: str):
    return run_predict(compose_cfg(tmp, list(overrides), config_name="predict"))


def _images(folder: Path, sizes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"img{i}.png")


@pytest.mark.parametrize("sizes", [
    [(50, 70), (300, 200), (600, 520)],
    # the object table of a tiny model's 2048^2 prediction holds ~280,000 noise objects, and skimage's regionprops
    # measures about 1,000 per second: minutes, so behind the slow marker (vectorised measurement: issue 16)
    pytest.param([(50, 70), (300, 200), (2048, 2048)], marks=pytest.mark.slow),
], ids=["600x520", "2048x2048"])
def test_predict_a_directory_of_mixed_sizes_and_a_large_image(ckpts, tmp_path, sizes):
    _images(tmp_path / "in", sizes)
    out = tmp_path / "out"
    result = _predict(tmp_path, f"ckpt_path={ckpts[0]}", f"input={tmp_path / 'in'}", f"output={out}", "inference.tile=256",
                      "save_probabilities=true", "postprocess={}")  # {}: argmax, whatever the training run tuned
    assert len(result["files"]) == 3
    for i, (h, w) in enumerate(sizes):
        labels = np.asarray(Image.open(out / f"img{i}_labels.png"))
        assert labels.shape == (h, w) and labels.max() <= 2
        probs = np.load(out / f"img{i}_probs.npy")
        assert probs.shape == (3, h, w) and np.allclose(probs.sum(0), 1, atol=1e-4)
        np.testing.assert_array_equal(labels, probs.argmax(0))  # postprocess={}: none
        tif = tifffile.TiffFile(out / f"img{i}_labels.tif")
        assert "1=rbc" in tif.imagej_metadata["Info"]
        np.testing.assert_array_equal(tif.asarray(), labels)
        assert (out / f"img{i}_overlay.png").stat().st_size > 0
    assert (out / "objects.csv").is_file()  # the synthetic data names rbc and spirochaete as object classes


def test_ensemble_averages_probabilities(ckpts, tmp_path):
    _images(tmp_path / "in", [(64, 96)])
    paths = []
    for k, ckpt in enumerate([*ckpts, f"[{ckpts[0]},{ckpts[1]}]"]):
        out = tmp_path / f"o{k}"
        _predict(tmp_path, f"ckpt_path={ckpt}", f"input={tmp_path / 'in'}", f"output={out}", "save_probabilities=true")
        paths.append(out / "img0_probs.npy")
    a, b, both = (np.load(p) for p in paths)
    np.testing.assert_allclose(both, (a + b) / 2, atol=1e-6)


def test_tta_of_flips_and_rotations_is_the_mean_over_the_eight_views(ckpts, tmp_path):
    from segkit.inference.load import load_network

    _images(tmp_path / "in", [(64, 64)])
    _predict(tmp_path, f"ckpt_path={ckpts[0]}", f"input={tmp_path / 'in'}", f"output={tmp_path / 'o'}", "save_probabilities=true",
             "tta.flips=true", "tta.rot90=true")
    got = np.load(tmp_path / "o" / "img0_probs.npy")
    module = load_network(ckpts[0], torch.device("cpu"))
    x = torch.from_numpy(np.asarray(Image.open(tmp_path / "in" / "img0.png"))).permute(2, 0, 1)
    views = []
    with torch.no_grad():
        for flip in (False, True):
            for r in range(4):
                v = torch.rot90(x.flip(-1) if flip else x, r, (1, 2))
                p = torch.softmax(module(v[None]), 1)[0]
                p = torch.rot90(p, -r, (1, 2))
                views.append(p.flip(-1) if flip else p)
    np.testing.assert_allclose(got, torch.stack(views).mean(0).numpy(), atol=1e-5)


def test_tune_postprocess_on_validation_then_predict_uses_it(ckpts, tmp_path):
    cfg = compose_cfg(tmp_path, [f"ckpt_path={ckpts[0]}", "grid.thresholds=[0.5,0.9]", "grid.median_size=[3]", "grid.min_object_size=[5]"],
                      config_name="tune_postprocess")
    record = run_tune(cfg)
    saved = json.loads((ckpts[0].parent / "postprocess.json").read_text())
    assert saved["split"] == "val" and saved["after"] >= saved["before"] and saved == json.loads(json.dumps(record, default=float))
    # argmax, then one round over 2 classes x 2 thresholds, 1 size, 1 median, and a second one if the first changed something
    values = [t["miou"] for t in saved["trials"]]
    assert len(values) in (1 + 6, 1 + 12) and saved["after"] == max(values) and saved["before"] == values[0]
    _images(tmp_path / "in", [(40, 40)])
    result = _predict(tmp_path, f"ckpt_path={ckpts[0]}", f"input={tmp_path / 'in'}", f"output={tmp_path / 'o'}")
    assert "tune_postprocess" in result["summary"]["postprocess_source"]
    (ckpts[0].parent / "postprocess.json").unlink()


def test_an_ensemble_is_tuned_as_a_whole_and_its_record_is_its_own(ckpts, tmp_path):
    from segkit.evaluation.evaluate import eval_postprocess
    from segkit.evaluation.postprocess_search import postprocess_file

    for c in ckpts:  # the fixture's training runs tuned each checkpoint alone: start without those records
        postprocess_file(c).unlink(missing_ok=True)
    cfg = compose_cfg(tmp_path, [f"ckpt_path=[{ckpts[0]},{ckpts[1]}]", "grid.thresholds=[0.5,0.9]", "grid.median_size=[]",
                                 "grid.min_object_size=[5]"], config_name="tune_postprocess")
    record = run_tune(cfg)
    path = postprocess_file(ckpts)
    assert path.is_file() and path.parent == min(c.resolve() for c in ckpts).parent and path.name.startswith("postprocess_ensemble_")
    assert not any(postprocess_file(c).exists() for c in ckpts)  # a member alone keeps no record of the ensemble's choice
    assert record["checkpoints"] == [str(c) for c in ckpts]
    # "before" is the ensemble's argmax: the mean of the two members' probabilities, computed here independently
    from segkit.evaluation.evaluate import eval_data
    from segkit.inference.load import load_network
    from segkit.inference.predictor import predict_probs

    dm, _ = eval_data(compose_cfg(tmp_path, [f"ckpt_path={ckpts[0]}"], config_name="tune_postprocess"), ckpts[0])
    dm.prepare()
    images, masks, _ = dm.arrays("val")
    nets = [load_network(c, torch.device("cpu")) for c in ckpts]
    k = len(nets[0].class_names)
    cm = np.zeros((k, k), np.int64)
    for im, m in zip(images, masks, strict=True):
        pred = sum(predict_probs(n, im).numpy() for n in nets).argmax(0)
        np.add.at(cm, (m.ravel().astype(np.int64), pred.ravel()), 1)
    iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
    assert record["before"] == pytest.approx(float(np.nanmean(iou)), abs=1e-6)
    post, source = eval_postprocess("auto", ckpts)  # eval and predict of the same ensemble pick it up
    assert post == json.loads(path.read_text())["postprocess"] and str(path) in source
    assert eval_postprocess("auto", [ckpts[1], ckpts[0]])[0] == post  # the average has no order: the same record
    assert eval_postprocess("auto", [ckpts[0], tmp_path / "other.ckpt"])[0] is None  # other members: not this one
    path.unlink()


def test_bad_inputs_are_one_sentence(ckpts, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SegkitError, match="holds no images"):
        _predict(tmp_path, f"ckpt_path={ckpts[0]}", f"input={tmp_path / 'empty'}", f"output={tmp_path / 'o'}")
    np.save(tmp_path / "two.npy", np.zeros((16, 16, 2), np.uint8))
    with pytest.raises(SegkitError, match="has 2 channels; expected data.in_channels=3"):
        _predict(tmp_path, f"ckpt_path={ckpts[0]}", f"input={tmp_path / 'two.npy'}", f"output={tmp_path / 'o'}")
    with pytest.raises(SegkitError, match="does not exist"):
        _predict(tmp_path, f"ckpt_path={tmp_path / 'none.ckpt'}", f"input={tmp_path / 'two.npy'}", f"output={tmp_path / 'o'}")


def test_predict_cli_prints_the_output_directory(ckpts, tmp_path):
    _images(tmp_path / "in", [(32, 32)])
    proc = subprocess.run([sys.executable, "-m", "segkit.predict", f"ckpt_path={ckpts[0]}", f"input={tmp_path / 'in'}",
                           f"output={tmp_path / 'o'}", f"paths.log_dir={tmp_path / 'logs'}"],
                          cwd=REPO, capture_output=True, text=True, env=cli_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == f"Output directory: {tmp_path / 'o'}"
    # predict.log in the command's run folder keeps what it printed, time-stamped
    (log,) = (tmp_path / "logs" / "predict" / "runs").glob("*/predict.log")
    lines = log.read_text().strip().splitlines()
    assert lines[-1].endswith(f"Output directory: {tmp_path / 'o'}") and "1 images predicted" in lines[-2]


def test_region_by_region_equals_the_whole_image_path_and_measures_the_same_objects(ckpts, tmp_path):
    """A TIFF predicted region by region (tiled OME-TIFF out, objects per tile) against the same pixels as a
    PNG through the whole-image path; an OME-Zarr input gets OME-Zarr labels."""
    import csv

    import zarr

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:700, 0:600]
    img = np.clip(120 + 90 * np.sin(yy / 9.0)[..., None] * np.cos(xx / 13.0)[..., None] + rng.normal(0, 20, (700, 600, 3)), 0, 255).astype(np.uint8)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    tifffile.imwrite(tmp_path / "a" / "slide.ome.tif", img, tile=(128, 128), ome=True, metadata={"axes": "YXS"})
    Image.fromarray(img).save(tmp_path / "b" / "slide.png")
    common = [f"ckpt_path={ckpts[0]}", "inference.tile=256"]
    big = _predict(tmp_path, *common, f"input={tmp_path / 'a'}", f"output={tmp_path / 'oa'}", "inference.region_by_region=true")
    _predict(tmp_path, *common, f"input={tmp_path / 'b'}", f"output={tmp_path / 'ob'}")
    (entry,) = big["summary"]["images"]
    assert entry["region_by_region"] and entry["labels"].endswith("slide_labels.ome.tif") and entry["size"] == [700, 600]
    streamed = tifffile.imread(tmp_path / "oa" / "slide_labels.ome.tif")
    reference = np.asarray(Image.open(tmp_path / "ob" / "slide_labels.png"))
    assert streamed.shape == reference.shape and np.mean(streamed == reference) > 0.9999  # float-order ties only

    def rows(path):
        with open(path) as f:
            return list(csv.DictReader(f))

    a, b = rows(tmp_path / "oa" / "slide_objects.csv"), rows(tmp_path / "ob" / "slide_objects.csv")
    assert len(a) > 5 and abs(len(a) - len(b)) <= max(1, len(b) // 200)
    if np.array_equal(streamed, reference):
        assert [r["area"] for r in a] == [r["area"] for r in b]
    # an OME-Zarr input: found in a folder listing, predicted region by region under auto, NGFF labels out
    group = zarr.open_group(str(tmp_path / "c" / "plate.ome.zarr"), mode="w", zarr_format=2)
    group.create_array("0", shape=(3, 700, 600), chunks=(1, 256, 256), dtype="uint8")[:] = np.moveaxis(img, -1, 0)
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": n} for n in "cyx"], "datasets": [{"path": "0"}]}]
    result = _predict(tmp_path, *common, f"input={tmp_path / 'c'}", f"output={tmp_path / 'oc'}")
    assert [Path(p).name for p in result["files"]] == ["plate.ome.zarr"]
    labels = zarr.open_group(str(tmp_path / "oc" / "plate_labels.ome.zarr"), mode="r")
    assert np.array_equal(labels["0"][:], streamed)
    assert [p["class"] for p in labels.attrs["image-label"]["properties"]] == ["background", "rbc", "spirochaete"]
    assert (tmp_path / "oc" / "plate_preview.png").is_file() and (tmp_path / "oc" / "plate_objects.csv").is_file()


def _labels_of(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*_labels.png"))}


def test_an_interrupted_prediction_resumes_skipping_the_complete_images(ckpts, tmp_path):
    _images(tmp_path / "in", [(60, 70), (90, 64), (70, 80)])
    out = tmp_path / "out"
    args = [f"ckpt_path={ckpts[0]}", f"input={tmp_path / 'in'}", f"output={out}"]
    first = _predict(tmp_path, *args)
    assert sorted(p.name for p in (out / "records").glob("*.json")) == ["img0.json", "img1.json", "img2.json"]
    reference = _labels_of(out)
    # interrupted while img1 was written: its record (written last) is missing and a half-written file is left
    (out / "records" / "img1.json").unlink()
    (out / "img1_labels.png").write_bytes(b"half")
    kept = (out / "records" / "img0.json").stat().st_mtime_ns
    second = _predict(tmp_path, *args)
    assert second["summary"]["images"] == first["summary"]["images"]  # predict.json lists all three again
    assert (out / "records" / "img0.json").stat().st_mtime_ns == kept  # img0 was not predicted again
    again = _labels_of(out)
    assert set(again) == set(reference) and all(np.array_equal(again[k], reference[k]) for k in reference)  # img1 rewritten whole
    assert not list(out.glob(".*part*"))
    # other settings: nothing counts as complete
    third = _predict(tmp_path, *args, "inference.tile=32")
    assert (out / "records" / "img0.json").stat().st_mtime_ns != kept and len(third["summary"]["images"]) == 3


def test_shards_merged_equal_one_run(ckpts, tmp_path):
    from segkit.merge import main as merge_main

    _images(tmp_path / "in", [(60, 70), (90, 64), (70, 80), (64, 64), (80, 50)])
    one = tmp_path / "one"
    _predict(tmp_path, f"ckpt_path={ckpts[0]}", f"input={tmp_path / 'in'}", f"output={one}")
    sharded = tmp_path / "sharded"
    parts = [_predict(tmp_path, f"ckpt_path={ckpts[0]}", f"input={tmp_path / 'in'}", f"output={sharded}", f"shard={k}", "num_shards=2")
             for k in (0, 1)]
    assert [Path(f).name for f in parts[0]["files"]] == ["img0.png", "img2.png", "img4.png"]
    assert [Path(f).name for f in parts[1]["files"]] == ["img1.png", "img3.png"]
    assert not (sharded / "objects.csv").exists()  # a shard does not pool: the others may still be running
    assert merge_main([str(sharded)]) == 0
    assert (sharded / "objects.csv").read_text() == (one / "objects.csv").read_text()
    merged = json.loads((sharded / "predict.json").read_text())["images"]
    assert merged == json.loads((one / "predict.json").read_text())["images"]
    a, b = _labels_of(sharded), _labels_of(one)
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(SegkitError, match="shard is 2 with num_shards=2"):
        _predict(tmp_path, f"ckpt_path={ckpts[0]}", f"input={tmp_path / 'in'}", f"output={sharded}", "shard=2", "num_shards=2")
    with pytest.raises(SystemExit):
        merge_main([str(tmp_path / "in")])  # no records: one sentence, exit 2


def test_two_processes_predict_what_one_does(ckpts, tmp_path):
    # one thread per process: forked, so they inherit the imports (a second or two, not ~20 s of spawning)
    _images(tmp_path / "in", [(60, 70), (90, 64), (70, 80), (64, 64)])
    one, two = tmp_path / "one", tmp_path / "two"
    before = torch.get_num_threads()
    try:
        _predict(tmp_path, f"ckpt_path={ckpts[0]}", f"input={tmp_path / 'in'}", f"output={one}", "threads=1")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    result = _predict(tmp_path, f"ckpt_path={ckpts[0]}", f"input={tmp_path / 'in'}", f"output={two}", "devices=2", "threads=1")
    assert result["summary"]["devices"] == 2 and result["summary"]["start_method"] == "fork"
    assert result["summary"]["threads_per_process"] == 1
    a, b = _labels_of(one), _labels_of(two)
    assert set(a) == set(b) == {f"img{i}_labels.png" for i in range(4)} and all(np.array_equal(a[k], b[k]) for k in a)
    assert (two / "objects.csv").read_text() == (one / "objects.csv").read_text()


def test_start_method_forks_only_single_threaded_cpu_processes():
    from segkit.inference.files import start_method

    assert start_method("cpu", 1) == "fork"
    assert start_method("cpu", 2) == "spawn"  # a forked child's OpenMP pool can hang
    assert start_method("cuda", 1) == "spawn"  # a forked CUDA context is unusable
    assert start_method("cuda:1", 1) == "spawn"


def test_a_prediction_process_that_dies_is_named_not_waited_for(ckpts, tmp_path, monkeypatch):
    import os
    import time

    from segkit.inference import files

    real = files._worker

    def dies_on_rank_1(container, paths, out, rank, threads, queue):
        if rank == 1:
            os._exit(3)  # as the kernel's OOM killer would end it: no report
        real(container, paths, out, rank, threads, queue)

    monkeypatch.setattr(files, "_worker", dies_on_rank_1)  # a forked child runs the patched function
    _images(tmp_path / "in", [(60, 70), (90, 64), (70, 80)])
    out = tmp_path / "out"
    t0 = time.perf_counter()
    with pytest.raises(SegkitError, match=r"prediction process 1 of 2 failed: it exited with code 3 before it finished "
                                          r"\(killed, or out of memory\?\); the images complete in output= are kept"):
        _predict(tmp_path, f"ckpt_path={ckpts[0]}", f"input={tmp_path / 'in'}", f"output={out}", "devices=2", "threads=1")
    assert time.perf_counter() - t0 < 60
    done = sorted(p.stem for p in (out / "records").glob("*.json"))
    assert done == ["img0", "img2"]  # rank 0's share is complete and kept for the rerun
    monkeypatch.setattr(files, "_worker", real)
    result = _predict(tmp_path, f"ckpt_path={ckpts[0]}", f"input={tmp_path / 'in'}", f"output={out}", "devices=2", "threads=1")
    assert len(result["summary"]["images"]) == 3


@pytest.mark.slow  # Hydra multirun with the joblib launcher: two shard jobs, then the merge command
def test_a_hydra_multirun_of_shards_then_merge(ckpts, tmp_path):
    _images(tmp_path / "in", [(60, 70), (90, 64), (70, 80)])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "segkit.predict", "-m", "hydra/launcher=local_parallel", "shard=0,1", "num_shards=2",
           f"ckpt_path={ckpts[0]}", f"input={tmp_path / 'in'}", f"output={out}", f"paths.log_dir={tmp_path / 'logs'}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=cli_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (out / "records").glob("*.json")) == ["img0.json", "img1.json", "img2.json"]
    merge = subprocess.run([sys.executable, "-m", "segkit.merge", str(out)], cwd=REPO, capture_output=True, text=True,
                           env=cli_env(), timeout=300)
    assert merge.returncode == 0 and "3 images merged" in merge.stdout, merge.stderr[-2000:]
    assert len(json.loads((out / "predict.json").read_text())["images"]) == 3


def test_predict_says_when_a_threshold_removes_a_class_the_argmax_predicted(ckpts, tmp_path, capsys):
    _images(tmp_path / "in", [(96, 128)])
    _predict(tmp_path, f"ckpt_path={ckpts[0]}", f"input={tmp_path / 'in'}", f"output={tmp_path / 'a'}", "save_probabilities=true",
             "postprocess={}")
    probs = np.load(tmp_path / "a" / "img0_probs.npy")
    mine = probs.argmax(0) == 1
    assert mine.any(), "the tiny model predicts rbc somewhere in the noise image"
    top = float(probs[1][mine].max())
    t = min(1.0, top + 1e-3)
    capsys.readouterr()
    _predict(tmp_path, f"ckpt_path={ckpts[0]}", f"input={tmp_path / 'in'}", f"output={tmp_path / 'b'}",
             f"postprocess={{thresholds: {{1: {t}}}}}")
    said = [ln for ln in capsys.readouterr().out.splitlines() if "removed every pixel" in ln]
    assert len(said) == 1 and "img0.png" in said[0] and "'rbc'" in said[0] and f"{top:.3f}" in said[0]
    assert not (np.asarray(Image.open(tmp_path / "b" / "img0_labels.png")) == 1).any()
    entry = json.loads((tmp_path / "b" / "records" / "img0.json").read_text())["entry"]
    assert entry["emptied_by_thresholds"] == [{"class": 1, "class_name": "rbc", "threshold": t, "argmax_pixels": int(mine.sum()),
                                               "max_probability": pytest.approx(top, abs=1e-6)}]
