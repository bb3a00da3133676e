"""``ema_decay`` and ``early_stopping_patience`` on real tiny runs, against an average recomputed here and the
epoch count the rule implies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from segkit.training.fit import train
from tests.conftest import TINY_DATA, TINY_MODELS, compose_cfg


class Recorder(pl.Callback):
    """The raw parameters after every optimizer step."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append({k: p.detach().clone() for k, p in pl_module.named_parameters()})


@pytest.mark.slow  # a 2-epoch run: ~15 s; make test-slow (CI) runs it
def test_ema_weights_are_validated_checkpointed_and_equal_the_average_of_the_steps(tmp_path, monkeypatch):
    import segkit.training.trainer as trainer_mod

    recorder = Recorder()
    build = trainer_mod.build_trainer

    def with_recorder(cfg, module=None):
        t = build(cfg, module)
        t.callbacks.append(recorder)
        return t

    monkeypatch.setattr("segkit.training.fit.build_trainer", with_recorder)
    decay = 0.8
    cfg = compose_cfg(tmp_path, TINY_DATA + TINY_MODELS["unet"] + ["trainer.max_epochs=2", f"ema_decay={decay}", "plan=off"])
    metrics, objects = train(cfg)
    assert len(recorder.steps) >= 4
    expected = dict(recorder.steps[0])  # the first update copies the weights
    for step in recorder.steps[1:]:
        expected = {k: decay * expected[k] + (1 - decay) * v for k, v in step.items()}
    last = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    state, raw = last["state_dict"], last["current_model_state"]
    for k, v in expected.items():
        assert torch.allclose(state[k], v, atol=1e-6), k  # the checkpoint's weights are the average
    final = recorder.steps[-1]
    assert any(not torch.allclose(raw[k], expected[k], atol=1e-6) for k in final)  # and differ from the raw weights
    assert all(torch.allclose(raw[k], final[k]) for k in final)
    # the re-evaluation and the test split after fit score the average, as segkit.eval / predict load best.ckpt
    best = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    module = objects["module"]
    assert all(torch.allclose(p, best[k]) for k, p in module.state_dict().items() if k in best and p.is_floating_point())
    run_config = (Path(cfg.paths.output_dir) / "run_config.yaml").read_text()
    assert "segkit.training.callbacks.EMA" in run_config and "decay: 0.8" in run_config


@pytest.mark.slow  # a real run: ~15 s; make test-slow (CI) runs it
def test_early_stopping_stops_after_patience_validations_without_improvement(tmp_path):
    # min_delta 1.0: no mIoU gain can count, so the run stops after the first validation + patience more
    cfg = compose_cfg(tmp_path, TINY_DATA + TINY_MODELS["unet"] + ["trainer.max_epochs=10", "early_stopping_patience=2",
                                                                     "early_stopping_min_delta=1.0", "plan=off"])
    metrics, objects = train(cfg)
    trainer = objects["trainer"]
    assert trainer.current_epoch == 3 and trainer.should_stop  # 3 epochs of the 10 asked for: validation 1, then 2 without gain
    status = json.loads((Path(cfg.paths.output_dir) / "status.json").read_text())
    assert status["status"] == "completed"


@pytest.mark.parametrize("override, words", [("ema_decay=1.5", "ema_decay is 1.5"), ("early_stopping_patience=0", "early_stopping_patience is 0")])
def test_bad_values_are_one_sentence(tmp_path, override, words):
    from segkit.config_check import check_config
    from segkit.errors import SegkitError

    with pytest.raises(SegkitError, match=words):
        check_config(compose_cfg(tmp_path, [override]), "train")
