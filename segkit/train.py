"""Train a segmentation model: ``python -m segkit.train [group=option ...] [key=value ...]``.

``train(cfg)`` is a plain function (tests call it with a composed config); ``main`` wraps it for
Hydra and returns ``cfg.optimized_metric`` so any Hydra sweeper can optimise it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import sys
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
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch import nn

from segkit import CONF_DIR
from segkit.checkpointing import AtomicCheckpointIO, load_checkpoint_dict
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


def build_trainer(cfg: DictConfig, module: SegModule | None = None) -> pl.Trainer:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg is not None]
    trainer_cfg = _plain(cfg.trainer)
    if trainer_cfg.get("deterministic") is True and module is not None:
        lacking = sorted({type(m).__name__ for m in module.modules() if isinstance(m, NON_DETERMINISTIC_LAYERS)})
        if lacking:
            trainer_cfg["deterministic"] = "warn"
            rank_zero_info(f"segkit: trainer.deterministic=true, but {', '.join(lacking)} has no deterministic kernel in torch; "
                           "running with deterministic='warn' (every other op deterministic, a warning where one is not)")
    accelerator = trainer_cfg.get("accelerator", "auto")
    precision, note = resolve_precision(trainer_cfg.pop("precision", "auto"), accelerator)
    if note:
        rank_zero_info(f"segkit: {note}")
    if trainer_cfg.get("sync_batchnorm") and runs_on_cpu(accelerator):
        trainer_cfg["sync_batchnorm"] = False
        rank_zero_info("segkit: trainer.sync_batchnorm=true needs CUDA (torch's SyncBatchNorm); on CPU each process keeps its own BatchNorm statistics")
    job = _multirun_job()
    if job is not None:
        strategy, note = sweep_safe_strategy(trainer_cfg)
        if note:
            trainer_cfg["strategy"] = strategy
            rank_zero_info(f"segkit: {note}")
        devices = _gpu_for_job(trainer_cfg, job)
        if devices is not None:
            trainer_cfg["devices"] = devices
    plugins = list(trainer_cfg.pop("plugins", None) or []) + [AtomicCheckpointIO()]
    return instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False, precision=precision, plugins=plugins)


#: layers for which torch.use_deterministic_algorithms(True) raises (CPU and CUDA alike)
NON_DETERMINISTIC_LAYERS: tuple[type, ...] = (nn.MaxUnpool1d, nn.MaxUnpool2d, nn.MaxUnpool3d)


def _hydra_config() -> Any | None:
    """This job's Hydra config, or None when ``train`` is called without Hydra (tests, notebooks)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def _multirun_job() -> int | None:
    """This job's number inside a Hydra multirun (sweep), else None."""
    from hydra.types import RunMode

    hc = _hydra_config()
    return int(hc.job.num) if hc is not None and hc.mode == RunMode.MULTIRUN else None


def _processes_created_externally() -> bool:
    """SLURM (srun started one task per device) or torchrun started the processes: DDP attaches to them."""
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "TORCHELASTIC_RUN_ID" in os.environ


def _many_devices(devices: Any) -> bool:
    """``trainer.devices`` asks for more than one device (-1 and "-1" mean all of them)."""
    if isinstance(devices, (list, tuple)):
        return len(devices) > 1
    text = str(devices).strip()
    if text == "auto":
        return False
    if "," in text:
        return len([d for d in text.split(",") if d.strip()]) > 1
    return int(text) != 1


def sweep_safe_strategy(trainer_cfg: dict) -> tuple[str | None, str | None]:
    """Inside a Hydra sweep, Lightning's ``ddp`` would re-execute the whole command line (``-m`` and all)
    once per device, so every rank would start its own sweep. ``ddp_spawn`` forks the ranks from this
    trial instead. Processes started by SLURM/torchrun are left alone. Returns (strategy, note)."""
    strategy = str(trainer_cfg.get("strategy", "auto"))
    many = int(trainer_cfg.get("num_nodes", 1)) > 1 or _many_devices(trainer_cfg.get("devices", 1))
    if strategy.startswith("ddp") and "spawn" not in strategy and many and not _processes_created_externally():
        spawn = strategy.replace("ddp", "ddp_spawn", 1)
        return spawn, (f"trainer.strategy={strategy} inside a sweep would re-run the whole sweep on every rank; "
                       f"this trial uses {spawn} (or launch the sweep with hydra/launcher=slurm, one task per GPU)")
    return strategy, None


