"""``segkit.predict`` and ``segkit.tune_postprocess`` on a tiny trained model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from segkit.errors import SegkitError
from segkit.evaluation.postprocess_search import run_tune
from segkit.inference.files import run_predict
from segkit.training.fit import train
from tests.conftest import REPO, TINY_DATA, TINY_MODELS, cli_env, compose_cfg


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Two tiny U-Nets trained with different seeds on the same tiny data."""
    out = []
    for seed in (1, 2):
        tmp = tmp_path_factory.mktemp(f"seed{seed}")
        cfg = compose_cfg(tmp, TINY_DATA + TINY_MODELS["unet"] + [f"seed={seed}", f"paths.data_dir={tmp_path_factory.getbasetemp() / 'data'}"])
        train(cfg)
        out.append(Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt")
    return out


def _predict(tmp: Path, *overrides: str):
    return run_predict(compose_cfg(tmp, list(overrides), config_name="predict"))


def _images(folder: Path, sizes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"img{i}.png")


@pytest.mark.parametrize("sizes", [
    [(50, 70), (300, 200), (600, 520)],
    # the object table of a tiny model's 2048^2 prediction holds ~280,000 noise objects, and skimage's regionprops
    # measures about 1,000 per second: minutes, so behind the slow marker (vectorised measurement: issue 16)
    pytest.param([(50, 70), (300, 200), (2048, 2048)], marks=pytest.mark.slow),
], ids=["600x520", "2048x2048"])
def test_predict_a_directory_of_mixed_sizes_and_a_large_image(ckpts, tmp_path, sizes):
    _images(tmp_path / "in", sizes)
    out = tmp_path / "out"
    result = _predict(tmp_path, f"ckpt_path={ckpts[0]}", f"input={tmp_path / 'in'}", f"output={out}", "inference.tile=256",
                      "save_probabilities=true")
    assert len(result["files"]) == 3
    for i, (h, w) in enumerate(sizes):
        labels = np.asarray(Image.open(out / f"img{i}_labels.png"))
        assert labels.shape == (h, w) and labels.max() <= 2
        probs = np.load(out / f"img{i}_probs.npy")
        assert probs.shape == (3, h, w) and np.allclose(probs.sum(0), 1, atol=1e-4)
        np.testing.assert_array_equal(labels, probs.argmax(0))  # no post-processing configured
        tif = tifffile.TiffFile(out / f"img{i}_labels.tif")
        assert "1=rbc" in tif.imagej_metadata["Info"]
        np.testing.assert_array_equal(tif.asarray(), labels)
        assert (out / f"img{i}_overlay.png").stat().st_size > 0
    assert (out / "objects.csv").is_file()  # the synthetic data names rbc and spirochaete as object classes


def test_ensemble_averages_probabilities(ckpts, tmp_path):
    _images(tmp_path / "in", [(64, 96)])
    paths = []
    for k, ckpt in enumerate([*ckpts, f"[{ckpts[0]},{ckpts[1]}]"]):
        out = tmp_path / f"o{k}"
        _predict(tmp_path, f"ckpt_path={ckpt}", f"input={tmp_path / 'in'}", f"output={out}", "save_probabilities=true")
        paths.append(out / "img0_probs.npy")
    a, b, both = (np.load(p) for p in paths)
    np.testing.assert_allclose(both, (a + b) / 2, atol=1e-6)


def test_tta_of_flips_and_rotations_is_the_mean_over_the_eight_views(ckpts, tmp_path):
    from segkit.inference.load import load_network

    _images(tmp_path / "in", [(64, 64)])
    _predict(tmp_path, f"ckpt_path={ckpts[0]}", f"input={tmp_path / 'in'}", f"output={tmp_path / 'o'}", "save_probabilities=true",
             "tta.flips=true", "tta.rot90=true")
    got = np.load(tmp_path / "o" / "img0_probs.npy")
    module = load_network(ckpts[0], torch.device("cpu"))
    x = torch.from_numpy(np.asarray(Image.open(tmp_path / "in" / "img0.png"))).permute(2, 0, 1)
    views = []
    with torch.no_grad():
        for flip in (False, True):
            for r in range(4):
                v = torch.rot90(x.flip(-1) if flip else x, r, (1, 2))
                p = torch.softmax(module(v[None]), 1)[0]
                p = torch.rot90(p, -r, (1, 2))
                views.append(p.flip(-1) if flip else p)
    np.testing.assert_allclose(got, torch.stack(views).mean(0).numpy(), atol=1e-5)


def test_tune_postprocess_on_validation_then_predict_uses_it(ckpts, tmp_path):
    cfg = compose_cfg(tmp_path, [f"ckpt_path={ckpts[0]}", "grid.thresholds=[0.5,0.9]", "grid.median_size=[3]", "grid.min_object_size=[5]"],
                      config_name="tune_postprocess")
    record = run_tune(cfg)
    saved = json.loads((ckpts[0].parent / "postprocess.json").read_text())
    assert saved["split"] == "val" and saved["after"] >= saved["before"] and saved == json.loads(json.dumps(record, default=float))
    assert len(saved["trials"]) == 1 + 2 * (2 * 2 + 1 + 1)  # argmax, then two rounds over 2 classes x 2 thresholds, 1 median, 1 size
    _images(tmp_path / "in", [(40, 40)])
    result = _predict(tmp_path, f"ckpt_path={ckpts[0]}", f"input={tmp_path / 'in'}", f"output={tmp_path / 'o'}")
    assert "tune_postprocess" in result["summary"]["postprocess_source"]
    (ckpts[0].parent / "postprocess.json").unlink()


def test_bad_inputs_are_one_sentence(ckpts, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SegkitError, match="holds no images"):
        _predict(tmp_path, f"ckpt_path={ckpts[0]}", f"input={tmp_path / 'empty'}", f"output={tmp_path / 'o'}")
    np.save(tmp_path / "two.npy", np.zeros((16, 16, 2), np.uint8))
    with pytest.raises(SegkitError, match="has 2 channels; expected data.in_channels=3"):
        _predict(tmp_path, f"ckpt_path={ckpts[0]}", f"input={tmp_path / 'two.npy'}", f"output={tmp_path / 'o'}")
    with pytest.raises(SegkitError, match="does not exist"):
        _predict(tmp_path, f"ckpt_path={tmp_path / 'none.ckpt'}", f"input={tmp_path / 'two.npy'}", f"output={tmp_path / 'o'}")


def test_predict_cli_prints_the_output_directory(ckpts, tmp_path):
    _images(tmp_path / "in", [(32, 32)])
    proc = subprocess.run([sys.executable, "-m", "segkit.predict", f"ckpt_path={ckpts[0]}", f"input={tmp_path / 'in'}",
                           f"output={tmp_path / 'o'}", f"paths.log_dir={tmp_path / 'logs'}"],
                          cwd=REPO, capture_output=True, text=True, env=cli_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == f"Output directory: {tmp_path / 'o'}"
    # predict.log in the command's run folder keeps what it printed, time-stamped
    (log,) = (tmp_path / "logs" / "predict" / "runs").glob("*/predict.log")
    lines = log.read_text().strip().splitlines()
    assert lines[-1].endswith(f"Output directory: {tmp_path / 'o'}") and "1 images predicted" in lines[-2]
