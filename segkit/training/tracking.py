"""Everything segkit shows a researcher beyond scalars goes through here, to every logger of the run:
images, figures, text, final hyper-parameters and the best checkpoint. Scalars reach every logger through
Lightning's ``self.log``; these need one branch per tracker. TensorBoard is the default tracker; W&B
(``logger=wandb``) and MLflow (``logger=mlflow``) have a branch each, and ``wandb`` / ``mlflow`` are imported
only inside their branch, so segkit runs without them installed.

Where each thing lands:

* TensorBoard: the Images / Text tabs (its HParams tab is written by ``segkit.training.fit.log_hparams``).
* W&B: ``wandb.Image`` / ``wandb.Html`` logged as Lightning's ``WandbLogger.log_metrics`` logs scalars (with a
  ``trainer/global_step`` key, never W&B's own ``step``, so nothing is dropped as "non-monotonic");
  hyper-parameters in the run config, final metrics in the run summary under ``hparams/<metric>``, the best
  checkpoint as a ``model`` artifact. Offline, all of it is in ``<run>/wandb/offline-run-*`` (``wandb sync``
  uploads it later).
* MLflow: images as step-keyed images (``images/<tag>+step+<n>...png``, the UI's image charts), figures under
  ``figures/<tag>/step_<n>.png``, text under ``text/<tag>/step_<n>.md``, hyper-parameters as params, final
  metrics as ``hparams/<metric>``, the best checkpoint under ``checkpoints/``.

A summary hyper-parameter whose key the tracker already holds with another value (Lightning logs the module's
own hyper-parameters at the start of fit, and trackers keep params immutable or nested) is stored as
``hparams/<key>`` instead of overwriting it."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

#: MLflow's limits: a param value's length, a key's length, entries per ``log_batch`` call
_MLFLOW_PARAM_LEN, _MLFLOW_KEY_LEN, _MLFLOW_BATCH = 6000, 250, 100
#: the prefix of final metrics (TensorBoard's HParams tab uses it too) and of renamed hyper-parameters
_FINAL = "hparams/"


class SegkitMLFlowLogger(MLFlowLogger):
    """Lightning's ``MLFlowLogger``, able to use a local file store (``tracking_uri: file:...``, segkit's
    default: one folder shared by every run, so they compare, and safe for parallel sweep trials). MLflow 3
    refuses its file store unless ``MLFLOW_ALLOW_FILE_STORE`` is set; for a ``file:`` URI segkit sets it
    (unless the environment already says otherwise). Any other URI (``sqlite:///...``, ``http://...``,
    ``databricks``) is passed to MLflow untouched."""

    def __init__(self, *args: Any, tracking_uri: str | None = None, **kwargs: Any) -> None:
        tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
        # no URI: Lightning falls back to a file store too (file:<save_dir>); a bare path is a file store
        if urlparse(tracking_uri or "file:").scheme in ("", "file"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            # a local store stays local: MLflow 3's usage telemetry is off unless the environment turns it on
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        super().__init__(*args, tracking_uri=tracking_uri, **kwargs)


def _rank_zero(trainer: pl.Trainer) -> bool:
    return bool(getattr(trainer, "is_global_zero", True))


def _mlflow_key(key: str) -> str:
    """``key`` as MLflow accepts it and as Lightning's ``MLFlowLogger.log_metrics`` spells it (so
    ``hparams/val/iou/<class>`` matches the curve ``val/iou/<class>``): letters, digits, ``_ / . -`` and spaces;
    no empty, ``.`` or ``..`` path parts."""
    key = re.sub(r"[^a-zA-Z0-9_/. -]+", "", str(key))
    key = "/".join(p for p in key.split("/") if p.strip() not in ("", ".", ".."))
    return key[:_MLFLOW_KEY_LEN] or "_"


def _mlflow_file(tag: str) -> str:
    """``tag`` as a run-relative artifact folder (``val/confusion_matrix`` stays a folder path)."""
    return _mlflow_key(tag).replace(" ", "_")


def _wandb_log(logger: WandbLogger, values: dict[str, Any], step: int | None) -> None:
    """Media into W&B the way ``WandbLogger.log_metrics`` logs scalars: with the trainer's step as the
    ``trainer/global_step`` key (the x-axis Lightning defines), not W&B's monotonic ``step`` argument."""
    logger.log_metrics(values, step=step)  # rank-zero only; adds the logger's prefix like the scalars get