def _gpu_for_job(trainer_cfg: dict, job: int) -> list[int] | None:
    """Parallel sweep trials on a multi-GPU machine: trial ``k`` with ``devices: 1`` takes GPU ``k % n``."""
    import torch

    if trainer_cfg.get("devices", 1) != 1 or runs_on_cpu(trainer_cfg.get("accelerator", "auto")):
        return None
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2 or _processes_created_externally():
        return None
    return [job % torch.cuda.device_count()]


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def task_overrides() -> list[str]:
    """The command-line overrides of this Hydra job (empty when ``train`` is called without Hydra)."""
    hc = _hydra_config()
    return list(hc.overrides.task) if hc is not None else []


def write_status(output_dir: Path, status: str, **fields: Any) -> None:
    """``status.json`` of a run: running / completed / failed (with a one-sentence reason). A run killed
    outright (SIGKILL, power loss) stays ``running``; ``segkit.summarize`` shows it as such."""
    path = Path(output_dir) / "status.json"
    record = json.loads(path.read_text()) if path.is_file() else {}
    record.update({"status": status, **fields})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".status.json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def failure_reason(err: BaseException) -> str:
    """One line for status.json and the sweep log."""
    text = next(iter(str(err).strip().splitlines()), "")
    return text if isinstance(err, SegkitError) else f"{type(err).__name__}: {text}"


