import hashlib
import multiprocessing as mp
import time

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


def _generate_then_read(root, spec_kwargs, start, result):
    """A parallel sweep trial: generate (or reuse) the set, then read every file of it."""
    while time.time() < start:  # staggered gates: some finish generating while others still write
        pass
    try:
        out = ensure_synthetic(root, SyntheticSpec(**spec_kwargs))
        until = time.time() + 1.5
        while time.time() < until:  # keep reading while the later processes finish
            for p in sorted(out.rglob("*.png")):
                p.read_bytes()
        result.put("ok")
    except Exception as e:  # noqa: BLE001 -- the test reports what went wrong in which process
        result.put(f"{type(e).__name__}: {e}")


@pytest.mark.parametrize("attempt", [1, 2, 3])  # a race: three tries make the old bug show almost surely
def test_concurrent_generation_never_pulls_the_set_from_under_a_reader(tmp_path, attempt):
    """Parallel sweep trials (joblib) generate the same set at the same moment. A process that
    finished second once renamed the first one's finished set away while it was being read."""
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    result = ctx.Queue()
    spec = dict(num_images=8, min_size=128, max_size=160, seed=3)
    start = time.time() + 1.0
    procs = [ctx.Process(target=_generate_then_read, args=(tmp_path / "syn", spec, start + 0.03 * i, result)) for i in range(4)]
    for p in procs:
        p.start()
    outcomes = [result.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert outcomes == ["ok"] * 4, outcomes
    # one set, identical to a set generated alone; no temporary siblings left behind
    assert _digest(tmp_path / "syn") == _digest(ensure_synthetic(tmp_path / "alone", SyntheticSpec(**spec)))
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
