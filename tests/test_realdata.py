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
