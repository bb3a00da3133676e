"""Real-data checks; skipped when ../shared/data is absent."""

from __future__ import annotations

import math

import pytest

from segkit.train import train
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
