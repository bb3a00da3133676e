"""The run folder: every file a segkit run writes, named once, and how a run is found from a checkpoint.

A training run (``outputs/<task>/runs/<date_time.microseconds>/``)::

    checkpoints/best.ckpt, checkpoints/last.ckpt, checkpoints/postprocess.json (segkit.tune_postprocess)
    .hydra/config.yaml, .hydra/overrides.yaml, .hydra/hydra.yaml   (Hydra's record of the composed config)
    run_config.yaml     the resolved config with absolute data paths (eval / predict rebuild the data from it)
    splits.json         the image stems of each split      data_stats.json   train-split statistics
    plan.yaml           what segkit chose from the data's fingerprint and the budget, and why (segkit.plan)
    status.json         running / completed / failed / interrupted, with the reason
    metrics.json        {"schema_version": 1, "kind": "train", "metrics": {...}, ...}
    tensorboard/<overrides>/   the TensorBoard run, named by its overrides (and best_checkpoint/: final scores)
    progress.png        curves rewritten every validation   train.log   one line per epoch, per-class tables

``segkit.eval`` writes its own folder with ``metrics.json`` of ``kind`` ``eval``. Everything that reads a run
(resume, eval, predict, compare, summarize) goes through this module. Files read back are data: configs
found here are checked against :mod:`segkit.registry` before anything is built from them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segkit.errors import SegkitError

CHECKPOINTS = "checkpoints"
BEST_CKPT = "best.ckpt"
LAST_CKPT = "last.ckpt"
POSTPROCESS = "postprocess.json"
HYDRA_DIR = ".hydra"
RUN_CONFIG = "run_config.yaml"
SPLITS = "splits.json"
DATA_STATS = "data_stats.json"
STATUS = "status.json"
METRICS = "metrics.json"
TENSORBOARD = "tensorboard"
PROGRESS_PNG = "progress.png"
PLAN = "plan.yaml"

#: metrics.json: version of its layout, and the kinds of run that write one
METRICS_SCHEMA_VERSION = 1
METRICS_KINDS = ("train", "eval")
#: a folder holding one of these is a run folder
MARKERS = (STATUS, METRICS, f"{HYDRA_DIR}/overrides.yaml")


@dataclass(frozen=True)
class RunDir:
    """The files of one run folder (paths; nothing is read until asked)."""

    path: Path

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def best_ckpt(self) -> Path:
        return self.checkpoints / BEST_CKPT

    @property
    def last_ckpt(self) -> Path:
        return self.checkpoints / LAST_CKPT

    @property
    def hydra_config(self) -> Path:
        return self.path / HYDRA_DIR / "config.yaml"

    @property
    def hydra_overrides(self) -> Path:
        return self.path / HYDRA_DIR / "overrides.yaml"

    @property
    def hydra_job(self) -> Path:
        return self.path / HYDRA_DIR / "hydra.yaml"

    @property
    def run_config(self) -> Path:
        return self.path / RUN_CONFIG

    @property
    def splits(self) -> Path:
        return self.path / SPLITS

    @property
    def data_stats(self) -> Path:
        return self.path / DATA_STATS

    @property
    def status(self) -> Path:
        return self.path / STATUS

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD

    @property
    def plan(self) -> Path:
        return self.path / PLAN

    @property
    def progress_png(self) -> Path:
        return self.path / PROGRESS_PNG

    def log_file(self, task: str = "train") -> Path:
        """The command's log (``train.log``, ``eval.log``, ...): what it printed, with time stamps."""
        return self.path / f"{task}.log"

    def in_sweep(self) -> bool:
        """A trial of a Hydra multirun: its parent, the sweep dir, holds Hydra's ``multirun.yaml``."""
        return (self.path.parent / "multirun.yaml").is_file()

    def is_run(self) -> bool:
        return any((self.path / m).is_file() for m in MARKERS)

    def config_file(self) -> Path | None:
        """``run_config.yaml`` (resolved, absolute data paths), else ``.hydra/config.yaml``, else None."""
        return next((p for p in (self.run_config, self.hydra_config) if p.is_file()), None)

    def read_status(self) -> dict[str, Any] | None:
        return read_json(self.status) if self.status.is_file() else None

    def read_metrics(self) -> dict[str, Any] | None:
        """``metrics.json`` with its ``kind`` (files of segkit 0.1 have none: it is inferred from their shape)."""
        return read_metrics(self.metrics) if self.metrics.is_file() else None

    def kind(self) -> str | None:
        """The command that wrote this folder: train, eval, predict, tune_postprocess, ... (None if unknown)."""
        if self.status.is_file():  # only segkit.train writes status.json
            return "train"
        if self.metrics.is_file():
            return str(self.read_metrics().get("kind"))
        if self.hydra_job.is_file():
            match = re.search(r"^  job:\n    name: (\S+)", self.hydra_job.read_text(errors="replace"), re.M)
            if match:
                return match.group(1)
        return None

    def best_checkpoint(self) -> Path:
        """The checkpoint ``metrics.json`` names (the best by ``optimized_metric``), else ``checkpoints/best.ckpt``."""
        recorded = (self.read_metrics() or {}).get("checkpoint")
        ckpt = Path(recorded) if recorded and Path(recorded).is_file() else self.best_ckpt
        if not ckpt.is_file():
            raise SegkitError(f"run '{self.path}' has no checkpoint ({ckpt} does not exist and {METRICS} names none that exists); "
                              "expected a completed segkit.train run")
        return ckpt


