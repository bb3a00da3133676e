"""The README's main job, run as a user runs it (slow: about 3 minutes on the 2-core CPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, cli_env


@pytest.mark.slow
def test_default_command_reaches_the_documented_miou(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "segkit.train", f"paths.log_dir={tmp_path / 'outputs'}", f"paths.data_dir={tmp_path / 'data'}",
         "callbacks.progress_bar=null"],
        cwd=REPO, capture_output=True, text=True, env=cli_env(), timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_line = proc.stdout.strip().splitlines()[-1]
    assert run_line.startswith("Run directory: ")
    run = run_line.removeprefix("Run directory: ")
    summary = json.loads(open(f"{run}/metrics.json").read())
    assert summary["epochs_trained"] == 30 and summary["data"]["num_val"] == 10
    assert summary["metrics"]["val/miou"] >= 0.80
    assert summary["metrics"]["val/iou/spirochaete"] >= 0.70
    # the generated data is in the darkfield layout: RGB image, index mask with values 0..2
    data = tmp_path / "data" / "synthetic" / "darkfield"
    image = np.asarray(Image.open(next((data / "images").glob("*.png"))))
    mask = np.asarray(Image.open(next((data / "masks").glob("*.png"))))
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
    assert mask.shape == image.shape[:2] and set(np.unique(mask)) <= {0, 1, 2}
