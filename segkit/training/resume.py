"""Resuming a run: ``ckpt_path=last`` or a checkpoint path -> the run's own directory, config, split and
statistics."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from segkit import rundir
from segkit.errors import SegkitError
from segkit.inference.load import read_checkpoint
from segkit.registry import check_config_targets, check_hyper_parameters


def resolve_ckpt_path(ckpt_path: str | None, log_dir: str, task_name: str) -> str | None:
    """``last``: the newest ``checkpoints/last.ckpt`` under ``<log_dir>/<task_name>/runs``; a path must exist."""
    if ckpt_path is None:
        return None
    if str(ckpt_path) == "last":
        found = sorted(Path(log_dir, task_name, "runs").glob(f"*/{rundir.CHECKPOINTS}/{rundir.LAST_CKPT}"))
        if not found:
            raise SegkitError(f"ckpt_path=last found no checkpoints/last.ckpt under '{Path(log_dir, task_name, 'runs')}'; expected an earlier run there")
        return str(found[-1])
    if not Path(ckpt_path).is_file():
        raise SegkitError(f"ckpt_path '{ckpt_path}' does not exist; expected a .ckpt file written by segkit (or 'last')")
    return str(ckpt_path)


#: config groups of conf/train.yaml: a resumed run keeps the ones it was started with
CONFIG_GROUPS = ("data", "model", "loss", "optimizer", "scheduler", "trainer", "logger", "callbacks", "paths",
                 "hydra", "experiment", "debug", "hparams_search")


def resume_config(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """``ckpt_path=last`` or a checkpoint inside a segkit run directory: continue THAT run, in its own
    directory, with its own config (``.hydra/config.yaml``), split and statistics; the same TensorBoard
    run gets the new points. Plain ``key=value`` overrides given now still apply (e.g. a larger
    ``trainer.max_epochs``); config groups cannot change. A checkpoint outside a run directory starts a
    new run from those weights and optimizer state.

    Both files are data: the checkpoint's hyper-parameters and every ``_target_`` of the saved config must
    name segkit's own classes (``segkit.registry``), or the resume is refused before anything is built."""
    ckpt = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.log_dir, cfg.task_name)
    if ckpt is None:
        return cfg
    ckpt_file = Path(ckpt).resolve()
    state = read_checkpoint(ckpt_file)
    check_hyper_parameters(state.get("hyper_parameters"), ckpt_file)
    run = rundir.run_of_checkpoint(ckpt_file)
    if run is None or not run.hydra_config.is_file():
        with open_dict(cfg):
            cfg.ckpt_path = str(ckpt_file)
        return cfg
    run_dir, saved = run.path, run.hydra_config
    original = OmegaConf.load(run.hydra_overrides) if run.hydra_overrides.is_file() else []
    resumed = OmegaConf.create(check_config_targets(OmegaConf.to_container(OmegaConf.load(saved), resolve=False), saved))
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override, parsed in zip(overrides, OverridesParser.create().parse_overrides(overrides), strict=True):
        key = parsed.key_or_group
        if key == "ckpt_path" or key.startswith("hydra") or parsed.is_delete():
            continue
        if key.split("/")[0] in CONFIG_GROUPS and "." not in key:
            if override not in original:
                raise SegkitError(
                    f"'{override}': a resumed run keeps the config groups it was started with ({run.hydra_overrides}); "
                    "expected only key=value overrides such as trainer.max_epochs=60 next to ckpt_path"
                )
            continue
        OmegaConf.update(resumed, key, parsed.value(), merge=True, force_add=True)
    with open_dict(resumed):
        resumed.paths.output_dir = str(run_dir)
        resumed.ckpt_path = str(ckpt_file)
        if resumed.data.get("split_file") is None and run.splits.is_file():
            resumed.data.split_file = str(run.splits)
    epoch = state.get("epoch", -1) + 1
    from pytorch_lightning.utilities import rank_zero_info  # Lightning only once a run is really resumed

    rank_zero_info(f"segkit: resuming run {run_dir} after epoch {epoch} from {ckpt_file.name} (its own config, split and TensorBoard run)")
    return resumed
