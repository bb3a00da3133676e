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


@pytest.mark.slow  # a training CLI run: ~17 s; make test-slow (CI) runs it
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


# ---------------------------------------------------------------- data that would be silently lost
# Each crafted file below used to be read without a word while part of it was lost for training.


def _png(path: Path, values: np.ndarray, bit_depth: int) -> None:
    """A grey PNG at 2 or 4 bits per pixel (Pillow cannot write those; optipng & co. do)."""
    import struct
    import zlib

    h, w = values.shape
    per_byte = 8 // bit_depth
    v = values.astype(np.uint8).reshape(h, w // per_byte, per_byte)
    packed = np.zeros((h, w // per_byte), np.uint8)
    for i in range(per_byte):
        packed |= v[..., i] << (8 - bit_depth * (i + 1))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + row.tobytes() for row in packed)  # filter type 0 per row
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _png16(path: Path, arr: np.ndarray) -> None:
    """A 16-bit PNG of any channel count (Pillow writes 16 bits for single-channel images only)."""
    import imagecodecs

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(imagecodecs.png_encode(arr.astype(np.uint16)))


def _one(problems: list[str], name: str) -> str:
    assert len(problems) == 1, problems
    assert f"{name}'" in problems[0], problems[0]  # the file is named (quoted path ends with it)
    return problems[0]


def test_one_0_255_mask_among_class_id_masks_is_named(tmp_path, capsys):
    _good(tmp_path)  # 0/1 masks
    write_pair(tmp_path, "odd", _image(), _mask() * 255)  # its foreground is 255 = data.ignore_index
    code, problems = _check(tmp_path, capsys)
    msg = _one(problems, "odd.png")
    assert code == 1
    assert msg == (
        f"mask '{tmp_path / 'masks' / 'odd.png'}' holds only 0 and 255 while the other masks hold class ids "
        f"(e.g. '{tmp_path / 'masks' / '000.png'}': [0, 1]), and 255 is data.ignore_index, so all its non-zero pixels would be "
        "ignored; expected class ids in it: re-save it with its class ids, or, if 255 marks the foreground in it and every "
        "mask like it, set data.value_map='{255: 1}'"
    )
    code, problems = _check(tmp_path, capsys, "data.value_map={255: 1}")  # the suggested fix works
    assert code == 0, problems


def test_0_255_mask_is_fine_where_255_is_used_as_void_next_to_classes(tmp_path, capsys):
    for i in range(5):  # VOC style: class ids with a 255 void border
        m = _mask()
        m[7:9] = 255
        write_pair(tmp_path, f"{i:03d}", _image(), m)
    m = np.zeros((16, 16), np.uint8)
    m[:3] = 255  # background and void only: plausible in such a dataset
    write_pair(tmp_path, "void", _image(), m)
    code, problems = _check(tmp_path, capsys)
    assert code == 0, problems


def test_values_a_value_map_does_not_list_are_reported_with_the_map_kept(tmp_path, capsys):
    for i in range(5):
        write_pair(tmp_path, f"{i:03d}", _image(), _mask() * 255)
    m = _mask() * 255
    m[10:] = 128  # neither in data.value_map nor a class id: used to pass through
    write_pair(tmp_path, "grey", _image(), m)
    code, problems = _check(tmp_path, capsys, "data.value_map={255: 1}", "data.num_classes=3", "data.class_names=[a,b,c]")
    msg = _one(problems, "grey.png")
    assert code == 1
    # the old hint "set data.value_map='{128: 2}'" replaced the map, so 255 became the ignore index
    assert msg == (
        f"mask '{tmp_path / 'masks' / 'grey.png'}' holds values [128] that data.value_map ({{255: 1}}) does not map and that "
        "are not class ids; expected every value mapped by data.value_map or a class id 0..2 (data.num_classes=3) or "
        "data.ignore_index=255: add them to the map, e.g. data.value_map='{255: 1, 128: <class id>}'"
    )
    code, problems = _check(tmp_path, capsys, "data.value_map={255: 1, 128: 2}", "data.num_classes=3", "data.class_names=[a,b,c]")
    assert code == 0, problems


def test_negative_mask_values_under_a_value_map_are_not_wrapped(tmp_path, capsys):
    _good(tmp_path)
    m = _mask().astype(np.int16)
    m[12:] = -1  # a lookup table indexed by value read -1 as its last entry: class 1
    np.save(tmp_path / "images" / "neg.npy", _image())
    np.save(tmp_path / "masks" / "neg.npy", m)
    code, problems = _check(tmp_path, capsys, "data.value_map={255: 1}")
    msg = _one(problems, "neg.npy")
    assert code == 1
    assert msg == (
        f"mask '{tmp_path / 'masks' / 'neg.npy'}' (int16) holds values [-1] outside 0..255 that data.value_map does not map; "
        "expected class ids 0..255, which segkit stores in 8 bits and never wraps: add them to data.value_map"
    )
    code, problems = _check(tmp_path, capsys, "data.value_map={-1: 0, 255: 1}")  # a negative key is honoured, not skipped
    assert code == 0, problems
    from segkit.data.io import read_mask

    got = read_mask(tmp_path / "masks" / "neg.npy", {-1: 0, 255: 1})
    np.testing.assert_array_equal(got, np.where(m == -1, 0, m))


def test_alpha_that_is_not_opaque_is_not_dropped_silently(tmp_path, capsys):
    _good(tmp_path)
    rgba = np.dstack([_image(), np.full((16, 16), 255, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "images" / "opaque.png")  # all 255: dropping it loses nothing
    Image.fromarray(_mask()).save(tmp_path / "masks" / "opaque.png")
    code, problems = _check(tmp_path, capsys)
    assert code == 0, problems
    rgba[:4, :, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "images" / "cutout.png")
    Image.fromarray(_mask()).save(tmp_path / "masks" / "cutout.png")
    code, problems = _check(tmp_path, capsys)
    msg = _one(problems, "cutout.png")
    assert code == 1
    assert msg == (
        f"image '{tmp_path / 'images' / 'cutout.png'}' has 4 channels; expected data.in_channels=3, or RGB plus a fully opaque "
        "alpha, but its alpha (the last channel) is below opaque at 64 pixels (values 0..255) and dropping it would lose them: "
        "set data.in_channels=4 to train on it, or save the image without alpha"
    )


def test_grey_alpha_png_and_four_band_tiff_are_not_cut_silently(tmp_path, capsys):
    import tifffile

    for i in range(6):
        la = np.dstack([_image(c=1), np.full((16, 16), 255, np.uint8)])
        la[0, :5, 1] = 10 * i  # grey + alpha PNG: Pillow's convert("L") used to drop the alpha
        write_pair(tmp_path, f"{i:03d}", la if i % 2 else _image(c=1), _mask())
    code, problems = _check(tmp_path, capsys, "data.in_channels=1")
    assert code == 1 and len(problems) == 3 and all("below opaque at 5 pixels" in p and "set data.in_channels=2" in p for p in problems)
    assert problems[0].startswith(f"image '{tmp_path / 'images' / '001.png'}' has 2 channels; expected data.in_channels=1, or grey plus a fully opaque alpha")
    for i in range(6):
        (tmp_path / "images" / f"{i:03d}.png").unlink()
        band4 = (rng.random((16, 16, 4)) * 4000).astype(np.uint16)  # RGB + near infrared
        tifffile.imwrite(tmp_path / "images" / f"{i:03d}.tif", band4, photometric="rgb", extrasamples=[0])
    code, problems = _check(tmp_path, capsys)
    assert code == 1 and len(problems) == 6
    assert problems[0].startswith(f"image '{tmp_path / 'images' / '000.tif'}' has 4 channels; expected data.in_channels=3, or RGB plus a fully opaque alpha")


def test_cmyk_jpeg_is_converted_not_cut_to_three_channels(tmp_path, capsys):
    _good(tmp_path)
    rgb = _image()
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "images" / "cmyk.jpg", quality=95)
    Image.fromarray(_mask()).save(tmp_path / "masks" / "cmyk.png")
    code, problems = _check(tmp_path, capsys)
    assert code == 0, problems
    from segkit.data.io import read_image

    got = read_image(tmp_path / "images" / "cmyk.jpg", 3)  # the K channel used to be dropped as if it were alpha
    with Image.open(tmp_path / "images" / "cmyk.jpg") as im:
        np.testing.assert_array_equal(got, np.asarray(im.convert("RGB")))


def test_16_bit_mask_values_above_255_are_named_not_wrapped(tmp_path, capsys):
    import tifffile

    _good(tmp_path, n=4)
    m = _mask().astype(np.uint16) * 256
    m[12:] = 512
    Image.fromarray(m).save(tmp_path / "masks" / "wide.png")  # uint16 PNG
    Image.fromarray(_image()).save(tmp_path / "images" / "wide.png")
    tifffile.imwrite(tmp_path / "masks" / "label.tif", np.where(_mask() == 1, 300, 0).astype(np.uint16))
    Image.fromarray(_image()).save(tmp_path / "images" / "label.png")
    code, problems = _check(tmp_path, capsys)
    assert code == 1 and len(problems) == 2, problems
    assert problems[0] == (
        f"mask '{tmp_path / 'masks' / 'label.tif'}' (uint16) holds values [300] outside 0..255; expected class ids 0..255, "
        "which segkit stores in 8 bits and never wraps: map them with data.value_map, e.g. data.value_map='{300: 1}' if 0, 300 "
        "are your classes in order"
    )
    assert problems[1] == (
        f"mask '{tmp_path / 'masks' / 'wide.png'}' (uint16) holds values [256, 512] outside 0..255; expected class ids 0..255, "
        "which segkit stores in 8 bits and never wraps: map them with data.value_map, e.g. data.value_map='{256: 1, 512: 2}' if "
        "0, 256, 512 are your classes in order"
    )


def test_16_bit_rgb_png_mask_is_read_exactly_not_as_8_bit(tmp_path, capsys):
    _good(tmp_path)
    m = _mask().astype(np.uint16)
    _png16(tmp_path / "masks" / "deep.png", np.dstack([m] * 3))  # Pillow kept the high byte: class 1 read 0
    Image.fromarray(_image()).save(tmp_path / "images" / "deep.png")
    code, problems = _check(tmp_path, capsys)
    assert code == 0, problems
    from segkit.data.io import read_mask

    np.testing.assert_array_equal(read_mask(tmp_path / "masks" / "deep.png"), m)
    m[12:] = 300  # read as 1 (300 >> 8) by Pillow: silently class 1
    _png16(tmp_path / "masks" / "deep.png", np.dstack([m] * 3))
    code, problems = _check(tmp_path, capsys)
    msg = _one(problems, "deep.png")
    assert code == 1 and "(uint16) holds values [300] outside 0..255" in msg


def test_16_bit_rgb_png_image_is_scaled_from_its_16_bit_values(tmp_path):
    from segkit.data.io import read_image, scale_to_uint8

    img = (rng.random((16, 16, 3)) * 1000).astype(np.uint16)  # 10-bit data: Pillow read it as 0..3
    _png16(tmp_path / "deep.png", img)
    np.testing.assert_array_equal(read_image(tmp_path / "deep.png", 3), scale_to_uint8(img))


@pytest.mark.parametrize("bit_depth", [2, 4])
def test_low_bit_depth_grey_png_mask_gives_its_stored_class_ids(tmp_path, capsys, bit_depth):
    for i in range(4):
        m = np.tile(np.arange(16) % 4, (16, 1)).astype(np.uint8)  # classes 0..3
        Image.fromarray(_image()).save((tmp_path / "images").mkdir(parents=True, exist_ok=True) or tmp_path / "images" / f"{i}.png")
        (tmp_path / "masks").mkdir(exist_ok=True)
        _png(tmp_path / "masks" / f"{i}.png", m, bit_depth)  # Pillow scaled them: 3 read 255, the ignore index
    code, problems = _check(tmp_path, capsys, "data.num_classes=4", "data.class_names=[a,b,c,d]")
    assert code == 0, problems
    from segkit.data.io import read_mask

    np.testing.assert_array_equal(read_mask(tmp_path / "masks" / "0.png"), m)


def _palette_mask(path: Path, index: np.ndarray, palette: list[tuple[int, int, int]]) -> None:
    im = Image.fromarray(index.astype(np.uint8), "P")
    im.putpalette([c for rgb in palette for c in rgb])
    im.save(path)


def test_palette_png_mask_under_a_colour_map_is_read_by_colour(tmp_path, capsys):
    colours = "data.value_map={255-0-0: 1, 0-0-0: 0}"
    for i in range(4):
        m = _mask()
        write_pair(tmp_path, f"{i:03d}", _image(), np.zeros((16, 16), np.uint8))
        # an editor's palette order: index 0 is red (class 1), index 1 black (class 0); the indices were taken as class ids
        _palette_mask(tmp_path / "masks" / f"{i:03d}.png", 1 - m, [(255, 0, 0), (0, 0, 0)])
    code, problems = _check(tmp_path, capsys, colours)
    assert code == 0, problems
    from segkit.data.io import read_mask

    np.testing.assert_array_equal(read_mask(tmp_path / "masks" / "000.png", {"255-0-0": 1, "0-0-0": 0}), _mask())
    _palette_mask(tmp_path / "masks" / "003.png", _mask(), [(0, 0, 0), (0, 255, 0)])  # a colour the map lacks
    code, problems = _check(tmp_path, capsys, colours)
    msg = _one(problems, "003.png")
    assert code == 1
    assert msg == (
        f"mask '{tmp_path / 'masks' / '003.png'}' has 128 pixels in colours missing from data.value_map (0-255-0); "
        "expected every mask colour to have a class"
    )


def test_grey_mask_under_a_colour_only_map_is_not_passed_through(tmp_path, capsys):
    for i in range(4):
        m = _mask()
        rgb = np.zeros((16, 16, 3), np.uint8)
        rgb[m == 1] = (255, 0, 0)
        write_pair(tmp_path, f"{i:03d}", _image(), rgb)
    write_pair(tmp_path, "grey", _image(), _mask() * 255)  # 255 passed through unmapped: the ignore index
    code, problems = _check(tmp_path, capsys, "data.value_map={255-0-0: 1, 0-0-0: 0}")
    msg = _one(problems, "grey.png")
    assert code == 1
    assert msg == (
        f"mask '{tmp_path / 'masks' / 'grey.png'}' has 128 pixels in colours missing from data.value_map (255-255-255); "
        "expected every mask colour to have a class"
    )


def test_mask_alpha_that_is_not_opaque_is_reported(tmp_path, capsys):
    _good(tmp_path)
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 3] = np.where(_mask() == 1, 255, 0)  # the label drawn in the alpha only: RGB all black
    write_pair(tmp_path, "drawn", _image(), rgba)
    code, problems = _check(tmp_path, capsys)
    msg = _one(problems, "drawn.png")
    assert code == 1
    assert msg == (
        f"mask '{tmp_path / 'masks' / 'drawn.png'}' has an alpha channel that is not fully opaque at 128 pixels; expected the "
        "class ids in the colour channels only (the alpha is not read, so whatever it marks would be lost): save the mask without alpha"
    )


def _lossy(root: Path, case: str) -> str:
    """A dataset with one file whose data the reader used to lose; returns that file's name."""
    _good(root)
    if case == "ignore_only":
        write_pair(root, "odd", _image(), _mask() * 255)
        return "odd.png"
    if case == "alpha":
        rgba = np.dstack([_image(), np.full((16, 16), 255, np.uint8)])
        rgba[0, 0, 3] = 0
        write_pair(root, "odd", rgba, _mask())
        return "odd.png"
    m = _mask().astype(np.uint16)
    m[12:] = 300
    _png16(root / "masks" / "odd.png", np.dstack([m] * 3))
    Image.fromarray(_image()).save(root / "images" / "odd.png")
    return "odd.png"


@pytest.mark.parametrize("case", ["ignore_only", "alpha", "rgb16"])
def test_training_stops_on_lost_data(tmp_path, case):
    from segkit.data.datamodule import SegDataModule
    from segkit.errors import SegkitError

    name = _lossy(tmp_path, case)
    dm = SegDataModule(root=str(tmp_path), class_names=["background", "foreground"], num_classes=2, format="folder")
    with pytest.raises(SegkitError, match=rf"'{tmp_path / 'masks' if case != 'alpha' else tmp_path / 'images'}/{name}'"):
        dm.prepare()


@pytest.mark.parametrize("args", [["--help"], ["check", "--help"], ["stats", "-h"], ["check", "data=folder", "--help"]])
def test_help_prints_usage_and_exits_0(args):
    proc = subprocess.run([sys.executable, "-m", "segkit.data", *args], cwd=REPO, capture_output=True, text=True, env=cli_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    command = args[0] if args[0] in ("check", "stats") else "{check,stats}"
    assert proc.stdout.startswith(f"usage: python -m segkit.data {command}") and proc.stderr == ""
