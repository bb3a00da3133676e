"""Tests for segkit.models: shapes, parameter counts (from hand formulas), SegNet unpooling, configs."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn import functional as F

from segkit.models import FCN, CardiacFCN, SegNet, SMPModel, UNet, output_stride

CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "model"

torch.set_num_threads(2)


# --- hand formulas -----------------------------------------------------------------------------------


def conv(cin: int, cout: int, k: int, bias: bool = True) -> int:
    """Parameters of a k x k Conv2d / ConvTranspose2d."""
    return cin * cout * k * k + (cout if bias else 0)


def bn(c: int) -> int:
    """BatchNorm2d affine parameters (gamma, beta)."""
    return 2 * c


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def unet_params(cin: int, nc: int, depth: int, base: int, upsampling: str, batch_norm: bool) -> int:
    """U-Net with same-padded double convs, written out from the architecture description."""

    def double(a: int, b: int) -> int:
        if batch_norm:
            return conv(a, b, 3, bias=False) + bn(b) + conv(b, b, 3, bias=False) + bn(b)
        return conv(a, b, 3) + conv(b, b, 3)

    w = [base * 2**i for i in range(depth + 1)]
    total = double(cin, w[0]) + sum(double(w[i - 1], w[i]) for i in range(1, depth + 1))
    for i in range(depth, 0, -1):
        up = conv(w[i], w[i - 1], 2) if upsampling == "transpose" else conv(w[i], w[i - 1], 1)
        total += up + double(2 * w[i - 1], w[i - 1])
    return total + conv(w[0], nc, 1)


def segnet_params(cin: int, nc: int, depth: int, base: int, max_width: int, convs: list[int]) -> int:
    """SegNet: biased convs + BN in encoder and mirrored decoder; last decoder conv 3x3 -> nc, no BN."""
    w = [min(base * 2**i, max_width) for i in range(depth)]
    total, prev = 0, cin
    for i in range(depth):  # encoder
        total += conv(prev, w[i], 3) + bn(w[i]) + (convs[i] - 1) * (conv(w[i], w[i], 3) + bn(w[i]))
        prev = w[i]
    for i in range(depth):  # decoder stage mirroring encoder stage i
        total += (convs[i] - 1) * (conv(w[i], w[i], 3) + bn(w[i]))
        total += conv(w[i], w[i - 1], 3) + bn(w[i - 1]) if i > 0 else conv(w[0], nc, 3)
    return total


def fcn_params(cin: int, nc: int, variant: str, base: int, batch_norm: bool) -> int:
    """VGG16 encoder, fc6 3x3 / fc7 1x1 at 8*base, score layers, bias-free bilinear upsamplers."""

    def cbr(a: int, b: int, k: int) -> int:
        return conv(a, b, k, bias=False) + bn(b) if batch_norm else conv(a, b, k)

    total, prev = 0, cin
    for mult, n in zip((1, 2, 4, 8, 8), (2, 2, 3, 3, 3), strict=True):
        for _ in range(n):
            total += cbr(prev, base * mult, 3)
            prev = base * mult
    fc = 8 * base
    total += cbr(8 * base, fc, 3) + cbr(fc, fc, 1) + conv(fc, nc, 1)
    if variant == "32s":
        return total + conv(nc, nc, 64, bias=False)
    total += conv(nc, nc, 4, bias=False) + conv(8 * base, nc, 1)  # upscore2, score_pool4
    if variant == "16s":
        return total + conv(nc, nc, 32, bias=False)
    return total + conv(nc, nc, 4, bias=False) + conv(4 * base, nc, 1) + conv(nc, nc, 16, bias=False)


def cardiac_params(cin: int, nc: int, width: int) -> int:
    return (
        conv(cin, width, 5)
        + conv(width, 2 * width, 5)
        + conv(2 * width, 3 * width, 3)
        + conv(3 * width, 3 * width, 3)
        + conv(3 * width, nc, 1)
        + conv(nc, nc, 31, bias=False)
    )


# --- output shapes -----------------------------------------------------------------------------------

# name -> (factory(in_channels, num_classes), input sizes (H, W) that are multiples of its stride)
FACTORIES: dict[str, tuple[Callable[[int, int], nn.Module], list[tuple[int, int]]]] = {
    "segnet_d3": (lambda i, c: SegNet(i, c, depth=3, base_width=4), [(32, 32), (64, 96)]),
    "segnet_d5": (lambda i, c: SegNet(i, c, depth=5, base_width=4, max_width=16), [(64, 96)]),
    "unet_transpose": (lambda i, c: UNet(i, c, depth=3, base_width=4), [(32, 32), (64, 96)]),
    "unet_bilinear": (lambda i, c: UNet(i, c, depth=2, base_width=4, upsampling="bilinear"), [(64, 96)]),
    "fcn32s": (lambda i, c: FCN(i, c, variant="32s", base_width=4), [(64, 96)]),
    "fcn16s": (lambda i, c: FCN(i, c, variant="16s", base_width=4), [(64, 96)]),
    "fcn8s": (lambda i, c: FCN(i, c, variant="8s", base_width=4, batch_norm=False), [(32, 32), (64, 96)]),
    "cardiac": (lambda i, c: CardiacFCN(i, c, width=4), [(64, 96)]),
    "smp_unet": (
        lambda i, c: SMPModel("Unet", "resnet18", i, c, encoder_depth=3, decoder_channels=(16, 8, 4)),
        [(64, 96)],
    ),
}


@pytest.mark.parametrize("name", list(FACTORIES))
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("num_classes", [2, 5])
def test_output_shape(name: str, in_channels: int, num_classes: int) -> None:
    factory, sizes = FACTORIES[name]
    model = factory(in_channels, num_classes).eval()
    for h, w in sizes:
        assert h % output_stride(model) == 0 and w % output_stride(model) == 0
        with torch.no_grad():
            y = model(torch.randn(2, in_channels, h, w))
        assert y.shape == (2, num_classes, h, w)
        assert torch.isfinite(y).all()


def test_output_stride() -> None:
    assert output_stride(SegNet(depth=3, base_width=2)) == 8
    assert output_stride(UNet(depth=4, base_width=2)) == 16
    assert output_stride(FCN(base_width=2)) == 32
    assert output_stride(CardiacFCN(width=2)) == 16
    assert SMPModel.output_stride == 32
    assert output_stride(nn.Conv2d(3, 3, 1)) == 32  # models that do not say


def test_odd_sizes_still_give_input_size() -> None:
    x = torch.randn(1, 3, 37, 50)
    for model in (SegNet(depth=3, base_width=2), UNet(depth=3, base_width=2), FCN(base_width=2)):
        with torch.no_grad():
            assert model.eval()(x).shape == (1, 3, 37, 50)


# --- parameter counts --------------------------------------------------------------------------------


def test_unet_params_layer_by_layer() -> None:
    # depth 2, base 4, in 3, 2 classes, BN (bias-free convs), transposed-conv upsampling, written out:
    inc = (3 * 4 * 9 + 2 * 4) + (4 * 4 * 9 + 2 * 4)
    down1 = (4 * 8 * 9 + 2 * 8) + (8 * 8 * 9 + 2 * 8)
    down2 = (8 * 16 * 9 + 2 * 16) + (16 * 16 * 9 + 2 * 16)  # bottleneck
    up2 = (16 * 8 * 2 * 2 + 8) + (16 * 8 * 9 + 2 * 8) + (8 * 8 * 9 + 2 * 8)  # 2x2 up-conv, double conv
    up1 = (8 * 4 * 2 * 2 + 4) + (8 * 4 * 9 + 2 * 4) + (4 * 4 * 9 + 2 * 4)
    head = 4 * 2 + 2
    expected = inc + down1 + down2 + up2 + up1 + head
    assert expected == 7554
    assert n_params(UNet(3, 2, depth=2, base_width=4)) == expected


@pytest.mark.parametrize("upsampling", ["transpose", "bilinear"])
@pytest.mark.parametrize("batch_norm", [True, False])
def test_unet_params_formula(upsampling: str, batch_norm: bool) -> None:
    model = UNet(1, 5, depth=3, base_width=6, upsampling=upsampling, batch_norm=batch_norm, dropout=0.5)
    assert n_params(model) == unet_params(1, 5, 3, 6, upsampling, batch_norm)


def test_segnet_encoder_is_vgg16() -> None:
    # VGG16's 13 conv layers ("D" configuration), weights + biases.
    vgg16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    expected, prev = 0, 3
    for v in vgg16:
        if v != "M":
            expected += prev * v * 9 + v
            prev = v
    assert expected == 14_714_688
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = SegNet(3, 11, depth=5, base_width=64)
    convs = [m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13
    assert sum(p.numel() for m in convs for p in m.parameters()) == expected
    with torch.device("meta"):
        reference = torchvision.models.vgg16(weights=None).features
    assert n_params(reference) == expected
    assert n_params(model) == segnet_params(3, 11, 5, 64, 512, [2, 2, 3, 3, 3])


@pytest.mark.parametrize(("depth", "convs"), [(3, None), (4, None), (6, None), (2, [1, 3])])
def test_segnet_params_formula(depth: int, convs: list[int] | None) -> None:
    model = SegNet(2, 4, depth=depth, base_width=3, max_width=12, convs_per_stage=convs)
    layout = convs if convs is not None else ([2, 2, 3, 3, 3] + [3] * 5)[:depth]
    assert model.convs_per_stage == layout
    assert n_params(model) == segnet_params(2, 4, depth, 3, 12, layout)


@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
@pytest.mark.parametrize("batch_norm", [True, False])
def test_fcn_params_formula(variant: str, batch_norm: bool) -> None:
    model = FCN(3, 5, variant=variant, base_width=4, batch_norm=batch_norm)
    assert n_params(model) == fcn_params(3, 5, variant, 4, batch_norm)


def test_cardiac_params() -> None:
    # 1 -> 100 -> 200 -> 300 -> 300 -> 2, upscore 2x2x31x31 without bias.
    expected = (1 * 100 * 25 + 100) + (100 * 200 * 25 + 200) + (200 * 300 * 9 + 300) + (300 * 300 * 9 + 300)
    expected += (300 * 2 + 2) + 2 * 2 * 31 * 31
    assert expected == 1_857_846
    assert n_params(CardiacFCN(1, 2, width=100)) == expected


# --- SegNet really unpools with indices --------------------------------------------------------------


def test_segnet_pool_unpool_modules() -> None:
    for depth in (2, 3, 5):
        model = SegNet(depth=depth, base_width=2, max_width=8)
        pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d) and m.return_indices]
        unpools = [m for m in model.modules() if isinstance(m, nn.MaxUnpool2d)]
        assert len(pools) == len(unpools) == depth
        assert not any(isinstance(m, (nn.Upsample, nn.ConvTranspose2d)) for m in model.modules())


def test_segnet_unpooling_places_values_at_argmax() -> None:
    torch.manual_seed(0)
    model = SegNet(1, 2, depth=2, base_width=3).eval()
    captured: dict[str, torch.Tensor] = {}
    model.encoder[-1].register_forward_hook(lambda m, i, o: captured.__setitem__("pre_pool", o.detach()))
    model.unpools[0].register_forward_hook(lambda m, i, o: captured.__setitem__("unpooled", o.detach()))
    with torch.no_grad():
        model(torch.randn(2, 1, 16, 24))
    pre, unpooled = captured["pre_pool"], captured["unpooled"]
    n, c, h, w = unpooled.shape
    assert pre.shape == unpooled.shape == (2, 6, 8, 12)
    windows = unpooled.reshape(n, c, h // 2, 2, w // 2, 2)
    nonzero_per_window = (windows != 0).sum(dim=(3, 5))
    assert nonzero_per_window.max() <= 1
    assert nonzero_per_window.sum() > 0.25 * nonzero_per_window.numel()  # not trivially all zeros
    # Each non-zero sits where the encoder's pre-pool map reaches its window max, and carries that max.
    window_max = F.interpolate(F.max_pool2d(pre, 2), scale_factor=2, mode="nearest")
    nz = unpooled != 0
    assert torch.equal(unpooled[nz], pre[nz])
    assert torch.equal(pre[nz], window_max[nz])
    # ReLU features hold several non-zeros per window, so the sparsity is the unpooling's doing.
    assert ((pre.reshape(n, c, h // 2, 2, w // 2, 2) != 0).sum(dim=(3, 5)) > 1).any()


# --- gradients and memory format ---------------------------------------------------------------------

SMALL = {
    "segnet": lambda: SegNet(3, 4, depth=3, base_width=4),
    "unet": lambda: UNet(3, 4, depth=3, base_width=4, dropout=0.2),
    "unet_bilinear": lambda: UNet(3, 4, depth=2, base_width=4, upsampling="bilinear", batch_norm=False),
    "fcn": lambda: FCN(3, 4, variant="8s", base_width=4),
    "cardiac": lambda: CardiacFCN(3, 4, width=4),
}


@pytest.mark.parametrize("name", list(SMALL))
def test_backward(name: str) -> None:
    torch.manual_seed(0)
    model = SMALL[name]().train()
    x = torch.randn(2, 3, 32, 32)
    target = torch.randint(0, 4, (2, 32, 32))
    loss = F.cross_entropy(model(x), target)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", list(SMALL))
def test_channels_last_matches_contiguous(name: str) -> None:
    torch.manual_seed(0)
    model = SMALL[name]().eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        out = model_cl(x.contiguous(memory_format=torch.channels_last))
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-5)


# --- FCN details -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("h", "w"), [(64, 64), (96, 128)])
def test_cardiac_output_is_input_size(h: int, w: int) -> None:
    model = CardiacFCN(1, 2, width=4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, h, w)).shape == (1, 2, h, w)


def test_fcn_upsamplers_start_bilinear() -> None:
    model = FCN(3, 2, variant="8s", base_width=2)
    x = torch.randn(1, 2, 6, 7)
    with torch.no_grad():
        ours = model.upscore2(x)
        ref = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert ours.shape == ref.shape == (1, 2, 12, 14)
    # Away from the border (where the transposed conv sees zero padding) it is bilinear interpolation.
    assert torch.allclose(ours[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], atol=1e-6)
    # The x8 upsampler turns a constant map into the same constant in the interior.
    with torch.no_grad():
        flat = model.upscore8(torch.ones(1, 2, 4, 4))
    assert torch.allclose(flat[..., 8:-8, 8:-8], torch.ones(1, 2, 16, 16))


def test_fcn_skips_start_at_zero() -> None:
    # The paper's initialisation: at step 0 the skip branches add nothing (FCN-8s starts as FCN-32s does).
    model = FCN(3, 2, variant="8s", base_width=2)
    for layer in (model.score_pool4, model.score_pool3):
        assert not layer.weight.any() and not layer.bias.any()


# --- validation --------------------------------------------------------------------------------------


def test_invalid_arguments_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"model\.upsampling.*transpose, bilinear.*'nearest'"):
        UNet(upsampling="nearest")
    with pytest.raises(ValueError, match=r"model\.variant.*'4s'"):
        FCN(variant="4s")
    with pytest.raises(ValueError, match=r"model\.convs_per_stage"):
        SegNet(depth=3, convs_per_stage=[2, 2])


# --- segmentation_models_pytorch ---------------------------------------------------------------------


def test_smp_fpn_builds() -> None:
    model = SMPModel(arch="FPN", encoder="resnet18", in_channels=1, num_classes=4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 96)).shape == (1, 4, 64, 96)
    assert output_stride(model) == 32
    assert all(k.startswith("net.") for k in model.state_dict())
    assert any(k.startswith("net.encoder.") for k in model.state_dict())


def test_smp_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"model\.arch.*'NotAnArch'.*unet"):
        SMPModel(arch="NotAnArch", encoder="resnet18")
    with pytest.raises(ValueError, match=r"model\.encoder.*'resnet7'.*resnet18"):
        SMPModel(arch="Unet", encoder="resnet7")
    with pytest.raises(ValueError, match=r"model\.encoder_weights.*'imagenet'.*never downloads.*null.*get_encoder\('resnet18'"):
        SMPModel(arch="Unet", encoder="resnet18", encoder_weights="imagenet")


def test_a_bad_network_value_is_a_user_error_naming_the_key() -> None:
    """build_network (training, resume, inference) turns a network's ValueError into segkit's one-sentence
    user error (exit 2 on the command line), not a traceback."""
    from segkit.errors import SegkitError
    from segkit.models.network import build_network

    spec = {"_target_": "segkit.models.SMPModel", "arch": "FPN", "encoder": "resnet18", "in_channels": 3, "num_classes": 2}
    with pytest.raises(SegkitError, match=r"model\.encoder_weights is 'imagenet'.*never downloads"):
        build_network({**spec, "encoder_weights": "imagenet"})
    with pytest.raises(SegkitError, match=r"model\.arch.*'NotAnArch'"):
        build_network({**spec, "arch": "NotAnArch"})


def test_smp_encoder_weights_from_a_local_file(tmp_path) -> None:
    """Pretrained encoders offline: a state dict the test writes (nothing downloads), loaded exactly, checked."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(11)
    source = smp.encoders.get_encoder("resnet18", in_channels=3, depth=5, weights=None)
    with torch.no_grad():
        for p in source.parameters():
            p.normal_(0, 0.3)
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    torch.save({f"encoder.{k}": v for k, v in source.state_dict().items()}, tmp_path / "prefixed.pt")
    for name in ("plain.pt", "prefixed.pt"):
        model = SMPModel(arch="FPN", encoder="resnet18", in_channels=3, num_classes=2, encoder_weights=str(tmp_path / name))
        loaded = model.net.encoder.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in source.state_dict().items())
    scratch = SMPModel(arch="FPN", encoder="resnet18", in_channels=3, num_classes=2)
    assert not torch.equal(scratch.net.encoder.conv1.weight, source.conv1.weight)
    torch.save(smp.encoders.get_encoder("resnet34", weights=None).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt' does not fit model\.encoder: 0 of the encoder's \d+ tensors missing.*unknown"):
        SMPModel(arch="FPN", encoder="resnet18", encoder_weights=str(tmp_path / "other.pt"))
    with pytest.raises(ValueError, match=r"plain\.pt': 'conv1\.weight' has shape \(64, 3, 7, 7\), the encoder's \(64, 1, 7, 7\)"):
        SMPModel(arch="FPN", encoder="resnet18", in_channels=1, encoder_weights=str(tmp_path / "plain.pt"))
    (tmp_path / "code.pt").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="could not be loaded safely"):
        SMPModel(arch="FPN", encoder="resnet18", encoder_weights=str(tmp_path / "code.pt"))


