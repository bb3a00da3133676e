"""The figures of an evaluation report (matplotlib, headless), each written as a PNG and as an SVG beside it
(same stem): confusion matrix, per-class bars, training curves read back from the run's TensorBoard or CSV
logs, and worst-image overlays whose error panel shows false positives and false negatives in two colours
no class uses (:func:`segkit.inference.overlay.error_colors`), with a class and error legend."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from segkit.inference.overlay import (  # noqa: E402
    PALETTE,
    error_colors,
    error_legend,
    error_map,
    error_overlay,
    overlay,
)

_COLOUR_NAMES = {(255, 255, 255): "white", (255, 128, 0): "orange", (140, 70, 20): "brown", (120, 0, 255): "violet"}


def save_figure(fig: plt.Figure, path: Path, **kwargs) -> Path:
    """``fig`` as ``path`` (a PNG) and as an SVG beside it (same stem); closes the figure, returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, **kwargs)
    fig.savefig(path.with_suffix(".svg"), format="svg")
    plt.close(fig)
    return path


def colour_name(rgb: np.ndarray) -> str:
    """A word for one of the error colours (``#rrggbb`` for any other colour)."""
    key = tuple(int(v) for v in np.asarray(rgb).tolist())
    return _COLOUR_NAMES.get(key, "#{:02x}{:02x}{:02x}".format(*key))


def error_colour_names(num_classes: int) -> tuple[str, str]:
    """(false-positive colour, false-negative colour) as words, for the report text."""
    fp, fn = error_colors(num_classes)
    return colour_name(fp), colour_name(fn)


def error_shares(mask: np.ndarray, pred: np.ndarray, ignore_index: int = 255) -> tuple[float, float]:
    """(false positives, false negatives) in % of the labelled pixels (truth != ``ignore_index``), as in
    :func:`segkit.inference.overlay.error_map`; NaN when no pixel is labelled."""
    err = error_map(mask, pred, ignore_index)
    labelled = int(np.sum(np.asarray(mask) != ignore_index))
    if not labelled:
        return math.nan, math.nan
    return 100.0 * int(np.sum(err == 1)) / labelled, 100.0 * int(np.sum(err == 2)) / labelled


def confusion_figure(cm: np.ndarray, class_names: list[str], title: str = "") -> plt.Figure:
    """Row-normalised confusion-matrix heatmap (rows = truth) annotated with share and count."""
    cm = np.asarray(cm, dtype=np.float64)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.4 * n + 2.5, 1.2 * n + 1.8), dpi=100)
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=30, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{norm[i, j]:.2f}\n{int(cm[i, j])} px", ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class's pixels (0-1)")
    ax.set_title(title or "confusion matrix (row-normalised, pooled pixels)")
    fig.tight_layout()
    return fig


def confusion_png(cm: np.ndarray, class_names: Sequence[str], path: Path) -> Path:
    fig = confusion_figure(cm, list(class_names), "confusion matrix (pooled pixels; colour = share of the true class)")
    return save_figure(fig, path, dpi=110)


