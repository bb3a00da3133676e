"""CUDA paths: precision resolution, AMP steps, the GradScaler across a resume, channels_last on the device,
batched augmentation, sliding-window and TTA prediction, ONNX export of a CUDA-trained checkpoint, DDP on one GPU.

The ``gpu``-marked tests skip without CUDA (tests/conftest.py) and are run by ``make gpu-check``
(``pytest -m gpu tests/gpu``). Each one's body is a helper taking the device; where the body can run on a CPU,
a fast unmarked twin calls the same helper with ``device="cpu"`` (CPU against CPU), so every line of it runs
in the default suite here too, on machines without a GPU.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from segkit.training.fit import train
from tests.conftest import TINY_DATA, TINY_MODELS, compose_cfg, tiny_checkpoint

gpu = pytest.mark.gpu
CUDA = "cuda"


#: the figure-drawing callbacks off (progress.png, confusion matrix, validation panel): seconds per tiny run on a CPU
LIGHT = ["callbacks.run_log=null", "callbacks.confusion_matrix=null", "callbacks.validation_panel=null"]


def _tiny_train(tmp_path: Path, *overrides: str, model: str = "unet"):
    cfg = compose_cfg(tmp_path, TINY_DATA + TINY_MODELS[model] + ["logger=csv", *overrides])
    metrics, objects = train(cfg)
    return cfg, metrics, objects


def _accelerator(device: str) -> str:
    return "gpu" if device == CUDA else "cpu"


# ------------------------------------------------------------------------------------------- precision
def check_precision_resolution(bf16: bool) -> None:
    """What ``trainer.precision`` resolves to on a CUDA machine (bf16 support as given)."""
    from segkit.training.precision import resolve_precision

    auto = "bf16-mixed" if bf16 else "16-mixed"
    for accelerator in ("gpu", "cuda", "auto"):
        assert resolve_precision("auto", accelerator) == (auto, None)
        for requested in ("16-mixed", "bf16-mixed", "32-true"):
            assert resolve_precision(requested, accelerator) == (requested, None)  # kept as asked, no note
    assert resolve_precision("16-mixed", "cpu")[0] != "16-mixed"  # an explicit CPU run still falls back


@gpu
def test_precision_resolution_on_cuda(tmp_path):
    check_precision_resolution(torch.cuda.is_bf16_supported())
    from segkit.training.trainer import build_trainer

    cfg = compose_cfg(tmp_path, TINY_DATA + ["trainer.accelerator=gpu", "trainer.precision=auto"])
    expected = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    assert build_trainer(cfg).precision == expected


@pytest.mark.parametrize("bf16", [True, False])
def test_precision_resolution_with_cuda_mocked(monkeypatch, bf16):
    import segkit.training.precision as p

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(p, "cpu_bf16_is_fast", lambda: False)
    check_precision_resolution(bf16)


# ------------------------------------------------------------------------------------------- AMP steps
def _fixed_batch(n: int = 4, size: int = 64, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    image = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    coarse = torch.randint(0, classes, (n, 1, size // 8, size // 8), generator=g).float()
    mask = torch.nn.functional.interpolate(coarse, size=(size, size), mode="nearest")[:, 0].long()
    return image, mask


def amp_steps(device: str, precisions: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """One optimiser step per precision from the same weights on the same batch: the loss of the step (under
    autocast), the fp32 loss after it, and for 16-mixed the GradScaler's scale and how many steps it skipped
    (a skipped step leaves the weights untouched, so the compared step is the first one taken)."""
    from segkit.models import UNet
    from segkit.training.losses import build_loss

    torch.manual_seed(0)
    base = UNet(in_channels=3, num_classes=3, depth=3, base_width=8).to(memory_format=torch.channels_last)
    criterion = build_loss(name="ce_dice", num_classes=3, ignore_index=255).to(device)
    image, mask = _fixed_batch(n=2, size=48)
    x = ((image.float() / 255 - 0.5) / 0.25).to(device).contiguous(memory_format=torch.channels_last)
    mask = mask.to(device)
    dtypes = {"32-true": None, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}
    out: dict[str, dict[str, float]] = {}
    for precision in precisions:
        net = copy.deepcopy(base).to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
        dtype = dtypes[precision]
        scaler = torch.amp.GradScaler(device) if precision == "16-mixed" else None
        skipped = 0
        for _ in range(8):
            with torch.autocast(device, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                loss = criterion(net(x), mask)
            opt.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                opt.step()
                break
            before = scaler.get_scale()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if scaler.get_scale() >= before:  # no inf/NaN gradient: the step was taken
                break
            skipped += 1
        with torch.no_grad():
            after = criterion(net(x), mask)
        finite = all(bool(torch.isfinite(p).all()) for p in net.parameters())
        out[precision] = {"loss": float(loss), "after": float(after), "finite": finite, "skipped": skipped,
                          "scale": scaler.get_scale() if scaler is not None else None}
    return out


def check_amp_steps(device: str, precisions: tuple[str, ...]) -> None:
    res = amp_steps(device, ("32-true", *precisions))
    ref = res["32-true"]
    assert math.isfinite(ref["loss"]) and ref["after"] < ref["loss"]  # the fp32 step lowers the loss
    tolerance = {"16-mixed": 0.01, "bf16-mixed": 0.03, "32-true": 1e-6}  # relative: fp16 10, bf16 7 mantissa bits
    for precision in precisions:
        r = res[precision]
        assert r["finite"] and math.isfinite(r["loss"]) and math.isfinite(r["after"]), (precision, r)
        assert r["loss"] == pytest.approx(ref["loss"], rel=tolerance[precision]), (precision, r, ref)
        assert r["after"] == pytest.approx(ref["after"], rel=3 * tolerance[precision]), (precision, r, ref)
        if precision == "16-mixed":
            assert r["skipped"] < 8 and r["scale"] > 0


@gpu
def test_amp_steps_on_cuda_are_finite_and_close_to_fp32():
    check_amp_steps(CUDA, ("16-mixed", "bf16-mixed"))


def test_amp_steps_helper_on_cpu():
    # the same body: fp32 twice (must agree to float rounding) and bf16 autocast on the CPU
    check_amp_steps("cpu", ("32-true", "bf16-mixed"))


# ----------------------------------------------------------------------------------- GradScaler, resume
SCALE = 1234.0  # no power of two: Lightning's initial 65536 halved or doubled never reaches it


def fit_and_resume(tmp_path: Path, device: str, precision: str) -> dict:
    """A tiny ``train()`` on the embedded default data, its last.ckpt's scaler scale set to :data:`SCALE`, then a
    resume from that last.ckpt for one more epoch. Returns what the two runs saved and the resumed trainer."""
    overrides = [f"trainer.accelerator={_accelerator(device)}", f"trainer.precision={precision}", "trainer.limit_train_batches=2",
                 "trainer.limit_val_batches=1", *LIGHT]
    cfg, _, first = _tiny_train(tmp_path / "a", *overrides, "trainer.max_epochs=1")
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    saved = dict(state.get("MixedPrecision") or {})
    if saved:
        state["MixedPrecision"]["scale"] = SCALE
        torch.save(state, last)
    _, _, second = _tiny_train(tmp_path / "b", *overrides, "trainer.max_epochs=2", f"ckpt_path={last}")
    trainer = second["trainer"]
    resumed_last = Path(trainer.checkpoint_callback.dirpath) / "last.ckpt"
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    return {"saved": saved, "first_trainer": first["trainer"], "trainer": trainer, "scaler": scaler,
            "resumed_saved": dict(torch.load(resumed_last, map_location="cpu", weights_only=True).get("MixedPrecision") or {})}


def _restored_from(scale: float) -> bool:
    """``scale`` is :data:`SCALE` or SCALE halved a few times (a skipped fp16 step halves it)."""
    k = math.log2(SCALE / scale)
    return abs(k - round(k)) < 1e-9 and 0 <= round(k) <= 4


@gpu
def test_grad_scaler_state_is_saved_and_restored_on_resume(tmp_path):
    res = fit_and_resume(tmp_path, CUDA, "16-mixed")
    assert res["first_trainer"].precision == "16-mixed"
    assert {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"} <= set(res["saved"])
    assert res["saved"]["scale"] > 0 and not _restored_from(res["saved"]["scale"])  # the default scale, not ours
    assert res["trainer"].current_epoch == 2  # resumed after epoch 1, trained one more
    assert res["scaler"] is not None and _restored_from(res["scaler"].get_scale())
    assert _restored_from(res["resumed_saved"]["scale"])


def test_fit_and_resume_helper_on_cpu(tmp_path):
    res = fit_and_resume(tmp_path, "cpu", "32-true")  # no scaler on a CPU: nothing saved, nothing restored
    assert res["saved"] == {} and res["resumed_saved"] == {} and res["scaler"] is None
    assert res["trainer"].current_epoch == 2
    assert res["trainer"].global_step == 2 * res["first_trainer"].global_step


# ------------------------------------------------------------------------------------- channels_last
def conv_layouts(device: str, model: str, autocast: bool) -> dict[str, bool]:
    """For every Conv2d / ConvTranspose2d of a segkit network in training (``SegModule.network`` on uint8 input,
    as the training step calls it): whether its input and output activations are channels_last."""
    from segkit.training.module import SegModule

    spec = {"unet": {"_target_": "segkit.models.UNet", "depth": 3, "base_width": 8},
            "segnet": {"_target_": "segkit.models.SegNet", "depth": 3, "base_width": 8}}[model]
    module = SegModule(model={**spec, "in_channels": 3, "num_classes": 3}, loss={"name": "ce"},
                       optimizer={"_target_": "torch.optim.AdamW"}, class_names=["a", "b", "c"],
                       norm_mean=[0.5] * 3, norm_std=[0.25] * 3).to(device).train()
    layouts: dict[str, bool] = {}

    def hook(name):
        def record(mod, inputs, output):
            x = inputs[0]
            # a tensor with one channel or a 1x1 plane is both layouts at once; count the others
            if x.shape[1] > 1 and x.shape[-1] * x.shape[-2] > 1:
                layouts[f"{name} input"] = x.is_contiguous(memory_format=torch.channels_last)
            layouts[f"{name} output"] = output.is_contiguous(memory_format=torch.channels_last)
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in module.network.named_modules()
               if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]
    image, mask = _fixed_batch(n=2, size=64)
    dtype = torch.bfloat16 if device == "cpu" else torch.float16
    with torch.autocast(device, dtype=dtype, enabled=autocast):
        logits = module(image.to(device))
        loss = module.criterion(logits, mask.to(device))
    loss.backward()
    for h in handles:
        h.remove()
    assert len(layouts) >= 8
    return layouts


def after_unpooling(net: torch.nn.Module) -> set[str]:
    """The inputs of SegNet's first convolution after each ``MaxUnpool2d`` (names as :func:`conv_layouts` gives
    them). torch's CUDA ``max_unpool2d`` writes a contiguous (NCHW) output whatever its input's layout; the
    convolution after it (channels_last weights) still returns channels_last."""
    out = set()
    for i, stage in enumerate(getattr(net, "decoder", [])):
        first = next(n for n, m in stage.named_modules() if isinstance(m, torch.nn.Conv2d))
        out.add(f"net.decoder.{i}.{first} input")
    return out


def check_channels_last(device: str) -> None:
    from segkit.models import SegNet

    for model in ("unet", "segnet"):
        for autocast in (False, True):
            layouts = conv_layouts(device, model, autocast)
            lost = sorted(k for k, ok in layouts.items() if not ok)
            outputs = [k for k in lost if k.endswith("output")]
            assert not outputs, f"{model} (autocast {autocast}) on {device}: conv activations not channels_last at {outputs}"
            allowed = after_unpooling(SegNet(depth=3, base_width=8)) if model == "segnet" and device != "cpu" else set()
            inputs = set(lost) - allowed
            assert not inputs, f"{model} (autocast {autocast}) on {device}: conv inputs not channels_last at {sorted(inputs)}"


@gpu
def test_channels_last_is_kept_through_the_network_on_cuda():
    check_channels_last(CUDA)


def test_channels_last_helper_on_cpu():
    check_channels_last("cpu")


# ------------------------------------------------------------------------------------ batched augmentation
AUGMENT = {"affine_p": 1.0, "rotate_deg": 15.0, "shear_deg": 10.0, "scale": (0.9, 1.1), "elastic_p": 1.0,
           "elastic_alpha": 5.0, "elastic_sigma": 8.0, "brightness": 0.2, "contrast": 0.2, "gamma": 0.2,
           "noise_std": 3.0, "blur_p": 0.5}


class _CpuDraws:
    """``torch`` as segkit.data.augment sees it, but ``rand``/``randn`` draw on the CPU (from the CPU generator
    passed) and move to the device asked for: the same random numbers on every device, so that the CUDA and
    CPU results differ only by the arithmetic of the kernels."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def rand(*size, device=None, generator=None, **kwargs):
        return torch.rand(*size, generator=generator, **kwargs).to(device)

    @staticmethod
    def randn(*size, device=None, generator=None, **kwargs):
        return torch.randn(*size, generator=generator, **kwargs).to(device)


