"""Every class segkit will build from a spec it reads back from a file (a checkpoint's hyper-parameters, a run
folder's ``run_config.yaml`` or ``.hydra/config.yaml``), by kind.

A file segkit reads back is data, never code: such a file names what to build, and only names listed here
are accepted (each ``_target_`` anywhere in it must be one of these, at the place its kind belongs). Anything
else is refused with one sentence naming the file, the key and the value, before anything is imported or
built. Targets of earlier segkit releases (``segkit.callbacks.X`` before the ``segkit.training`` package) are
accepted and rewritten to today's names. Configs the user composes on the command line are instantiated by
Hydra as usual; this module is for what comes back from disk.

Importing this module imports neither Lightning nor Hydra (``segkit.inference`` uses it).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from segkit.errors import SegkitError

#: segkit's networks: the name used in a spec (``{"name": "unet", ...}``) -> the class
MODELS: dict[str, str] = {
    "unet": "segkit.models.unet.UNet",
    "segnet": "segkit.models.segnet.SegNet",
    "fcn": "segkit.models.fcn.FCN",
    "fcn_cardiac": "segkit.models.fcn.CardiacFCN",
    "patchcnn": "segkit.models.patchcnn.PatchCNN",
    "smp": "segkit.models.smp.SMPModel",
}
#: ``_target_`` spellings of each network (the package export, the defining module)
_MODEL_TARGETS: dict[str, str] = {
    **{path: name for name, path in MODELS.items()},
    **{f"segkit.models.{path.rsplit('.', 1)[1]}": name for name, path in MODELS.items()},
}

#: segkit's losses, by ``loss.name`` (built by :func:`segkit.training.losses.build_loss`)
LOSS_NAMES = ("ce", "weighted_ce", "dice", "ce_dice", "focal", "tversky", "lovasz")

#: config kinds whose ``_target_`` segkit accepts from a run folder's config -> accepted target -> canonical target
_RENAMED = {  # segkit < 0.2 (before the training/ and evaluation/ packages)
    "segkit.checkpointing.": "segkit.training.checkpointing.",
    "segkit.callbacks.": "segkit.training.callbacks.",
    "segkit.schedulers.": "segkit.training.schedulers.",
}
DATASETS = ("segkit.data.SegDataModule", "segkit.data.datamodule.SegDataModule")
CALLBACKS = (
    "segkit.training.checkpointing.BestAndLastCheckpoint",
    "segkit.training.callbacks.ConfusionMatrixFigure",
    "segkit.training.callbacks.ValidationPanel",
    "segkit.training.callbacks.StopOnNonFiniteLoss",
    "segkit.training.callbacks.EMA",
    "segkit.training.progress.RunLog",
    "segkit.training.budget.BudgetSchedule",
    "segkit.training.progress.RichProgressBar",
    "segkit.training.progress.TQDMProgressBar",
    "pytorch_lightning.callbacks.LearningRateMonitor",
    "pytorch_lightning.callbacks.RichProgressBar",
    "pytorch_lightning.callbacks.TQDMProgressBar",
    "pytorch_lightning.callbacks.EarlyStopping",
    "pytorch_lightning.callbacks.ModelCheckpoint",
)
LOGGERS = ("segkit.training.loggers.TensorBoardLogger", "pytorch_lightning.loggers.TensorBoardLogger", "pytorch_lightning.loggers.CSVLogger",
           "pytorch_lightning.loggers.WandbLogger", "pytorch_lightning.loggers.MLFlowLogger",
           "segkit.training.tracking.SegkitMLFlowLogger")
TRAINERS = ("pytorch_lightning.Trainer",)
SEGKIT_SCHEDULERS = ("segkit.training.schedulers.ExponentialDecayLR",)

#: keys of a spec that Hydra reads and that carry no code
_HYDRA_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_"}


def _optimizers() -> dict[str, type]:
    return {n: c for n, c in vars(torch.optim).items() if isinstance(c, type) and issubclass(c, torch.optim.Optimizer)
            and c is not torch.optim.Optimizer}


def _schedulers() -> dict[str, type]:
    base = torch.optim.lr_scheduler.LRScheduler
    return {n: c for n, c in vars(torch.optim.lr_scheduler).items() if isinstance(c, type)
            and (issubclass(c, base) or c is torch.optim.lr_scheduler.ReduceLROnPlateau)
            and c not in (base, torch.optim.lr_scheduler._LRScheduler)}


def _canonical(target: str) -> str:
    for old, new in _RENAMED.items():
        if target.startswith(old):
            return new + target[len(old):]
    return target


def _choices(values: Any, limit: int = 8) -> str:
    values = sorted(values)
    return ", ".join(values[:limit]) + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def allowed_targets(kind: str) -> dict[str, str]:
    """Accepted ``_target_`` -> canonical ``_target_`` for ``kind`` (model, optimizer, scheduler, data,
    callback, logger, trainer)."""
    if kind == "model":
        return {t: MODELS[n] for t, n in _MODEL_TARGETS.items()}
    if kind == "optimizer":
        opts = _optimizers()
        return {**{f"torch.optim.{n}": f"torch.optim.{n}" for n in opts},
                **{f"{c.__module__}.{n}": f"torch.optim.{n}" for n, c in opts.items()}}
    if kind == "scheduler":
        scheds = _schedulers()
        out = {**{f"torch.optim.lr_scheduler.{n}": f"torch.optim.lr_scheduler.{n}" for n in scheds}}
        out.update({t: t for t in SEGKIT_SCHEDULERS})
        out.update({"segkit.schedulers.ExponentialDecayLR": SEGKIT_SCHEDULERS[0]})
        return out
    fixed = {"data": DATASETS, "callback": CALLBACKS, "logger": LOGGERS, "trainer": TRAINERS}[kind]
    out = {t: t for t in fixed}
    out.update({old + t[len(new):]: t for t in fixed for old, new in _RENAMED.items() if t.startswith(new)})
    return out


def check_target(kind: str, target: Any, source: str | Path, key: str) -> str:
    """The canonical target for an accepted ``target`` of ``kind``; a :class:`SegkitError` otherwise."""
    allowed = allowed_targets(kind)
    if not isinstance(target, str) or target not in allowed:
        shown = [t for t in allowed if not any(t.startswith(old) for old in _RENAMED)]
        raise SegkitError(
            f"'{source}' names {key}={target!r}, which is not one of segkit's own {kind} classes, so it was not "
            f"loaded (a file segkit reads back is data, never code); expected one of {_choices(shown)}"
        )
    return _canonical(allowed[target])


def import_target(canonical: str) -> Any:
    """The class at an accepted, canonical target path."""
    module, _, name = canonical.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _check_values(node: Any, source: str | Path, key: str) -> None:
    """No nested ``_target_`` (or other Hydra instruction) anywhere below an accepted spec."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            if str(k).startswith("_") and str(k) not in ("_partial_", "_convert_", "_recursive_"):
                raise SegkitError(f"'{source}' holds {key}.{k}={v!r}; segkit builds nothing nested from a file it reads back, "
                                  "expected plain values (numbers, strings, lists) there")
            _check_values(v, source, f"{key}.{k}")
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            _check_values(v, source, f"{key}[{i}]")


