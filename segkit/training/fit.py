"""``train(cfg)``: a plain function (tests call it with a composed config) that builds the data, the
module and the trainer, fits, re-evaluates the best checkpoint on validation (and test) and writes
``metrics.json`` and ``status.json``. ``segkit.train`` wraps it for Hydra."""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_only

from segkit import rundir
from segkit.data import SegDataModule
from segkit.data.regions import storage_line
from segkit.data.stats import class_weights as compute_class_weights
from segkit.errors import SegkitError
from segkit.evaluation.metrics import ABSENT_CLASS_POLICY, flat_scores
from segkit.inference.load import read_checkpoint
from segkit.logs import say
from segkit.planning.plan import plan_for, write_plan
from segkit.training.budget import apply_budget
from segkit.training.job import task_overrides
from segkit.training.module import SegModule
from segkit.training.records import _now, failure_reason, interruption, write_run_config, write_status
from segkit.training.resume import resolve_ckpt_path
from segkit.training.tracking import artifact_to_trackers, hparams_to_trackers
from segkit.training.trainer import _plain, build_trainer

# Lightning's advice to add DataLoader workers does not apply: images are decoded once into memory.
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
warnings.filterwarnings("ignore", message=r".*`isinstance\(treespec, LeafSpec\)` is deprecated.*")
# SegModule logs epoch metrics that torchmetrics has already reduced over all processes.
warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed setting.*")


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


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit, re-evaluate the best checkpoint on validation (and test), write ``metrics.json``.

    Returns the flat metrics and the objects built (``datamodule``, ``module``, ``trainer``).
    ``status.json`` in the run directory says running, completed, or failed with the reason and the stage
    it failed in (``setup``: before the first training step, e.g. unreadable data; ``training``; ``evaluation``).
    """
    started = time.perf_counter()
    output_dir = Path(cfg.paths.output_dir)
    if rank_zero_only.rank == 0:
        resumed = cfg.get("ckpt_path") is not None and rundir.RunDir(output_dir).status.is_file()
        write_status(output_dir, "running", reason=None, finished_at=None, stage=None,
                     **({"resumed_at": _now()} if resumed else {"started_at": _now(), "overrides": task_overrides()}))
    stage = {"name": "setup"}
    try:
        metrics, objects = _train(cfg, started, stage)
    except BaseException as err:
        if rank_zero_only.rank == 0:
            reason = interruption(err)
            status = "interrupted" if reason else "failed"
            write_status(output_dir, status, reason=reason or failure_reason(err) or status, finished_at=_now(),
                         wall_time_s=round(time.perf_counter() - started, 2), stage=stage["name"])
        raise
    if rank_zero_only.rank == 0:
        summary = objects["summary"]
        write_status(output_dir, "completed", reason=None, stage=None, finished_at=_now(), wall_time_s=summary["wall_time_s"],
                     epochs_trained=summary["epochs_trained"], best_epoch=summary["best_epoch"])
    return metrics, objects


def _train(cfg: DictConfig, started: float, stage: dict[str, str]) -> tuple[dict[str, float], dict[str, Any]]:
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
    output_dir = Path(cfg.paths.output_dir)

    dm: SegDataModule = instantiate(cfg.data, _convert_="all")
    dm.prepare()
    if dm.storage_record.get("region_tiles"):
        rank_zero_only(say)(storage_line(dm))
    if cfg.data.get("class_names") is None or cfg.data.get("num_classes") is None:  # named by the data (codes.txt)
        with open_dict(cfg):
            cfg.data.class_names, cfg.data.num_classes = list(dm.class_names), dm.num_classes
    record = None
    if cfg.get("ckpt_path") is not None and str(cfg.get("plan", "auto")) != "off":
        # a resume keeps its run's plan (plan.yaml); a run started from a checkpoint keeps the checkpoint's shapes
        if not rundir.RunDir(output_dir).plan.is_file():
            with open_dict(cfg):
                cfg.plan = "report"
            record = plan_for(cfg, dm)
    else:
        record = plan_for(cfg, dm)  # plan=auto: the data's fingerprint and the budget choose what the user left open
    if record is not None and rank_zero_only.rank == 0:
        write_plan(record, rundir.RunDir(output_dir).plan)
        say(f"plan ({record['mode']}; python -m segkit.plan shows it without training):\n{record['table']}")
    weights = resolve_class_weights(_plain(cfg.loss), dm)
    rank_zero_only(dm.write_records)(output_dir, {"class_weights": weights, "weight_method": cfg.loss.get("weight_method") if weights else None})
    tunes = will_tune(cfg, dm)
    apply_budget(cfg, spent=time.perf_counter() - started, tuning=tunes)  # budget=45m: time-based lr; recorded in run_config.yaml
    apply_training_options(cfg)  # ema_decay, early_stopping_patience: callbacks recorded in run_config.yaml
    rank_zero_only(write_run_config)(cfg, output_dir, dm)
    if weights is not None:
        rank_zero_only(say)(f"class weights {dict(zip(dm.class_names, [round(w, 4) for w in weights], strict=True))}")

    module = build_module(cfg, dm, weights)
    trainer = build_trainer(cfg, module)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.log_dir, cfg.task_name)
    stage["name"] = "training"
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    stage["name"] = "evaluation"

    checkpoint = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    best = checkpoint.best_model_path if checkpoint and checkpoint.best_model_path else None
    module.log_to_logger = False  # the re-evaluation must not add points to the training curves
    # with ema_decay the checkpoint's state_dict is the average: loaded as it is, like segkit.eval and predict
    # load it (Lightning's WeightAveraging would load the raw weights back, and average only for validation)
    from pytorch_lightning.callbacks import WeightAveraging

    trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, WeightAveraging)]
    metrics: dict[str, float] = {}
    trainer.validate(module, datamodule=dm, ckpt_path=best, weights_only=True if best else None, verbose=False)
    metrics.update(_stage_metrics(trainer, module, "val"))
    if cfg.get("test") and dm.has_test:
        trainer.test(module, datamodule=dm, ckpt_path=best, weights_only=True if best else None, verbose=False)
        metrics.update(_stage_metrics(trainer, module, "test"))

    tuning = tune_after_training(cfg, trainer, dm, best) if trainer.is_global_zero and tunes else None
    summary = {
        "metrics": {k: _finite(v) for k, v in sorted(metrics.items())},
        "postprocess": tuning,
        "checkpoint": best,
        "best_epoch": _best_epoch(best),
        **_progress(trainer, checkpoint),
        "wall_time_s": round(time.perf_counter() - started, 2),
        "aggregation": "pooled over the dataset: one confusion matrix over every pixel of every image of the split",
        "absent_class_policy": ABSENT_CLASS_POLICY,
        "precision": str(trainer.precision),
        "data": {"name": dm.name, "root": str(dm.root), "num_train": len(dm.split["train"]), "num_val": len(dm.split["val"]), "num_test": len(dm.split.get("test", []))},
    }
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        rundir.write_metrics(rundir.RunDir(output_dir).metrics, "train", summary)
        log_hparams(trainer, cfg, summary["metrics"], list(dm.class_names), summary["best_epoch"], best)
        _print_summary(metrics, dm.class_names, summary)
        say(f"Run directory: {output_dir}")
    return metrics, {"datamodule": dm, "module": module, "trainer": trainer, "summary": summary}


def will_tune(cfg: DictConfig, dm: SegDataModule) -> bool:
    """Whether post-processing is tuned after training: ``postprocess_tuning=auto``, the data has object
    classes and a validation split, and ``postprocess_metric`` (or else ``optimized_metric``) is one the search
    can improve."""
    if str(cfg.get("postprocess_tuning", "auto")) != "auto" or not dm.object_classes or not dm.split.get("val"):
        return False
    if cfg.get("postprocess_metric"):
        from segkit.evaluation.postprocess_search import parse_metric

        parse_metric(str(cfg.postprocess_metric), list(dm.class_names))  # a wrong name fails before training, not after
        return True
    metric = str(cfg.get("optimized_metric") or "val/miou")
    if not (metric in ("val/miou", "val/mdice", "val/pixel_acc") or metric.split("/")[1:2] in (["iou"], ["dice"])):
        rank_zero_only(say)(f"post-processing not tuned: optimized_metric {metric} is not val/miou, val/mdice, val/pixel_acc, "
                            "val/iou/<class> or val/dice/<class>")
        return False
    return True


def tune_after_training(cfg: DictConfig, trainer: pl.Trainer, dm: SegDataModule, best: str | None) -> dict[str, Any] | None:
    """Per-class probability thresholds, minimum object size and median filter for the data's object classes,
    tuned on VALIDATION for ``postprocess_metric`` or else ``optimized_metric`` (each knob kept only where it
    improves it; :func:`will_tune`
    says when), written to ``postprocess.json`` next to the best checkpoint; eval and predict use it by
    default. The search is bounded by :func:`segkit.training.budget.tuning_seconds`, which a budget keeps free."""
    if not best:
        return None
    from segkit.evaluation.postprocess_search import tune_checkpoint
    from segkit.training.budget import parse_budget, tuning_seconds

    metric = str(cfg.get("postprocess_metric") or cfg.get("optimized_metric") or "val/miou")
    device = "cpu" if str(trainer.strategy.root_device.type) == "cpu" else "auto"
    record = tune_checkpoint(Path(best), metric.removeprefix("val/"), device, dm=dm,
                             max_seconds=tuning_seconds(parse_budget(cfg.get("budget"))))
    return {k: record[k] for k in ("postprocess", "metric", "split", "before", "after", "stopped", "wall_time_s")}


def hparam_summary(cfg: DictConfig) -> dict[str, Any]:
    """The run's hyper-parameters as flat primitives for the HParams tab, in the order a user sweeps them:
    model, loss, lr, seed, then every key the command line set, then the other main choices."""
    def short(node: Any) -> str | None:
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        return str(target).rsplit(".", 1)[-1] if target else None

    out: dict[str, Any] = {
        "model": cfg.model.get("name") or short(cfg.model), "loss": cfg.loss.get("name") or short(cfg.loss),
        "lr": cfg.get("lr"), "seed": cfg.get("seed"),
    }
    for override in task_overrides():
        key, _, value = override.lstrip("+~").partition("=")
        if key and not key.startswith("hydra") and key != "ckpt_path":
            out.setdefault(key, value)
    out.update({k: v for k, v in {
        "optimizer": short(cfg.optimizer), "scheduler": short(cfg.get("scheduler")) or "none", "data": cfg.data.get("name"),
        "crop_size": cfg.data.get("crop_size"), "batch_size": cfg.data.get("batch_size"), "max_epochs": cfg.trainer.get("max_epochs"),
    }.items() if k not in out})
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in out.items() if v is not None}


def log_hparams(trainer: pl.Trainer, cfg: DictConfig, metrics: dict[str, float | None], class_names: list[str],
                best_epoch: int | None, best_ckpt: str | None) -> None:
    """The HParams tab (key metric first, the swept parameters first) with the final, re-evaluated
    best-checkpoint metrics; the same to every other tracker, with the best checkpoint as an artifact."""
    from segkit.training.loggers import TensorBoardLogger

    final = {k: v for k, v in metrics.items() if v is not None and "/loss" not in k}
    params = hparam_summary(cfg)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger) and final:
            logger.log_final(params, final, str(cfg.get("optimized_metric") or "val/miou"), class_names,
                             step=best_epoch or trainer.current_epoch)
            logger.finalize("success")
    hparams_to_trackers(trainer, params, final)
    if best_ckpt:
        artifact_to_trackers(trainer, best_ckpt)


def _stage_metrics(trainer: pl.Trainer, module: SegModule, stage: str) -> dict[str, float]:
    """The stage's scores from the confusion matrix its last epoch pooled (all processes), and its loss."""
    if stage not in module.last_confusion:  # ddp_spawn: the ranks ran in child processes; Lightning
        # sends back rank 0's logged metrics, which are already reduced over every process
        return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(f"{stage}/")}
    out = flat_scores(module.last_confusion[stage], module.class_names, stage)
    loss = trainer.callback_metrics.get(f"{stage}/loss")
    if loss is not None:
        out[f"{stage}/loss"] = float(loss)
    return out


