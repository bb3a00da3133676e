import hashlib

import numpy as np
import pytest
from PIL import Image

from segkit.data.synthetic import SyntheticSpec, ensure_synthetic
from segkit.errors import SegkitError


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_deterministic_for_a_seed_and_different_for_another(tmp_path):
    spec = SyntheticSpec(num_images=3, min_size=40, max_size=60, seed=5)
    a = ensure_synthetic(tmp_path / "a", spec)
    b = ensure_synthetic(tmp_path / "b", spec)
    c = ensure_synthetic(tmp_path / "c", SyntheticSpec(num_images=3, min_size=40, max_size=60, seed=6))
    assert _digest(a) == _digest(b) != _digest(c)


def test_layout_classes_and_reuse(tmp_path):
    root = ensure_synthetic(tmp_path / "syn", SyntheticSpec(num_images=4, min_size=96, max_size=128, seed=0))
    images = sorted((root / "images").glob("*.png"))
    assert [p.name for p in images] == ["000.png", "001.png", "002.png", "003.png"]
    counts = np.zeros(3)
    for p in images:
        img = Image.open(p)
        mask = np.asarray(Image.open(root / "masks" / p.name))
        assert img.mode == "RGB" and mask.shape == (img.height, img.width)
        assert 96 <= img.width <= 128
        counts += np.bincount(mask.ravel(), minlength=3)[:3]
        # cells and spirochaetes are brighter than the background
        arr = np.asarray(img).mean(-1)
        assert arr[mask > 0].mean() > arr[mask == 0].mean() + 20
    share = counts / counts.sum()
    assert share[0] > 0.5 and share[1] > 0.05 and 0.003 < share[2] < 0.15
    mtime = (root / "images" / "000.png").stat().st_mtime_ns
    ensure_synthetic(root, SyntheticSpec(num_images=4, min_size=96, max_size=128, seed=0))
    assert (root / "images" / "000.png").stat().st_mtime_ns == mtime  # reused, not rewritten


def test_refuses_to_overwrite_foreign_files(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(SegkitError, match="did not generate"):
        ensure_synthetic(tmp_path / "mine", SyntheticSpec(num_images=1))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"
