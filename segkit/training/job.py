"""This process's Hydra job, when there is one: its command-line overrides and its number inside a sweep
(multirun). Every function answers sensibly when ``train`` is called without Hydra (tests, notebooks)."""

from __future__ import annotations

import os
from typing import Any


def _hydra_config() -> Any | None:
    """This job's Hydra config, or None when ``train`` is called without Hydra (tests, notebooks)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def _multirun_job() -> int | None:
    """This job's number inside a Hydra multirun (sweep), else None."""
    from hydra.types import RunMode

    hc = _hydra_config()
    return int(hc.job.num) if hc is not None and hc.mode == RunMode.MULTIRUN else None


def task_overrides() -> list[str]:
    """The command-line overrides of this Hydra job (empty when ``train`` is called without Hydra)."""
    hc = _hydra_config()
    return list(hc.overrides.task) if hc is not None else []


def _processes_created_externally() -> bool:
    """SLURM (srun started one task per device) or torchrun started the processes: DDP attaches to them."""
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "TORCHELASTIC_RUN_ID" in os.environ