def class_bar_png(pooled: dict, mean: dict, class_names: Sequence[str], path: Path) -> Path:
    """Grouped bars per class: IoU, Dice, precision, recall (pooled), and IoU mean over images."""
    keys = [("iou", "IoU (pooled)", pooled), ("dice", "Dice (pooled)", pooled), ("precision", "precision (pooled)", pooled),
            ("recall", "recall = per-class accuracy (pooled)", pooled), ("iou", "IoU (mean over images)", mean)]
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * n + 3), 4.8), dpi=110)
    width = 0.8 / len(keys)
    for j, (key, label, src) in enumerate(keys):
        vals = [src.get(f"{key}/{c}", float("nan")) for c in class_names]
        xs = np.arange(n) + (j - (len(keys) - 1) / 2) * width
        bars = ax.bar(xs, [0 if math.isnan(v) else v for v in vals], width, label=label)
        for b, v in zip(bars, vals, strict=True):
            ax.text(b.get_x() + b.get_width() / 2, (0 if math.isnan(v) else v) + 0.01, "n/a" if math.isnan(v) else f"{v:.2f}",
                    ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(range(n), class_names)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("score (0-1, 1 = perfect)")
    ax.set_title("per-class scores")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def read_curves(run_dir: str | Path | None) -> dict[str, list[tuple[int, float]]]:
    """Scalars per tag as (step, value) from the run's TensorBoard events (or CSV logger metrics)."""
    if not run_dir:
        return {}
    run = Path(run_dir)
    events = sorted(run.glob("**/events.out.tfevents.*"))
    curves: dict[str, list[tuple[int, float]]] = {}
    if events:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        for ev in events:
            acc = EventAccumulator(str(ev), size_guidance={"scalars": 0, "images": 1})
            acc.Reload()
            for tag in acc.Tags().get("scalars", []):
                curves.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
        return curves
    for metrics_csv in sorted(run.glob("**/metrics.csv")):
        with metrics_csv.open() as fh:
            for row in csv.DictReader(fh):
                step = int(float(row.get("step") or 0))
                for tag, value in row.items():
                    if tag not in ("step", "epoch") and value not in (None, ""):
                        curves.setdefault(tag, []).append((step, float(value)))
    return curves


def curves_png(run_dir: str | Path | None, path: Path) -> Path | None:
    """Losses and validation mIoU against the training step; None when the run has no logs."""
    curves = read_curves(run_dir)
    panels = [("loss", ["train/loss", "val/loss"]), ("mIoU", ["train/miou", "val/miou"])]
    if not any(t in curves for _, tags in panels for t in tags):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=110)
    for ax, (title, tags) in zip(axes, panels, strict=True):
        for tag in tags:
            if tag in curves:
                pts = sorted(curves[tag])
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=2.5, label=tag)
        ax.set_xlabel("training step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if "val/miou" in curves:
        best = max(curves["val/miou"], key=lambda p: p[1])
        axes[1].annotate(f"best {best[1]:.3f}", best, textcoords="offset points", xytext=(-30, -15), fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def worst_overlay_png(image: np.ndarray, mask: np.ndarray, pred: np.ndarray, class_names: Sequence[str], path: Path, title: str,
                      max_width: int = 1600, ignore_index: int = 255) -> Path:
    """:func:`worst_overlay_figure` written as ``path`` (PNG) and an SVG beside it; returns ``path``."""
    return save_figure(worst_overlay_figure(image, mask, pred, class_names, title, max_width, ignore_index), path)


def worst_overlay_figure(image: np.ndarray, mask: np.ndarray, pred: np.ndarray, class_names: Sequence[str], title: str,
                         max_width: int = 1600, ignore_index: int = 255) -> plt.Figure:
    """input | truth | prediction overlay | error map, with a class legend and an error legend.

    The error panel (:func:`segkit.inference.overlay.error_overlay`) dims the input and paints false
    positives (truth background, predicted a class) and false negatives (a true class predicted otherwise)
    in the two colours of :func:`segkit.inference.overlay.error_colors`, which no class uses; ignored pixels
    grey. Its title gives both shares in % of the labelled pixels."""
    img = image[..., :3] if image.shape[-1] >= 3 else np.repeat(image[..., :1], 3, axis=-1)
    n = len(class_names)
    err = error_overlay(img, mask, pred, n, ignore_index)
    fp_share, fn_share = error_shares(mask, pred, ignore_index)
    panels = [img, overlay(img, np.where(mask == ignore_index, 0, mask)), overlay(img, pred), err]  # truth and prediction drawn alike
    titles = ["input", "truth", "prediction", f"errors: FP {fp_share:.1f} %, FN {fn_share:.1f} %\n(of labelled pixels)"]
    h, w = mask.shape
    fig_w = max(9.0, 4 * w * min(1.0, max_width / (4 * w)) / 100)
    panel_w = fig_w * 0.98 / 4.15  # four panels, small gaps
    top_in, bottom_in = 0.8, 0.85  # suptitle + two-line panel titles; two legend rows
    fig_h = panel_w * h / w + top_in + bottom_in
    fig, axes = plt.subplots(1, 4, figsize=(fig_w, fig_h), dpi=100)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=bottom_in / fig_h, top=1 - top_in / fig_h, wspace=0.05)
    for ax, p, t in zip(axes, panels, titles, strict=True):
        ax.imshow(p, interpolation="nearest")
        ax.set_title(t, fontsize=9)
        ax.axis("off")
    classes = [Patch(facecolor=PALETTE[i % len(PALETTE)] / 255.0, edgecolor="0.5", label=f"{i} {c}") for i, c in enumerate(class_names)]
    errors = [Patch(facecolor=rgb / 255.0, edgecolor="black", label=label) for label, rgb in error_legend(n)]
    if np.any(np.asarray(mask) == ignore_index):
        errors.append(Patch(facecolor=(0.5, 0.5, 0.5), edgecolor="black", label="not labelled (ignored)"))
    fig.legend(handles=classes, loc="lower center", bbox_to_anchor=(0.5, 0.3 / fig_h), ncol=len(classes), fontsize=8,
               frameon=False, title="classes (truth and prediction panels)", title_fontsize=8)
    fig.legend(handles=errors, loc="lower center", bbox_to_anchor=(0.5, 0.02 / fig_h), ncol=len(errors), fontsize=8,
               frameon=False)
    fig.suptitle(title, fontsize=10, y=1 - 0.08 / fig_h, va="top")
    return fig
