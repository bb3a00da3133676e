"""Callbacks that put pictures in TensorBoard: the confusion matrix and a fixed validation panel
(input | truth | prediction | errors) each validation, to every logger of the run."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: figures are rendered to TensorBoard, never shown

import numpy as np  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402

from segkit.evaluation.figures import confusion_figure  # noqa: E402
from segkit.inference.overlay import overlay  # noqa: E402
from segkit.training.tracking import figure_to_loggers  # noqa: E402


def _rgb(image: torch.Tensor) -> np.ndarray:
    img = image.permute(1, 2, 0).numpy()
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return np.ascontiguousarray(img[..., :3])


def panel_figure(samples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], class_names: list[str], epoch: int,
                 ignore_index: int = 255, max_width: int = 960):
    """The validation panel as a figure: one row per image, columns input | truth | prediction | errors, truth
    and prediction drawn the same way (class colours over the input), false positives and false negatives in
    two colours no class uses, a legend with the data's class names. Images keep their own size: where a
    row's image is narrower than the widest, the rest of its cell is left empty (grey), never filled
    with black that would read as background."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from segkit.inference.overlay import PALETTE, error_legend, error_map, error_overlay

    n = len(class_names)
    widest = max(s[1].shape[-1] for s in samples)
    heights = [s[1].shape[-2] for s in samples]
    cell_w = min(3.0, max_width / 100 / 4)
    scale = cell_w / widest
    fig_h = sum(heights) * scale + 0.45 * len(samples) + 0.9
    top, bottom = 0.55, 0.45  # inches: suptitle and column titles; legend
    fig, axes = plt.subplots(len(samples), 4, figsize=(4 * cell_w + 0.3, fig_h), dpi=100, squeeze=False,
                             gridspec_kw={"height_ratios": heights, "hspace": 0.35 * len(samples) / max(1, sum(heights) * scale),
                                          "wspace": 0.04, "left": 0.01, "right": 0.99, "top": 1 - top / fig_h,
                                          "bottom": bottom / fig_h})
    fig.patch.set_facecolor("0.82")  # padding is this grey: neither background-black nor false-positive white
    titles = ("input", "truth", "prediction", "errors")
    for r, (image, mask, pred) in enumerate(samples):
        img, m, p = _rgb(image), mask.numpy(), pred.numpy()
        err = error_map(m, p, ignore_index)
        labelled = max(1, int((m != ignore_index).sum()))
        cells = (img, overlay(img, np.where(m == ignore_index, 0, m)), overlay(img, p), error_overlay(img, m, p, n, ignore_index))
        for c, cell in enumerate(cells):
            ax = axes[r, c]
            ax.imshow(cell, interpolation="nearest", extent=(0, cell.shape[1], cell.shape[0], 0))
            ax.set_xlim(0, widest)  # a narrower image leaves its cell's right part empty (grey), not black
            ax.set_ylim(cell.shape[0], 0)
            ax.set_axis_off()
            name = titles[c] if r == 0 else ""
            if c == 3:
                name = (name + "\n" if name else "") + (f"FP {100 * (err == 1).sum() / labelled:.1f} %, "
                                                         f"FN {100 * (err == 2).sum() / labelled:.1f} %")
            ax.set_title(name, fontsize=8)
    handles = [Patch(color=PALETTE[i % len(PALETTE)] / 255.0, label=name) for i, name in enumerate(class_names) if i > 0]
    handles += [Patch(facecolor=color / 255.0, edgecolor="0.5", label=label) for label, color in error_legend(n)]
    fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=7, frameon=False)
    fig.suptitle(f"validation, epoch {epoch} ({class_names[0]}: no colour; % of labelled pixels)", fontsize=9)
    return fig


def _fitting(trainer: pl.Trainer) -> bool:
    return trainer.state.fn == "fit" and not trainer.sanity_checking and trainer.is_global_zero


class ConfusionMatrixFigure(pl.Callback):
    """Adds ``val/confusion_matrix`` (row-normalised heatmap with counts) to every logger each validation.

    Drawn in ``on_validation_end``: Lightning runs callbacks' ``on_validation_epoch_end`` before the module's,
    where this epoch's matrix is computed."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        cm = getattr(pl_module, "last_confusion", {}).get("val")
        if cm is None or not _fitting(trainer):
            return
        epoch = trainer.current_epoch + 1
        fig = confusion_figure(cm.numpy(), pl_module.class_names, f"validation, epoch {epoch}")
        figure_to_loggers(trainer, "val/confusion_matrix", fig, epoch)


class ValidationPanel(pl.Callback):
    """Adds ``val/panel`` to every logger each validation: the same first validation images every time,
    input | truth | prediction | errors (:func:`panel_figure`), at most ``max_width`` pixels wide."""

    def __init__(self, max_width: int = 960) -> None:
        self.max_width = max_width

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        panel = getattr(pl_module, "val_panel", {})
        if not panel or not _fitting(trainer):
            return
        epoch = trainer.current_epoch + 1
        samples = [panel[i] for i in sorted(panel)]
        fig = panel_figure(samples, pl_module.class_names, epoch, getattr(pl_module, "ignore_index", 255), self.max_width)
        figure_to_loggers(trainer, "val/panel", fig, epoch)


class StopOnNonFiniteLoss(pl.Callback):
    """Stops a run whose training loss became NaN or Inf, with one sentence, instead of training on
    garbage. Checked every ``check_every_n_steps`` steps (each check waits for the device: 10 keeps
    that cost negligible on a GPU) and always on an epoch's last batch; all processes agree under DDP."""

    def __init__(self, check_every_n_steps: int = 10) -> None:
        self.check_every_n_steps = max(1, int(check_every_n_steps))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        last = trainer.num_training_batches != float("inf") and batch_idx + 1 >= trainer.num_training_batches
        if batch_idx % self.check_every_n_steps and not last:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        bad = loss is not None and not bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            from segkit.errors import SegkitError

            lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
            raise SegkitError(
                f"the training loss became {float(loss) if loss is not None else 'non-finite'} at epoch {trainer.current_epoch + 1}, "
                f"step {trainer.global_step} (lr {lr:.3g}); stopped this run instead of training on garbage. Expected a finite loss: "
                "try a lower lr, trainer.gradient_clip_val=1.0, or check the data with python -m segkit.data check"
            )


class EMA(pl.callbacks.WeightAveraging):
    """Exponential moving average of the weights (``ema_decay=0.999``): after every optimizer step from
    ``start_step`` on, ``average = decay x average + (1 - decay) x weights`` (parameters and BatchNorm
    statistics). Validation, ``best.ckpt`` / ``last.ckpt`` (``state_dict``) and the weights at the end of
    training are the average; the checkpoint also keeps the raw weights, so a resume continues both.
    Lightning's ``WeightAveraging`` with torch's EMA update."""

    def __init__(self, decay: float = 0.999, start_step: int = 0) -> None:
        from torch.optim.swa_utils import get_ema_multi_avg_fn

        super().__init__(multi_avg_fn=get_ema_multi_avg_fn(float(decay)), use_buffers=True)
        self.decay, self.start_step = float(decay), int(start_step)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx >= self.start_step
