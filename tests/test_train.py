"""End-to-end training on tiny synthetic data, in process (``train(cfg)``) and through the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from segkit.errors import SegkitError
from segkit.training.fit import train
from segkit.training.module import SegModule
from tests.conftest import REPO, TINY_DATA, TINY_MODELS, cli_env, compose_cfg


def _run(tmp_path: Path, *overrides: str, model: str = "unet"):
    cfg = compose_cfg(tmp_path, TINY_DATA + TINY_MODELS[model] + list(overrides))
    metrics, objects = train(cfg)
    return cfg, metrics, objects


@pytest.mark.parametrize("model", sorted(TINY_MODELS))
def test_each_model_trains(tmp_path, model):
    cfg, metrics, _ = _run(tmp_path, model=model)
    run = Path(cfg.paths.output_dir)
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert math.isfinite(metrics["val/loss"]) and 0.0 <= metrics["val/miou"] <= 1.0
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["metrics"]["val/miou"] == pytest.approx(metrics["val/miou"])
    assert {f"val/iou/{c}" for c in ("background", "rbc", "spirochaete")} <= set(summary["metrics"])


@pytest.mark.parametrize("loss", ["ce", "weighted_ce", "dice", "ce_dice", "focal",
                                  pytest.param("tversky", marks=pytest.mark.slow), pytest.param("lovasz", marks=pytest.mark.slow)])
def test_each_loss_trains(tmp_path, loss):
    cfg, metrics, objects = _run(tmp_path, f"loss={loss}")
    assert math.isfinite(metrics["val/loss"])
    stats = json.loads((Path(cfg.paths.output_dir) / "data_stats.json").read_text())
    if loss == "weighted_ce":  # auto weights from the train split, written down and used
        from segkit.data.stats import DatasetStats, class_weights

        fields = {k: stats[k] for k in ("num_images", "num_pixels", "mean", "std", "class_pixels", "present_pixels")}
        expected = class_weights(DatasetStats(**fields), "median_frequency")
        assert stats["class_weights"] == pytest.approx(expected)
        assert objects["module"].criterion.weight.tolist() == pytest.approx(expected)
        assert stats["class_weights"][2] > stats["class_weights"][0]  # rare spirochaete weighs more
    else:
        assert stats["class_weights"] is None


def test_metrics_json_matches_an_independent_evaluation(tmp_path):
    """Reload best.ckpt with weights_only=True (no Hydra) and recount IoU on the val images with NumPy."""
    cfg, metrics, objects = _run(tmp_path, "trainer.max_epochs=2")
    run = Path(cfg.paths.output_dir)
    module = SegModule.load_from_checkpoint(run / "checkpoints" / "best.ckpt", weights_only=True, map_location="cpu")
    module.eval()
    dm = objects["datamodule"]
    images, masks, _ = dm.arrays("val")
    inter = np.zeros(3)
    union = np.zeros(3)
    with torch.no_grad():
        for image, mask in zip(images, masks, strict=True):
            pred = module(torch.from_numpy(image).permute(2, 0, 1)[None]).argmax(1)[0].numpy()
            for c in range(3):
                inter[c] += np.sum((pred == c) & (mask == c))
                union[c] += np.sum((pred == c) | (mask == c))
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    for c, name in enumerate(["background", "rbc", "spirochaete"]):
        if not np.isnan(iou[c]):
            assert metrics[f"val/iou/{name}"] == pytest.approx(iou[c], abs=1e-6)
    assert metrics["val/miou"] == pytest.approx(np.nanmean(iou), abs=1e-6)


def test_resume_from_last_continues_the_epoch_count(tmp_path):
    cfg, _, objects = _run(tmp_path / "a", "trainer.max_epochs=1")
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 0
    cfg2, _, objects2 = _run(tmp_path / "b", "trainer.max_epochs=2", f"ckpt_path={last}")
    trainer = objects2["trainer"]
    assert trainer.current_epoch == 2
    steps_per_epoch = objects["trainer"].global_step
    assert trainer.global_step == 2 * steps_per_epoch  # one more epoch, not two


def test_ckpt_path_last_finds_the_newest_run(tmp_path):
    from segkit.errors import SegkitError
    from segkit.training.resume import resolve_ckpt_path

    with pytest.raises(SegkitError, match="ckpt_path=last"):
        resolve_ckpt_path("last", str(tmp_path), "train")
    for name in ("2026-01-01_00-00-00.000001", "2026-01-02_00-00-00.000001"):
        (tmp_path / "train" / "runs" / name / "checkpoints").mkdir(parents=True)
        (tmp_path / "train" / "runs" / name / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert "2026-01-02" in resolve_ckpt_path("last", str(tmp_path), "train")


def test_tensorboard_has_per_class_scalars_and_pictures(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, _, _ = _run(tmp_path, "trainer.max_epochs=2")
    (events,) = [p for p in (Path(cfg.paths.output_dir) / "tensorboard").iterdir() if p.is_dir()]  # named by overrides
    acc = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    for tag in ["train/loss", "val/loss", "val/miou", "val/mdice", "val/pixel_acc", "train/lr"]:
        assert tag in scalars
    for name in ("background", "rbc", "spirochaete"):
        assert f"val/iou/{name}" in scalars and f"val/dice/{name}" in scalars
    # the epoch's train loss is the sample-weighted mean of its steps' losses: finite, and between them
    steps = [e.value for e in acc.Scalars("train/loss_step")]
    epochs = [e.value for e in acc.Scalars("train/loss")]
    assert len(epochs) == 2 and all(math.isfinite(v) for v in epochs + steps)
    per_epoch = len(steps) // 2
    for k, value in enumerate(epochs):
        chunk = steps[k * per_epoch:(k + 1) * per_epoch]
        assert min(chunk) - 1e-6 <= value <= max(chunk) + 1e-6
    assert len(acc.Scalars("val/miou")) == 2  # one point per epoch; the final re-evaluation adds none
    images = set(acc.Tags()["images"])
    assert {"val/panel", "val/confusion_matrix"} <= images
    panel = acc.Images("val/panel")
    assert len(panel) == 2 and panel[-1].width > panel[-1].height  # rows of input | truth | prediction | errors


def test_mixed_precision_request_on_cpu_trains_in_fp32(tmp_path, capsys, monkeypatch):
    import segkit.training.precision as p

    monkeypatch.setattr(p, "cpu_bf16_is_fast", lambda: False)
    _, _, objects = _run(tmp_path, "trainer=gpu", "trainer.accelerator=cpu")
    assert objects["trainer"].precision == "32-true"


@pytest.mark.slow  # CLI/multi-process: tens of seconds; make test-slow (CI) runs it
def test_multirun_sweeps_lr_through_the_cli(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "segkit.train", "-m", "lr=1e-3,1e-4", *TINY_DATA, *TINY_MODELS["unet"],
         f"paths.log_dir={tmp_path / 'outputs'}", f"paths.data_dir={tmp_path / 'data'}", "logger=csv"],
        cwd=REPO, capture_output=True, text=True, env=cli_env(), timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweeps = list((tmp_path / "outputs" / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1
    runs = sorted(p for p in sweeps[0].iterdir() if p.is_dir() and p.name.isdigit())
    assert [r.name for r in runs] == ["0", "1"]
    lrs = []
    for r in runs:
        assert (r / "metrics.json").is_file() and (r / "checkpoints" / "best.ckpt").is_file()
        hp = torch.load(r / "checkpoints" / "best.ckpt", weights_only=True)["hyper_parameters"]
        lrs.append(hp["optimizer"]["lr"])
    assert lrs == [1e-3, 1e-4]


@pytest.mark.slow  # CLI/multi-process: tens of seconds; make test-slow (CI) runs it
def test_two_process_ddp_cpu_validation_equals_a_single_process_evaluation(tmp_path):
    """``trainer=ddp_cpu`` (2 processes, each validating its own shard, 3 val images so the shards are
    uneven) must report the same pooled metrics as one process validating best.ckpt on all the images."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from segkit.evaluation.metrics import flat_scores

    data = [o for o in TINY_DATA if not o.startswith(("data.synthetic.num_images", "data.val_fraction", "data.val_batch_size"))]
    data += ["data.synthetic.num_images=10", "data.val_fraction=0.3", "data.val_batch_size=1"]
    run = tmp_path / "ddp_run"
    proc = subprocess.run(
        [sys.executable, "-m", "segkit.train", "trainer=ddp_cpu", "trainer.max_epochs=2", *data, *TINY_MODELS["unet"],
         f"hydra.run.dir={run}", f"paths.data_dir={tmp_path / 'single' / 'data'}", "logger=csv"],
        cwd=REPO, capture_output=True, text=True, env=cli_env(), timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["data"]["num_val"] == 3

    cfg = compose_cfg(tmp_path / "single", data + TINY_MODELS["unet"])  # same generated data dir
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare()
    written = json.loads((run / "splits.json").read_text())
    assert all(written[k] == v for k, v in dm.split.items())
    module = SegModule.load_from_checkpoint(run / "checkpoints" / "best.ckpt", weights_only=True, map_location="cpu")
    module.log_to_logger = False
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, datamodule=dm, verbose=False)
    single = flat_scores(module.last_confusion["val"], module.class_names, "val")
    assert module.last_confusion["val"].sum() == sum(m.size for m in dm.arrays("val")[1])  # every pixel once
    for key, value in single.items():
        if math.isfinite(value):
            assert summary["metrics"][key] == pytest.approx(value, abs=1e-6), key
    assert summary["metrics"]["val/loss"] == pytest.approx(float(trainer.callback_metrics["val/loss"]), rel=1e-5)