def check_spec(kind: str, spec: Any, source: str | Path, key: str) -> dict[str, Any]:
    """A ``{"_target_": ..., **kwargs}`` spec read from ``source``: target accepted for ``kind`` and
    rewritten to its canonical name, plain values only below it. Returns a checked copy."""
    if not isinstance(spec, Mapping):
        raise SegkitError(f"'{source}' holds {key}={spec!r}; expected a mapping with a _target_ naming a segkit {kind}")
    out = dict(spec)
    out["_target_"] = check_target(kind, out.get("_target_"), source, f"{key}._target_")
    _check_values({k: v for k, v in out.items() if k not in _HYDRA_KEYS}, source, key)
    return out


#: where each config group's ``_target_`` lives in a segkit config, and its kind
_GROUP_KINDS = {"data": "data", "model": "model", "optimizer": "optimizer", "scheduler": "scheduler", "trainer": "trainer"}
_COLLECTION_KINDS = {"callbacks": "callback", "logger": "logger"}


def check_config_targets(cfg: dict[str, Any], source: str | Path) -> dict[str, Any]:
    """A whole run config read back from ``source`` (``.hydra/config.yaml``, ``run_config.yaml``), as a plain
    dict: every ``_target_`` must be an accepted one at its own place (``data._target_`` a segkit dataset,
    ``callbacks.<name>._target_`` a callback, ...); none anywhere else. Returns a copy with canonical targets."""
    out = dict(cfg)
    for key, value in cfg.items():
        if key in _GROUP_KINDS and isinstance(value, Mapping) and "_target_" in value:
            out[key] = check_spec(_GROUP_KINDS[key], value, source, key)
        elif key in _COLLECTION_KINDS and isinstance(value, Mapping):
            out[key] = {name: (None if spec is None else check_spec(_COLLECTION_KINDS[key], spec, source, f"{key}.{name}"))
                        for name, spec in value.items()}
        else:
            _check_values(value, source, key)
    return out


