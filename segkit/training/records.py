"""What a training run writes about itself besides checkpoints and logs: ``status.json`` (running /
completed / failed / interrupted, with a one-sentence reason) and ``run_config.yaml`` (the resolved config)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException

from segkit import rundir
from segkit.data import SegDataModule
from segkit.errors import SegkitError


def _now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def write_status(output_dir: Path, status: str, **fields: Any) -> None:
    """``status.json`` of a run: running / completed / failed (with a one-sentence reason). A run killed
    outright (SIGKILL, power loss) stays ``running``; ``segkit.summarize`` shows it as such."""
    run = rundir.RunDir(Path(output_dir))
    record = json.loads(run.status.read_text()) if run.status.is_file() else {}
    record.update({"status": status, **fields})
    rundir.write_json(run.status, record)


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


def write_run_config(cfg: DictConfig, output_dir: Path, dm: SegDataModule) -> None:
    """``run_config.yaml``: the resolved config with an absolute ``data.root``, so ``segkit.eval`` and
    ``segkit.predict`` can rebuild the run's data from anywhere (``.hydra/`` keeps the raw one)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain["data"]["root"] = str(Path(dm.root).resolve())
    if plain["data"].get("cache_dir"):
        plain["data"]["cache_dir"] = str(Path(plain["data"]["cache_dir"]).resolve())
    output_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(plain), rundir.RunDir(output_dir).run_config)
