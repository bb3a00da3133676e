"""``segkit.registry``: what segkit builds from a file is named by segkit's own registry, never by a file's
``_target_``; every target of segkit's own configs is accepted at its place, anything else refused."""

from __future__ import annotations

import re

import pytest
import torch
import yaml

from segkit import CONF_DIR, registry
from segkit.errors import SegkitError
from segkit.models import UNet
from segkit.models.network import build_network

#: config group folder -> the registry kind its _target_ must have when read back from a run folder
GROUP_KINDS = {"data": "data", "model": "model", "optimizer": "optimizer", "scheduler": "scheduler", "trainer": "trainer",
               "callbacks": "callback", "logger": "logger"}


def _targets(node, found):
    if isinstance(node, dict):
        if "_target_" in node:
            found.append(node["_target_"])
        for v in node.values():
            _targets(v, found)
    return found


@pytest.mark.parametrize("group", sorted(GROUP_KINDS))
def test_every_target_of_segkits_own_configs_is_in_the_registry(group):
    files = sorted((CONF_DIR / group).glob("*.yaml"))
    targets = [t for f in files for t in _targets(yaml.safe_load(f.read_text()) or {}, [])]
    assert targets, f"no _target_ in conf/{group}"
    for target in targets:
        canonical = registry.check_target(GROUP_KINDS[group], target, f"conf/{group}", "_target_")
        assert registry.import_target(canonical) is not None


@pytest.mark.parametrize(("kind", "target"), [
    ("model", "os.system"), ("model", "numpy.savetxt"), ("model", "segkit.models.ResNet9000"),
    ("model", "${oc.env:HOME}"), ("optimizer", "numpy.load"), ("scheduler", "builtins.exec"),
    ("data", "segkit.models.UNet"),  # a segkit class, but not a dataset: refused at the data key
    ("callback", "pytorch_lightning.Trainer"), ("logger", "pickle.loads"), ("trainer", "subprocess.run"),
])
def test_foreign_targets_are_refused_with_the_file_key_and_value(kind, target):
    with pytest.raises(SegkitError) as err:
        registry.check_target(kind, target, "/runs/x/.hydra/config.yaml", f"{kind}._target_")
    msg = str(err.value)
    assert msg.startswith("'/runs/x/.hydra/config.yaml' names ") and repr(target) in msg
    assert f"not one of segkit's own {kind} classes" in msg and "\n" not in msg


def test_targets_of_the_previous_release_are_rewritten_to_todays_names():
    assert registry.check_target("callback", "segkit.callbacks.ValidationPanel", "f", "k") == "segkit.training.callbacks.ValidationPanel"
    assert registry.check_target("callback", "segkit.checkpointing.BestAndLastCheckpoint", "f", "k") == \
        "segkit.training.checkpointing.BestAndLastCheckpoint"
    assert registry.check_target("scheduler", "segkit.schedulers.ExponentialDecayLR", "f", "k") == \
        "segkit.training.schedulers.ExponentialDecayLR"
    assert registry.check_target("optimizer", "torch.optim.adamw.AdamW", "f", "k") == "torch.optim.AdamW"


def test_a_nested_target_anywhere_in_a_run_config_is_refused():
    base = {"data": {"_target_": "segkit.data.SegDataModule", "root": "x"}, "trainer": {"_target_": "pytorch_lightning.Trainer"}}
    assert registry.check_config_targets(base, "cfg.yaml")["data"]["_target_"] == "segkit.data.SegDataModule"
    for bad, key in [
        ({**base, "data": {**base["data"], "augment": {"_target_": "numpy.savetxt"}}}, "data.augment._target_"),
        ({**base, "trainer": {**base["trainer"], "plugins": [{"_target_": "os.system"}]}}, "trainer.plugins[0]._target_"),
        ({**base, "paths": {"x": {"_target_": "os.system"}}}, "paths.x._target_"),
        ({**base, "loss": {"name": "ce", "_args_": ["rm -rf"]}}, "loss._args_"),
    ]:
        with pytest.raises(SegkitError, match=r"'cfg\.yaml' holds " + re.escape(key) + "="):
            registry.check_config_targets(bad, "cfg.yaml")


def test_networks_are_built_by_name_or_by_a_segkit_target_alike():
    torch.manual_seed(0)
    by_name = build_network({"name": "unet", "in_channels": 3, "num_classes": 2, "depth": 2, "base_width": 2})
    torch.manual_seed(0)
    by_target = build_network({"_target_": "segkit.models.UNet", "in_channels": 3, "num_classes": 2, "depth": 2, "base_width": 2,
                               "compile": False})
    assert type(by_name) is type(by_target) is UNet
    for a, b in zip(by_name.state_dict().values(), by_target.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_unknown_networks_and_arguments_are_one_sentence():
    with pytest.raises(SegkitError, match=r"'m\.ckpt' names model\.name='resnet9000', which is not a segkit network; expected one of unet"):
        build_network({"name": "resnet9000"}, "m.ckpt")
    with pytest.raises(SegkitError, match=r"'m\.ckpt': model unet could not be built from \['depht', 'in_channels', 'num_classes'\]"):
        build_network({"name": "unet", "in_channels": 3, "num_classes": 2, "depht": 2}, "m.ckpt")
    with pytest.raises(SegkitError, match=r"gives model\.pretrained_cfg_overlay, which segmentation_models_pytorch's FPN does not take"):
        build_network({"name": "smp", "arch": "FPN", "encoder": "resnet18", "in_channels": 3, "num_classes": 2,
                       "pretrained_cfg_overlay": "x"}, "m.ckpt")


def test_loss_specs_are_names_never_targets():
    assert registry.check_loss_spec({"name": "ce_dice", "dice_lambda": 2.0, "class_weights": "auto"}, "f") == \
        {"name": "ce_dice", "dice_lambda": 2.0}
    with pytest.raises(SegkitError, match=r"names loss\._target_='numpy\.savetxt'; segkit builds losses only by loss\.name"):
        registry.check_loss_spec({"_target_": "numpy.savetxt", "name": "ce"}, "f")
    with pytest.raises(SegkitError, match=r"names loss\.name='hinge'; expected one of ce, weighted_ce, dice, ce_dice, focal, tversky, lovasz"):
        registry.check_loss_spec({"name": "hinge"}, "f")


def test_optimizers_and_schedulers_come_from_torch_and_segkit_only():
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = registry.build_optimizer({"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1, "momentum": 0.9}, params, "f")
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    sched = registry.build_scheduler({"_target_": "segkit.schedulers.ExponentialDecayLR", "_partial_": True, "decay_rate": 0.5,
                                      "decay_steps": 1}, opt, "f")
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    with pytest.raises(SegkitError, match="not one of segkit's own optimizer classes"):
        registry.build_optimizer({"_target_": "numpy.savetxt"}, params, "f")
