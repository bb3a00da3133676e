import subprocess
import sys

import numpy as np
import pytest

from segkit.data.datamodule import SegDataModule
from segkit.data.io import read_mask
from segkit.errors import SegkitError
from tests.conftest import REPO, cli_env, write_pair


def _dm(root, **kw):
    return SegDataModule(root=str(root), class_names=["bg", "rbc", "spiro"], num_classes=3, val_fraction=0.5, **kw)


def test_rgb_and_single_channel_masks_read_the_same(tmp_path):
    m = np.array([[0, 1], [2, 1]], np.uint8)
    write_pair(tmp_path / "a", "001", np.zeros((2, 2, 3), np.uint8), np.stack([m] * 3, -1))
    write_pair(tmp_path / "b", "001", np.zeros((2, 2, 3), np.uint8), m)
    np.testing.assert_array_equal(read_mask(tmp_path / "a/masks/001.png"), m)
    np.testing.assert_array_equal(read_mask(tmp_path / "b/masks/001.png"), m)


def test_rgb_mask_with_differing_channels_is_refused(tmp_path):
    m = np.zeros((2, 2, 3), np.uint8)
    m[0, 0] = (1, 0, 0)
    write_pair(tmp_path, "007", np.zeros((2, 2, 3), np.uint8), m)
    with pytest.raises(SegkitError, match=r"007\.png.*differing at 1 pixels"):
        read_mask(tmp_path / "masks/007.png")


def test_bad_mask_values_name_the_file_and_values(tmp_path):
    for stem, top in (("001", 2), ("002", 7), ("003", 1)):
        m = np.zeros((8, 8), np.uint8)
        m[0, :3] = [1, top, 5 if stem == "002" else 0]
        write_pair(tmp_path, stem, np.random.default_rng(1).integers(0, 255, (8, 8, 3), dtype=np.uint8), m)
    with pytest.raises(SegkitError) as err:
        _dm(tmp_path).prepare()
    msg = str(err.value)
    assert "002.png" in msg and "[5, 7]" in msg and "0..2" in msg
    assert "001.png" not in msg and "003.png" not in msg


def test_unpaired_files_are_listed(tmp_path):
    write_pair(tmp_path, "001", np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8))
    (tmp_path / "masks" / "001.png").rename(tmp_path / "masks" / "009.png")
    with pytest.raises(SegkitError, match=r"(?s)images without a mask.*001.*masks without an image.*009"):
        _dm(tmp_path).prepare()


def test_missing_root_on_the_command_line(tmp_path):
    missing = tmp_path / "nowhere"
    proc = subprocess.run(
        [sys.executable, "-m", "segkit.train", "model=segnet", "data=darkfield", f"data.root={missing}",
         f"paths.log_dir={tmp_path / 'outputs'}"],
        cwd=REPO, capture_output=True, text=True, env=cli_env(), timeout=300,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("segkit: error:")]
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert str(missing) in line and "images/NNN.png" in line and "masks/NNN.png" in line
    assert "Bacteria detection with darkfield microscopy" in line
