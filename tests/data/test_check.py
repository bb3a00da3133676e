"""``python -m segkit.data check``: one crafted bad dataset per finding, each reported on its own line
naming the file, and every finding of a dataset reported in one run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segkit.data.__main__ import main as data_main
from tests.conftest import REPO, cli_env, write_pair

rng = np.random.default_rng(0)


def _image(h: int = 16, w: int = 16, c: int = 3) -> np.ndarray:
    return rng.integers(0, 255, (h, w, c) if c > 1 else (h, w), dtype=np.uint8)


def _mask(h: int = 16, w: int = 16, k: int = 2) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[: h // 2] = 1 if k > 1 else 0
    m[0, 0] = k - 1
    return m


def _good(root: Path, n: int = 6, k: int = 2) -> None:
    for i in range(n):
        write_pair(root, f"{i:03d}", _image(), _mask(k=k))


def _check(root: Path, capsys, *extra: str) -> tuple[int, list[str]]:
    code = data_main(["check", "data=folder", f"data.root={root}", "data.test_fraction=0", *extra])
    out = capsys.readouterr().out
    return code, [ln.removeprefix("PROBLEM: ") for ln in out.splitlines() if ln.startswith("PROBLEM: ")]


def test_clean_folder_passes(tmp_path, capsys):
    _good(tmp_path)
    code, problems = _check(tmp_path, capsys)
    assert code == 0 and problems == []


def test_missing_root_is_one_sentence_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        data_main(["check", "data=folder", f"data.root={tmp_path / 'nope'}"])
    assert err.value.code == 2
    assert "does not exist" in capsys.readouterr().err


def test_no_images(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    code, problems = _check(tmp_path, capsys)
    assert code == 1 and len(problems) == 1 and "no images" in problems[0]


def test_unpaired_files_both_ways(tmp_path, capsys):
    _good(tmp_path)
    Image.fromarray(_image()).save(tmp_path / "images" / "lonely.png")
    Image.fromarray(_mask()).save(tmp_path / "masks" / "orphan.png")
    code, problems = _check(tmp_path, capsys)
    assert code == 1
    assert any("images without a mask" in p and "lonely" in p for p in problems)
    assert any("masks without an image" in p and "orphan" in p for p in problems)


def test_truncated_file(tmp_path, capsys):
    _good(tmp_path)
    path = tmp_path / "images" / "002.png"
    path.write_bytes(path.read_bytes()[:60])
    code, problems = _check(tmp_path, capsys)
    assert code == 1 and len(problems) == 1 and "002.png" in problems[0] and "cannot read" in problems[0]


def test_size_mismatch(tmp_path, capsys):
    _good(tmp_path)
    write_pair(tmp_path, "009", _image(16, 16), _mask(12, 16))
    code, problems = _check(tmp_path, capsys)
    assert code == 1 and len(problems) == 1
    assert "009.png" in problems[0] and "16x12" in problems[0] and "16x16" in problems[0]


def test_0_255_masks_suggest_a_value_map_that_then_works(tmp_path, capsys):
    for i in range(6):
        write_pair(tmp_path, f"{i:03d}", _image(), _mask() * 255)
    code, problems = _check(tmp_path, capsys)  # 255 is also the default ignore_index: the trap this catches
    assert code == 1 and len(problems) == 1
    assert "only 0 and 255" in problems[0] and "data.value_map='{255: 1}'" in problems[0]
    code, problems = _check(tmp_path, capsys, "data.ignore_index=-1")
    assert code == 1 and len(problems) == 6 and all("[255]" in p and "data.value_map='{255: 1}'" in p for p in problems)
    code, problems = _check(tmp_path, capsys, "data.value_map={255: 1}")
    assert code == 0, problems


def test_rgb_palette_mask_needs_and_accepts_a_colour_map(tmp_path, capsys):
    for i in range(4):
        m = _mask()
        rgb = np.zeros((*m.shape, 3), np.uint8)
        rgb[m == 1] = (255, 0, 0)
        write_pair(tmp_path, f"{i:03d}", _image(), rgb)
    code, problems = _check(tmp_path, capsys)
    assert code == 1 and len(problems) == 4 and "255-0-0" in problems[0] and "data.value_map" in problems[0]
    code, problems = _check(tmp_path, capsys, "data.value_map={255-0-0: 1, 0-0-0: 0}")
    assert code == 0, problems


def test_jpeg_mask_with_interpolated_values(tmp_path, capsys):
    _good(tmp_path)
    m = np.zeros((32, 32), np.uint8)
    m[8:20, 5:27] = 1
    Image.fromarray(_image(32, 32)).save(tmp_path / "images" / "jpg.png")
    (tmp_path / "masks" / "jpg.jpg").parent.mkdir(exist_ok=True)
    Image.fromarray(m * 200).save(tmp_path / "masks" / "jpg.jpg", quality=50)
    code, problems = _check(tmp_path, capsys)
    assert code == 1 and len(problems) == 1
    assert "jpg.jpg" in problems[0] and "JPEG" in problems[0] and "PNG" in problems[0]


def test_class_missing_from_the_training_split(tmp_path, capsys):
    for i in range(5):
        write_pair(tmp_path, f"{i:03d}", _image(), np.zeros((16, 16), np.uint8))
    code, problems = _check(tmp_path, capsys)
    assert code == 1 and len(problems) == 1
    assert "class 'foreground' (id 1) has no pixels in the 4 training images" in problems[0]


def test_blank_image(tmp_path, capsys):
    _good(tmp_path)
    write_pair(tmp_path, "flat", np.full((16, 16, 3), 7, np.uint8), _mask())
    code, problems = _check(tmp_path, capsys)
    assert code == 1 and len(problems) == 1 and "flat.png" in problems[0] and "blank" in problems[0]


def test_nan_in_a_float_image(tmp_path, capsys):
    _good(tmp_path)
    img = rng.random((16, 16, 3)).astype(np.float32)
    img[3, 4, 1] = np.nan
    np.save(tmp_path / "images" / "nan.npy", img)
    np.save(tmp_path / "masks" / "nan.npy", _mask())
    code, problems = _check(tmp_path, capsys)
    assert code == 1 and len(problems) == 1 and "nan.npy" in problems[0] and "1 NaN/Inf" in problems[0]


def test_channel_count_differs_from_in_channels(tmp_path, capsys):
    _good(tmp_path)
    code, problems = _check(tmp_path, capsys, "data.in_channels=2")
    assert code == 1 and len(problems) == 6 and "has 3 channels; expected data.in_channels=2" in problems[0]


def test_all_problems_reported_in_one_run_through_the_cli(tmp_path):
    _good(tmp_path)
    write_pair(tmp_path, "flat", np.zeros((16, 16, 3), np.uint8), _mask())
    write_pair(tmp_path, "big", _image(), _mask() * 9)
    Image.fromarray(_image()).save(tmp_path / "images" / "lonely.png")
    proc = subprocess.run([sys.executable, "-m", "segkit.data", "check", "data=folder", f"data.root={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True, env=cli_env(), timeout=120)
    assert proc.returncode == 1
    problems = [ln for ln in proc.stdout.splitlines() if ln.startswith("PROBLEM: ")]
    assert len(problems) == 3, proc.stdout
    assert "3 problems found" in proc.stdout and "Traceback" not in proc.stderr


def test_training_stops_on_the_same_problems(tmp_path):
    _good(tmp_path)
    write_pair(tmp_path, "big", _image(), _mask() * 9)
    proc = subprocess.run([sys.executable, "-m", "segkit.train", "data=folder", f"data.root={tmp_path}",
                           f"paths.log_dir={tmp_path / 'out'}"], cwd=REPO, capture_output=True, text=True, env=cli_env(), timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "big.png" in proc.stderr and "holds values [9]" in proc.stderr


def test_codes_txt_names_the_classes(tmp_path, capsys):
    _good(tmp_path, k=3)
    (tmp_path / "codes.txt").write_text("void\ncell\nedge\n")
    code = data_main(["check", "data=folder", f"data.root={tmp_path}", "data.class_names=null", "data.num_classes=null"])
    assert code == 0
    assert "classes ['void', 'cell', 'edge']" in capsys.readouterr().out


def test_sixteen_bit_tiff_images_are_scaled_per_image(tmp_path, capsys):
    import tifffile

    for i in range(4):
        img = (rng.random((16, 16)) * 4000 + 100).astype(np.uint16)
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "masks").mkdir(exist_ok=True)
        tifffile.imwrite(tmp_path / "images" / f"{i}.tif", img, compression="lzw")
        tifffile.imwrite(tmp_path / "masks" / f"{i}.tif", _mask())
    code, problems = _check(tmp_path, capsys, "data.in_channels=1")
    assert code == 0, problems
    from segkit.data.io import read_image

    img = tifffile.imread(tmp_path / "images" / "0.tif").astype(np.float64)
    lo, hi = np.percentile(img, [0.5, 99.5])
    got = read_image(tmp_path / "images" / "0.tif", 1)[..., 0]
    expected = np.clip(np.round((img - lo) * 255 / (hi - lo)), 0, 255)
    assert got.dtype == np.uint8 and np.abs(got.astype(int) - expected).max() <= 1


def test_stats_are_cached_keyed_by_the_train_files_and_reused(tmp_path, capsys):
    from segkit.data.datamodule import SegDataModule

    _good(tmp_path / "d")
    kw = dict(root=str(tmp_path / "d"), class_names=["bg", "fg"], num_classes=2, format="folder", cache_dir=str(tmp_path / "cache"))
    first = SegDataModule(**kw)
    first.prepare()
    assert first.stats_source == "computed" and len(list((tmp_path / "cache").glob("stats-*.json"))) == 1
    again = SegDataModule(**kw)
    again.prepare()
    assert again.stats_source == "cached" and again.stats == first.stats
    train_stem = first.split["train"][0]  # a changed training file changes the key
    write_pair(tmp_path / "d", train_stem, _image(), _mask())
    changed = SegDataModule(**kw)
    changed.prepare()
    assert changed.stats_source == "computed" and len(list((tmp_path / "cache").glob("stats-*.json"))) == 2


def test_stats_command_prints_the_train_split_table(tmp_path, capsys):
    _good(tmp_path, n=5)
    code = data_main(["stats", "data=folder", f"data.root={tmp_path}", "data.test_fraction=0", f"paths.data_dir={tmp_path / 'd'}"])
    out = capsys.readouterr().out
    assert code == 0
    from segkit.data.datamodule import SegDataModule

    dm = SegDataModule(root=str(tmp_path), class_names=["background", "foreground"], num_classes=2, format="folder")
    dm.prepare()
    fg = dm.stats.class_frequency[1]
    assert f"foreground | {fg:.5f} | 4/4" in out  # every training mask has foreground
    assert f"{dm.stats.mean[0] * 255:12.2f}" in out and "w median_frequency" in out and "splits: train 4, val 1, test 0" in out