def augmented(device: str, seed: int, same_draws: bool, monkeypatch) -> tuple[torch.Tensor, torch.Tensor]:
    """segkit's :class:`BatchAugment` (every transform on) of a fixed batch on ``device`` with a CPU generator of
    ``seed``, as the datamodule calls it; ``same_draws``: its random numbers drawn on the CPU whatever the device.
    Returns the image and mask on the CPU."""
    import segkit.data.augment as augment

    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8, generator=g)
    rows = torch.randint(0, 2, (8, 8, 1), generator=g)
    cols = torch.randint(0, 2, (8, 1, 8), generator=g)
    mask = (rows + cols).repeat_interleave(8, 1).repeat_interleave(8, 2).to(torch.uint8)
    aug = augment.BatchAugment(**AUGMENT)
    with monkeypatch.context() as m:
        if same_draws:
            m.setattr(augment, "torch", _CpuDraws())
            m.setattr(augment, "_same_device", lambda a, b: True)  # keep the CPU generator
        x, y = aug(image.to(device), mask.to(device), generator=torch.Generator().manual_seed(seed))
    assert x.device.type == device and y.device.type == device
    return x.cpu(), y.cpu()


def check_augment_against_cpu(device: str, monkeypatch) -> dict[str, float]:
    ref_x, ref_y = augmented("cpu", 27, True, monkeypatch)
    x, y = augmented(device, 27, True, monkeypatch)
    diff = (x - ref_x).abs()
    stats = {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()), "share_over_1": float((diff > 1.0).float().mean()),
             "mask_agreement": float((y == ref_y).float().mean())}
    # values 0..255: kernels (cuDNN TF32 convolutions for the blur, grid_sample, pow) differ in rounding only;
    # a pixel whose nearest-neighbour source sits on a tie may flip its mask id (and, at the border, become outside)
    assert stats["mean_abs"] < 0.05 and stats["share_over_1"] < 2e-3 and stats["mask_agreement"] > 0.998, stats
    assert set(y.unique().tolist()) <= {0, 1, 2, 255} and 0 <= float(x.min()) and float(x.max()) <= 255
    other_x, _ = augmented(device, 28, True, monkeypatch)
    assert not torch.equal(other_x, x)  # the seed matters
    # segkit's own path (a CPU generator seeds a generator on the batch's device): the same seed, the same batch
    a, b = augmented(device, 27, False, monkeypatch), augmented(device, 27, False, monkeypatch)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    return stats


