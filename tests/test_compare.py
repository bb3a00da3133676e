"""``segkit.compare``: the paired statistics against independent computations, and two tiny trained runs
compared end to end against a NumPy recount of their predictions."""

from __future__ import annotations

import csv
import json
import math
import shutil
from itertools import product
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats as sps

from segkit.compare import main
from segkit.errors import SegkitError
from segkit.evaluation.comparison import compare_runs
from segkit.evaluation.paired import paired_stats, verdict
from segkit.training.fit import train
from segkit.training.module import SegModule
from tests.conftest import TINY_DATA, TINY_MODELS, compose_cfg


# ---------------------------------------------------------------------------------------------- statistics
def exact_wilcoxon_p(d: list[float]) -> float:
    """Two-sided exact signed-rank p by enumerating all 2^n sign patterns (distinct |d|, no zeros)."""
    ranks = {v: i + 1 for i, v in enumerate(sorted(abs(x) for x in d))}
    w_plus = sum(ranks[abs(x)] for x in d if x > 0)
    sums = [sum(r for r, s in zip(ranks.values(), signs, strict=True) if s) for signs in product([0, 1], repeat=len(d))]
    upper = sum(s >= w_plus for s in sums) / len(sums)
    lower = sum(s <= w_plus for s in sums) / len(sums)
    return min(1.0, 2 * min(upper, lower))


def test_tiny_case_matches_a_hand_computed_exact_p():
    a = np.array([0.50, 0.60, 0.70, 0.80])
    b = a + np.array([0.01, 0.02, 0.03, -0.005])
    s = paired_stats(a, b, n_boot=2000, seed=0)
    # |d| ranks 2, 3, 4 positive and 1 negative: W+ = 9; of the 16 sign patterns {2,3,4} and {1,2,3,4} reach
    # W+ >= 9, so p = 2 * 2/16 = 0.25
    assert exact_wilcoxon_p([0.01, 0.02, 0.03, -0.005]) == pytest.approx(0.25)
    assert s["p_wilcoxon"] == pytest.approx(0.25, abs=1e-12)
    assert s["n"] == 4 and s["mean_diff"] == pytest.approx(0.01375) and s["mean_a"] == pytest.approx(0.65)
    assert s["wilcoxon_method"] == "exact null distribution" and verdict(s) == "no significant difference"
    # five improvements: the smallest possible two-sided p is 2 / 2^5 = 0.0625, never significant
    five = paired_stats(np.zeros(5), np.array([0.1, 0.2, 0.3, 0.4, 0.5]), 1000, 0)
    assert five["p_wilcoxon"] == pytest.approx(0.0625) and verdict(five) == "no significant difference"
    assert five["ci_low"] > 0  # yet every bootstrap mean is positive


def test_bootstrap_and_wilcoxon_match_independent_computations():
    rng = np.random.default_rng(123)
    a = rng.uniform(0.5, 0.9, 40)
    b = a + rng.normal(0.02, 0.03, 40)
    s = paired_stats(a, b, n_boot=5000, seed=7)
    d = b - a
    # NumPy re-implementation of the percentile bootstrap with the documented index draw
    idx = np.random.default_rng(7).integers(0, 40, size=(5000, 40))
    boot = np.sort(d[idx].mean(1))
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((np.percentile(boot, 2.5), np.percentile(boot, 97.5)), abs=1e-15)
    assert s["ci_low"] < d.mean() < s["ci_high"]
    # scipy on the raw pairs (x - y = b - a), default settings: exact for n <= 50 without ties or zeros
    assert s["p_wilcoxon"] == pytest.approx(sps.wilcoxon(b, a).pvalue, rel=1e-12)
    assert s["p_wilcoxon"] == pytest.approx(sps.wilcoxon(d, method="exact").pvalue, rel=1e-12)
    assert exact_wilcoxon_p(list(d[:12])) == pytest.approx(paired_stats(a[:12], b[:12], 10, 0)["p_wilcoxon"], rel=1e-9)
    assert s["mean_diff"] == pytest.approx(d.mean()) and s["median_diff"] == pytest.approx(np.median(d))
    # swapping A and B mirrors the interval and keeps p
    r = paired_stats(b, a, n_boot=5000, seed=7)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((-s["ci_high"], -s["ci_low"]), abs=1e-12)
    assert r["p_wilcoxon"] == pytest.approx(s["p_wilcoxon"])
    assert verdict(s) == ("B better" if s["p_wilcoxon"] < 0.05 else "no significant difference")
    assert verdict(r) == ("A better" if s["p_wilcoxon"] < 0.05 else "no significant difference")


