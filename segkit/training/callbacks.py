"""Callbacks that put pictures in TensorBoard: the confusion matrix and a fixed validation panel
(input | ground truth | prediction overlay) each epoch."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: figures are rendered to TensorBoard, never shown

import numpy as np  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from pytorch_lightning.loggers import TensorBoardLogger  # noqa: E402

from segkit.evaluation.figures import confusion_figure  # noqa: E402
from segkit.inference.overlay import colorize, overlay  # noqa: E402


def panel_row(image: torch.Tensor, mask: torch.Tensor, pred: torch.Tensor) -> np.ndarray:
    """``[H, 3W, 3]`` uint8: input | ground truth | prediction over the input."""
    img = image.permute(1, 2, 0).numpy()
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    img = img[..., :3]
    return np.concatenate([img, colorize(mask.numpy()), overlay(img, pred.numpy())], axis=1)


def _tensorboard(trainer: pl.Trainer):
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def _fitting(trainer: pl.Trainer) -> bool:
    return trainer.state.fn == "fit" and not trainer.sanity_checking and trainer.is_global_zero


class ConfusionMatrixFigure(pl.Callback):
    """Adds ``val/confusion_matrix`` (row-normalised heatmap with counts) to TensorBoard each epoch."""

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writer = _tensorboard(trainer)
        cm = getattr(pl_module, "last_confusion", {}).get("val")
        if writer is None or cm is None or not _fitting(trainer):
            return
        fig = confusion_figure(cm.numpy(), pl_module.class_names, f"validation, epoch {trainer.current_epoch}")
        writer.add_figure("val/confusion_matrix", fig, global_step=trainer.global_step, close=True)


class ValidationPanel(pl.Callback):
    """Adds ``val/panel`` to TensorBoard each epoch: the same first validation images every time, one
    row each, input | ground truth | prediction overlay, scaled to at most ``max_width`` pixels."""

    def __init__(self, max_width: int = 960) -> None:
        self.max_width = max_width

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writer = _tensorboard(trainer)
        panel = getattr(pl_module, "val_panel", {})
        if writer is None or not panel or not _fitting(trainer):
            return
        rows = []
        for idx in sorted(panel):
            row = torch.from_numpy(panel_row(*panel[idx])).permute(2, 0, 1).float()
            scale = min(1.0, self.max_width / row.shape[-1])
            if scale < 1.0:
                row = F.interpolate(row[None], scale_factor=scale, mode="bilinear", antialias=True)[0]
            rows.append(row.clamp(0, 255).byte())
        width = max(r.shape[-1] for r in rows)
        rows = [F.pad(r, (0, width - r.shape[-1], 0, 4)) for r in rows]
        writer.add_image("val/panel", torch.cat(rows, dim=1), global_step=trainer.global_step, dataformats="CHW")


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
