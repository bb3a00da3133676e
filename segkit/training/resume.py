"""Resuming a run: ``ckpt_path=last`` or a checkpoint path -> the run's own directory, config, split and
statistics."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.utilities import rank_zero_info

from segkit.errors import SegkitError
from segkit.training.checkpointing import load_checkpoint_dict


def resolve_ckpt_path(ckpt_path: str | None, log_dir: str, task_name: str) -> str | None:
    """``last``: the newest ``checkpoints/last.ckpt`` under ``<log_dir>/<task_name>/runs``; a path must exist."""
    if ckpt_path is None:
        return None
    if str(ckpt_path) == "last":
        found = sorted(Path(log_dir, task_name, "runs").glob("*/checkpoints/last.ckpt"))
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
    new run from those weights and optimizer state."""
    ckpt = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.log_dir, cfg.task_name)
    if ckpt is None:
        return cfg
    ckpt_file = Path(ckpt).resolve()
    run_dir = ckpt_file.parent.parent
    saved = run_dir / ".hydra" / "config.yaml"
    if ckpt_file.parent.name != "checkpoints" or not saved.is_file():
        with open_dict(cfg):
            cfg.ckpt_path = str(ckpt_file)
        return cfg
    original = OmegaConf.load(run_dir / ".hydra" / "overrides.yaml") if (run_dir / ".hydra" / "overrides.yaml").is_file() else []
    resumed = OmegaConf.load(saved)
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override, parsed in zip(overrides, OverridesParser.create().parse_overrides(overrides), strict=True):
        key = parsed.key_or_group
        if key == "ckpt_path" or key.startswith("hydra") or parsed.is_delete():
            continue
        if key.split("/")[0] in CONFIG_GROUPS and "." not in key:
            if override not in original:
                raise SegkitError(
                    f"'{override}': a resumed run keeps the config groups it was started with ({run_dir / '.hydra' / 'overrides.yaml'}); "
                    "expected only key=value overrides such as trainer.max_epochs=60 next to ckpt_path"
                )
            continue
        OmegaConf.update(resumed, key, parsed.value(), merge=True, force_add=True)
    with open_dict(resumed):
        resumed.paths.output_dir = str(run_dir)
        resumed.ckpt_path = str(ckpt_file)
        if resumed.data.get("split_file") is None and (run_dir / "splits.json").is_file():
            resumed.data.split_file = str(run_dir / "splits.json")
    epoch = load_checkpoint_dict(ckpt_file).get("epoch", -1) + 1
    rank_zero_info(f"segkit: resuming run {run_dir} after epoch {epoch} from {ckpt_file.name} (its own config, split and TensorBoard run)")
    return resumed
