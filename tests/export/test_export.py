"""``segkit.export``: ONNX and TorchScript exports of tiny (untrained) checkpoints, checked against
``SegModule.forward`` at dynamic batch sizes and image sizes, including sizes that are not multiples of
the network stride and images smaller than the padding (replicate instead of reflect)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import segkit
from segkit.errors import SegkitError
from segkit.export import export, read_metadata
from segkit.export.__main__ import run_export
from segkit.training.module import SegModule
from tests.conftest import CKPT_CLASSES as CLASSES
from tests.conftest import CKPT_MEAN as MEAN
from tests.conftest import CKPT_STD as STD
from tests.conftest import REPO, cli_env, compose_cfg
from tests.conftest import tiny_checkpoint as _tiny_checkpoint

# batch 2 and 1; not multiples of 8/32; 3 x 13 is smaller than the padding to 8 (replicate, not reflect)
SIZES = [(2, 3, 37, 53), (1, 3, 3, 13), (1, 3, 64, 40)]




@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = _tiny_checkpoint(tmp_path_factory.mktemp(name) / "checkpoints" / "best.ckpt", name)
        return made[name]

    return get


def _expected(path: Path, images: list[torch.Tensor]) -> list[np.ndarray]:
    """``SegModule.forward`` of the reloaded checkpoint (channels_last, F.pad reflect/replicate)."""
    module = SegModule.load_from_checkpoint(path, map_location="cpu", weights_only=True).eval()
    with torch.no_grad():
        return [module(image).numpy() for image in images]


def _assert_matches(out: np.ndarray, ref: np.ndarray) -> None:
    assert out.shape == ref.shape and out.dtype == np.float32
    scale = np.abs(ref).max()
    assert scale > 1e-2  # the logits are not trivially small
    assert np.abs(out - ref).max() <= 1e-4 + 1e-4 * scale  # atol 1e-4, rtol 1e-4 of the logit scale
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.9999


def _images():
    gen = torch.Generator().manual_seed(7)
    return [torch.randint(0, 256, size, dtype=torch.uint8, generator=gen) for size in SIZES]


# dynamo (torch's default exporter, ~15 s a model here: slow marker, CI runs it) on SegNet's max-unpooling; the fast legacy one on both
@pytest.mark.parametrize(("name", "exporter"), [pytest.param("segnet", "dynamo", marks=pytest.mark.slow), ("segnet", "legacy"), ("unet", "legacy")])
def test_onnx_export_is_dynamic_and_matches_segmodule(ckpt, name, exporter):
    import onnx
    import onnxruntime as ort

    path = ckpt(name)
    summary = export(path, "onnx", check_size=[1, 3, 48, 72], onnx_exporter=exporter, overwrite=True)
    out = path.with_suffix(".onnx")
    assert summary["path"] == str(out) and out.is_file() and summary["exporter"] == exporter
    check = summary["check"]
    assert check["passed"] and check["max_abs_diff"] <= 1e-4 and len(check["sizes"]) == 2
    assert check["sizes"][1]["size"][0] == 2 and check["sizes"][1]["size"][2] % 8 != 0  # batch 2, off the stride
    written = json.loads((out.parent / "export.json").read_text())
    assert written["format"] == "onnx" and written["path"] == str(out) and written["wall_time_s"] > 0

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.type == "tensor(uint8)" and isinstance(inp.shape[0], str) and isinstance(inp.shape[2], str) and isinstance(inp.shape[3], str)
    images = _images()
    for image, ref in zip(images, _expected(path, images), strict=True):
        _assert_matches(session.run(None, {inp.name: image.numpy()})[0], ref)

    props = {p.key: json.loads(p.value) for p in onnx.load(str(out)).metadata_props}
    assert props["class_names"] == CLASSES and props["stride"] == 8 and props["num_classes"] == 3
    assert read_metadata(out) == props["segkit"]
    assert json.loads(session.get_modelmeta().custom_metadata_map["segkit"])["class_names"] == CLASSES  # the README snippet


@pytest.mark.parametrize("name", ["unet", "segnet", "fcn", "patchcnn", "smp"])
def test_torchscript_export_matches_segmodule(ckpt, name, tmp_path):
    path = ckpt(name)
    out = tmp_path / f"{name}.pt"
    summary = export(path, "torchscript", output=out, check_size=[1, 3, 64, 96])
    assert summary["check"]["passed"] and (tmp_path / "export.json").is_file()
    model = torch.jit.load(str(out), map_location="cpu").eval()
    images = _images()
    for image, ref in zip(images, _expected(path, images), strict=True):
        with torch.no_grad():
            _assert_matches(model(image).numpy(), ref)


def test_metadata_roundtrip(ckpt, tmp_path):
    path = ckpt("unet")
    export(path, "torchscript", output=tmp_path / "model.bin", check_size=[1, 3, 16, 24])  # any suffix
    meta = read_metadata(tmp_path / "model.bin")
    assert meta["class_names"] == CLASSES and meta["num_classes"] == 3 and meta["in_channels"] == 3 and meta["stride"] == 8
    np.testing.assert_allclose(meta["norm_mean"], MEAN, rtol=1e-6)
    np.testing.assert_allclose(meta["norm_std"], STD, rtol=1e-6)
    assert meta["segkit_version"] == segkit.__version__ and meta["source_checkpoint"] == str(path.resolve())
    export(path, "onnx", output=tmp_path / "m.onnx", check=False, onnx_exporter="legacy")
    assert read_metadata(tmp_path / "m.onnx") == meta
    assert "check" not in json.loads((tmp_path / "export.json").read_text())
    with pytest.raises(SegkitError, match="is not a TorchScript file"):
        read_metadata(path)  # a checkpoint is a zip, but not TorchScript


def test_cli_config_default_output_and_no_silent_overwrite(ckpt, tmp_path):
    path = ckpt("fcn")
    cfg = compose_cfg(tmp_path, [f"ckpt_path={path}", "format=torchscript", "check_size=[1,3,40,40]"], config_name="export")
    summary = run_export(cfg)
    assert summary["path"] == str(path.with_suffix(".pt")) and summary["check"]["passed"]
    with pytest.raises(SegkitError, match="already exists.*overwrite=true"):
        run_export(cfg)
    cfg.overwrite = True
    assert run_export(cfg)["path"] == str(path.with_suffix(".pt"))


def test_failed_check_is_an_error(ckpt, tmp_path, monkeypatch):
    import segkit.export.exporters as ex

    real = ex.load_exported
    monkeypatch.setattr(ex, "load_exported", lambda p, fmt=None: (lambda image: real(p, fmt)(image) + 1e-2))
    with pytest.raises(SegkitError, match="differs from PyTorch.*was not written"):
        export(ckpt("unet"), "torchscript", output=tmp_path / "bad.pt", check_size=[1, 3, 16, 16])
    assert not list(tmp_path.glob("*.pt"))
    assert json.loads((tmp_path / "export.json").read_text())["check"]["passed"] is False


def test_missing_or_foreign_checkpoint(tmp_path):
    missing = tmp_path / "nope" / "best.ckpt"
    with pytest.raises(SegkitError, match="does not exist") as err:
        export(missing, "onnx")
    assert str(missing) in str(err.value)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(SegkitError, match="is not a segkit checkpoint"):
        export(foreign, "torchscript")
    assert not list(tmp_path.glob("*.pt"))


def test_bad_check_size(ckpt, tmp_path):
    with pytest.raises(SegkitError, match=r"check_size is \[1, 3, 16\]"):
        export(ckpt("unet"), "torchscript", output=tmp_path / "a.pt", check_size=[1, 3, 16])
    with pytest.raises(SegkitError, match="takes 3 channels"):
        export(ckpt("unet"), "torchscript", output=tmp_path / "a.pt", check_size=[1, 1, 16, 16])


def test_cli_rejects_an_unknown_format(ckpt, tmp_path):
    path = ckpt("unet")
    proc = subprocess.run([sys.executable, "-m", "segkit.export", f"ckpt_path={path}", "format=tflite", f"paths.log_dir={tmp_path}"],
                          cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "segkit: error: format is 'tflite'; expected one of onnx, torchscript" in proc.stderr
    assert "Traceback" not in proc.stderr
