"""segkit's TensorBoard logger: what a researcher sees when TensorBoard opens.

- Runs are named by their overrides (``runs/<time>/tensorboard/model=segnet,lr=0.001``), so a sweep's runs
  are told apart without opening configs.
- Epoch-level scalars are written against the epoch (1-based, the numbering of the console and ``train.log``);
  step-level ones (``step/train_loss``) against the optimizer step. Lightning's ``epoch`` staircase is dropped.
- A Custom Scalars layout puts the per-class IoU on one chart, the per-class Dice on one chart, train against
  validation loss and mIoU, and the learning rate (:func:`custom_scalars_layout`).
- The HParams tab gets the key metric first (``optimized_metric``, then mIoU, mDice, per-class IoU) and the
  hyper-parameters a user sweeps first. Its final (best-checkpoint) values live in a sub-run
  ``<run>/best_checkpoint`` under the same tags as the curves, as one point at the best epoch: no
  single-point cards in the Time Series view.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import TensorBoardLogger as _LightningTensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only

#: the sub-run holding the re-evaluated best checkpoint's metrics (HParams metric group)
FINAL_RUN = "best_checkpoint"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.,=+\-\[\]@:]+")


#: the keys a user sweeps first: named first in run names and shown first in the HParams tab
MAIN_KEYS = ("model", "loss", "lr", "seed")
_SWEEP_SYNTAX = re.compile(r",|^(range|choice|interval|glob|tag)\(")


def _key(override: str) -> str:
    return override.lstrip("+~").partition("=")[0]


def run_label(overrides: Sequence[str], swept: Sequence[str] = (), limit: int = 120) -> str:
    """A TensorBoard run name from command-line overrides: ``lr=0.001,model=segnet,...``, the swept keys
    first, then model/loss/lr/seed, then the rest in command order; paths keep their last part
    (``data.root=darkfield``); ``defaults`` when there are none."""
    rank = {k: i for i, k in enumerate(dict.fromkeys([*swept, *MAIN_KEYS]))}
    kept = [o for o in overrides if _key(o) and not _key(o).startswith("hydra") and _key(o) not in ("ckpt_path", "paths.output_dir")]
    kept = sorted(kept, key=lambda o: (rank.get(_key(o), len(rank)), kept.index(o)))
    parts = []
    for override in kept:
        key, sep, value = override.lstrip("+~").partition("=")
        if "/" in value:
            value = Path(value.rstrip("/")).name or value
        parts.append(_UNSAFE.sub("_", f"{key}{sep}{value}"))
    label = ",".join(parts) or "defaults"
    return label if len(label) <= limit else label[: limit - 3] + "..."


def swept_keys(save_dir: str | Path) -> list[str]:
    """The keys a Hydra sweep varies, when ``save_dir`` is one of its trials: read from the sweep folder's
    ``multirun.yaml`` (plain YAML data: only the override strings are looked at)."""
    import yaml

    record = Path(save_dir).parent / "multirun.yaml"
    if not record.is_file():
        return []
    try:
        hydra = (yaml.safe_load(record.read_text()) or {}).get("hydra") or {}
    except (OSError, yaml.YAMLError):
        return []
    keys = [_key(str(o)) for o in ((hydra.get("overrides") or {}).get("task") or [])
            if _SWEEP_SYNTAX.search(str(o).partition("=")[2])]
    keys += [str(k) for k in ((hydra.get("sweeper") or {}).get("params") or {})]
    return list(dict.fromkeys(k for k in keys if k))


def _overrides_of_run(save_dir: str | Path) -> list[str]:
    """The overrides that started the run in ``save_dir`` (kept by status.json, so a resume with other
    overrides writes into the same TensorBoard run), else this job's."""
    from segkit import rundir
    from segkit.training.job import task_overrides

    status = rundir.RunDir(Path(save_dir)).status
    if status.is_file():
        try:
            recorded = rundir.read_json(status).get("overrides")
        except Exception:  # noqa: BLE001 - an unreadable status must not stop the logger
            recorded = None
        if isinstance(recorded, list):
            return [str(o) for o in recorded]
    return task_overrides()