def network_name(spec: Mapping[str, Any], source: str | Path) -> str:
    """The registry name of a model spec: ``{"name": "unet", ...}`` or ``{"_target_": "segkit.models.UNet", ...}``."""
    if "name" in spec and "_target_" not in spec:
        name = spec["name"]
        if name not in MODELS:
            raise SegkitError(f"'{source}' names model.name={name!r}, which is not a segkit network; expected one of "
                              f"{', '.join(MODELS)} (segkit builds networks only from its own names)")
        return str(name)
    canonical = check_target("model", spec.get("_target_"), source, "model._target_")
    return next(n for n, path in MODELS.items() if path == canonical)


# ---------------------------------------------------------------------------------------------- builders
def build_optimizer(spec: Mapping[str, Any], params: Any, source: str | Path) -> torch.optim.Optimizer:
    """``torch.optim.<Name>(params, **values)`` from a ``{"_target_": "torch.optim.<Name>", ...}`` spec."""
    checked = check_spec("optimizer", spec, source, "optimizer")
    cls = import_target(checked.pop("_target_"))
    return cls(params, **{k: v for k, v in checked.items() if not k.startswith("_")})


def build_scheduler(spec: Mapping[str, Any], optimizer: torch.optim.Optimizer, source: str | Path) -> Any:
    """A learning-rate scheduler of torch or segkit from its spec (``interval``/``monitor`` already removed)."""
    checked = check_spec("scheduler", spec, source, "scheduler")
    cls = import_target(checked.pop("_target_"))
    return cls(optimizer, **{k: v for k, v in checked.items() if not k.startswith("_")})


#: keys of a loss spec that segkit resolves before building the loss
_LOSS_RESOLVED = ("class_weights", "weight_method", "ignore_index")


def check_loss_spec(spec: Any, source: str | Path) -> dict[str, Any]:
    """A loss spec is a name (``loss.name``) and plain values: no ``_target_``. Returns the values that
    :func:`segkit.training.losses.build_loss` takes (without the ones resolved before it)."""
    if not isinstance(spec, Mapping):
        raise SegkitError(f"'{source}' holds loss={spec!r}; expected a mapping with loss.name one of {', '.join(LOSS_NAMES)}")
    if "_target_" in spec:
        raise SegkitError(f"'{source}' names loss._target_={spec['_target_']!r}; segkit builds losses only by loss.name "
                          f"(one of {', '.join(LOSS_NAMES)}), so it was not loaded")
    if spec.get("name") not in LOSS_NAMES:
        raise SegkitError(f"'{source}' names loss.name={spec.get('name')!r}; expected one of {', '.join(LOSS_NAMES)}")
    _check_values(dict(spec), source, "loss")
    return {k: v for k, v in spec.items() if k not in _LOSS_RESOLVED}


def check_hyper_parameters(hparams: Any, source: str | Path) -> dict[str, Any]:
    """The hyper-parameters of a segkit checkpoint, checked before anything is built from them: a segkit
    network, a loss by name, a torch optimizer, a torch/segkit scheduler, plain values everywhere else."""
    if not isinstance(hparams, Mapping) or not isinstance(hparams.get("model"), Mapping) or "class_names" not in hparams:
        found = sorted(hparams) if isinstance(hparams, Mapping) else type(hparams).__name__
        raise SegkitError(f"'{source}' is not a segkit checkpoint (its hyper_parameters are {found}); expected a .ckpt "
                          "written by segkit.train, with model and class_names")
    network_name(hparams["model"], source)
    check_loss_spec(hparams.get("loss", {"name": "ce"}), source)
    if hparams.get("optimizer") is not None:
        check_spec("optimizer", hparams["optimizer"], source, "optimizer")
    scheduler = dict(hparams.get("scheduler") or {})
    if scheduler.get("_target_"):
        check_spec("scheduler", {k: v for k, v in scheduler.items() if k not in ("interval", "monitor")}, source, "scheduler")
    rest = {k: v for k, v in hparams.items() if k not in ("model", "loss", "optimizer", "scheduler")}
    _check_values(rest, source, "hyper_parameters")
    return dict(hparams)