def test_a_checkpoint_trained_from_an_encoder_file_loads_without_it(tmp_path) -> None:
    import segmentation_models_pytorch as smp

    from segkit.inference.load import load_network
    from segkit.training.checkpointing import save_module
    from segkit.training.module import SegModule

    weights = tmp_path / "enc.pt"
    torch.save(smp.encoders.get_encoder("resnet18", weights=None).state_dict(), weights)
    spec = {"_target_": "segkit.models.SMPModel", "arch": "FPN", "encoder": "resnet18", "encoder_weights": str(weights),
            "in_channels": 3, "num_classes": 2}
    module = SegModule(model=spec, loss={"name": "ce"}, optimizer={"_target_": "torch.optim.Adam"}, class_names=["bg", "fg"],
                       norm_mean=[0.5] * 3, norm_std=[0.2] * 3).eval()
    ckpt = save_module(module, tmp_path / "run" / "best.ckpt")
    weights.unlink()  # another machine: the checkpoint holds the weights
    net = load_network(ckpt)
    x = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(net(x), module.network(x), atol=1e-5)


# --- Hydra configs -----------------------------------------------------------------------------------

# Small widths to keep instantiation and the forward pass cheap; None: the config's own defaults.
SMALL_OVERRIDES: dict[str, dict] = {
    "segnet": {"base_width": 4},
    "unet": {"base_width": 4},
    "fcn": {"base_width": 4},
    "fcn_cardiac": {"width": 4},
    "patchcnn": {"widths": [4, 4, 4], "hidden": 8},
    "smp": {},
}
# Parameter counts of each config's defaults at in_channels=3, num_classes=3, from the formulas above.
DEFAULT_PARAMS: dict[str, Callable[[], int]] = {
    "segnet": lambda: segnet_params(3, 3, 3, 32, 512, [2, 2, 3]),
    "unet": lambda: unet_params(3, 3, 4, 16, "transpose", True),
    "fcn": lambda: fcn_params(3, 3, "8s", 16, True),
    "fcn_cardiac": lambda: cardiac_params(3, 3, 100),
    "patchcnn": lambda: conv(3, 32, 4) + bn(32) + conv(32, 64, 3) + bn(64) + conv(64, 64, 3) + bn(64) + conv(64, 128, 4) + conv(128, 3, 1),
}