@pytest.mark.slow
def test_two_process_ddp_training_equals_one_process_with_the_global_batch(tmp_path):
    """2 processes x batch 2 must train the same weights as 1 process x batch 4 on the same data: each
    global step sees the same 4 crops (keys split rank::2), DDP averages the two per-process mean CE
    losses, which equals the mean over the 4 crops. No BatchNorm, no dropout, no augmentation, CE only,
    so nothing else differs between the layouts."""
    common = [o for o in TINY_DATA if not o.startswith(("data.batch_size", "trainer.max_epochs"))] + [
        "model=unet", "model.base_width=4", "model.depth=3", "model.batch_norm=false", "loss=ce",
        "data.augment.hflip=false", "data.augment.vflip=false", "data.augment.rot90=false", "data.crops_per_image=4",
        "trainer.max_epochs=2", "logger=csv", f"paths.data_dir={tmp_path / 'data'}",
    ]
    runs = {}
    for name, extra in {"ddp": ["trainer=ddp_cpu", "data.batch_size=2"], "single": ["trainer=cpu", "data.batch_size=4"]}.items():
        runs[name] = tmp_path / name
        proc = subprocess.run([sys.executable, "-m", "segkit.train", *common, *extra, f"hydra.run.dir={runs[name]}"],
                              cwd=REPO, capture_output=True, text=True, env=cli_env(), timeout=400)
        assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(runs["ddp"] / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(runs["single"] / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] > 0
    for key, value in b["state_dict"].items():
        assert torch.allclose(a["state_dict"][key], value, atol=1e-5, rtol=1e-4), key
    ma = json.loads((runs["ddp"] / "metrics.json").read_text())["metrics"]
    mb = json.loads((runs["single"] / "metrics.json").read_text())["metrics"]
    for key, value in mb.items():
        if value is not None:
            assert ma[key] == pytest.approx(value, abs=1e-4), key


def test_an_epoch_without_validation_still_rewrites_last_ckpt(tmp_path):
    from segkit.inference.load import read_checkpoint

    cfg, _, _ = _run(tmp_path, "trainer.max_epochs=3", "trainer.check_val_every_n_epoch=2")
    last = read_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    best = read_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt")
    assert last["epoch"] == 2 and best["epoch"] == 1  # epoch 3 did not validate; last.ckpt is still its end


def test_post_processing_is_tuned_on_validation_after_training(tmp_path):
    from segkit import rundir
    from segkit.evaluation.evaluate import eval_postprocess

    cfg, metrics, objects = _run(tmp_path, "trainer.max_epochs=2", "postprocess_tuning=auto")
    tuned = objects["summary"]["postprocess"]
    best = Path(objects["summary"]["checkpoint"])
    record = json.loads(rundir.postprocess_file(best).read_text())
    assert tuned["split"] == "val" and tuned["metric"] == "miou" and record["postprocess"] == tuned["postprocess"]
    # "before" is the best checkpoint's argmax val mIoU, which train computed independently through Lightning
    assert tuned["before"] == pytest.approx(metrics["val/miou"], abs=1e-4) and tuned["after"] >= tuned["before"]
    post, source = eval_postprocess("auto", best)  # eval's default picks the file up
    assert post == record["postprocess"] and str(rundir.postprocess_file(best)) in source
    assert json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())["postprocess"] == tuned


def test_post_processing_can_be_tuned_for_an_object_target(tmp_path):
    from segkit import rundir

    _, _, objects = _run(tmp_path, "trainer.max_epochs=1", "postprocess_metric=count_error/rbc")
    record = json.loads(rundir.postprocess_file(objects["summary"]["checkpoint"]).read_text())
    assert record["metric"] == "count_error/rbc" and record["higher_is_better"] is False
    assert record["after"] <= record["before"]  # an error: kept only where it falls
    assert min(t["count_error/rbc"] for t in record["trials"] if "count_error/rbc" in t) == record["after"]


def test_an_unknown_class_in_postprocess_metric_stops_before_training(tmp_path):
    with pytest.raises(SegkitError, match="'nucleus' is not a class of"):
        _run(tmp_path, "trainer.max_epochs=1", "postprocess_metric=ks/nucleus")
    assert not list((tmp_path).rglob("*.ckpt"))