def run_of_checkpoint(ckpt: str | os.PathLike) -> RunDir | None:
    """The run folder a checkpoint belongs to (``<run>/checkpoints/<name>.ckpt``), or None for a checkpoint
    kept anywhere else."""
    path = Path(ckpt).resolve()
    return RunDir(path.parent.parent) if path.parent.name == CHECKPOINTS else None


def postprocess_file(ckpts: str | os.PathLike | Sequence[str | os.PathLike]) -> Path:
    """Where ``segkit.tune_postprocess`` records its choice for a checkpoint (``postprocess.json`` beside it)
    or an ensemble: for an ensemble, whose average does not depend on the members' order,
    ``postprocess_ensemble_<id>.json`` beside the member whose resolved path sorts first, the id from the
    sorted resolved paths."""
    import hashlib

    if isinstance(ckpts, str | os.PathLike):
        return Path(ckpts).parent / POSTPROCESS
    members = sorted({Path(p).resolve() for p in ckpts})
    if len(members) == 1:
        return members[0].parent / POSTPROCESS
    ident = hashlib.sha256("\n".join(str(p) for p in members).encode()).hexdigest()[:12]
    return members[0].parent / f"postprocess_ensemble_{ident}.json"


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise SegkitError(f"cannot read '{path}': {err}; expected a JSON file written by segkit") from None
    if not isinstance(data, dict):
        raise SegkitError(f"'{path}' holds a JSON {type(data).__name__}; expected an object written by segkit")
    return data


def read_metrics(path: Path) -> dict[str, Any]:
    """A ``metrics.json``; a file without ``kind`` (segkit 0.1) is ``eval`` when its ``metrics`` are nested
    per aggregation (``pooled`` / ``mean_over_images``), else ``train``."""
    data = read_json(path)
    if "kind" not in data:
        nested = any(isinstance(v, dict) for v in (data.get("metrics") or {}).values())
        data = {"schema_version": 0, "kind": "eval" if nested else "train", **data}
    return data


def write_metrics(path: Path, kind: str, payload: dict[str, Any]) -> Path:
    """Write ``metrics.json`` of ``kind`` (atomically: a reader never sees half a file)."""
    if kind not in METRICS_KINDS:
        raise ValueError(f"metrics kind {kind!r}; expected one of {METRICS_KINDS}")
    record = {"schema_version": METRICS_SCHEMA_VERSION, "kind": kind, **payload}
    return write_json(path, record)


def write_json(path: Path, record: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2, default=float) + "\n")
    os.replace(tmp, path)
    return path
