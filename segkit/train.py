"""Train a segmentation model: ``python -m segkit.train [group=option ...] [key=value ...]``.

Compose (Hydra) -> check the values (:func:`segkit.config_check.check_config`) -> resume the run a checkpoint
names, if any -> :func:`segkit.training.fit.train` -> return ``cfg.optimized_metric`` so any Hydra sweeper
can optimise it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from segkit import CONF_DIR, rundir
from segkit.config_check import check_config
from segkit.errors import exit_on_user_error
from segkit.training.cleanup import discard_unused_run_dir
from segkit.training.job import _multirun_job, task_overrides


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Single runs: a user error is one sentence and exit status 2; one found before anything was written
    (a bad value: checked before any data is read) leaves no run folder behind, unless it resumes a run.
    Sweep trials: a failed trial (bad value, NaN loss, out of memory) is recorded in its status.json,
    returns NaN (Optuna marks it failed) and the sweep goes on."""
    in_sweep = _multirun_job() is not None
    resuming = OmegaConf.select(cfg, "ckpt_path", default=None, throw_on_resolution_failure=False) is not None
    with exit_on_user_error(), discard_unused_run_dir(enabled=not resuming):
        try:
            check_config(cfg, "train")
            # Lightning (about 10 s to import on the development machine) only once the values are good, so a
            # typo on the command line is answered at once
            from segkit.training.resume import resume_config

            cfg = resume_config(cfg, task_overrides())  # refuses a foreign checkpoint or run folder before Lightning loads
            from segkit.training.fit import train

            if resuming:
                check_config(cfg, "train")  # the resumed run's own config with the overrides given now
            metrics, _ = train(cfg)
        except Exception as err:
            if not in_sweep:
                raise
            from segkit.training.records import _now, failure_reason, write_status

            print(f"segkit: trial {cfg.paths.output_dir} failed: {failure_reason(err)}; the sweep goes on", file=sys.stderr, flush=True)
            if not rundir.RunDir(Path(cfg.paths.output_dir)).status.is_file():  # failed before train() started
                write_status(Path(cfg.paths.output_dir), "failed", reason=failure_reason(err), finished_at=_now(),
                             overrides=task_overrides(), stage="setup")
            return float("nan")
    value = metrics.get(cfg.get("optimized_metric"))
    return value


if __name__ == "__main__":
    main()
