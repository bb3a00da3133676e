"""The run folder tells the story without a server: ``train.log`` and ``progress.png``, written as the run goes.

:class:`RunLog` (in ``conf/callbacks/default.yaml``):

- one line per epoch (``epoch 3/30  train loss 0.412  val loss 0.388  val mIoU 0.612 (best 0.612, epoch 3)
  lr 1.9e-03  41 s``) and the per-class table of each validation (class, IoU, Dice, precision, recall,
  share of true and of predicted pixels) into ``train.log``; on the console too when no progress bar is
  drawing (``trainer.enable_progress_bar=false``, SLURM, nohup);
- ``progress.png``, rewritten after every validation (at most every ``min_interval_s``, 10 s; and at the end): train and validation loss on one axis, per-class
  IoU with the best epoch marked, learning rate, seconds per epoch (nnU-Net's ``progress.png``);
- a warning (console, log and TensorBoard's Text tab) when a class present in the validation truth has
  been predicted nowhere for ``warn_after`` validations in a row;
- at the start: the resolved config in the Text tab and the Custom Scalars layout.

Its history is kept in the checkpoint, so a resumed run continues the same log and figure. Epochs are
numbered from 1 everywhere (console, logs, TensorBoard, figures): :class:`RichProgressBar` and
:class:`TQDMProgressBar` are Lightning's bars counting the same way.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.callbacks import RichProgressBar as _Rich
from pytorch_lightning.callbacks import TQDMProgressBar as _TQDM

from segkit import rundir
from segkit.evaluation.metrics import scores
from segkit.logs import say, warn
from segkit.training.tracking import text_to_loggers


def _without_version(metrics: dict[str, Any]) -> dict[str, Any]:
    metrics.pop("v_num", None)  # the TensorBoard run's name: long, and already in the run folder's path
    return metrics


class RichProgressBar(_Rich):
    """Lightning's rich bar, epochs counted from 1 (``Epoch 1/30``) as everywhere else in segkit."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        return _without_version(super().get_metrics(trainer, pl_module))

    def _get_train_description(self, current_epoch: int) -> str:
        text = f"Epoch {current_epoch + 1}"
        if self.trainer.max_epochs is not None and self.trainer.max_epochs > 0:
            text += f"/{self.trainer.max_epochs}"
        if len(self.validation_description) > len(text):
            text = f"{text:{len(self.validation_description)}}"
        return text


class TQDMProgressBar(_TQDM):
    """Lightning's tqdm bar, epochs counted from 1."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        return _without_version(super().get_metrics(trainer, pl_module))

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}{total}")


def class_table(cm: np.ndarray, class_names: list[str]) -> str:
    """The per-class table of one validation (MMSegmentation's layout), from its pooled confusion matrix."""
    s = {k: v.tolist() for k, v in scores(torch.as_tensor(cm)).items() if k in ("iou", "dice", "precision", "recall")}
    total = max(1, int(cm.sum()))
    true_share, pred_share = cm.sum(1) / total * 100, cm.sum(0) / total * 100
    head = ["class", "IoU", "Dice", "precision", "recall", "true px %", "pred px %"]
    rows = [[name, *(_f(s[k][i]) for k in ("iou", "dice", "precision", "recall")), f"{true_share[i]:.2f}", f"{pred_share[i]:.2f}"]
            for i, name in enumerate(class_names)]
    widths = [max(len(str(r[j])) for r in [head, *rows]) for j in range(len(head))]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(r: list) -> str:
        return "| " + " | ".join(str(c).ljust(w) if j == 0 else str(c).rjust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True))) + " |"

    return "\n".join([rule, line(head), rule, *(line(r) for r in rows), rule])


