"""Crash-safe checkpoints: every ``.ckpt`` is written to a temporary file in the same directory, flushed
to disk, then renamed over the old one (``os.replace`` is atomic on POSIX and Windows). A process
killed at any moment leaves either the previous complete checkpoint or the new complete one, never
a truncated file; a full or read-only disk raises one clear sentence and leaves the previous
checkpoint as it was.

Loading is always ``weights_only=True`` (:func:`segkit.inference.load.read_checkpoint`): a segkit checkpoint
holds tensors and primitive hyper-parameters only, so unpickling a ``.ckpt`` runs no code; what is built from
those values afterwards comes from segkit's registry (``segkit.registry``).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins import TorchCheckpointIO

from segkit.errors import SegkitError
from segkit.inference.load import read_checkpoint


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through a temporary sibling file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        reason = {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is read-only",
                  errno.EACCES: "permission denied", errno.EDQUOT: "the disk quota is exceeded"}.get(e.errno, e.strerror or str(e))
        kept = f"the previous '{path.name}' is intact" if path.exists() else "no earlier checkpoint of that name existed"
        raise SegkitError(f"could not write checkpoint '{path}': {reason}; {kept}. Free space or set paths.log_dir to a writable disk, then resume with ckpt_path=last") from e
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint plugin: atomic writes, ``weights_only`` reads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO takes no storage_options; got {storage_options!r}")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = lambda storage, loc: storage, weights_only: bool | None = None) -> dict[str, Any]:
        if not Path(path).is_file():
            raise SegkitError(f"checkpoint '{path}' does not exist; expected a .ckpt file written by segkit")
        return read_checkpoint(path, map_location=map_location)


class BestAndLastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` is rewritten after EVERY validation (and after every epoch
    that did not validate).

    Lightning 2.6 rewrites ``last.ckpt`` only when a top-k checkpoint was saved in the same step, so
    after the best epoch it stops moving and a run killed later would resume from its best epoch, not
    from where it stopped. ``best.ckpt`` keeps Lightning's rules.
    """

    _validated_epoch: int | None = None

    def _last_too(self, trainer: pl.Trainer, on_train_epoch_end: bool) -> None:
        if not self.save_last or self._should_skip_saving_checkpoint(trainer):  # skipped also when saved at this step
            return
        on_epoch = self._should_save_on_train_epoch_end(trainer)
        # an epoch that did not validate (check_val_every_n_epoch > 1, budget=...) still rewrites last.ckpt
        unvalidated = on_train_epoch_end and not on_epoch and self._validated_epoch != trainer.current_epoch
        if on_epoch == on_train_epoch_end or unvalidated:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._last_too(trainer, on_train_epoch_end=True)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not trainer.sanity_checking:
            self._validated_epoch = trainer.current_epoch
        self._last_too(trainer, on_train_epoch_end=False)


def save_module(module: Any, path: str | os.PathLike) -> Path:
    """``module`` (a :class:`~segkit.training.module.SegModule`) saved as ``segkit.train`` saves a checkpoint, without
    training it (benchmarks and tests that need a checkpoint of given weights)."""
    import pytorch_lightning as pl

    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1)
    trainer.strategy.connect(module)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(path)
    return path
