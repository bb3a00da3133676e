"""Nothing lost: atomic checkpoints, SIGKILL + resume equal to an uninterrupted run, weights_only loading,
NaN stops, failed sweep trials recorded while the sweep goes on, run status and the HParams tab."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from segkit.errors import SegkitError
from segkit.inference.load import load_network, read_checkpoint
from segkit.training.checkpointing import AtomicCheckpointIO, atomic_torch_save
from segkit.training.fit import train
from tests.conftest import REPO, TINY_DATA, TINY_MODELS, cli_env, compose_cfg

# a few seconds per epoch on one core, with dropout so that the model's own randomness counts too
CLI_TINY = [o for o in TINY_DATA if not o.startswith("trainer.max_epochs")] + [
    "data.crops_per_image=6", "model.base_width=4", "model.depth=3", "model.dropout=0.2",
]


def _cli(tmp_path: Path, *args: str, timeout: int = 240, **kw) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "segkit.train", *args, f"paths.root_dir={tmp_path}"]
    return subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=timeout, **kw)


# ---------------------------------------------------------------- atomic writes and safe loading
def test_atomic_save_failure_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    atomic_torch_save({"epoch": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()

    def disk_full(obj, f, *a, **k):
        f.write(b"partial bytes")  # a half-written file, then the disk fills up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("segkit.training.checkpointing.torch.save", disk_full)
    with pytest.raises(SegkitError, match=r"could not write checkpoint '.*last\.ckpt': the disk is full; the previous 'last\.ckpt' is intact"):
        AtomicCheckpointIO().save_checkpoint({"epoch": 2}, path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left behind
    assert read_checkpoint(path)["epoch"] == 1


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch EXPLOITED",))


def test_a_checkpoint_cannot_execute_code(tmp_path):
    """A pickle that runs a command when unpickled is refused by every reader, for that reason (weights_only
    unpickling), and the command never runs. Model specs that name code are refused too:
    tests/test_crafted_inputs.py."""
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Exploit()}, bad)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for read in (AtomicCheckpointIO().load_checkpoint, read_checkpoint, load_network):
            with pytest.raises(SegkitError, match=r"'.*evil\.ckpt' is not a segkit checkpoint: it could not be loaded safely \(UnpicklingError: "):
                read(bad)
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "EXPLOITED").exists()


def test_read_only_disk_mid_run_keeps_finished_checkpoints(tmp_path, monkeypatch):
    cfg = compose_cfg(tmp_path, TINY_DATA + TINY_MODELS["unet"] + ["trainer.max_epochs=3"])
    real_save, calls = torch.save, []

    def save_then_fail(obj, f, *a, **k):
        calls.append(1)
        if len(calls) > 2:  # epoch 1 wrote best.ckpt and last.ckpt; then the file system goes read-only
            raise OSError(errno.EROFS, "Read-only file system")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr("segkit.training.checkpointing.torch.save", save_then_fail)
    with pytest.raises(SegkitError, match="the file system is read-only"):
        train(cfg)
    run = Path(cfg.paths.output_dir)
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 0
    assert read_checkpoint(run / "checkpoints" / "best.ckpt")["epoch"] == 0
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and "read-only" in status["reason"]


# ---------------------------------------------------------------- NaN loss
def test_nan_loss_stops_the_run_with_a_clear_message(tmp_path, monkeypatch):
    from segkit.training import module as module_mod

    real_step = module_mod.SegModule._step

    def poisoned(self, batch, stage):
        loss, pred = real_step(self, batch, stage)
        if stage == "train" and self.global_step >= 2:
            loss = loss * float("nan")
        return loss, pred

    monkeypatch.setattr(module_mod.SegModule, "_step", poisoned)
    cfg = compose_cfg(tmp_path, TINY_DATA + TINY_MODELS["unet"] + ["trainer.max_epochs=3", "data.crops_per_image=4",
                                                                   "callbacks.stop_on_nonfinite_loss.check_every_n_steps=1"])
    with pytest.raises(SegkitError, match=r"the training loss became nan at epoch 1, step 3 \(lr .*\); stopped this run"):
        train(cfg)
    status = json.loads((Path(cfg.paths.output_dir) / "status.json").read_text())
    assert status["status"] == "failed" and status["reason"].startswith("the training loss became nan")


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_ctrl_c_and_sigterm_are_recorded_as_interrupted_not_failed(tmp_path, monkeypatch, signal_name):
    """Lightning answers Ctrl+C with a graceful shutdown and sys.exit(1), and SIGTERM with SIGTERMException
    at the next batch; status.json says interrupted, with how to resume."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from segkit.training import module as module_mod

    real_step = module_mod.SegModule._step

    def stopped(self, batch, stage):
        if stage == "train" and self.global_step >= 1:
            raise KeyboardInterrupt if signal_name == "SIGINT" else SIGTERMException(1)
        return real_step(self, batch, stage)

    monkeypatch.setattr(module_mod.SegModule, "_step", stopped)
    cfg = compose_cfg(tmp_path, TINY_DATA + TINY_MODELS["unet"] + ["trainer.max_epochs=2", "data.crops_per_image=4"])
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):
            train(cfg)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT from then on
    status = json.loads((Path(cfg.paths.output_dir) / "status.json").read_text())
    assert status["status"] == "interrupted" and signal_name in status["reason"] and "ckpt_path=last" in status["reason"]