def test_large_sample_ci_agrees_with_the_normal_theory_interval_and_covers_the_true_mean():
    rng = np.random.default_rng(5)
    true_diff, sd, n = 0.02, 0.05, 400
    a = rng.uniform(0.4, 0.9, n)
    b = a + rng.normal(true_diff, sd, n)
    s = paired_stats(a, b, n_boot=10000, seed=0)
    d = b - a
    half = 1.959964 * d.std(ddof=1) / math.sqrt(n)
    assert s["ci_low"] == pytest.approx(d.mean() - half, abs=0.15 * half)
    assert s["ci_high"] == pytest.approx(d.mean() + half, abs=0.15 * half)
    assert s["ci_low"] < true_diff < s["ci_high"]
    assert s["p_wilcoxon"] < 1e-6 and verdict(s) == "B better"


def test_zero_differences_are_dropped_and_ties_use_the_normal_approximation():
    d = np.array([0.0, 0.0, 0.1, 0.1, 0.2, -0.1, 0.3, 0.2, 0.0, 0.4])
    s = paired_stats(np.full(10, 0.5), 0.5 + d, 1000, 0)
    assert s["n_zero_diff"] == 3 and s["n"] == 10 and "normal approximation" in s["wilcoxon_method"]
    nonzero = d[d != 0]
    assert s["p_wilcoxon"] == pytest.approx(sps.wilcoxon(nonzero, method="approx").pvalue, rel=1e-9)
    assert s["p_wilcoxon"] == pytest.approx(sps.wilcoxon(d, zero_method="wilcox", method="approx").pvalue, rel=1e-6)
    same = paired_stats(np.ones(4), np.ones(4), 100, 0)
    assert same["p_wilcoxon"] == 1.0 and same["ci_low"] == same["ci_high"] == 0.0 and verdict(same) == "no significant difference"


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two tiny U-Nets on the same data and split (different seeds and learning rates)."""
    tmp = tmp_path_factory.mktemp("compare")
    dirs = []
    for name, extra in (("a", ["seed=1", "lr=0.002", "trainer.max_epochs=1"]), ("b", ["seed=2", "lr=0.02", "trainer.max_epochs=4"])):
        cfg = compose_cfg(tmp, TINY_DATA + TINY_MODELS["unet"] + ["data.synthetic.num_images=12",
                                                                  f"paths.output_dir={tmp / name}", *extra])
        _, objects = train(cfg)
        dirs.append(tmp / name)
    return dirs[0], dirs[1], objects["datamodule"], tmp


def numpy_per_image(ckpt: Path, images, masks) -> list[np.ndarray]:
    """Per-image IoU per class from the model's argmax (NaN where a class is in neither truth nor prediction)."""
    module = SegModule.load_from_checkpoint(ckpt, weights_only=True, map_location="cpu").eval()
    out = []
    with torch.no_grad():
        for image, mask in zip(images, masks, strict=True):
            pred = module(torch.from_numpy(image).permute(2, 0, 1)[None]).argmax(1)[0].numpy()
            ious = []
            for c in range(module.num_classes):
                p, t = pred == c, mask == c
                union = (p | t).sum()
                ious.append((p & t).sum() / union if union else np.nan)
            out.append(np.array(ious))
    return out