@gpu
def test_batch_augment_on_cuda_equals_cpu_for_the_same_draws(monkeypatch):
    check_augment_against_cpu(CUDA, monkeypatch)


def test_batch_augment_helper_on_cpu(monkeypatch):
    stats = check_augment_against_cpu("cpu", monkeypatch)
    assert stats["max_abs"] == 0.0 and stats["mask_agreement"] == 1.0


def test_cpu_draws_reproduce_the_unpatched_cpu_stream(monkeypatch):
    """On the CPU the patched draws are segkit's own: the twin above compares what segkit computes."""
    a = augmented("cpu", 5, True, monkeypatch)
    b = augmented("cpu", 5, False, monkeypatch)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# -------------------------------------------------------------------------- sliding window and TTA
def predicted(tmp_path: Path, device: str, model: str, stitch: str) -> torch.Tensor:
    """Probabilities ``[K, H, W]`` of a tiny checkpoint on a 90 x 130 image through segkit's prediction path
    (sliding windows of 64 with overlap, Gaussian blending, all 8 dihedral TTA transforms)."""
    from segkit.inference.load import load_network
    from segkit.inference.predictor import label_probs

    path = tmp_path / model / "checkpoints" / "best.ckpt"
    if not path.is_file():
        tiny_checkpoint(path, model)
    network = load_network(path, device)
    image = np.random.default_rng(4).integers(0, 256, (90, 130, 3), dtype=np.uint8)
    probs = label_probs([network], {"tile": 64, "overlap": 0.25, "batch_size": 3, "stitch_device": stitch},
                        {"flips": True, "rot90": True})(image)
    assert probs.shape == (3, 90, 130) and probs.device.type == "cpu"
    return probs


