"""``segkit.inference.load``: ``load_network`` rebuilds the trained ``SegNetwork`` from a checkpoint with torch
alone, equals ``SegModule.forward``, loads checkpoints of the previous release, and refuses files that are not
segkit's own (tested against crafted checkpoints in tests/test_crafted_inputs.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segkit.errors import SegkitError
from segkit.inference.load import load_network, network_state_dict
from segkit.models.network import SegNetwork
from segkit.training.module import SegModule
from tests.conftest import CKPT_CLASSES, CKPT_MEAN, CKPT_MODELS, REPO, cli_env, tiny_checkpoint

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
#: written by segkit 0.1 (commit 032f432, before SegNetwork): keys net.*, scheduler segkit.schedulers.ExponentialDecayLR
OLD_CKPT = FIXTURES / "segkit_0_1_unet.ckpt"
OLD_LOGITS = FIXTURES / "segkit_0_1_unet_logits.pt"

FAMILIES = {**CKPT_MODELS, "fcn_cardiac": {"_target_": "segkit.models.CardiacFCN", "width": 4}}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_load_network_equals_segmodule_forward(name, tmp_path, monkeypatch):
    monkeypatch.setitem(CKPT_MODELS, name, FAMILIES[name])
    path = tiny_checkpoint(tmp_path / "checkpoints" / "best.ckpt", name)
    module = SegModule.load_from_checkpoint(path, map_location="cpu", weights_only=True).eval()
    network = load_network(path)
    assert isinstance(network, SegNetwork) and not network.training
    assert network.class_names == CKPT_CLASSES and network.stride == module.stride
    assert network.norm_mean.flatten().tolist() == pytest.approx(CKPT_MEAN)
    # two sizes: one not a multiple of the stride, one smaller than the padding (replicate instead of reflect)
    for size in [(2, 3, 37, 53), (1, 3, 5, 13)]:
        image = torch.randint(0, 256, size, dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            expected, got = module(image), network(image)
        assert got.shape == (size[0], len(CKPT_CLASSES), size[2], size[3])
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_a_checkpoint_of_the_previous_release_still_loads_and_predicts_the_same():
    state = torch.load(OLD_CKPT, weights_only=True)
    assert any(k.startswith("net.") for k in state["state_dict"]) and not any(k.startswith("network.") for k in state["state_dict"])
    recorded = torch.load(OLD_LOGITS, weights_only=True)
    network = load_network(OLD_CKPT)
    with torch.no_grad():
        torch.testing.assert_close(network(recorded["image"]), recorded["logits"], rtol=1e-5, atol=1e-5)
    # and through Lightning (resume / validate): the old keys are mapped onto SegModule.network
    module = SegModule.load_from_checkpoint(OLD_CKPT, map_location="cpu", weights_only=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(module(recorded["image"]), recorded["logits"], rtol=1e-5, atol=1e-5)


def test_network_state_dict_reads_both_formats():
    w = torch.zeros(1)
    assert network_state_dict({"net.a": w, "criterion.b": w}) == {"net.a": w}
    assert network_state_dict({"network.net.a": w, "network.norm_mean": w}) == {"net.a": w}


def test_weights_that_do_not_fit_the_named_network_are_one_sentence(tmp_path):
    path = tiny_checkpoint(tmp_path / "a.ckpt", "unet")
    state = torch.load(path, weights_only=True)
    state["hyper_parameters"]["model"]["base_width"] = 8  # the weights were made with base_width 4
    torch.save(state, tmp_path / "b.ckpt")
    with pytest.raises(SegkitError, match=r"the weights in '.*b\.ckpt' do not fit the network its hyper-parameters name"):
        load_network(tmp_path / "b.ckpt")


def test_non_segkit_checkpoints_are_refused(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.ckpt")
    with pytest.raises(SegkitError, match=r"'.*foreign\.ckpt' is not a segkit checkpoint \(its hyper_parameters are NoneType\)"):
        load_network(tmp_path / "foreign.ckpt")
    with pytest.raises(SegkitError, match=r"ckpt_path '.*nope\.ckpt' does not exist"):
        load_network(tmp_path / "nope.ckpt")


def test_importing_inference_needs_neither_lightning_nor_matplotlib_nor_hydra():
    code = ("import sys, segkit.inference, segkit.inference.load, segkit.inference.predictor, segkit.inference.files\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'pytorch_lightning', 'lightning', 'matplotlib', 'hydra'})\n"
            "print(','.join(heavy))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""
