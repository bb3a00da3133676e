"""Train a segmentation model: ``python -m segkit.train [group=option ...] [key=value ...]``.

``train(cfg)`` is a plain function (tests call it with a composed config); ``main`` wraps it for
Hydra and returns ``cfg.optimized_metric`` so any Hydra sweeper can optimise it.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only

from segkit import CONF_DIR
from segkit.data import SegDataModule
from segkit.data.stats import class_weights as compute_class_weights
from segkit.errors import SegkitError, exit_on_user_error
from segkit.metrics import ABSENT_CLASS_POLICY, flat_scores
from segkit.module import SegModule
from segkit.precision import resolve_precision, runs_on_cpu

# Lightning's advice to add DataLoader workers does not apply: images are decoded once into memory.
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
warnings.filterwarnings("ignore", message=r".*`isinstance\(treespec, LeafSpec\)` is deprecated.*")
# SegModule logs epoch metrics that torchmetrics has already reduced over all processes.
warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed setting.*")


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def resolve_class_weights(loss_cfg: dict, dm: SegDataModule) -> list[float] | None:
    """``loss.class_weights``: null, a list (checked), or ``auto`` (from the train split)."""
    weights = loss_cfg.get("class_weights")
    if weights is None:
        return None
    if isinstance(weights, str):
        if weights != "auto":
            raise SegkitError(f"loss.class_weights is '{weights}'; expected a list of {dm.num_classes} numbers, auto or null")
        return compute_class_weights(dm.stats, loss_cfg.get("weight_method", "median_frequency"))
    weights = [float(w) for w in weights]
    if len(weights) != dm.num_classes:
        raise SegkitError(
            f"loss.class_weights has {len(weights)} values {weights}; expected {dm.num_classes} (one per class of "
            f"data.class_names {dm.class_names}), or auto"
        )
    return weights


def resolve_ckpt_path(ckpt_path: str | None, log_dir: str, task_name: str) -> str | None:
    """``last``: the newest ``checkpoints/last.ckpt`` under ``<log_dir>/<task_name>/runs``; a path must exist."""
    if ckpt_path is None:
        return None
    if str(ckpt_path) == "last":
        found = sorted(Path(log_dir, task_name, "runs").glob("*/checkpoints/last.ckpt"))
        if not found:
            raise SegkitError(f"ckpt_path=last found no checkpoints/last.ckpt under '{Path(log_dir, task_name, 'runs')}'; expected an earlier run there")
        return str(found[-1])
    if not Path(ckpt_path).is_file():
        raise SegkitError(f"ckpt_path '{ckpt_path}' does not exist; expected a .ckpt file written by segkit (or 'last')")
    return str(ckpt_path)


def write_run_config(cfg: DictConfig, output_dir: Path, dm: SegDataModule) -> None:
    """``run_config.yaml``: the resolved config with an absolute ``data.root``, so ``segkit.eval`` and
    ``segkit.predict`` can rebuild the run's data from anywhere (``.hydra/`` keeps the raw one)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain["data"]["root"] = str(Path(dm.root).resolve())
    if plain["data"].get("cache_dir"):
        plain["data"]["cache_dir"] = str(Path(plain["data"]["cache_dir"]).resolve())
    output_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(plain), output_dir / "run_config.yaml")


def build_module(cfg: DictConfig, dm: SegDataModule, class_weights: list[float] | None) -> SegModule:
    mean, std = dm.norm_mean_std
    scheduler = _plain(cfg.get("scheduler")) or None
    return SegModule(
        model=_plain(cfg.model),
        loss=_plain(cfg.loss),
        optimizer=_plain(cfg.optimizer),
        scheduler=scheduler,
        class_names=list(dm.class_names),
        ignore_index=dm.ignore_index,
        class_weights=class_weights,
        norm_mean=mean,
        norm_std=std,
        channels_last=bool(cfg.get("channels_last", True)),
    )


