"""``SegModule``: trains a ``SegNetwork`` built from registry names; checkpoints of segkit 0.1 (network under
``net.``) resume under today's keys (``network.net.``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from segkit.errors import SegkitError
from segkit.inference.load import read_checkpoint
from segkit.training.fit import train
from segkit.training.module import SegModule, network_state_keys_to_module
from tests.conftest import TINY_DATA, compose_cfg

OLD_CKPT = Path(__file__).resolve().parent.parent / "fixtures" / "segkit_0_1_unet.ckpt"


def test_state_keys_of_both_formats_map_to_todays():
    w = torch.zeros(1)
    assert network_state_keys_to_module({"net.a": w, "criterion.weight": w}) == {"network.net.a": w, "criterion.weight": w}
    today = {"network.net.a": w}
    assert network_state_keys_to_module(today) is today


def test_a_foreign_model_or_optimizer_in_the_module_config_is_refused():
    common = {"loss": {"name": "ce"}, "class_names": ["a", "b"]}
    with pytest.raises(SegkitError, match=r"names model\._target_='numpy\.savetxt', which is not one of segkit's own model classes"):
        SegModule(model={"_target_": "numpy.savetxt", "fname": "x"}, optimizer={"_target_": "torch.optim.Adam"}, **common)
    module = SegModule(model={"name": "unet", "in_channels": 1, "num_classes": 2, "depth": 2, "base_width": 2},
                       optimizer={"_target_": "os.system", "_partial_": True}, **common)
    with pytest.raises(SegkitError, match=r"names optimizer\._target_='os\.system'"):
        module.configure_optimizers()


def test_a_checkpoint_of_the_previous_release_resumes(tmp_path):
    """segkit 0.1's checkpoint (U-Net base 2 depth 2, AdamW, step schedule, one epoch on the synthetic set)
    continues for a second epoch: Lightning restores weights, optimizer, scheduler and loop state."""
    cfg = compose_cfg(tmp_path, TINY_DATA + ["model=unet", "model.base_width=2", "model.depth=2", "scheduler=step",
                                             "trainer.max_epochs=2", f"ckpt_path={OLD_CKPT}", "test=false"])
    before = read_checkpoint(OLD_CKPT)
    assert before["epoch"] == 0 and any(k.startswith("net.") for k in before["state_dict"])
    train(cfg)
    status = json.loads((Path(cfg.paths.output_dir) / "status.json").read_text())
    assert status["status"] == "completed" and status["epochs_trained"] == 2
    after = read_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    assert after["epoch"] == 1 and after["global_step"] == 2 * before["global_step"]
    assert all(k.startswith("network.net.") for k in after["state_dict"] if "net." in k)


def test_swapping_the_network_takes_its_stride_along():
    module = SegModule(model={"name": "unet", "in_channels": 3, "num_classes": 2, "depth": 2, "base_width": 2},
                       optimizer={"_target_": "torch.optim.Adam"}, loss={"name": "ce"}, class_names=["a", "b"])
    assert module.stride == 4
    patch = torch.nn.Conv2d(3, 2, 1)
    patch.output_stride = 1
    module.net = patch
    assert module.network.net is patch and module.stride == 1
    assert module(torch.zeros(1, 3, 5, 7, dtype=torch.uint8)).shape == (1, 2, 5, 7)


def test_training_metrics_count_every_second_pixel_and_validation_every_pixel():
    module = SegModule(model={"name": "unet", "in_channels": 3, "num_classes": 2, "depth": 2, "base_width": 2},
                       optimizer={"_target_": "torch.optim.Adam"}, loss={"name": "ce"}, class_names=["a", "b"])
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randint(0, 256, (2, 3, 12, 9), dtype=torch.uint8, generator=g),
             "mask": torch.randint(0, 2, (2, 12, 9), dtype=torch.uint8, generator=g)}
    with torch.no_grad():
        module._step(batch, "train")
        module._step(batch, "val")
        logits = module(batch["image"])
    train_cm, val_cm = module.metrics["train_cm"].compute(), module.metrics["val_cm"].compute()
    assert int(train_cm.sum()) == 2 * 6 * 5  # rows 0,2,..,10 x columns 0,2,..,8
    assert int(val_cm.sum()) == 2 * 12 * 9
    # the counted pixels are exactly the strided grid, truth in rows and prediction in columns
    pred, truth = logits.argmax(1)[:, ::2, ::2].reshape(-1), batch["mask"][:, ::2, ::2].reshape(-1).long()
    expected = torch.bincount(truth * 2 + pred, minlength=4).reshape(2, 2)
    assert torch.equal(train_cm.long().cpu(), expected)


def test_mixed_precision_trains_in_bf16_but_validates_in_fp32():
    """Under Lightning's bf16-mixed (an autocast region around every step), the loss is taken on fp32 logits and
    validation counts the fp32 network's predictions: what segkit.eval and predict compute from the checkpoint."""
    torch.manual_seed(0)
    module = SegModule(model={"name": "unet", "in_channels": 3, "num_classes": 3, "depth": 2, "base_width": 8},
                       optimizer={"_target_": "torch.optim.Adam"}, loss={"name": "ce_dice"}, class_names=["a", "b", "c"])
    batch = {"image": torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8), "mask": torch.randint(0, 3, (2, 96, 96))}
    module.eval()
    with torch.no_grad():
        fp32 = module(batch["image"]).argmax(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = module(batch["image"]).argmax(1)
            loss, _ = module._step(batch, "train")
            module.validation_step(batch, 0)
    assert (fp32 != bf16).any(), "precondition: a bf16 forward changes some predictions of this network"
    assert loss.dtype == torch.float32
    expected = torch.bincount((batch["mask"] * 3 + fp32).flatten(), minlength=9).reshape(3, 3)
    assert torch.equal(module.metrics["val_cm"].compute().long().cpu(), expected)
