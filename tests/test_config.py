"""Every option of every config group composes, resolves and builds its object."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from segkit import CONF_DIR
from segkit.training.losses import build_loss
from tests.conftest import compose_cfg, to_plain

GROUPS = ["data", "model", "loss", "optimizer", "scheduler", "trainer", "logger", "callbacks", "paths", "debug"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_option_composes_and_resolves(tmp_path, group, option):
    cfg = compose_cfg(tmp_path, [f"{group}={option}"])
    plain = to_plain(cfg)
    assert plain["data"]["num_classes"] == len(plain["data"]["class_names"])
    if group == "model":
        assert plain["model"]["num_classes"] == plain["data"]["num_classes"]
    if group == "loss":
        weights = None if option == "lovasz" else [1.0, 2.0, 3.0]  # Lovasz has no class weights (refused: tests/training/test_rare_class_losses.py)
        build_loss(num_classes=3, **{k: v for k, v in plain["loss"].items() if k not in ("class_weights", "weight_method")},
                   class_weights=weights)
    if group == "optimizer":
        import torch

        opt = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))])
        assert opt.param_groups[0]["lr"] == pytest.approx(plain["lr"])


def test_top_level_lr_reaches_every_optimizer(tmp_path):
    for option in _options("optimizer"):
        cfg = compose_cfg(tmp_path, [f"optimizer={option}", "lr=0.123"])
        assert cfg.optimizer.lr == pytest.approx(0.123)
    assert compose_cfg(tmp_path, ["optimizer.lr=0.5"]).optimizer.lr == pytest.approx(0.5)


def test_user_facing_keys_exist(tmp_path):
    cfg = compose_cfg(tmp_path, ["seed=0", "ckpt_path=x.ckpt", "data.root=/d", "data.batch_size=3", "data.crop_size=96",
                                 "trainer.max_epochs=7", "lr=0.01"])
    assert (cfg.seed, cfg.ckpt_path, cfg.data.root, cfg.data.batch_size, cfg.data.crop_size, cfg.trainer.max_epochs) == (
        0, "x.ckpt", "/d", 3, 96, 7)
    assert cfg.optimized_metric == "val/miou"


def test_schedulers_build(tmp_path):
    import torch

    from segkit.training.module import SegModule

    for option in _options("scheduler"):
        cfg = compose_cfg(tmp_path, [f"scheduler={option}", "model.base_width=2", "model.depth=1"])
        module = SegModule(model=to_plain(cfg.model), loss=to_plain(cfg.loss), optimizer=to_plain(cfg.optimizer),
                           scheduler=to_plain(cfg.scheduler) or None, class_names=["a", "b", "c"])
        out = module.configure_optimizers()
        if option == "none":
            assert isinstance(out, torch.optim.Optimizer)
        else:
            assert out["lr_scheduler"]["interval"] in ("epoch", "step")


@pytest.mark.parametrize(
    "overrides, expect",
    [
        (["hparams_search=optuna"], {"hydra.sweeper._target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
                                     "hydra.sweeper.direction": "maximize", "hydra.sweeper.max_failure_rate": 1.0}),
        (["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], {"hydra.launcher._target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
                                                                   "hydra.launcher.partition": "gpu", "hydra.launcher.gpus_per_node": 1}),
        (["hydra/launcher=local_parallel"], {"hydra.launcher._target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
                                             "hydra.launcher.n_jobs": 2}),
    ],
)
def test_sweeper_and_launcher_configs_compose(tmp_path, overrides, expect):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from segkit import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    for key, value in expect.items():
        assert OmegaConf.select(cfg, key) == value, key
    if "hparams_search=optuna" in overrides:
        assert set(cfg.hydra.sweeper.params) == {"lr", "optimizer.weight_decay", "loss.dice_lambda", "model.base_width"}


def test_sweep_safe_strategy():
    from segkit.training.trainer import sweep_safe_strategy

    assert sweep_safe_strategy({"strategy": "ddp", "devices": 2})[0] == "ddp_spawn"
    assert sweep_safe_strategy({"strategy": "ddp_find_unused_parameters_true", "devices": -1})[0] == "ddp_spawn_find_unused_parameters_true"
    assert sweep_safe_strategy({"strategy": "ddp", "devices": 1, "num_nodes": 2})[0] == "ddp_spawn"
    assert sweep_safe_strategy({"strategy": "ddp", "devices": 1}) == ("ddp", None)
    assert sweep_safe_strategy({"strategy": "auto", "devices": 4}) == ("auto", None)
    assert sweep_safe_strategy({"strategy": "ddp_spawn", "devices": 2}) == ("ddp_spawn", None)