def _f(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _console(trainer: pl.Trainer) -> bool:
    """Tables and epoch lines go to the console too when no progress bar is drawing them over."""
    return trainer.progress_bar_callback is None or not sys.stdout.isatty()


class RunLog(pl.Callback):
    """``train.log`` lines, ``progress.png`` and the predicted-nowhere warning (module docstring)."""

    def __init__(self, output_dir: str | None = None, warn_after: int = 3, figure: bool = True,
                 min_interval_s: float = 10.0) -> None:
        self.output_dir = Path(output_dir) if output_dir else None
        #: progress.png is redrawn after a validation at most this often (drawing it takes about 0.5 s)
        self.min_interval_s = float(min_interval_s)
        self._drawn = -float("inf")
        self._drawn_epoch: int | None = None
        self.warn_after = max(1, int(warn_after))
        self.figure = figure
        self.history: list[dict[str, Any]] = []
        self._epoch_started = 0.0
        self._val: dict[str, Any] | None = None
        self._nowhere: dict[str, int] = {}

    # ------------------------------------------------------------------ state (kept in checkpoints)
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "nowhere": self._nowhere}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self._nowhere = dict(state_dict.get("nowhere", {}))

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        from segkit.training.loggers import TensorBoardLogger

        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.write_layout(pl_module.class_names)
        plan = rundir.RunDir(self.output_dir).plan if self.output_dir else None
        if plan is not None and plan.is_file():
            text_to_loggers(trainer, "plan", "What segkit chose (`plan.yaml`):\n\n```yaml\n" + plan.read_text() + "\n```")
        config = rundir.RunDir(self.output_dir).run_config if self.output_dir else None
        if config is not None and config.is_file():
            text_to_loggers(trainer, "config", "Resolved config (`run_config.yaml`):\n\n```yaml\n" + config.read_text() + "\n```")
        net = pl_module.net
        n_params = sum(p.numel() for p in net.parameters())
        say(f"network {type(net).__name__}: {n_params / 1e6:.2f} M parameters; {len(pl_module.class_names)} classes "
            f"({', '.join(pl_module.class_names)}); best checkpoint by {self._monitor(trainer)[0]}")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_started = time.perf_counter()
        self._val = None
        self._lr = float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else float("nan")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        cm = getattr(pl_module, "last_confusion", {}).get("val")
        if cm is None:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/") and v.numel() == 1}
        self._val = {"cm": cm.numpy().astype(np.int64), "metrics": metrics}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # runs before SegModule.on_train_epoch_end resets the epoch's loss; every process takes part in the
        # loss's reduction, only the first one writes
        loss_metric = pl_module.losses["train_loss"] if hasattr(pl_module, "losses") else None
        train_loss = float(loss_metric.compute()) if loss_metric is not None and loss_metric.update_count else float("nan")
        if not trainer.is_global_zero:
            return
        epoch = trainer.current_epoch + 1
        lr = getattr(self, "_lr", float("nan"))  # the rate this epoch trained with (epoch schedulers step before this hook)
        row: dict[str, Any] = {"epoch": epoch, "step": int(trainer.global_step), "train_loss": train_loss, "lr": lr,
                               "seconds": round(time.perf_counter() - self._epoch_started, 2)}
        monitor, mode = self._monitor(trainer)
        if self._val is not None:
            cm, metrics = self._val["cm"], self._val["metrics"]
            s = scores(torch.as_tensor(cm))
            row.update(val_loss=metrics.get("val/loss", float("nan")), val_miou=float(s["miou"]), key=metrics.get(monitor),
                       iou={c: float(v) for c, v in zip(pl_module.class_names, s["iou"].tolist(), strict=True)})
        self.history.append(row)
        best = self._best(mode)
        console = _console(trainer)
        max_epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        text = f"epoch {epoch}{max_epochs}  train loss {train_loss:.4f}"
        if self._val is not None:
            text += f"  val loss {row['val_loss']:.4f}  val mIoU {row['val_miou']:.4f}"
            if best is not None:
                text += f"  (best {monitor} {best['key']:.4f}, epoch {best['epoch']})"
        text += f"  lr {lr:.2e}  {row['seconds']:.0f} s"
        say(text, console=console)
        if self._val is not None:
            say(f"validation, epoch {epoch}, pooled over the split:\n{class_table(self._val['cm'], pl_module.class_names)}", console=console)
            self._check_nowhere(trainer, pl_module.class_names, self._val["cm"], epoch)
            now = time.perf_counter()
            if self.figure and self.output_dir is not None and now - self._drawn >= self.min_interval_s:
                self._drawn = now
                progress_figure(self.history, pl_module.class_names, rundir.RunDir(self.output_dir).progress_png, monitor, best)
                self._drawn_epoch = epoch

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The figure of the whole run, when the last validation fell inside ``min_interval_s``."""
        validated = [r for r in self.history if "val_loss" in r]
        if (trainer.is_global_zero and self.figure and self.output_dir is not None and validated
                and self._drawn_epoch != validated[-1]["epoch"]):
            monitor, mode = self._monitor(trainer)
            progress_figure(self.history, pl_module.class_names, rundir.RunDir(self.output_dir).progress_png, monitor,
                            self._best(mode))

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _monitor(trainer: pl.Trainer) -> tuple[str, str]:
        ckpt = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None)
        return (ckpt.monitor, ckpt.mode) if ckpt is not None else ("val/miou", "max")

    def _best(self, mode: str) -> dict[str, Any] | None:
        rows = [r for r in self.history if r.get("key") is not None and math.isfinite(r["key"])]
        if not rows:
            return None
        pick = max if mode == "max" else min
        return pick(rows, key=lambda r: r["key"])

    def _check_nowhere(self, trainer: pl.Trainer, class_names: list[str], cm: np.ndarray, epoch: int) -> None:
        true, pred = cm.sum(1), cm.sum(0)
        for i, name in enumerate(class_names):
            if true[i] > 0 and pred[i] == 0:
                self._nowhere[name] = self._nowhere.get(name, 0) + 1
            else:
                self._nowhere[name] = 0
            if self._nowhere[name] == self.warn_after:
                share = 100 * true[i] / max(1, cm.sum())
                message = (f"class '{name}' has been predicted nowhere in the last {self.warn_after} validations "
                           f"(epochs {epoch - self.warn_after + 1}-{epoch}), although it covers {share:.2f} % of the "
                           "validation pixels; a rare class usually needs loss.class_weights=auto (loss=weighted_ce) "
                           "or class-balanced crops")
                warn(message)
                text_to_loggers(trainer, "warnings", message, epoch)


def progress_figure(history: list[dict[str, Any]], class_names: list[str], path: Path, monitor: str = "val/miou",
                    best: dict[str, Any] | None = None) -> Path:
    """``progress.png``: losses, per-class IoU (best epoch marked), learning rate and seconds per epoch.
    Written to a temporary file and renamed, so a reader never sees half a figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from segkit.inference.overlay import PALETTE

    epochs = [r["epoch"] for r in history]
    val = [r for r in history if "val_loss" in r]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), dpi=90)
    ax = axes[0, 0]
    ax.plot(epochs, [r["train_loss"] for r in history], label="train loss", color="tab:blue")
    ax.plot([r["epoch"] for r in val], [r["val_loss"] for r in val], label="validation loss", color="tab:red", marker=".")
    ax.set_title("loss")
    ax.set_xlabel("epoch")
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    for i, name in enumerate(class_names):
        color = PALETTE[i % len(PALETTE)] / 255.0 if i else (0.35, 0.35, 0.35)
        ax.plot([r["epoch"] for r in val], [r["iou"][name] for r in val], label=name, color=color, marker=".")
    ax.plot([r["epoch"] for r in val], [r["val_miou"] for r in val], label="mIoU", color="black", linestyle="--")
    if best is not None:
        ax.axvline(best["epoch"], color="0.5", linestyle=":")
        right = best["epoch"] > (epochs[0] + epochs[-1]) / 2
        ax.annotate(f"best {monitor} {best['key']:.3f}\nepoch {best['epoch']}", (best["epoch"], 0.97), fontsize=7, va="top",
                    ha="right" if right else "left", xytext=(-3 if right else 3, 0), textcoords="offset points")
    ax.set_ylim(0, 1)
    ax.set_title("validation IoU per class (pooled)")
    ax.set_xlabel("epoch")
    ax.legend(fontsize=7, ncol=2)
    ax = axes[1, 0]
    ax.plot(epochs, [r["lr"] for r in history], color="tab:green")
    if all(r["lr"] > 0 for r in history):
        ax.set_yscale("log")
    ax.set_title("learning rate")
    ax.set_xlabel("epoch")
    ax = axes[1, 1]
    ax.bar(epochs, [r["seconds"] for r in history], color="tab:gray")
    ax.set_title("seconds per epoch (training + validation)")
    ax.set_xlabel("epoch")
    from matplotlib.ticker import MaxNLocator

    for a in axes.flat:
        a.grid(alpha=0.3)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path
