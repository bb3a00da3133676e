"""Users' mistakes are one sentence, never a traceback: bad values on the command line, unset required
keys (usage text), bad interpolations; found before any data is read, leaving no half-made run folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra.types import RunMode

from segkit import CONF_DIR
from segkit import config_check as cc
from segkit.config_check import check_config
from segkit.errors import SegkitError
from segkit.training import cleanup
from tests.conftest import REPO, TINY_DATA, TINY_MODELS, cli_env, compose_cfg

BAD_VALUES = {
    "lr=abc": "lr is 'abc'; expected a positive number such as 1e-3",
    "lr=-1": "lr is -1; expected a positive number such as 1e-3",
    "data.batch_size=-1": "data.batch_size is -1; expected a positive whole number such as 8",
    "data.batch_size=abc": "data.batch_size is 'abc'; expected a positive whole number such as 8",
    "trainer.max_epochs=0": "trainer.max_epochs is 0; expected a positive whole number such as 30",
    "seed=abc": "seed is 'abc'; expected a whole number from 0 to 4294967295, or null for an unseeded run",
    "data.crop_size=0": "data.crop_size is 0; expected a positive whole number of pixels such as 128",
    "data.val_fraction=1.5": "data.val_fraction is 1.5; expected a fraction in [0, 1) such as 0.2",
    "lr=nan": "lr is nan; expected a positive number such as 1e-3",
    "data.num_workers=-2": "data.num_workers is -2; expected a whole number >= 0 such as 0 or 4",
    "data.test_fraction=-0.1": "data.test_fraction is -0.1; expected a fraction in [0, 1) such as 0.1",
    "trainer.devices=two": "trainer.devices is 'two'; expected a positive whole number, -1 (all), auto, or a list of device ids such as [0,1]",
    "trainer.precision=16mixed": "trainer.precision is '16mixed'; expected auto, 32-true, 16-mixed, bf16-mixed, 16-true, bf16-true or 64-true",
    "+trainer.max_steps=0": "trainer.max_steps is 0; expected a positive whole number, or -1 for no step limit",
    "loss.dice_lambda=-1": "loss.dice_lambda is -1; expected a number >= 0 such as 1.0",
    "model.base_width=2.5": "model.base_width is 2.5; expected a positive whole number such as 16",
    "model.deep_supervision=sometimes": "model.deep_supervision is 'sometimes'; expected true or false",
    "postprocess_metric=accuracy": "postprocess_metric is 'accuracy'; expected null, miou, mdice, pixel_acc, <iou|dice|precision|recall>/<class> or <count_error|ks>/<class>",
    "optimizer.lr=${data.name}": "optimizer.lr is 'synthetic_darkfield' (from ${data.name}); expected a positive number such as 1e-3",
    "loss.class_weights=[1,2]": "loss.class_weights has 2 values [1, 2]; expected 3 (one per class of data.class_names), or auto",
    "lr=${nope}": "lr is '${nope}', which does not resolve (interpolation key 'nope' not found); expected a positive number such as 1e-3",
    "paths.data_dir=${nope}/x": "paths.data_dir is '${nope}/x', which does not resolve (interpolation key 'nope' not found); "
                                "expected a plain value or an interpolation that names an existing key, such as ${paths.root_dir}",
    "data.storage=ram": "data.storage is 'ram'; expected auto, memory or disk",
    "data.tile_size=32": "data.tile_size is 32; expected a whole number of pixels >= 64 such as 2048",
    "data.root=???": "data.root is not set (???); expected a value, e.g. data.root=<value> on the command line",
}
# only a handful through the real CLI: each call costs seconds of imports
CLI_BAD_VALUES = ["lr=abc", "data.batch_size=-1", "trainer.max_epochs=0"]


def _check(tmp_path: Path, overrides: list[str], config_name: str = "train") -> None:
    check_config(compose_cfg(tmp_path, overrides, config_name=config_name), config_name)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _cli(tmp_path: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", f"segkit.{module}", *args, f"paths.log_dir={tmp_path}", f"paths.data_dir={tmp_path / 'data'}"]
    return subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=240)


def _run_folders(tmp_path: Path, task: str) -> list[Path]:
    runs = tmp_path / task / "runs"
    return sorted(runs.iterdir()) if runs.is_dir() else []


# ---------------------------------------------------------------- in-process: the table
def test_every_shipped_config_passes(tmp_path):
    _check(tmp_path, [])
    _check(tmp_path, TINY_DATA + TINY_MODELS["unet"])
    for group in ("data", "model", "loss", "optimizer", "scheduler", "trainer", "logger", "callbacks", "debug", "experiment"):
        for option in _options(group):
            _check(tmp_path, [f"{group}={option}"])
    _check(tmp_path, ["hparams_search=optuna"])
    for task, extra in [("eval", ["ckpt_path=a.ckpt"]), ("eval", ["ckpt_path=[a.ckpt,b.ckpt]", "data=folder", "split=all"]),
                        ("predict", ["ckpt_path=a.ckpt", "input=scans/"]), ("export", ["ckpt_path=a.ckpt", "check_size=[1,3,64,64]"]),
                        ("tune_postprocess", ["ckpt_path=a.ckpt"])]:
        _check(tmp_path, extra, config_name=task)


def test_good_values_pass(tmp_path):
    _check(tmp_path, ["lr=1e-3", "seed=null", "data.val_fraction=0", "trainer.devices=[0,1]", "trainer.devices='0,1'",
                      "trainer.deterministic=warn", "trainer.limit_train_batches=0.5", "trainer.limit_val_batches=3",
                      "+trainer.max_steps=-1", "loss.class_weights=auto", "data.fold=4", "trainer.precision=16-mixed"])


@pytest.mark.parametrize("override", list(BAD_VALUES))
def test_a_bad_value_is_one_sentence(tmp_path, override):
    with pytest.raises(SegkitError) as err:
        _check(tmp_path, [override])
    assert str(err.value) == BAD_VALUES[override]


@pytest.mark.parametrize("config_name, overrides, sentence", [
    ("train", ["data.val_fraction=0.6", "data.test_fraction=0.5"],
     "data.val_fraction 0.6 and data.test_fraction 0.5 add up to 1.1; expected a sum below 1 so that images are left for training"),
    ("train", ["data.fold=5"], "data.fold is 5 with data.num_folds=5; expected a fold index 0..4"),
    ("eval", ["ckpt_path=a.ckpt", "inference.tile=0"], "inference.tile is 0; expected a positive whole number of pixels such as 512"),
    ("eval", ["ckpt_path=a.ckpt", "data=folder", "data.batch_size=0"], "data.batch_size is 0; expected a positive whole number such as 8"),
    ("predict", ["ckpt_path=a.ckpt", "input=x", "tta.flips=yes"], "tta.flips is 'yes'; expected true or false"),
    ("predict", ["ckpt_path=a.ckpt", "input=x", "device=gpu"], "device is 'gpu'; expected auto, cpu, cuda or cuda:<index>"),
    ("export", ["ckpt_path=a.ckpt", "format=tflite"], "format is 'tflite'; expected one of onnx, torchscript"),
    ("tune_postprocess", ["ckpt_path=a.ckpt", "metric=ks"], "metric is 'ks'; expected miou, mdice, pixel_acc, <iou|dice|precision|recall>/<class> or <count_error|ks>/<class>"),
    ("tune_postprocess", ["ckpt_path=a.ckpt", "max_seconds=0"], "max_seconds is 0; expected null or a positive number of seconds such as 600"),
    ("tune_postprocess", ["ckpt_path=a.ckpt", "check_folds=1"], "check_folds is 1; expected 0 (off) or a whole number of folds >= 2 such as 2"),
    ("tune_postprocess", ["ckpt_path=a.ckpt", "grid.median_size=[3,4]"], "grid.median_size is [3, 4]; expected a list of odd whole numbers >= 1 such as [3,5,7]"),
])
def test_bad_values_of_the_other_commands_and_combinations(tmp_path, config_name, overrides, sentence):
    with pytest.raises(SegkitError) as err:
        _check(tmp_path, overrides, config_name)
    assert str(err.value) == sentence


@pytest.mark.parametrize("config_name, overrides, first_line", [
    ("eval", [], "ckpt_path is not set; expected ckpt_path=<run>/checkpoints/best.ckpt (a checkpoint segkit.train wrote)"),
    ("predict", ["ckpt_path=a.ckpt"], "input is not set; expected input=<an image file, a folder of images or a glob such as 'scans/*.tif'>"),
    ("export", ["ckpt_path=null"], "ckpt_path is not set; expected ckpt_path=<run>/checkpoints/best.ckpt (a checkpoint segkit.train wrote)"),
])
def test_a_missing_required_key_gives_the_usage(tmp_path, config_name, overrides, first_line):
    with pytest.raises(SegkitError) as err:
        _check(tmp_path, overrides, config_name)
    lines = str(err.value).splitlines()
    assert lines[0] == first_line
    assert lines[1].startswith(f"usage: python -m segkit.{config_name} ckpt_path=")
    assert lines[-1].strip().startswith(f"example: python -m segkit.{config_name} ckpt_path=")


def test_the_table_knows_the_packages_choices():
    """The export choices are copied (importing the exporters would load every network for every command)."""
    from segkit.export import exporters

    assert cc.EXPORT_FORMATS == tuple(exporters.FORMATS) and cc.ONNX_EXPORTERS == tuple(exporters.ONNX_EXPORTERS)
    keys = [key for key, _, _ in cc.RULES]
    assert len(keys) == len(set(keys))


# ---------------------------------------------------------------- in-process: which folders may go
def _run_dir(root: Path) -> Path:
    run = root / "train" / "runs" / "2026-01-01_00-00-00.000000"
    (run / ".hydra").mkdir(parents=True)
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (run / ".hydra" / name).write_text("x: 1\n")
    (run / "train.log").write_text("")
    return run


def _as_hydra_run(monkeypatch, run: Path, mode: RunMode = RunMode.RUN) -> None:
    hc = SimpleNamespace(mode=mode, runtime=SimpleNamespace(output_dir=str(run)))
    monkeypatch.setattr(cleanup, "_hydra_config", lambda: hc)


@pytest.mark.parametrize("extra", [None, "status.json", "train.log", ".hydra/notes.txt", "checkpoints/"])
def test_only_a_folder_of_hydras_own_records_is_removed(tmp_path, monkeypatch, extra):
    run = _run_dir(tmp_path)
    if extra == "checkpoints/":
        (run / "checkpoints").mkdir()
    elif extra:
        (run / extra).write_text("something\n")
    _as_hydra_run(monkeypatch, run)
    removed = cleanup.remove_unused_run_dir()
    assert (removed == run.resolve()) is (extra is None)
    assert run.exists() is (extra is not None)
    if extra:
        assert (run / extra).exists()


def test_sweeps_resumes_and_the_working_directory_keep_their_folder(tmp_path, monkeypatch):
    run = _run_dir(tmp_path)
    _as_hydra_run(monkeypatch, run, RunMode.MULTIRUN)
    assert cleanup.remove_unused_run_dir() is None and run.is_dir()
    _as_hydra_run(monkeypatch, run)
    with pytest.raises(SegkitError), cleanup.discard_unused_run_dir(enabled=False):  # a resume
        raise SegkitError("bad")
    assert run.is_dir()
    monkeypatch.chdir(run)
    assert cleanup.remove_unused_run_dir() is None and run.is_dir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SegkitError), cleanup.discard_unused_run_dir():
        raise SegkitError("bad")
    assert not run.exists() and run.parent.is_dir()


# ---------------------------------------------------------------- through the real CLI
@pytest.mark.parametrize("override", CLI_BAD_VALUES)
def test_cli_bad_value_is_one_sentence_before_any_data_or_run_folder(tmp_path, override):
    proc = _cli(tmp_path, "train", override)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("segkit: error:")]
    assert errors == [f"segkit: error: {BAD_VALUES[override]}"], proc.stderr[-2000:]
    assert _run_folders(tmp_path, "train") == []  # Hydra's fresh folder was removed again
    assert not (tmp_path / "data").exists()  # no data was read (or generated)


@pytest.mark.parametrize("module", ["eval", "predict", "export", "tune_postprocess"])
def test_cli_without_a_checkpoint_prints_the_usage(tmp_path, module):
    proc = _cli(tmp_path, module)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "MissingMandatoryValue" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("segkit: error: ckpt_path ") and "not set; expected ckpt_path=<run>/checkpoints/best.ckpt" in lines[0]
    assert lines[1].startswith(f"usage: python -m segkit.{module} ckpt_path=")
    assert lines[-1].strip().startswith(f"example: python -m segkit.{module} ckpt_path=")
    if module == "predict":
        assert lines[0].startswith("segkit: error: ckpt_path and input are not set;")
    assert _run_folders(tmp_path, module) == []


@pytest.mark.slow  # CLI/multi-process: tens of seconds; make test-slow (CI) runs it
def test_cli_sweep_keeps_its_failed_trials_records(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _cli(tmp_path, "train", "-m", "lr=abc,-1", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "the sweep goes on" in proc.stderr
    status = {d.name: json.loads((d / "status.json").read_text()) for d in sorted(sweep.iterdir()) if d.is_dir()}
    assert {k: (v["status"], v["reason"]) for k, v in status.items()} == {
        "0": ("failed", BAD_VALUES["lr=abc"]), "1": ("failed", BAD_VALUES["lr=-1"])}
    assert "lr=abc" in status["0"]["overrides"]
    assert not (tmp_path / "data").exists()