def _load(name: str, **overrides: object) -> DictConfig:
    cfg = OmegaConf.load(CONF_DIR / f"{name}.yaml")
    # The configs read ${data.in_channels} / ${data.num_classes}; a model test has no data group.
    raw = OmegaConf.to_container(cfg, resolve=False)
    assert raw["in_channels"] == "${data.in_channels}" and raw["num_classes"] == "${data.num_classes}"
    merged = OmegaConf.merge(cfg, {"in_channels": 3, "num_classes": 3, **overrides})
    # `compile` is segkit's option (SegModule pops it before building the network), not a network argument
    return OmegaConf.create({k: v for k, v in merged.items() if k != "compile"})


def test_every_model_has_a_config() -> None:
    assert sorted(p.stem for p in CONF_DIR.glob("*.yaml")) == sorted(SMALL_OVERRIDES)


@pytest.mark.parametrize("name", list(SMALL_OVERRIDES))
def test_config_lists_every_parameter_and_instantiates(name: str) -> None:
    cfg = _load(name, **SMALL_OVERRIDES[name])
    target = get_class(cfg._target_)
    params = [
        p.name
        for p in inspect.signature(target.__init__).parameters.values()
        if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]
    assert set(params) <= set(cfg.keys()), f"{name}.yaml misses {set(params) - set(cfg.keys())}"
    model = instantiate(cfg).eval()
    assert isinstance(model, target)
    stride = output_stride(model)
    with torch.no_grad():
        y = model(torch.randn(1, 3, 2 * stride, 3 * stride))
    assert y.shape == (1, 3, 2 * stride, 3 * stride)


