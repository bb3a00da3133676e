"""Every option of every config group composes, resolves and builds its object."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from segkit import CONF_DIR
from segkit.losses import build_loss
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
        build_loss(num_classes=3, **{k: v for k, v in plain["loss"].items() if k not in ("class_weights", "weight_method")},
                   class_weights=[1.0, 2.0, 3.0])
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

    from segkit.module import SegModule

    for option in _options("scheduler"):
        cfg = compose_cfg(tmp_path, [f"scheduler={option}", "model.base_width=2", "model.depth=1"])
        module = SegModule(model=to_plain(cfg.model), loss=to_plain(cfg.loss), optimizer=to_plain(cfg.optimizer),
                           scheduler=to_plain(cfg.scheduler) or None, class_names=["a", "b", "c"])
        out = module.configure_optimizers()
        if option == "none":
            assert isinstance(out, torch.optim.Optimizer)
        else:
            assert out["lr_scheduler"]["interval"] in ("epoch", "step")
