"""Checkpoints and run folders are data, never code. Crafted files (a model spec naming a file-writing callable,
one naming a pickle loader pointed at a payload, an unknown network, a loss with a foreign target, a run config
whose data target is foreign) are refused by segkit.predict, segkit.eval, segkit.export and a resume, each with
one sentence naming the file and the value; a marker file that the payload would create proves nothing ran."""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from PIL import Image

from segkit.errors import SegkitError
from segkit.evaluation.evaluate import run_eval
from segkit.export import export
from segkit.inference.files import run_predict
from segkit.training.fit import train
from segkit.training.resume import resume_config
from tests.conftest import REPO, TINY_DATA, TINY_MODELS, cli_env, compose_cfg


class _Touch:
    """Unpickling this creates ``path``: the payload a pickle loader would run."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A real (tiny) training run folder, with a folder of two images to predict (``to_predict/``)."""
    root = tmp_path_factory.mktemp("trained")
    overrides = TINY_DATA + TINY_MODELS["unet"] + ["test=false"]
    cfg = compose_cfg(root, overrides)
    train(cfg)
    hydra_dir = Path(cfg.paths.output_dir) / ".hydra"  # what Hydra's CLI writes beside every run
    hydra_dir.mkdir()
    (hydra_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    images = Path(cfg.paths.output_dir) / "to_predict"
    images.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(images / f"{i}.png")
    return Path(cfg.paths.output_dir)


def _edit_ckpt(run: Path, edit) -> None:
    for name in ("best.ckpt", "last.ckpt"):
        path = run / "checkpoints" / name
        state = torch.load(path, weights_only=True)
        edit(state["hyper_parameters"])
        torch.save(state, path)


def _edit_configs(run: Path, edit) -> None:
    for path in (run / "run_config.yaml", run / ".hydra" / "config.yaml"):
        cfg = yaml.safe_load(path.read_text())
        edit(cfg)
        path.write_text(yaml.safe_dump(cfg))


def _craft(kind: str, run: Path, marker: Path) -> str:
    """Make ``run`` crafted of ``kind``; returns the value the refusal must name."""
    if kind == "model_writes_a_file":
        _edit_ckpt(run, lambda hp: hp.__setitem__("model", {"_target_": "numpy.savetxt", "fname": str(marker), "X": [1.0]}))
        return "numpy.savetxt"
    if kind == "model_loads_a_pickle":
        payload = run / "payload.pkl"
        payload.write_bytes(pickle.dumps(_Touch(str(marker))))
        _edit_ckpt(run, lambda hp: hp.__setitem__("model", {"_target_": "numpy.load", "file": str(payload), "allow_pickle": True}))
        return "numpy.load"
    if kind == "unknown_network":
        _edit_ckpt(run, lambda hp: hp["model"].__setitem__("_target_", "segkit.models.ResNet9000"))
        return "segkit.models.ResNet9000"
    if kind == "loss_with_a_foreign_target":
        _edit_ckpt(run, lambda hp: hp.__setitem__("loss", {"_target_": "numpy.savetxt", "name": "ce", "fname": str(marker), "X": [1.0]}))
        return "numpy.savetxt"
    if kind == "run_config_with_a_foreign_data_target":
        _edit_configs(run, lambda cfg: cfg.__setitem__("data", {"_target_": "numpy.savetxt", "fname": str(marker), "X": [1.0]}))
        return "numpy.savetxt"
    raise AssertionError(kind)


KINDS = ["model_writes_a_file", "model_loads_a_pickle", "unknown_network", "loss_with_a_foreign_target",
         "run_config_with_a_foreign_data_target"]


def _crafted_copy(trained_run: Path, tmp_path: Path, kind: str) -> tuple[Path, Path, str]:
    run = tmp_path / "outputs" / "train" / "runs" / "crafted"
    shutil.copytree(trained_run, run)
    marker = tmp_path / "MARKER"
    return run, marker, _craft(kind, run, marker)


def _refused_by(command: str, run: Path, tmp_path: Path) -> str:
    ckpt = run / "checkpoints" / "best.ckpt"
    with pytest.raises(SegkitError) as err:
        if command == "predict":
            run_predict(compose_cfg(tmp_path, [f"ckpt_path={ckpt}", f"input={run / 'to_predict'}",
                                               f"output={tmp_path / 'pred'}"], config_name="predict"))
        elif command == "eval":
            run_eval(compose_cfg(tmp_path, [f"ckpt_path={ckpt}"], config_name="eval"))
        elif command == "export":
            export(ckpt, "torchscript", output=tmp_path / "model.pt")
        else:  # resume: ckpt_path=last finds the crafted run's last.ckpt
            cfg = compose_cfg(tmp_path, TINY_DATA + TINY_MODELS["unet"] + ["ckpt_path=last"])
            resume_config(cfg, ["ckpt_path=last"])
    return str(err.value)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", ["predict", "eval", "export", "resume"])
def test_crafted_files_are_refused_and_nothing_runs(trained_run, tmp_path, kind, command):
    run, marker, value = _crafted_copy(trained_run, tmp_path, kind)
    message = _refused_by(command, run, tmp_path)
    assert not marker.exists(), f"{command} ran the crafted {kind}"
    assert "\n" not in message and repr(value) in message, message
    if kind == "run_config_with_a_foreign_data_target":
        named = {"resume": ".hydra/config.yaml"}.get(command, "run_config.yaml")
        assert f"{run / named}' names data._target_=" in message
        assert "not one of segkit's own data classes" in message
    else:
        assert str(run / "checkpoints") in message and ".ckpt'" in message
    assert not (tmp_path / "model.pt").exists() and not list((tmp_path / "pred").glob("*_labels.png"))


def test_the_previous_release_would_have_run_the_crafted_model(trained_run, tmp_path):
    """The reason for the registry: Hydra's instantiate of the file's model spec (what SegModule did before)
    runs the callable. This proves the crafted input is a real payload, so the tests above can fail."""
    from hydra.utils import instantiate

    run, marker, _ = _crafted_copy(trained_run, tmp_path, "model_writes_a_file")
    spec = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["hyper_parameters"]["model"]
    instantiate(spec)
    assert marker.exists()
    marker.unlink()
    run2, marker2, _ = _crafted_copy(trained_run, tmp_path / "b", "model_loads_a_pickle")
    instantiate(torch.load(run2 / "checkpoints" / "best.ckpt", weights_only=True)["hyper_parameters"]["model"])
    assert marker2.exists()


@pytest.mark.parametrize(("command", "kind"), [
    ("predict", "model_loads_a_pickle"), ("eval", "run_config_with_a_foreign_data_target"),
    ("export", "model_writes_a_file"), ("train", "loss_with_a_foreign_target"),
])
def test_the_cli_refuses_with_one_sentence_and_a_non_zero_exit(trained_run, tmp_path, command, kind):
    run, marker, value = _crafted_copy(trained_run, tmp_path, kind)
    ckpt = run / "checkpoints" / "last.ckpt"
    args = {"predict": [f"ckpt_path={ckpt}", f"input={run / 'to_predict'}"], "eval": [f"ckpt_path={ckpt}"],
            "export": [f"ckpt_path={ckpt}", "format=torchscript"], "train": [f"ckpt_path={ckpt}"]}[command]
    proc = subprocess.run([sys.executable, "-m", f"segkit.{command}", *args, f"paths.log_dir={tmp_path / 'outputs'}"],
                          cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("segkit: error: ")]
    assert len(errors) == 1 and repr(value) in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not marker.exists()
