"""Real-data checks; skipped when ../shared/data is absent."""

from __future__ import annotations

import math

import pytest

from segkit.training.fit import train
from tests.conftest import SHARED_DATA, compose_cfg

DARKFIELD = SHARED_DATA / "darkfield"


@pytest.mark.realdata
@pytest.mark.skipif(not (DARKFIELD / "images").is_dir(), reason="../shared/data/darkfield is absent")
def test_segnet_one_epoch_on_real_darkfield(tmp_path):
    cfg = compose_cfg(tmp_path, ["model=segnet", "data=darkfield", f"data.root={DARKFIELD}", "trainer.max_epochs=1",
                                 "data.crop_size=128", "trainer.limit_val_batches=8", "callbacks.progress_bar=null",
                                 "trainer.num_sanity_val_steps=0"])
    metrics, objects = train(cfg)
    dm = objects["datamodule"]
    assert len(dm.split["train"]) + len(dm.split["val"]) == 160
    assert math.isfinite(metrics["val/loss"]) and 0.0 <= metrics["val/miou"] <= 1.0
    # class shares of the train split: background dominates, spirochaete is rare (about 1 %)
    freq = dm.stats.class_frequency
    assert freq[0] > 0.7 and 0.001 < freq[2] < 0.05


EXPERIMENTS = {  # experiment -> shared dataset folder
    "darkfield_segnet": "darkfield",
    "isbi2012_unet": "isbi2012",
    "sunnybrook_fcn": "sunnybrook",
    "sunnybrook_unet": "sunnybrook",
    "phase_bacteria_patchcnn": "phase_bacteria",
    "phase_bacteria_unet": "phase_bacteria",
    "darkfield_unet": "darkfield",
}
EXPECTED_SPLITS = {  # (train, val, test) samples the shipped configs give on the shared copies
    "darkfield": (128, 32, 0),
    "isbi2012": (17, 4, 4),
    "sunnybrook": (18, 18, 20),
    "phase_bacteria": (1, 1, 1),
}


@pytest.mark.realdata
@pytest.mark.parametrize("name", sorted(EXPECTED_SPLITS))
def test_checker_passes_on_each_real_dataset(name, capsys):
    if not (SHARED_DATA / name).is_dir():
        pytest.skip(f"../shared/data/{name} is absent")
    from segkit.data.__main__ import main as data_main

    assert data_main(["check", f"data={name}", f"data.root={SHARED_DATA / name}"]) == 0
    out = capsys.readouterr().out
    train, val, test = EXPECTED_SPLITS[name]
    assert f"(train {train}, val {val}, test {test})" in out and "OK: no problems found" in out


@pytest.mark.realdata
@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_each_experiment_trains_briefly_on_its_real_data(experiment, tmp_path):
    root = SHARED_DATA / EXPERIMENTS[experiment]
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    cfg = compose_cfg(tmp_path, [f"experiment={experiment}", f"data.root={root}", "debug=fast", "callbacks.progress_bar=null"])
    metrics, objects = train(cfg)
    assert math.isfinite(metrics["val/loss"]) and 0.0 <= metrics["val/miou"] <= 1.0
    assert set(objects["datamodule"].split["val"]).isdisjoint(objects["datamodule"].split["train"])


def test_every_real_data_experiment_config_has_its_smoke_test():
    """Not marked: runs without the data, so a new conf/experiment file cannot go without its real-data test."""
    from segkit import CONF_DIR

    shipped = {p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")}
    synthetic_only = {"folder_unet"}  # trains on a user's folder; tests/ make its data
    assert shipped - synthetic_only == set(EXPERIMENTS)


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("name", ["darkfield", "isbi2012", "sunnybrook", "phase_bacteria"])
def test_the_planner_on_each_real_dataset_matches_hand_computed_fingerprints(name, tmp_path):
    """The fingerprint's class shares, image counts and sizes recounted with NumPy from the train masks, and the
    plan's rare-class choices checked against them."""
    import numpy as np
    from hydra.utils import instantiate

    from segkit.planning.plan import plan_for

    root = SHARED_DATA / name
    if not root.is_dir():
        pytest.skip(f"../shared/data/{name} is absent")
    cfg = compose_cfg(tmp_path, [f"data={name}", f"data.root={root}"])
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare()
    record = plan_for(cfg, dm, overrides=[])
    fp = record["fingerprint"]
    _, masks, _ = dm.arrays("train")
    counts = np.zeros(dm.num_classes, np.int64)
    images_with = np.zeros(dm.num_classes, np.int64)
    for m in masks:
        c = np.bincount(m[m != dm.ignore_index].ravel(), minlength=dm.num_classes)[: dm.num_classes]
        counts += c
        images_with += c > 0
    shares = counts / counts.sum()
    assert fp["num_images"] == len(masks) == len(dm.split["train"])
    assert [c["pixels"] for c in fp["classes"]] == counts.tolist()
    assert [c["images"] for c in fp["classes"]] == images_with.tolist()
    assert fp["height"]["median"] == float(np.median([m.shape[0] for m in masks]))
    items = {i["key"]: i for i in record["items"]}
    rare = bool(shares.min() < 0.02)
    assert items["data.sampling"]["value"] == ("class_balanced" if rare else "uniform")
    if "loss.class_weights" in items:
        assert items["loss.class_weights"].get("value") == ("auto" if rare else None)
    for c in fp["classes"][1:]:
        if c["objects"]:
            assert 1 <= c["median_width"] <= min(fp["height"]["max"], fp["width"]["max"])
            assert c["median_area"] >= c["median_width"]  # an object at least as large as its inscribed disc's diameter