class fp32_convolutions:
    """Convolutions and matmuls in full fp32 on CUDA (no TF32) inside the block; TF32, torch's default for cuDNN
    convolutions on Ampere and later, rounds inputs to 10 mantissa bits."""

    def __enter__(self):
        self.saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc):
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self.saved


def check_inference_against_cpu(tmp_path: Path, device: str) -> None:
    for model in ("unet", "segnet"):
        ref = predicted(tmp_path, "cpu", model, "cpu")
        assert torch.allclose(ref.sum(0), torch.ones(90, 130), atol=1e-4)
        for stitch in ("auto", "cpu"):  # accumulators on the device, or on the host
            if device != "cpu":  # (on a CPU there is no TF32 to turn off)
                with fp32_convolutions():
                    exact = predicted(tmp_path, device, model, stitch)
                err = float((exact - ref).abs().max())
                assert err < 1e-4, (model, stitch, "fp32", err)
            probs = predicted(tmp_path, device, model, stitch)  # the default settings (TF32 convolutions on CUDA)
            diff = (probs - ref).abs()
            assert float(diff.max()) < 1e-2 and float(diff.mean()) < 1e-3, (model, stitch, float(diff.max()))
            assert (probs.argmax(0) == ref.argmax(0)).float().mean() > 0.995


