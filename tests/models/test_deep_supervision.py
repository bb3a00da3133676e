"""Deep supervision for the U-Net (nnU-Net's): auxiliary outputs in training only, scored against the mask
subsampled to their size with weights 1/2**i; evaluation, prediction and checkpoints see the full-resolution
head alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segkit.errors import SegkitError
from segkit.models.network import SegNetwork, build_network
from segkit.models.unet import UNet
from segkit.training.losses import deep_supervision_loss, deep_supervision_weights
from tests.conftest import TINY_DATA, TINY_MODELS, compose_cfg


def test_training_gives_coarser_outputs_and_inference_the_plain_network():
    torch.manual_seed(0)
    ds = UNet(3, 4, depth=4, base_width=4, deep_supervision=True)
    seg = SegNetwork(ds, ["a", "b", "c", "d"], [0.5] * 3, [0.25] * 3)
    x = torch.randint(0, 256, (2, 3, 70, 75), dtype=torch.uint8)
    seg.train()
    out = seg(x)
    # padded to 80 x 80 inside; each output cropped back at its own scale: ceil(70 / s) x ceil(75 / s)
    assert [tuple(o.shape) for o in out] == [(2, 4, 70, 75), (2, 4, 35, 38), (2, 4, 18, 19)]
    plain = UNet(3, 4, depth=4, base_width=4)  # the same weights (and BatchNorm statistics) without the aux heads
    missing, unexpected = plain.load_state_dict(ds.state_dict(), strict=False)
    assert not missing and sorted(unexpected) == ["aux.0.bias", "aux.0.weight", "aux.1.bias", "aux.1.weight"]
    seg.eval(), plain.eval()
    with torch.no_grad():
        logits = seg(x)
        ref = SegNetwork(plain, ["a", "b", "c", "d"], [0.5] * 3, [0.25] * 3).eval()(x)
    assert isinstance(logits, torch.Tensor) and torch.equal(logits, ref)  # the aux heads leave the main path alone


def test_the_loss_weights_each_scale_as_nnunet_and_keeps_ignored_pixels_ignored():
    assert deep_supervision_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    torch.manual_seed(1)
    target = torch.randint(0, 3, (2, 8, 8))
    target[0, 0, 0] = 255  # an ignored pixel that survives the subsampling
    outs = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2)]
    ce = lambda o, t: F.cross_entropy(o, t, ignore_index=255)  # noqa: E731
    by_hand = (4 * ce(outs[0], target) + 2 * ce(outs[1], target[:, ::2, ::2]) + ce(outs[2], target[:, ::4, ::4])) / 7
    total, full = deep_supervision_loss(ce, outs, target)
    assert total == pytest.approx(float(by_hand), rel=1e-6) and full == pytest.approx(float(ce(outs[0], target)))
    seen = []
    deep_supervision_loss(lambda o, t: seen.append(t) or o.sum() * 0, outs, target)
    assert [int((t == 255).sum()) for t in seen] == [1, 1, 1] and torch.equal(seen[2], target[:, ::4, ::4])


def test_every_auxiliary_head_learns():
    torch.manual_seed(2)
    net = UNet(1, 2, depth=3, base_width=4, deep_supervision=True).train()
    out = net(torch.randn(2, 1, 32, 32))
    deep_supervision_loss(F.cross_entropy, out, torch.randint(0, 2, (2, 32, 32)))[0].backward()
    assert len(out) == 2 and net.aux[0].weight.grad is not None and net.aux[0].weight.grad.abs().sum() > 0


def test_a_network_too_shallow_for_deep_supervision_is_refused_in_one_sentence():
    with pytest.raises(SegkitError, match=r"model.deep_supervision needs model.depth >= 3.*found depth 2"):
        build_network({"name": "unet", "in_channels": 3, "num_classes": 2, "depth": 2, "deep_supervision": True})
    with pytest.raises(SegkitError, match="could not be built"):  # other networks have no deep supervision
        build_network({"name": "segnet", "in_channels": 3, "num_classes": 2, "deep_supervision": True})


def test_a_deeply_supervised_run_trains_checkpoints_and_predicts(tmp_path):
    from segkit.inference.load import load_network
    from segkit.training.fit import train

    cfg = compose_cfg(tmp_path, TINY_DATA + TINY_MODELS["unet"] + ["model.deep_supervision=true", "trainer.max_epochs=2"])
    metrics, objects = train(cfg)
    module = objects["module"]
    assert len(module.network.net.aux) == 1 and torch.isfinite(torch.tensor(metrics["val/miou"]))
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("best*.ckpt"))
    net = load_network(ckpts[0], torch.device("cpu"))
    assert net.model_spec.get("deep_supervision") is True and len(net.net.aux) == 1
    with torch.no_grad():
        logits = net(torch.randint(0, 256, (1, 3, 40, 44), dtype=torch.uint8))
    assert logits.shape == (1, 3, 40, 44)
    # the step optimises the weighted sum over the scales but records the full-resolution loss as train/loss
    module.train()
    batch = {"image": torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8), "mask": torch.randint(0, 3, (2, 64, 64))}
    with torch.no_grad():
        module.network.net.aux[0].weight.mul_(50.0)  # a confident coarse head: its loss differs from the full-resolution one
        outs = module(batch["image"])
        total, full = deep_supervision_loss(module.criterion, outs, batch["mask"])
        module.losses["train_loss"].reset()
        loss, _ = module._step(batch, "train")
    assert float(loss) == pytest.approx(float(total), rel=1e-5) and abs(float(total) - float(full)) > 0.05
    assert float(module.losses["train_loss"].compute()) == pytest.approx(float(full), rel=1e-5)