def image_to_loggers(trainer: pl.Trainer, tag: str, image: np.ndarray, step: int) -> None:
    """An RGB ``[H, W, 3]`` uint8 image under ``tag`` in every logger."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, image, global_step=step, dataformats="HWC")
        elif isinstance(logger, WandbLogger) and _rank_zero(trainer):
            import wandb

            _wandb_log(logger, {tag: wandb.Image(np.ascontiguousarray(image))}, step)
        elif isinstance(logger, MLFlowLogger) and _rank_zero(trainer):
            logger.experiment.log_image(logger.run_id, np.ascontiguousarray(image), key=_mlflow_key(tag), step=int(step))


def figure_to_loggers(trainer: pl.Trainer, tag: str, fig: Any, step: int) -> None:
    """A matplotlib figure under ``tag`` in every logger; the figure is closed afterwards."""
    import matplotlib.pyplot as plt

    try:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure(tag, fig, global_step=step, close=False)
            elif isinstance(logger, WandbLogger) and _rank_zero(trainer):
                import wandb

                _wandb_log(logger, {tag: wandb.Image(fig)}, step)
            elif isinstance(logger, MLFlowLogger) and _rank_zero(trainer):
                logger.experiment.log_figure(logger.run_id, fig, f"figures/{_mlflow_file(tag)}/step_{int(step):06d}.png")
    finally:
        plt.close(fig)


def text_to_loggers(trainer: pl.Trainer, tag: str, markdown: str, step: int = 0) -> None:
    """Markdown text (TensorBoard's Text tab) under ``tag`` in every logger. W&B gets it as an HTML panel
    showing the markdown verbatim (tables stay aligned); MLflow as a ``.md`` artifact."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text(tag, markdown, global_step=step)
        elif isinstance(logger, WandbLogger) and _rank_zero(trainer):
            import html

            import wandb

            _wandb_log(logger, {tag: wandb.Html(f"<pre>{html.escape(markdown)}</pre>", inject=False)}, step)
        elif isinstance(logger, MLFlowLogger) and _rank_zero(trainer):
            logger.experiment.log_text(logger.run_id, markdown, f"text/{_mlflow_file(tag)}/step_{int(step):06d}.md")


def _final_key(key: str) -> str:
    return key if key.startswith(_FINAL) else f"{_FINAL}{key}"


def _numbers(metrics: dict[str, float | None]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)}


def _hparams_to_wandb(logger: WandbLogger, params: dict[str, Any], metrics: dict[str, float]) -> None:
    run = logger.experiment
    config = dict(run.config)
    plain = {}
    for k, v in params.items():
        v = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
        plain[_final_key(k) if k in config and config[k] != v else k] = v
    run.config.update(plain, allow_val_change=True)
    run.summary.update({_final_key(k): v for k, v in metrics.items()})


def _path_clash(key: str, taken: set[str]) -> bool:
    """MLflow's file store keeps a param as a file named by its key, so ``model`` cannot sit next to
    ``model/name`` (Lightning's flattened module hyper-parameters), nor ``a/b`` next to ``a``."""
    parts = key.split("/")
    return any(t.startswith(f"{key}/") for t in taken) or any("/".join(parts[:i]) in taken for i in range(1, len(parts)))


def _hparams_to_mlflow(logger: MLFlowLogger, params: dict[str, Any], metrics: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric, Param

    client, run_id = logger.experiment, logger.run_id
    held = client.get_run(run_id).data.params  # params are immutable in MLflow: re-logging another value fails
    out: dict[str, str] = {}
    for k, v in params.items():
        value = str(v)[:_MLFLOW_PARAM_LEN]
        for key in (_mlflow_key(k), _mlflow_key(_final_key(k))):
            if key in held or key in out:
                if held.get(key, out.get(key)) in (value, value[:250]):  # already there (Lightning cuts at 250)
                    break
            elif not _path_clash(key, {*held, *out}):
                out[key] = value
                break
    stamp = int(time.time() * 1000)
    entries = [Param(k, v) for k, v in out.items()]
    scores = [Metric(_mlflow_key(_final_key(k)), v, stamp, step) for k, v in metrics.items()]
    for i in range(0, len(entries), _MLFLOW_BATCH):
        client.log_batch(run_id, params=entries[i:i + _MLFLOW_BATCH])
    for i in range(0, len(scores), _MLFLOW_BATCH):
        client.log_batch(run_id, metrics=scores[i:i + _MLFLOW_BATCH])


def hparams_to_trackers(trainer: pl.Trainer, params: dict[str, Any], metrics: dict[str, float]) -> None:
    """The run's hyper-parameters and final metrics in every tracker except TensorBoard (whose HParams
    tab ``segkit.training.fit.log_hparams`` writes in its own order). Final metrics go under
    ``hparams/<metric>`` (as in TensorBoard) so the training curves get no extra point; None values are skipped."""
    if not _rank_zero(trainer):
        return
    scores = _numbers(metrics)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            _hparams_to_wandb(logger, params, scores)
        elif isinstance(logger, MLFlowLogger):
            _hparams_to_mlflow(logger, params, scores, int(getattr(trainer, "global_step", 0) or 0))


def artifact_to_trackers(trainer: pl.Trainer, path: str | Path, name: str = "best_checkpoint") -> None:
    """A file (the best checkpoint) stored with the run in every tracker that keeps artifacts: a W&B
    ``model`` artifact ``<name>-<run id>`` (offline: staged in W&B's data dir, ``WANDB_DATA_DIR``, until
    ``wandb sync``), MLflow's ``checkpoints/<file name>``. TensorBoard keeps none."""
    if not _rank_zero(trainer) or not path or not Path(path).is_file():
        return
    path = Path(path)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            run = logger.experiment
            artifact = wandb.Artifact(re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{name}-{run.id}"), type="model",
                                      metadata={"file": path.name, "global_step": int(getattr(trainer, "global_step", 0) or 0)})
            artifact.add_file(str(path), name=path.name)
            run.log_artifact(artifact, aliases=["best", "latest"])
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_artifact(logger.run_id, str(path), artifact_path="checkpoints")
