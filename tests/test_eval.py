"""``segkit.eval``: numbers against a NumPy recount, both aggregations, report files, bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segkit.errors import SegkitError
from segkit.evaluation.evaluate import run_eval
from segkit.training.fit import train
from segkit.training.module import SegModule
from tests.conftest import REPO, TINY_DATA, TINY_MODELS, cli_env, compose_cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaltrain")
    cfg = compose_cfg(tmp, TINY_DATA + TINY_MODELS["unet"] + ["trainer.max_epochs=2", "data.synthetic.num_images=10"])
    metrics, objects = train(cfg)
    return Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt", objects["datamodule"], metrics, tmp


def _eval(tmp: Path, *overrides: str):
    cfg = compose_cfg(tmp, list(overrides), config_name="eval")
    return run_eval(cfg)


def _numpy_scores(module, images, masks):
    """Independent recount: per-image and pooled IoU/Dice from boolean masks."""
    k = module.num_classes
    inter, union, psum, tsum, per_image = np.zeros(k), np.zeros(k), np.zeros(k), np.zeros(k), []
    with torch.no_grad():
        for image, mask in zip(images, masks, strict=True):
            pred = module(torch.from_numpy(image).permute(2, 0, 1)[None]).argmax(1)[0].numpy()
            i_iou = []
            for c in range(k):
                p, t = pred == c, mask == c
                inter[c] += (p & t).sum()
                union[c] += (p | t).sum()
                psum[c] += p.sum()
                tsum[c] += t.sum()
                u = (p | t).sum()
                i_iou.append((p & t).sum() / u if u else np.nan)
            per_image.append(i_iou)
    pooled_iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    pooled_dice = np.where(psum + tsum > 0, 2 * inter / np.maximum(psum + tsum, 1), np.nan)
    return pooled_iou, pooled_dice, np.nanmean(np.array(per_image), 0)


def test_eval_matches_a_numpy_recount_in_both_aggregations_and_writes_the_report(trained):
    ckpt, dm, train_metrics, tmp = trained
    out = tmp / "eval1"
    result = _eval(tmp, f"ckpt_path={ckpt}", f"paths.output_dir={out}")
    module = SegModule.load_from_checkpoint(ckpt, weights_only=True, map_location="cpu").eval()
    images, masks, _ = dm.arrays("val")
    pooled_iou, pooled_dice, mean_iou = _numpy_scores(module, images, masks)
    names = module.class_names
    for c, name in enumerate(names):
        if not np.isnan(pooled_iou[c]):
            assert result["pooled"][f"iou/{name}"] == pytest.approx(pooled_iou[c], abs=1e-9)
            assert result["pooled"][f"dice/{name}"] == pytest.approx(pooled_dice[c], abs=1e-9)
            assert result["mean_over_images"][f"iou/{name}"] == pytest.approx(mean_iou[c], abs=1e-9)
    # same split as training: the pooled mIoU is what train's own re-validation of best.ckpt reported
    assert result["pooled"]["miou"] == pytest.approx(train_metrics["val/miou"], abs=1e-9)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["split"] == "val" and saved["num_images"] == len(images)
    assert saved["confusion_matrix"] == result["confusion"].tolist()
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert len(rows) == len(images) and {"image", "miou", f"iou/{names[1]}", f"recall/{names[2]}"} <= set(rows[0])
    report = (out / "eval_report.md").read_text()
    assert "pooled over the dataset" in report.lower() and "mean over images" in report.lower()
    for png in ["confusion_matrix.png", "per_class.png", "training_curves.png", *[f"worst/{p.name}" for p in (out / "worst").glob("*.png")]]:
        assert (out / png).stat().st_size > 5000, png
        assert f"]({png})" in report
        Image.open(out / png).verify()
    assert len(list((out / "worst").glob("*.png"))) == min(6, len(images))


def test_eval_on_a_folder_the_model_never_saw(trained, tmp_path):
    ckpt, dm, _, tmp = trained
    # a different folder in another format: images as TIFF, masks as NPY, every sample evaluated
    import tifffile

    root = tmp_path / "unseen"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    images, masks, stems = dm.arrays("train")
    for image, mask, stem in zip(images[:3], masks[:3], stems[:3], strict=True):
        tifffile.imwrite(root / "images" / f"u{stem}.tif", image)
        np.save(root / "masks" / f"u{stem}.npy", mask)
    result = _eval(tmp_path, f"ckpt_path={ckpt}", f"paths.output_dir={tmp_path / 'out'}", "data=folder", f"data.root={root}",
                   "data.class_names=[background,rbc,spirochaete]", "data.num_classes=3", "split=all", "data.object_classes=[]")
    assert len(result["per_image"]) == 3 and (tmp_path / "out" / "eval_report.md").is_file()


def test_eval_refuses_missing_and_foreign_checkpoints(tmp_path):
    with pytest.raises(SegkitError, match="does not exist"):
        _eval(tmp_path, f"ckpt_path={tmp_path / 'nope.ckpt'}", f"paths.output_dir={tmp_path / 'o'}")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(SegkitError, match="is not a segkit checkpoint"):
        _eval(tmp_path, f"ckpt_path={foreign}", f"paths.output_dir={tmp_path / 'o'}")


def test_eval_refuses_data_with_other_classes(trained, tmp_path):
    ckpt, dm, _, tmp = trained
    with pytest.raises(SegkitError, match="trained on"):
        _eval(tmp, f"ckpt_path={ckpt}", f"paths.output_dir={tmp_path / 'o'}", "data=folder", f"data.root={dm.root}",
              "data.class_names=[a,b,c]", "data.num_classes=3")


def test_eval_cli_bad_checkpoint_is_one_sentence(tmp_path):
    bad = tmp_path / "junk.ckpt"
    bad.write_bytes(b"not a checkpoint")
    proc = subprocess.run([sys.executable, "-m", "segkit.eval", f"ckpt_path={bad}", f"paths.log_dir={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True, env=cli_env(), timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("segkit: error:")]
    assert len(lines) == 1 and "junk.ckpt" in lines[0] and "not a segkit checkpoint" in lines[0]


def test_eval_says_when_a_threshold_removes_a_class_the_argmax_predicted(trained, tmp_path, capsys):
    ckpt, dm, _, tmp = trained
    module = SegModule.load_from_checkpoint(ckpt, weights_only=True, map_location="cpu").eval()
    images, _, stems = dm.arrays("val")
    tops = {}
    with torch.no_grad():
        for image, stem in zip(images, stems, strict=True):
            p = torch.softmax(module(torch.from_numpy(image).permute(2, 0, 1)[None]), 1)[0]
            mine = p.argmax(0) == 1
            if mine.any():
                tops[stem] = (float(p[1][mine].max()), int(mine.sum()))
    assert tops, "the tiny model predicts rbc somewhere"
    t = min(1.0, max(v for v, _ in tops.values()) + 1e-3)
    result = _eval(tmp, f"ckpt_path={ckpt}", f"paths.output_dir={tmp_path / 'o'}", f"postprocess={{thresholds: {{1: {t}}}}}")
    assert result["pooled"]["iou/rbc"] == 0.0
    said = [ln for ln in capsys.readouterr().out.splitlines() if "removed every pixel" in ln]
    assert len(said) == len(tops) and all("'rbc'" in ln for ln in said)
    report = (tmp_path / "o" / "eval_report.md").read_text()
    assert f"in {len(tops)} of the images" in report
    for stem, (top, n) in tops.items():
        assert f"`{stem}`: 'rbc' (threshold {t:g}, highest probability {top:.3f}, {n} argmax px)" in report


def test_eval_of_an_ensemble_with_postprocessing_matches_a_manual_recount(trained, tmp_path):
    from segkit.inference import postprocess

    ckpt, dm, _, tmp = trained
    post = {"thresholds": {1: 0.9}, "min_object_size": 4}
    result = _eval(tmp, f"ckpt_path=[{ckpt},{ckpt}]", f"paths.output_dir={tmp_path / 'o'}", "postprocess={thresholds: {1: 0.9}, min_object_size: 4}",
                   "tta.flips=true")
    module = SegModule.load_from_checkpoint(ckpt, weights_only=True, map_location="cpu").eval()
    images, masks, _ = dm.arrays("val")
    inter = union = 0
    with torch.no_grad():
        for image, mask in zip(images, masks, strict=True):
            x = torch.from_numpy(image).permute(2, 0, 1)[None]
            views = [torch.softmax(module(x), 1), torch.softmax(module(x.flip(-1)), 1).flip(-1), torch.softmax(module(x.flip(-2)), 1).flip(-2)]
            labels = postprocess(torch.stack(views).mean(0)[0].numpy(), post)
            inter += np.sum((labels == 1) & (mask == 1))
            union += np.sum((labels == 1) | (mask == 1))
    assert result["pooled"]["iou/rbc"] == pytest.approx(inter / union, abs=1e-4)
    report = (tmp_path / "o" / "eval_report.md").read_text()
    assert "2 checkpoint(s) averaged in probability space" in report and "'min_object_size': 4" in report
    from segkit.evaluation.postprocess_search import postprocess_file

    record = postprocess_file(ckpt)  # the training run tuned one (postprocess_tuning=auto): set it aside
    kept = record.read_bytes() if record.is_file() else None
    record.unlink(missing_ok=True)
    try:
        with pytest.raises(SegkitError, match="run segkit.tune_postprocess with the same ckpt_path first"):
            _eval(tmp, f"ckpt_path={ckpt}", f"paths.output_dir={tmp_path / 'p'}", "postprocess=tuned")
    finally:
        if kept is not None:
            record.write_bytes(kept)
