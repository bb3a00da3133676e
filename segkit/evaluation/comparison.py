"""Paired comparison of two runs on the same images: ``python -m segkit.compare <runA> <runB> [--split auto|val|test]
[--metric miou|iou/<class>|dice/<class>|pixel_acc] [--n-boot 10000] [--seed 0] [--out DIR]``.

Each run's best checkpoint (``metrics.json``'s ``checkpoint``, else ``checkpoints/best.ckpt``) labels the images of
the split named in the run's ``splits.json`` (``auto``: test when the runs have one, else val); both runs must
list the same images. Prediction and scoring are ``segkit.eval``'s (``evaluate``, ``label_function``: one forward
pass or sliding window, argmax, no TTA or post-processing), one confusion matrix per image.

Per-image metric: ``miou`` (default) is the mean IoU over the classes present in the image's truth or
prediction; ``iou/<class>`` / ``dice/<class>`` are undefined on an image where the class is absent from both the
truth and the run's prediction, and an image counts only where the score is defined for both runs.

Statistics on the paired differences d = B - A: the mean, a percentile bootstrap 95 % CI of the mean
(images resampled with replacement, seeded) and the two-sided Wilcoxon signed-rank test (zero differences
dropped; exact null distribution for up to 50 non-zero differences without ties, else the normal approximation).
Writes ``compare.csv`` (image, A, B, B-A) and ``compare.md``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from segkit import rundir
from segkit.errors import SegkitError
from segkit.evaluation.paired import ALPHA, paired_stats, verdict


# ---------------------------------------------------------------------------------------------- runs
def run_paths(path: str | Path) -> tuple[Path, Path]:
    """(run dir, checkpoint) for a run dir or a checkpoint inside one."""
    path = Path(path)
    if path.is_file() and path.suffix == ".ckpt":
        run = rundir.run_of_checkpoint(path)
        if run is None:
            raise SegkitError(f"checkpoint '{path}' is not inside a run directory (<run>/{rundir.CHECKPOINTS}/); expected a run of "
                              "segkit.train, whose splits.json names the images to compare on")
        return run.path, path
    if not path.is_dir():
        raise SegkitError(f"'{path}' does not exist; expected a run directory of segkit.train (or a .ckpt inside one)")
    return path, rundir.RunDir(path).best_checkpoint()


def read_split(run: Path, split: str) -> tuple[str, list[str]]:
    path = rundir.RunDir(run).splits
    if not path.is_file():
        raise SegkitError(f"'{path}' does not exist; expected the splits.json segkit.train writes, to evaluate both runs on the same images")
    splits = rundir.read_json(path)
    name = ("test" if splits.get("test") else "val") if split == "auto" else split
    if not splits.get(name):
        raise SegkitError(f"the {name} split in '{path}' is empty; expected --split val or a run with a {name} split")
    return name, list(splits[name])


def same_images(run_a: Path, run_b: Path, split: str) -> tuple[str, list[str]]:
    """The split both runs list (same name, same images), or an error naming both runs."""
    name_a, stems_a = read_split(run_a, split)
    name_b, stems_b = read_split(run_b, split)
    if name_a != name_b or sorted(stems_a) != sorted(stems_b):
        only_a, only_b = sorted(set(stems_a) - set(stems_b)), sorted(set(stems_b) - set(stems_a))
        raise SegkitError(
            f"run A '{run_a}' evaluates on its {name_a} split ({len(stems_a)} images) and run B '{run_b}' on its {name_b} split "
            f"({len(stems_b)} images), which differ ({len(only_a)} only in A, e.g. {only_a[:3]}; {len(only_b)} only in B, e.g. {only_b[:3]}); "
            "expected the same images (train B with data.split_file=<A's splits.json>, or choose another --split)"
        )
    return name_a, sorted(stems_a)


def evaluate_run(run: Path, ckpt: Path, split: str, device: str = "cpu") -> dict[str, Any]:
    """``segkit.evaluation.evaluate.evaluate`` of the run's checkpoint on ``split`` of the run's own data and splits.json."""
    from omegaconf import OmegaConf

    from segkit.evaluation.evaluate import eval_data, evaluate, select_split
    from segkit.inference.load import load_network, resolve_device
    from segkit.inference.predictor import label_function

    module = load_network(ckpt, resolve_device(device))
    dm, _ = eval_data(OmegaConf.create({"data": None}), ckpt)
    dm.prepare()
    if list(dm.class_names) != list(module.class_names):
        raise SegkitError(f"run '{run}': data classes {dm.class_names} differ from checkpoint '{ckpt}' classes {module.class_names}")
    images, masks, stems, split = select_split(dm, split)
    result = evaluate(label_function([module], {}, {}, None), list(module.class_names), images, masks, stems, dm.ignore_index)
    return {**result, "stems": stems, "masks": masks, "class_names": list(module.class_names), "checkpoint": ckpt,
            "data_root": str(dm.root), "split": split}


def metric_key(metric: str, class_names: list[str]) -> str:
    key = metric.removeprefix("val/").removeprefix("test/")
    allowed = ["miou", "mdice", "pixel_acc", *[f"{k}/{c}" for k in ("iou", "dice", "precision", "recall") for c in class_names]]
    if key not in allowed:
        raise SegkitError(f"--metric '{metric}' is not a per-image score of these runs; expected one of {allowed}")
    return key


# ---------------------------------------------------------------------------------------------- report
def compare_runs(run_a: str | Path, run_b: str | Path, split: str = "auto", metric: str = "miou", n_boot: int = 10000,
                 seed: int = 0, out: str | Path | None = None, device: str = "cpu") -> dict[str, Any]:
    """Evaluate both runs on the same images, write compare.csv and compare.md into ``out``; return everything."""
    if split not in ("auto", "val", "test"):
        raise SegkitError(f"--split is '{split}'; expected auto, val or test")
    dir_a, ckpt_a = run_paths(run_a)
    dir_b, ckpt_b = run_paths(run_b)
    split, stems = same_images(dir_a, dir_b, split)
    res_a = evaluate_run(dir_a, ckpt_a, split, device)
    res_b = evaluate_run(dir_b, ckpt_b, split, device)
    if res_a["class_names"] != res_b["class_names"]:
        raise SegkitError(f"run A '{dir_a}' predicts {res_a['class_names']} but run B '{dir_b}' predicts {res_b['class_names']}; expected the same classes")
    key = metric_key(metric, res_a["class_names"])
    rows_a = {r["image"]: r for r in res_a["per_image"]}
    rows_b = {r["image"]: r for r in res_b["per_image"]}
    masks_b = dict(zip(res_b["stems"], res_b["masks"], strict=True))
    for stem, mask in zip(res_a["stems"], res_a["masks"], strict=True):
        if not np.array_equal(mask, masks_b[stem]):
            raise SegkitError(f"image '{stem}' has different masks in run A's data ({res_a['data_root']}) and run B's ({res_b['data_root']}); "
                              "expected the same ground truth")
    pairs, undefined_both, undefined_one = [], [], []
    for stem in stems:
        va, vb = rows_a[stem][key], rows_b[stem][key]
        if math.isnan(va) and math.isnan(vb):
            undefined_both.append(stem)
        elif math.isnan(va) or math.isnan(vb):
            undefined_one.append(stem)
        else:
            pairs.append((stem, va, vb))
    if not pairs:
        raise SegkitError(f"'{key}' is undefined on every {split} image for at least one run (the class is absent from truth and prediction); "
                          "expected a metric defined on some images")
    a = np.array([p[1] for p in pairs])
    b = np.array([p[2] for p in pairs])
    stats = paired_stats(a, b, n_boot, seed)
    outcome = verdict(stats)

    out = Path(out) if out is not None else Path("outputs") / "compare" / f"{dir_a.resolve().name}__vs__{dir_b.resolve().name}"
    out.mkdir(parents=True, exist_ok=True)
    with (out / "compare.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "A", "B", "B-A"])
        writer.writerows([stem, repr(va), repr(vb), repr(vb - va)] for stem, va, vb in pairs)

    if key == "miou":
        policy = ("per-image mIoU: the mean IoU over the classes present in the image's truth or prediction "
                  "(each image its own confusion matrix; classes absent from both are left out)")
    elif key.startswith(("iou/", "dice/", "precision/", "recall/")):
        policy = (f"per-image `{key}`; undefined where the class is absent from both the truth and the run's prediction: "
                  f"{len(undefined_both)} images undefined for both runs and {len(undefined_one)} for one run only are excluded")
    else:
        policy = f"per-image `{key}` from the image's confusion matrix"
    power = (f" With n = {stats['n']} < 6 paired images the two-sided test cannot reach p < 0.05 (its smallest possible p is "
             f"{2 / 2 ** stats['n']:.3g}): it has no power here, and a bootstrap over so few images is itself rough."
             if stats["n"] < 6 else "")
    ci_excludes_zero = stats["ci_low"] > 0 or stats["ci_high"] < 0
    caution = ""
    if stats["n"] >= 6 and (stats["p_wilcoxon"] < ALPHA) != ci_excludes_zero:
        caution = (" The bootstrap CI and the Wilcoxon test disagree (one tests the mean, the other the symmetric location of the "
                   "differences); read the difference as borderline.")
    lines = [
        f"# Compare `{key}`: A = `{dir_a}` vs B = `{dir_b}`",
        "",
        f"- A checkpoint: `{res_a['checkpoint']}`",
        f"- B checkpoint: `{res_b['checkpoint']}`",
        f"- Images: the **{split}** split both runs' splits.json list ({len(stems)} images; data A `{res_a['data_root']}`, "
        f"B `{res_b['data_root']}`); prediction: argmax of `segkit.eval`'s forward pass, no TTA or post-processing.",
        f"- Metric: {policy}.",
        "",
        "| | value |",
        "|---|---|",
        f"| n images (paired) | {stats['n']} |",
        f"| mean A | {stats['mean_a']:.4f} |",
        f"| mean B | {stats['mean_b']:.4f} |",
        f"| mean difference B − A | {stats['mean_diff']:+.4f} |",
        f"| 95 % bootstrap CI of the mean difference | [{stats['ci_low']:+.4f}, {stats['ci_high']:+.4f}] |",
        f"| Wilcoxon signed-rank p (two-sided) | {stats['p_wilcoxon']:.4g} |",
        "",
        f"Bootstrap: {n_boot} resamples of the {stats['n']} images with replacement (seed {seed}), percentile interval. "
        f"Wilcoxon: {stats['n_zero_diff']} zero differences dropped (Wilcoxon's method), {stats['wilcoxon_method']}.{power}{caution}",
        "",
        f"**{outcome} at {ALPHA}** (Wilcoxon p {'<' if stats['p_wilcoxon'] < ALPHA else '>='} {ALPHA}; B − A = {stats['mean_diff']:+.4f}).",
        "",
        "Per-image values: `compare.csv`.",
        "",
    ]
    text = "\n".join(lines)
    (out / "compare.md").write_text(text)
    return {"stats": stats, "verdict": outcome, "pairs": pairs, "undefined_both": undefined_both, "undefined_one": undefined_one,
            "split": split, "metric": key, "out": out, "markdown": text, "a": res_a, "b": res_b}