@pytest.mark.parametrize("name", list(DEFAULT_PARAMS))
def test_config_default_parameter_counts(name: str) -> None:
    with torch.device("meta"):
        model = instantiate(_load(name))
    assert n_params(model) == DEFAULT_PARAMS[name]()


def test_patchcnn_dense_output_equals_the_strided_patch_network_at_every_pixel():
    """One dense forward pass == the write-up's patch classifier (strided pools, flatten + FC) applied to
    the 31x31 patch around each pixel, computed here independently with the same weights."""
    from segkit.models import PatchCNN

    torch.manual_seed(0)
    net = PatchCNN(1, 3, widths=(4, 6, 5), hidden=7, dropout=0.0).eval()
    f, c = net.features, net.classifier
    x = torch.randn(1, 1, 17, 19)

    def patch_net(patch: torch.Tensor) -> torch.Tensor:
        h = F.relu(f[1](F.conv2d(patch, f[0].weight, f[0].bias)))
        h = F.max_pool2d(h, 2)  # stride 2, as in the write-up
        h = F.relu(f[5](F.conv2d(h, f[4].weight, f[4].bias)))
        h = F.max_pool2d(h, 2)
        h = F.relu(f[9](F.conv2d(h, f[8].weight, f[8].bias)))
        assert h.shape[-2:] == (4, 4)
        h = F.relu(F.linear(h.flatten(1), c[0].weight.flatten(1), c[0].bias))  # fc1 on the flattened 4x4 grid
        return F.linear(h, c[3].weight.flatten(1), c[3].bias)  # fc2

    with torch.no_grad():
        dense = net(x)
        padded = F.pad(x, (15,) * 4, mode="reflect")
        assert dense.shape == (1, 3, 17, 19) and output_stride(net) == 1
        for y in range(17):
            for xx in range(19):
                torch.testing.assert_close(dense[0, :, y, xx], patch_net(padded[..., y : y + 31, xx : xx + 31])[0], atol=1e-5, rtol=1e-4)