@gpu
def test_sliding_window_and_tta_on_cuda_equal_cpu(tmp_path):
    check_inference_against_cpu(tmp_path, CUDA)


def test_sliding_window_and_tta_helper_on_cpu(tmp_path):
    check_inference_against_cpu(tmp_path, "cpu")


# ------------------------------------------------------------------------------------------ ONNX export
def export_trained(tmp_path: Path, device: str) -> dict:
    """A tiny run trained on ``device``, its best checkpoint exported to ONNX (checked by segkit.export against
    PyTorch on the CPU), and the ONNX logits compared with the network on ``device``."""
    import onnxruntime as ort

    from segkit.export import export, read_metadata
    from segkit.inference.load import load_network

    cfg, _, objects = _tiny_train(tmp_path, f"trainer.accelerator={_accelerator(device)}", "trainer.limit_train_batches=2", *LIGHT)
    best = Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt"
    state = torch.load(best, weights_only=True)  # no map_location: tensors come back where they were saved from
    saved_on = {v.device.type for k, v in state["state_dict"].items() if k.startswith("network.net.")}
    summary = export(best, "onnx", check_size=[1, 3, 48, 72], onnx_exporter="legacy")
    out = best.with_suffix(".onnx")
    image = torch.randint(0, 256, (2, 3, 40, 56), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {"image": image.numpy()})[0]
    with torch.no_grad(), fp32_convolutions():
        device_logits = load_network(best, device)(image.to(device)).float().cpu().numpy()
    return {"summary": summary, "saved_on": saved_on, "onnx": onnx_logits, "device": device_logits,
            "meta": read_metadata(out), "trainer": objects["trainer"]}