# ---------------------------------------------------------------- SIGKILL and resume
@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path):
    args = [*CLI_TINY, "trainer.max_epochs=5", "callbacks.progress_bar=null"]
    full = _cli(tmp_path, *args, "hydra.run.dir=" + str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr[-2000:]

    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "segkit.train", *args, f"paths.root_dir={tmp_path}", f"hydra.run.dir={run}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last, deadline = run / "checkpoints" / "last.ckpt", time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if last.is_file() and read_checkpoint(last)["epoch"] >= 1:  # epochs 1-2 done (never a torn file)
                break
            time.sleep(0.02)
        time.sleep(0.2)  # into epoch 3
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert json.loads((run / "status.json").read_text())["status"] == "running"  # killed: never got to say otherwise
    assert not (run / "metrics.json").exists()
    killed_epoch = read_checkpoint(last)["epoch"]
    assert killed_epoch in (1, 2)

    resumed = _cli(tmp_path, *args, f"ckpt_path={last}", "hydra.run.dir=" + str(tmp_path / "resume_call"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming run {run} after epoch {killed_epoch + 1}" in resumed.stdout + resumed.stderr

    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((run / "metrics.json").read_text())  # the resumed run finished in its own directory
    assert b["epochs_trained"] == a["epochs_trained"] == 5 and b["global_step"] == a["global_step"]
    for key, value in a["metrics"].items():
        if value is not None:
            assert b["metrics"][key] == pytest.approx(value, abs=1e-5), key
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    (tb_run,) = [p for p in (run / "tensorboard").iterdir() if p.is_dir()]  # one run, named by the first command's overrides
    assert len(list(tb_run.glob("events.out.tfevents.*"))) >= 2  # the same TensorBoard run continued
    assert json.loads((run / "splits.json").read_text())["val"] == json.loads((tmp_path / "full" / "splits.json").read_text())["val"]


@pytest.mark.slow  # CLI/multi-process: tens of seconds; make test-slow (CI) runs it
def test_resume_refuses_a_different_config_group(tmp_path):
    first = _cli(tmp_path, *CLI_TINY, "trainer.max_epochs=1", "hydra.run.dir=" + str(tmp_path / "r1"))
    assert first.returncode == 0, first.stderr[-2000:]
    ckpt = tmp_path / "r1" / "checkpoints" / "last.ckpt"
    bad = _cli(tmp_path, *CLI_TINY, "loss=dice", f"ckpt_path={ckpt}")
    assert bad.returncode == 2
    assert "'loss=dice': a resumed run keeps the config groups it was started with" in bad.stderr


# ---------------------------------------------------------------- sweeps: failures recorded, the sweep goes on
@pytest.mark.slow  # CLI/multi-process: tens of seconds; make test-slow (CI) runs it
def test_a_failed_sweep_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    out = _cli(tmp_path, "-m", *[o for o in CLI_TINY if not o.startswith("model.base_width")], "trainer.max_epochs=1",
               "model.base_width=4,-2", f"hydra.sweep.dir={sweep}")
    assert out.returncode == 0, out.stderr[-3000:]
    status = {d.name: json.loads((d / "status.json").read_text()) for d in sorted(sweep.iterdir()) if (d / "status.json").is_file()}
    assert status["0"]["status"] == "completed" and "model.base_width=4" in status["0"]["overrides"]
    assert status["1"]["status"] == "failed" and status["1"]["reason"]
    assert "failed" in out.stderr and "the sweep goes on" in out.stderr
    # the sweep's end wrote the leaderboard: completed trial first, the failed one last with its reason
    board = (sweep / "leaderboard.md").read_text()
    assert board.index("completed") < board.index("failed") and status["1"]["reason"][:40] in board
    assert "sweep finished: 2 trials, 1 failed" in out.stdout
    # the HParams tab of the completed trial holds the final metrics, not a placeholder
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run,) = [p for p in (sweep / "0" / "tensorboard").iterdir() if p.is_dir()]  # named by the trial's overrides
    ea = EventAccumulator(str(run), size_guidance={"scalars": 0})
    ea.Reload()
    assert "_hparams_/session_start_info" in ea.PluginTagToContent("hparams")
    best = EventAccumulator(str(run / "best_checkpoint"), size_guidance={"scalars": 0})  # its metric values
    best.Reload()
    final = json.loads((sweep / "0" / "metrics.json").read_text())["metrics"]["val/miou"]
    assert best.Scalars("val/miou")[-1].value == pytest.approx(final, abs=1e-6)
    assert "hp_metric" not in ea.Tags()["scalars"] and "hp_metric" not in best.Tags()["scalars"]
    # the sweep's leaderboard opens in TensorBoard's Text tab with the sweep
    board_run = EventAccumulator(str(sweep / "tensorboard_leaderboard"))
    board_run.Reload()
    (text,) = board_run.Tensors("leaderboard/text_summary")
    assert "Leaderboard: val/miou" in text.tensor_proto.string_val[0].decode() and "![" not in text.tensor_proto.string_val[0].decode()


@pytest.mark.slow
def test_optuna_search_runs_trials_under_the_sweep_dir(tmp_path):
    sweep = tmp_path / "optuna"
    out = _cli(tmp_path, "hparams_search=optuna", *[o for o in CLI_TINY if not o.startswith("model.base_width")],
               "trainer.max_epochs=1", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2",
               f"hydra.sweep.dir={sweep}", timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    results = (sweep / "optimization_results.yaml").read_text()
    assert "best_params" in results and "lr" in results
    trials = sorted(d.name for d in sweep.iterdir() if (d / "metrics.json").is_file())
    assert trials == ["0", "1"]


@pytest.mark.slow
def test_ddp_inside_a_sweep_switches_to_spawn(tmp_path):
    """Lightning's ddp would re-execute ``-m ...`` on every rank; segkit runs the trial with ddp_spawn."""
    sweep = tmp_path / "ddp_sweep"
    out = _cli(tmp_path, "-m", *CLI_TINY, "trainer=ddp_cpu", "trainer.max_epochs=2", "seed=7", f"hydra.sweep.dir={sweep}", timeout=500)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "this trial uses ddp_spawn" in out.stdout + out.stderr
    summary = json.loads((sweep / "0" / "metrics.json").read_text())
    assert summary["epochs_trained"] == 2 and 0.0 <= summary["metrics"]["val/miou"] <= 1.0
    assert json.loads((sweep / "0" / "status.json").read_text())["status"] == "completed"
    assert not (sweep / "1").exists()  # no rank started a sweep of its own


@pytest.mark.slow
def test_parallel_local_trials(tmp_path):
    sweep = tmp_path / "parallel"
    out = _cli(tmp_path, "-m", "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2", *CLI_TINY, "trainer.max_epochs=1",
               "seed=1,2", f"hydra.sweep.dir={sweep}", timeout=500)
    assert out.returncode == 0, out.stderr[-3000:]
    for n in ("0", "1"):
        assert json.loads((sweep / n / "status.json").read_text())["status"] == "completed"
    assert "seed=1" in json.loads((sweep / "0" / "status.json").read_text())["overrides"]


def test_deterministic_true_with_segnet_unpooling_falls_back_to_warn(tmp_path):
    from hydra.utils import instantiate

    from segkit.training.fit import build_module
    from segkit.training.trainer import build_trainer

    cfg = compose_cfg(tmp_path, TINY_DATA + TINY_MODELS["segnet"] + ["trainer.deterministic=true"])
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare()
    try:
        build_trainer(cfg, build_module(cfg, dm, None))
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        cfg_unet = compose_cfg(tmp_path, TINY_DATA + TINY_MODELS["unet"] + ["trainer.deterministic=true"])
        build_trainer(cfg_unet, build_module(cfg_unet, dm, None))
        assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
