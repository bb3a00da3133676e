"""The Lightning ``Trainer`` of a run: callbacks, loggers, precision, and the strategy and devices a sweep
trial may use."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from segkit.logs import quiet_lightning
from segkit.runtime import tune_allocator
from segkit.training.checkpointing import AtomicCheckpointIO
from segkit.training.job import _multirun_job, _processes_created_externally
from segkit.training.module import SegModule
from segkit.training.precision import resolve_precision, runs_on_cpu


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def build_trainer(cfg: DictConfig, module: SegModule | None = None) -> pl.Trainer:
    quiet_lightning()  # no adverts for other products in the console or train.log
    tune_allocator(str(cfg.get("cpu_allocator", "tuned")))  # activations reused from the heap, not re-mapped each step
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [instantiate(lg, **_run_name(lg, cfg)) for lg in (cfg.get("logger") or {}).values() if lg is not None]
    trainer_cfg = _plain(cfg.trainer)
    if not any(isinstance(c, pl.callbacks.ProgressBar) for c in callbacks):
        # callbacks.progress_bar=null means no bar: Lightning would otherwise add its own (epochs from 0, "Epoch 213/-2"
        # under a budget, the logger's version), drawn over the epoch lines segkit prints in its place
        trainer_cfg.setdefault("enable_progress_bar", False)
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


def _run_name(spec: DictConfig, cfg: DictConfig) -> dict[str, str]:
    """W&B and MLflow runs are named like the TensorBoard run, by their overrides, unless the config names them."""
    from segkit.training.loggers import _overrides_of_run, run_label, swept_keys

    key = {"WandbLogger": "name", "SegkitMLFlowLogger": "run_name", "MLFlowLogger": "run_name"}.get(
        str(spec.get("_target_", "")).rsplit(".", 1)[-1])
    if key is None or spec.get(key):
        return {}
    out = cfg.paths.output_dir
    return {key: run_label(_overrides_of_run(out), swept_keys(out))}


#: layers for which torch.use_deterministic_algorithms(True) raises (CPU and CUDA alike)
NON_DETERMINISTIC_LAYERS: tuple[type, ...] = (nn.MaxUnpool1d, nn.MaxUnpool2d, nn.MaxUnpool3d)


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