def test_compare_two_trained_runs_matches_a_numpy_recount(two_runs, tmp_path, capsys):
    run_a, run_b, dm, _ = two_runs
    images, masks, stems = dm.arrays("val")
    assert json.loads((run_a / "splits.json").read_text())["val"] == json.loads((run_b / "splits.json").read_text())["val"] == stems
    out = tmp_path / "cmp"
    assert main([str(run_a), str(run_b), "--out", str(out), "--n-boot", "2000", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    iou_a = numpy_per_image(run_a / "checkpoints" / "best.ckpt", images, masks)
    iou_b = numpy_per_image(run_b / "checkpoints" / "best.ckpt", images, masks)
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert [r["image"] for r in rows] == stems and list(rows[0]) == ["image", "A", "B", "B-A"]
    for row, ia, ib in zip(rows, iou_a, iou_b, strict=True):
        assert float(row["A"]) == pytest.approx(np.nanmean(ia), abs=1e-12)  # mean over classes in truth or prediction
        assert float(row["B"]) == pytest.approx(np.nanmean(ib), abs=1e-12)
        assert float(row["B-A"]) == pytest.approx(np.nanmean(ib) - np.nanmean(ia), abs=1e-12)
    a = np.array([np.nanmean(x) for x in iou_a])
    b = np.array([np.nanmean(x) for x in iou_b])
    expected = paired_stats(a, b, 2000, 3)
    md = (out / "compare.md").read_text()
    assert md in printed
    assert f"| n images (paired) | {len(stems)} |" in md and f"| mean A | {a.mean():.4f} |" in md and f"| mean B | {b.mean():.4f} |" in md
    assert f"[{expected['ci_low']:+.4f}, {expected['ci_high']:+.4f}]" in md and f"{expected['p_wilcoxon']:.4g}" in md
    assert "no power" in md  # 3 val images
    assert "**no significant difference at 0.05**" in md

    # per class: images where the class is in neither truth nor a run's prediction are excluded and counted
    cls = "spirochaete"
    result = compare_runs(run_a, run_b, metric=f"iou/{cls}", n_boot=500, out=tmp_path / "cls")
    c = dm.class_names.index(cls)
    both = [s for s, ia, ib in zip(stems, iou_a, iou_b, strict=True) if np.isnan(ia[c]) and np.isnan(ib[c])]
    one = [s for s, ia, ib in zip(stems, iou_a, iou_b, strict=True) if np.isnan(ia[c]) != np.isnan(ib[c])]
    kept = [(ia[c], ib[c]) for ia, ib in zip(iou_a, iou_b, strict=True) if not (np.isnan(ia[c]) or np.isnan(ib[c]))]
    assert result["undefined_both"] == both and result["undefined_one"] == one
    assert [v for p in result["pairs"] for v in p[1:]] == pytest.approx([v for k in kept for v in k], abs=1e-12)
    assert f"{len(both)} images undefined for both runs and {len(one)} for one run only are excluded" in result["markdown"]


def test_compare_refuses_runs_on_different_images(two_runs, tmp_path):
    run_a, run_b, _, _ = two_runs
    other = tmp_path / "other_run"
    (other / "checkpoints").mkdir(parents=True)
    shutil.copy(run_b / "checkpoints" / "best.ckpt", other / "checkpoints" / "best.ckpt")
    splits = json.loads((run_b / "splits.json").read_text())
    splits["train"], splits["val"] = splits["train"][1:] + splits["val"][:1], splits["val"][1:] + splits["train"][:1]
    (other / "splits.json").write_text(json.dumps(splits))
    with pytest.raises(SegkitError, match="which differ") as err:
        compare_runs(run_a, other, out=tmp_path / "x")
    assert str(run_a) in str(err.value) and str(other) in str(err.value)
    with pytest.raises(SegkitError, match="not a per-image score"):
        compare_runs(run_a, run_b, metric="iou/nope", out=tmp_path / "y")
    with pytest.raises(SegkitError, match="does not exist"):
        compare_runs(run_a, tmp_path / "missing", out=tmp_path / "z")