def custom_scalars_layout(class_names: Sequence[str]) -> dict[str, dict[str, list]]:
    """TensorBoard's Custom Scalars layout: one category, one multi-line chart per question."""
    names = "|".join(re.escape(c) for c in class_names)
    return {
        "segkit": {
            "IoU per class (validation)": ["Multiline", [rf"^val/iou/({names})$"]],
            "Dice per class (validation)": ["Multiline", [rf"^val/dice/({names})$"]],
            "loss: train vs validation": ["Multiline", [r"^(train|val)/loss$"]],
            "mIoU: train (random crops) vs validation": ["Multiline", [r"^(train|val)/miou$"]],
            "learning rate": ["Multiline", [r"^train/lr$"]],
        }
    }


def metric_order(metrics: Mapping[str, Any], optimized: str, class_names: Sequence[str]) -> list[str]:
    """The key metric first, then validation mIoU, mDice, per-class IoU, then the same for test, then the rest."""
    first = [optimized]
    for stage in ("val", "test"):
        first += [f"{stage}/miou", f"{stage}/mdice", *(f"{stage}/iou/{c}" for c in class_names)]
    ordered = [k for k in dict.fromkeys(first) if k in metrics]
    return ordered + [k for k in metrics if k not in ordered]


class TensorBoardLogger(_LightningTensorBoardLogger):
    """Lightning's TensorBoard logger with segkit's run names, epoch x-axis, layout and ordered HParams."""

    def __init__(self, save_dir: str, name: str | None = "tensorboard", version: int | str | None = None,
                 name_by_overrides: bool = True, **kwargs: Any) -> None:
        if name_by_overrides and version in (None, ""):
            version = run_label(_overrides_of_run(save_dir), swept_keys(save_dir))
        self.first_params = [*swept_keys(save_dir), *MAIN_KEYS]
        super().__init__(save_dir, name=name, version=version, **kwargs)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        metrics = dict(metrics)
        epoch = metrics.pop("epoch", None)
        if epoch is not None and not any(k.startswith("step/") or k.endswith("_step") for k in metrics):
            step = int(epoch) + 1  # logged at the end of 0-based epoch ``epoch``: the 1-based epoch number
        if metrics:
            super().log_metrics(metrics, step)

    @rank_zero_only
    def write_layout(self, class_names: Sequence[str]) -> None:
        self.experiment.add_custom_scalars(custom_scalars_layout(class_names))

    @rank_zero_only
    def log_final(self, params: Mapping[str, Any], metrics: Mapping[str, float], optimized: str,
                  class_names: Sequence[str], step: int) -> None:
        """The HParams entry of this run: ``params`` in their order, ``metrics`` (the best checkpoint's) with
        the key metric first, their values written into the ``best_checkpoint`` sub-run at ``step``."""
        from tensorboard.plugins.hparams import plugin_data_pb2
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        order = metric_order(metrics, optimized, class_names)
        ordered = {k: float(metrics[k]) for k in order}
        exp, ssi, sei = hparams(dict(params), ordered)
        value = exp.value[0]
        data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
        for info in data.experiment.metric_infos:
            info.name.group = FINAL_RUN
        # TensorBoard sorts the HParams columns "differs" first, then by name, and shows the first five:
        # the swept keys and model/loss/lr/seed are marked, so they are the ones shown
        first = set(getattr(self, "first_params", MAIN_KEYS))
        for info in data.experiment.hparam_infos:
            info.differs = info.name in first
        value.metadata.plugin_data.content = data.SerializeToString()
        writer = self.experiment._get_file_writer()
        for summary in (exp, ssi, sei):
            writer.add_summary(summary)
        self.experiment.flush()
        with SummaryWriter(str(Path(self.log_dir) / FINAL_RUN)) as final:
            for tag, v in ordered.items():
                final.add_scalar(tag, v, global_step=step)