def _progress(trainer: pl.Trainer, checkpoint: ModelCheckpoint | None) -> dict[str, int]:
    """Epochs and steps trained. Under ``ddp_spawn`` the loops ran in child processes and this process's
    trainer still says 0: the last checkpoint knows."""
    epochs, steps = trainer.current_epoch, trainer.global_step
    last = (checkpoint.last_model_path or str(Path(checkpoint.dirpath or ".", "last.ckpt"))) if checkpoint is not None else ""
    if steps == 0 and last and Path(last).is_file():
        state = read_checkpoint(last)
        epochs, steps = int(state.get("epoch", -1)) + 1, int(state.get("global_step", 0))
    return {"epochs_trained": epochs, "global_step": steps}


def _best_epoch(ckpt: str | None) -> int | None:
    if not ckpt:
        return None
    return int(read_checkpoint(ckpt).get("epoch", -1)) + 1  # 1-based


def _print_summary(metrics: dict[str, float], class_names: list[str], summary: dict) -> None:
    for stage in ("val", "test"):
        if f"{stage}/miou" not in metrics:
            continue
        per_class = ", ".join(f"{c} {metrics[f'{stage}/iou/{c}']:.3f}" for c in class_names)
        say(
            f"{stage}: mIoU {metrics[f'{stage}/miou']:.4f}  mDice {metrics[f'{stage}/mdice']:.4f}  "
            f"pixel acc {metrics[f'{stage}/pixel_acc']:.4f}  IoU per class: {per_class}"
        )
    say(f"best epoch {summary['best_epoch']} of {summary['epochs_trained']} (the best checkpoint's), "
        f"{summary['wall_time_s']:.0f} s")


def apply_training_options(cfg: DictConfig) -> None:
    """``ema_decay`` and ``early_stopping_patience`` as callbacks in ``cfg.callbacks`` (so ``run_config.yaml``
    records them and a resume rebuilds them): :class:`segkit.training.callbacks.EMA`, and Lightning's
    ``EarlyStopping`` on ``optimized_metric`` (checked after each validation)."""
    with open_dict(cfg):
        cfg.callbacks = cfg.get("callbacks") or {}
        if cfg.get("ema_decay") is not None:
            cfg.callbacks.ema = {"_target_": "segkit.training.callbacks.EMA", "decay": float(cfg.ema_decay),
                                 "start_step": int(cfg.get("ema_start_step") or 0)}
        if cfg.get("early_stopping_patience") is not None:
            cfg.callbacks.early_stopping = {"_target_": "pytorch_lightning.callbacks.EarlyStopping", "monitor": str(cfg.optimized_metric),
                                            "mode": "max", "patience": int(cfg.early_stopping_patience),
                                            "min_delta": float(cfg.get("early_stopping_min_delta") or 0.0),
                                            "check_on_train_epoch_end": False, "verbose": False}