def check_export(tmp_path: Path, device: str) -> None:
    res = export_trained(tmp_path, device)
    assert res["saved_on"] == {device}  # the checkpoint holds the weights as trained, on that device
    assert res["trainer"].strategy.root_device.type == device
    check = res["summary"]["check"]
    assert check["passed"] and check["max_abs_diff"] <= 1e-4 + 1e-4 * max(r["logit_scale"] for r in check["sizes"])
    assert res["meta"]["class_names"] == ["background", "rbc", "spirochaete"]
    scale = float(np.abs(res["device"]).max())
    assert np.abs(res["onnx"] - res["device"]).max() <= 1e-4 + 1e-4 * scale  # export's own tolerance
    assert (res["onnx"].argmax(1) == res["device"].argmax(1)).mean() >= 0.999


@gpu
def test_onnx_export_of_a_cuda_trained_checkpoint(tmp_path):
    check_export(tmp_path, CUDA)


def test_export_helper_on_cpu(tmp_path):
    check_export(tmp_path, "cpu")


# ----------------------------------------------------------------------------------------------- DDP
def ddp_fit(tmp_path: Path, trainer_group: str) -> dict:
    """``trainer=<ddp group> trainer.devices=1``: a tiny ``train()`` through Lightning's DDP strategy in this
    process (one rank: no processes started), its process group torn down after."""
    import os

    import torch.distributed as dist

    environ = dict(os.environ)  # Lightning's launcher sets MASTER_ADDR, LOCAL_RANK, WORLD_SIZE, ... for its ranks
    try:
        cfg, metrics, objects = _tiny_train(tmp_path, f"trainer={trainer_group}", "trainer.devices=1",
                                            "trainer.limit_train_batches=2")
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        os.environ.clear()
        os.environ.update(environ)
    return {"cfg": cfg, "metrics": metrics, "trainer": objects["trainer"]}


def check_ddp(res: dict, device: str, precision: str) -> None:
    from pytorch_lightning.strategies import DDPStrategy

    trainer = res["trainer"]
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.world_size == 1
    assert trainer.strategy.root_device.type == device and trainer.precision == precision
    assert trainer.global_step == 2 and 0.0 <= res["metrics"]["val/miou"] <= 1.0
    assert math.isfinite(res["metrics"]["val/loss"])
    assert (Path(res["cfg"].paths.output_dir) / "checkpoints" / "last.ckpt").is_file()


@gpu
@pytest.mark.filterwarnings("ignore:.*when logging on epoch level in distributed setting")
def test_ddp_on_one_gpu_runs_a_tiny_fit(tmp_path):
    res = ddp_fit(tmp_path, "ddp")
    check_ddp(res, CUDA, "16-mixed")
    # conf/trainer/ddp.yaml asks for SyncBatchNorm: on CUDA the network's BatchNorms were converted
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in res["trainer"].lightning_module.modules())


@pytest.mark.filterwarnings("ignore:.*when logging on epoch level in distributed setting")
def test_ddp_helper_on_cpu(tmp_path):
    check_ddp(ddp_fit(tmp_path, "ddp_cpu"), "cpu", "32-true")