def interruption(err: BaseException) -> str | None:
    """The reason when ``err`` is an interruption rather than a failure: Ctrl+C (which Lightning turns into a
    graceful shutdown and ``sys.exit(1)``) or SIGTERM (``kill``, a scheduler's preemption); else None."""
    if isinstance(err, SIGTERMException):
        return "stopped by SIGTERM (kill, or a scheduler's time limit / preemption); resume with ckpt_path=last"
    if isinstance(err, KeyboardInterrupt) or (isinstance(err, SystemExit) and isinstance(err.__context__, KeyboardInterrupt)):
        return "interrupted by the user (Ctrl+C / SIGINT); resume with ckpt_path=last"
    return None


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit, re-evaluate the best checkpoint on validation (and test), write ``metrics.json``.

    Returns the flat metrics and the objects built (``datamodule``, ``module``, ``trainer``).
    ``status.json`` in the run directory says running, completed, or failed with the reason.
    """
    started = time.perf_counter()
    output_dir = Path(cfg.paths.output_dir)
    if rank_zero_only.rank == 0:
        resumed = cfg.get("ckpt_path") is not None and (output_dir / "status.json").is_file()
        write_status(output_dir, "running", reason=None, finished_at=None,
                     **({"resumed_at": _now()} if resumed else {"started_at": _now(), "overrides": task_overrides()}))
    try:
        metrics, objects = _train(cfg, started)
    except BaseException as err:
        if rank_zero_only.rank == 0:
            reason = interruption(err)
            status = "interrupted" if reason else "failed"
            write_status(output_dir, status, reason=reason or failure_reason(err) or status, finished_at=_now(),
                         wall_time_s=round(time.perf_counter() - started, 2))
        raise
    if rank_zero_only.rank == 0:
        summary = objects["summary"]
        write_status(output_dir, "completed", reason=None, finished_at=_now(), wall_time_s=summary["wall_time_s"],
                     epochs_trained=summary["epochs_trained"], best_epoch=summary["best_epoch"])
    return metrics, objects


def _train(cfg: DictConfig, started: float) -> tuple[dict[str, float], dict[str, Any]]:
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
    trainer = build_trainer(cfg, module)
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
        **_progress(trainer, checkpoint),
        "wall_time_s": round(time.perf_counter() - started, 2),
        "aggregation": "pooled over the dataset: one confusion matrix over every pixel of every image of the split",
        "absent_class_policy": ABSENT_CLASS_POLICY,
        "precision": str(trainer.precision),
        "data": {"name": dm.name, "root": str(dm.root), "num_train": len(dm.split["train"]), "num_val": len(dm.split["val"]), "num_test": len(dm.split.get("test", []))},
    }
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        log_hparams(trainer, cfg, summary["metrics"])
        _print_summary(metrics, dm.class_names, summary)
        print(f"Run directory: {output_dir}", flush=True)
    return metrics, {"datamodule": dm, "module": module, "trainer": trainer, "summary": summary}


def hparam_summary(cfg: DictConfig) -> dict[str, Any]:
    """The run's hyper-parameters as flat primitives for TensorBoard's HParams tab: the main choices
    plus every key the command line set."""
    def short(node: Any) -> str | None:
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        return str(target).rsplit(".", 1)[-1] if target else None

    out: dict[str, Any] = {
        "lr": cfg.get("lr"), "seed": cfg.get("seed"), "model": short(cfg.model), "loss": cfg.loss.get("name") or short(cfg.loss),
        "optimizer": short(cfg.optimizer), "scheduler": short(cfg.get("scheduler")) or "none", "data": cfg.data.get("name"),
        "crop_size": cfg.data.get("crop_size"), "batch_size": cfg.data.get("batch_size"), "max_epochs": cfg.trainer.get("max_epochs"),
    }
    for override in task_overrides():
        key, _, value = override.lstrip("+~").partition("=")
        if key and not key.startswith("hydra") and key != "ckpt_path":
            out[key] = value
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in out.items() if v is not None}


def log_hparams(trainer: pl.Trainer, cfg: DictConfig, metrics: dict[str, float | None]) -> None:
    """Fill TensorBoard's HParams tab with the final (re-evaluated best-checkpoint) metrics, under
    ``hparams/<metric>`` so the training curves get no extra points."""
    from pytorch_lightning.loggers import TensorBoardLogger

    final = {f"hparams/{k}": v for k, v in metrics.items() if v is not None and "/loss" not in k}
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger) and final:
            logger.log_hyperparams(hparam_summary(cfg), metrics=final)
            logger.finalize("success")


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
        state = load_checkpoint_dict(last)
        epochs, steps = int(state.get("epoch", -1)) + 1, int(state.get("global_step", 0))
    return {"epochs_trained": epochs, "global_step": steps}


def _best_epoch(ckpt: str | None) -> int | None:
    if not ckpt:
        return None
    return int(load_checkpoint_dict(ckpt).get("epoch", -1)) + 1  # 1-based


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


#: config groups of conf/train.yaml: a resumed run keeps the ones it was started with
CONFIG_GROUPS = ("data", "model", "loss", "optimizer", "scheduler", "trainer", "logger", "callbacks", "paths",
                 "hydra", "experiment", "debug", "hparams_search")


def resume_config(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """``ckpt_path=last`` or a checkpoint inside a segkit run directory: continue THAT run, in its own
    directory, with its own config (``.hydra/config.yaml``), split and statistics; the same TensorBoard
    run gets the new points. Plain ``key=value`` overrides given now still apply (e.g. a larger
    ``trainer.max_epochs``); config groups cannot change. A checkpoint outside a run directory starts a
    new run from those weights and optimizer state."""
    ckpt = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.log_dir, cfg.task_name)
    if ckpt is None:
        return cfg
    ckpt_file = Path(ckpt).resolve()
    run_dir = ckpt_file.parent.parent
    saved = run_dir / ".hydra" / "config.yaml"
    if ckpt_file.parent.name != "checkpoints" or not saved.is_file():
        with open_dict(cfg):
            cfg.ckpt_path = str(ckpt_file)
        return cfg
    original = OmegaConf.load(run_dir / ".hydra" / "overrides.yaml") if (run_dir / ".hydra" / "overrides.yaml").is_file() else []
    resumed = OmegaConf.load(saved)
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override, parsed in zip(overrides, OverridesParser.create().parse_overrides(overrides), strict=True):
        key = parsed.key_or_group
        if key == "ckpt_path" or key.startswith("hydra") or parsed.is_delete():
            continue
        if key.split("/")[0] in CONFIG_GROUPS and "." not in key:
            if override not in original:
                raise SegkitError(
                    f"'{override}': a resumed run keeps the config groups it was started with ({run_dir / '.hydra' / 'overrides.yaml'}); "
                    "expected only key=value overrides such as trainer.max_epochs=60 next to ckpt_path"
                )
            continue
        OmegaConf.update(resumed, key, parsed.value(), merge=True, force_add=True)
    with open_dict(resumed):
        resumed.paths.output_dir = str(run_dir)
        resumed.ckpt_path = str(ckpt_file)
        if resumed.data.get("split_file") is None and (run_dir / "splits.json").is_file():
            resumed.data.split_file = str(run_dir / "splits.json")
    epoch = load_checkpoint_dict(ckpt_file).get("epoch", -1) + 1
    rank_zero_info(f"segkit: resuming run {run_dir} after epoch {epoch} from {ckpt_file.name} (its own config, split and TensorBoard run)")
    return resumed


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Single runs: a user error is one sentence and exit status 2. Sweep trials: a failed trial (bad
    value, NaN loss, out of memory) is recorded in its status.json, returns NaN (Optuna marks it
    failed) and the sweep goes on."""
    in_sweep = _multirun_job() is not None
    with exit_on_user_error():
        try:
            cfg = resume_config(cfg, task_overrides())
            metrics, _ = train(cfg)
        except Exception as err:
            if not in_sweep:
                raise
            print(f"segkit: trial {cfg.paths.output_dir} failed: {failure_reason(err)}; the sweep goes on", file=sys.stderr, flush=True)
            if not (Path(cfg.paths.output_dir) / "status.json").is_file():
                write_status(Path(cfg.paths.output_dir), "failed", reason=failure_reason(err), finished_at=_now(), overrides=task_overrides())
            return float("nan")
    value = metrics.get(cfg.get("optimized_metric"))
    return value


if __name__ == "__main__":
    main()
