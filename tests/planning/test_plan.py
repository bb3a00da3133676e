"""The data's fingerprint (against hand-counted masks), the plan's rules, the user's keys winning, and the
``segkit.plan`` command."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hydra.utils import instantiate

from segkit.planning.fingerprint import compute_fingerprint, object_sizes
from segkit.planning.plan import plan_for
from segkit.planning.planner import apply_plan, make_plan, plan_table, resolve_sources
from tests.conftest import REPO, TINY_DATA, TINY_MODELS, cli_env, compose_cfg

CLASSES = ["background", "cell", "line"]


def _masks():
    a = np.zeros((40, 50), np.uint8)
    a[5:10, 5:11] = 1  # a 5 x 6 cell: area 30, width 5
    a[20:23, 10:40] = 2  # a 3 px band: area 90, width 3
    a[30:35, 30:35] = 255  # ignored
    b = np.zeros((60, 30), np.uint8)
    b[0:7, 0:7] = 1  # a 7 x 7 cell touching the border: area 49, width 7
    b[40:50, 10:20] = 1  # a 10 x 10 cell: area 100, width 10
    return [a, b]


def test_fingerprint_matches_hand_counts():
    masks = _masks()
    images = [np.full(m.shape + (3,), 7, np.uint8) for m in masks]
    fp = compute_fingerprint(images, masks, CLASSES, 255)
    labelled = 40 * 50 - 25 + 60 * 30
    cell, line = fp["classes"][1], fp["classes"][2]
    assert cell["pixels"] == 30 + 49 + 100 and line["pixels"] == 90
    assert cell["pixel_share"] == pytest.approx(179 / labelled) and line["pixel_share"] == pytest.approx(90 / labelled)
    assert (cell["images"], line["images"], fp["classes"][0]["images"]) == (2, 1, 2)
    assert cell["objects"] == 3 and cell["median_area"] == 49 and cell["median_width"] == pytest.approx(7)
    assert line["objects"] == 1 and line["median_width"] == pytest.approx(3) and line["median_area"] == 90
    assert fp["height"] == {"min": 40, "median": 50.0, "max": 60} and fp["channels"] == 3
    assert fp["intensity"]["p1"] == [7, 7, 7]
    areas, widths = object_sizes(masks[0], 1)
    assert areas.tolist() == [30] and widths.tolist() == pytest.approx([5])


def _fp(rare_share: float, size: int = 246, areas=(400.0, 300.0)) -> dict:
    return {"num_images": 40, "channels": 3, "height": {"median": size}, "width": {"median": size - 3},
            "classes": [{"name": "background", "pixel_share": 1 - rare_share - 0.2},
                        {"name": "cell", "pixel_share": 0.2, "median_area": areas[0]},
                        {"name": "line", "pixel_share": rare_share, "median_area": areas[1]}]}


def _items(items):
    return {i.key: i for i in items}


def test_a_rare_class_gets_weights_and_balanced_crops(tmp_path):
    cfg = compose_cfg(tmp_path, TINY_DATA + TINY_MODELS["unet"])
    rare = _items(make_plan(_fp(0.011), cfg, {"gpus": []}, None))
    common = _items(make_plan(_fp(0.05), cfg, {"gpus": []}, None))
    assert rare["loss.class_weights"].value == "auto" and rare["data.sampling"].value == "class_balanced"
    assert "1.10 %" in rare["loss.class_weights"].reason and "'line'" in rare["data.sampling"].reason
    assert common["loss.class_weights"].value is None and common["data.sampling"].value == "uniform"
    assert "data.crop_size" not in rare  # without a budget the compute is not planned


def test_the_budget_plans_crop_and_width_from_measured_step_times(tmp_path):
    cfg = compose_cfg(tmp_path, TINY_DATA + ["model=unet", "data.batch_size=8"])
    speed = {8: 0.25, 16: 0.5, 32: 3.0}
    seen = []

    def measure(spec, batch, crop, channels, classes, precision="32-true"):
        seen.append((spec["base_width"], precision))
        return speed[spec["base_width"]]

    items = _items(make_plan(_fp(0.05), cfg, {"gpus": []}, 45 * 60, measure=measure))
    assert items["data.crop_size"].value == 224  # the median short side 243, down to a multiple of 32
    assert items["model.base_width"].value == 16  # 0.85 x 2700 s: 9180, 4590, 765 steps -> widest with >= 3000
    assert seen == [(8, "32-true"), (16, "32-true"), (32, "32-true")] and "765 steps" in items["model.base_width"].reason
    assert items["trainer.precision"].value == "32-true"  # no bf16 instructions in this machine record: nothing measured
    assert items["data.crops_per_image"].value == 7  # ceil(32 x 8 / 40): 44 steps per epoch
    big = _items(make_plan(_fp(0.05, size=1003, areas=(300.0 ** 2, 50.0)), cfg, {"gpus": [{"memory_gb": 80}]}, 2700,
                           measure=measure))
    assert big["data.crop_size"].value == 512  # large objects (diameter 339 px) on a GPU: at most 512
    slow = _items(make_plan(_fp(0.05), cfg, {"gpus": []}, 600, measure=lambda *a, **k: 2.0))
    assert slow["model.base_width"].value == 8 and "none reaches" in slow["model.base_width"].reason


def test_keys_the_user_set_win_and_the_plan_says_so(tmp_path):
    cfg = compose_cfg(tmp_path, TINY_DATA + TINY_MODELS["unet"] + ["data.sampling=uniform"])
    items = make_plan(_fp(0.01), cfg, {"gpus": []}, None)
    items = _items(resolve_sources(items, cfg, ["data.sampling=uniform", "model=unet"]))
    assert items["data.sampling"].source == "user" and items["data.sampling"].value == "uniform"
    assert items["data.sampling"].planned == "class_balanced" and items["loss.class_weights"].source == "plan"
    apply_plan(list(items.values()), cfg)
    assert cfg.data.sampling == "uniform" and cfg.loss.class_weights == "auto"
    assert "user (plan: class_balanced)" in plan_table(list(items.values()))
    exp = _items(resolve_sources(make_plan(_fp(0.01), cfg, {"gpus": []}, None), cfg, ["experiment=darkfield_unet"]))
    assert {i.source for i in exp.values()} == {"experiment"}


def test_plan_for_applies_to_the_config_and_the_datamodule(tmp_path):
    cfg = compose_cfg(tmp_path, TINY_DATA + TINY_MODELS["unet"] + ["data.sampling=class_balanced"])
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare()
    record = plan_for(cfg, dm, overrides=[])  # nothing given: the plan decides (the tiny data has no rare class)
    assert record["mode"] == "auto" and cfg.data.sampling == "uniform" and dm.sampling == "uniform"
    assert record["fingerprint"]["num_images"] == len(dm.split["train"])
    again = plan_for(cfg, dm, overrides=[])
    assert again["fingerprint"]["source"] == "cached" and again["fingerprint"]["classes"] == record["fingerprint"]["classes"]
    off = compose_cfg(tmp_path, TINY_DATA + ["plan=off", "data.sampling=class_balanced"])
    assert plan_for(off, dm, overrides=[]) is None and off.data.sampling == "class_balanced"
    report = compose_cfg(tmp_path, TINY_DATA + ["data.sampling=class_balanced"])
    assert plan_for(report, dm)["mode"] == "report" and report.data.sampling == "class_balanced"  # no Hydra: not applied


@pytest.mark.slow  # the CLI imports Lightning and measures widths: ~25 s; make test-slow (CI) runs it
def test_plan_command_prints_the_fingerprint_and_the_table(tmp_path):
    args = [f"paths.data_dir={tmp_path / 'data'}", *TINY_DATA, "data.sampling=class_balanced"]
    proc = subprocess.run([sys.executable, "-m", "segkit.plan", *args], cwd=REPO, env=cli_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "train split:" in out and "spirochaete:" in out and "median width" in out
    assert "data.sampling" in out and "user (plan: uniform)" in out
    bad = subprocess.run([sys.executable, "-m", "segkit.plan", *args, "budget=soon"], cwd=REPO, env=cli_env(),
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "budget" in bad.stderr and "45m" in bad.stderr


def test_one_large_image_gets_whole_batches_of_crops(tmp_path):
    # phase_bacteria: ONE 1040 x 800 train image. 8 crops per epoch would be half a batch of 16 (a one-step epoch
    # of 8 crops); 4x its area in 256 px crops is ceil(4 x 832000 / 65536) = 51, cut to whole batches: 48
    cfg = compose_cfg(tmp_path, TINY_DATA + ["model=unet", "data.batch_size=16"])
    fp = {**_fp(0.05), "num_images": 1, "height": {"median": 1040}, "width": {"median": 800}}
    items = _items(make_plan(fp, cfg, {"gpus": []}, 900, measure=lambda *a, **k: 1.0))
    assert items["data.crop_size"].value == 256
    assert items["data.crops_per_image"].value == 48 and "3 steps per epoch" in items["data.crops_per_image"].reason
    few = _items(make_plan({**fp, "num_images": 3, "height": {"median": 256}, "width": {"median": 256}}, cfg, {"gpus": []}, 900,
                           measure=lambda *a, **k: 1.0))
    assert few["data.crops_per_image"].value == 8  # small images: at most 8 crops of each (3 x 8 = 24: a full batch and a short one)


def _bf16_machine(bf16: bool = True) -> dict:
    return {"gpus": [], "cpu_bf16": bf16}


def test_the_budget_plans_bf16_on_a_cpu_where_it_measures_faster(tmp_path):
    cfg = compose_cfg(tmp_path, TINY_DATA + ["model=unet", "data.batch_size=8"])
    seen = []

    def measure(spec, batch, crop, channels, classes, precision="32-true"):
        seen.append((spec["base_width"], precision))
        return {8: 0.25, 16: 0.5, 32: 3.0}[spec["base_width"]] * (0.4 if precision == "bf16-mixed" else 1.0)

    items = _items(make_plan(_fp(0.05), cfg, _bf16_machine(), 45 * 60, measure=measure))
    prec = items["trainer.precision"]
    assert prec.value == "bf16-mixed" and "(2.50x)" in prec.reason and "fp32 0.50 s" in prec.reason
    # the composed network (width 16) is measured in both precisions, then the widths in the chosen one
    assert seen[:2] == [(16, "32-true"), (16, "bf16-mixed")]
    assert seen[2:] == [(8, "bf16-mixed"), (16, "bf16-mixed"), (32, "bf16-mixed")]
    # bf16 steps: 0.1 / 0.2 / 1.2 s -> 19125 / 9562 / 1593 steps: width 16 is the widest with >= 3000
    assert items["model.base_width"].value == 16 and "in bf16 autocast" in items["model.base_width"].reason
    apply_plan(list(items.values()), cfg)
    assert cfg.trainer.precision == "bf16-mixed"
    # too small a gain: fp32, and the widths measured in fp32
    assert "trainer.precision" not in _items(make_plan(_fp(0.05), cfg, _bf16_machine(), 2700, measure=measure))  # now set
    fresh = compose_cfg(tmp_path, TINY_DATA + ["model=unet", "data.batch_size=8"])
    close = _items(make_plan(_fp(0.05), fresh, _bf16_machine(), 45 * 60,
                             measure=lambda s, *a, precision="32-true": 1.0 if precision == "32-true" else 0.9))
    assert close["trainer.precision"].value == "32-true" and "(1.11x)" in close["trainer.precision"].reason


def test_no_bf16_measurement_without_bf16_instructions_or_with_a_precision_set(tmp_path):
    def measure(spec, batch, crop, channels, classes, precision="32-true"):
        assert precision == "32-true", "bf16 must not be measured here"
        return 0.1

    cfg = compose_cfg(tmp_path, TINY_DATA + ["model=unet"])
    plain = _items(make_plan(_fp(0.05), cfg, _bf16_machine(False), 2700, measure=measure))
    assert plain["trainer.precision"].value == "32-true" and "no bf16 instructions" in plain["trainer.precision"].reason
    for extra in (["trainer=cpu"], ["trainer.precision=32-true"], ["trainer=ddp_cpu"], ["trainer.devices=2"]):
        other = compose_cfg(tmp_path, TINY_DATA + ["model=unet", *extra])
        assert "trainer.precision" not in _items(make_plan(_fp(0.05), other, _bf16_machine(), 2700, measure=measure)), extra
    assert "trainer.precision" not in _items(make_plan(_fp(0.05), cfg, _bf16_machine(), None, measure=measure))  # no budget


def test_a_network_without_bf16_kernels_stays_fp32_and_the_user_wins(tmp_path):
    def measure(spec, batch, crop, channels, classes, precision="32-true"):
        if precision == "bf16-mixed":
            raise RuntimeError('"slow_conv2d_cpu" not implemented for \'BFloat16\'\nmore')
        return 0.1

    cfg = compose_cfg(tmp_path, TINY_DATA + ["model=unet"])
    items = _items(make_plan(_fp(0.05), cfg, _bf16_machine(), 2700, measure=measure))
    assert items["trainer.precision"].value == "32-true" and "slow_conv2d_cpu" in items["trainer.precision"].reason
    user = compose_cfg(tmp_path, TINY_DATA + ["model=unet", "trainer.precision=auto"])
    items = _items(resolve_sources(make_plan(_fp(0.05), user, _bf16_machine(), 2700,
                                             measure=lambda *a, precision="32-true": 1.0 if precision == "32-true" else 0.3),
                                   user, ["trainer.precision=auto"]))
    assert items["trainer.precision"].source == "user" and items["trainer.precision"].value == "auto"
    assert items["trainer.precision"].planned == "bf16-mixed"


def test_the_step_measurement_runs_in_bf16_autocast():
    from segkit.planning.planner import measure_step_seconds

    spec = {"_target_": "segkit.models.UNet", "in_channels": 1, "num_classes": 2, "depth": 2, "base_width": 4}
    for precision in ("32-true", "bf16-mixed"):
        assert 0 < measure_step_seconds(spec, 2, 32, 1, 2, steps=1, precision=precision) < 30