def build_trainer(cfg: DictConfig) -> pl.Trainer:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg is not None]
    trainer_cfg = _plain(cfg.trainer)
    accelerator = trainer_cfg.get("accelerator", "auto")
    precision, note = resolve_precision(trainer_cfg.pop("precision", "auto"), accelerator)
    if note:
        rank_zero_info(f"segkit: {note}")
    if trainer_cfg.get("sync_batchnorm") and runs_on_cpu(accelerator):
        trainer_cfg["sync_batchnorm"] = False
        rank_zero_info("segkit: trainer.sync_batchnorm=true needs CUDA (torch's SyncBatchNorm); on CPU each process keeps its own BatchNorm statistics")
    return instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False, precision=precision)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit, re-evaluate the best checkpoint on validation (and test), write ``metrics.json``.

    Returns the flat metrics and the objects built (``datamodule``, ``module``, ``trainer``).
    """
    started = time.perf_counter()
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
    output_dir = Path(cfg.paths.output_dir)

    dm: SegDataModule = instantiate(cfg.data, _convert_="all")
    dm.prepare()
    if cfg.data.get("class_names") is None or cfg.data.get("num_classes") is None:  # named by the data (codes.txt)
        with open_dict(cfg):
            cfg.data.class_names, cfg.data.num_classes = list(dm.class_names), dm.num_classes
    weights = resolve_class_weights(_plain(cfg.loss), dm)
    rank_zero_only(dm.write_records)(output_dir, {"class_weights": weights, "weight_method": cfg.loss.get("weight_method") if weights else None})
    rank_zero_only(write_run_config)(cfg, output_dir, dm)
    if weights is not None:
        rank_zero_info(f"segkit: class weights {dict(zip(dm.class_names, [round(w, 4) for w in weights], strict=True))}")

    module = build_module(cfg, dm, weights)
    trainer = build_trainer(cfg)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.log_dir, cfg.task_name)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)

    checkpoint = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    best = checkpoint.best_model_path if checkpoint and checkpoint.best_model_path else None
    module.log_to_logger = False  # the re-evaluation must not add points to the training curves
    metrics: dict[str, float] = {}
    trainer.validate(module, datamodule=dm, ckpt_path=best, weights_only=True if best else None, verbose=False)
    metrics.update(_stage_metrics(trainer, module, "val"))
    if cfg.get("test") and dm.has_test:
        trainer.test(module, datamodule=dm, ckpt_path=best, weights_only=True if best else None, verbose=False)
        metrics.update(_stage_metrics(trainer, module, "test"))

    summary = {
        "metrics": {k: _finite(v) for k, v in sorted(metrics.items())},
        "checkpoint": best,
        "best_epoch": _best_epoch(best),
        "epochs_trained": trainer.current_epoch,
        "global_step": trainer.global_step,
        "wall_time_s": round(time.perf_counter() - started, 2),
        "aggregation": "pooled over the dataset: one confusion matrix over every pixel of every image of the split",
        "absent_class_policy": ABSENT_CLASS_POLICY,
        "precision": str(trainer.precision),
        "data": {"name": dm.name, "root": str(dm.root), "num_train": len(dm.split["train"]), "num_val": len(dm.split["val"]), "num_test": len(dm.split.get("test", []))},
    }
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        _print_summary(metrics, dm.class_names, summary)
        print(f"Run directory: {output_dir}", flush=True)
    return metrics, {"datamodule": dm, "module": module, "trainer": trainer}


def _stage_metrics(trainer: pl.Trainer, module: SegModule, stage: str) -> dict[str, float]:
    """The stage's scores from the confusion matrix its last epoch pooled (all processes), and its loss."""
    out = flat_scores(module.last_confusion[stage], module.class_names, stage)
    loss = trainer.callback_metrics.get(f"{stage}/loss")
    if loss is not None:
        out[f"{stage}/loss"] = float(loss)
    return out


def _best_epoch(ckpt: str | None) -> int | None:
    if not ckpt:
        return None
    import torch

    return int(torch.load(ckpt, map_location="cpu", weights_only=True).get("epoch", -1)) + 1  # 1-based


def _print_summary(metrics: dict[str, float], class_names: list[str], summary: dict) -> None:
    for stage in ("val", "test"):
        if f"{stage}/miou" not in metrics:
            continue
        per_class = ", ".join(f"{c} {metrics[f'{stage}/iou/{c}']:.3f}" for c in class_names)
        print(
            f"{stage}: mIoU {metrics[f'{stage}/miou']:.4f}  mDice {metrics[f'{stage}/mdice']:.4f}  "
            f"pixel acc {metrics[f'{stage}/pixel_acc']:.4f}  IoU per class: {per_class}",
            flush=True,
        )
    print(f"best epoch {summary['best_epoch']}, {summary['epochs_trained']} epochs, {summary['wall_time_s']:.0f} s", flush=True)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    with exit_on_user_error():
        metrics, _ = train(cfg)
    value = metrics.get(cfg.get("optimized_metric"))
    return value


if __name__ == "__main__":
    main()
