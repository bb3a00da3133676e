"""``budget=45m``: the learning rate follows elapsed time and the run ends annealed at the deadline whatever
the step rate (a simulated clock), and a real tiny run keeps to its budget."""

from __future__ import annotations

import math
import time

import pytest
import torch

from segkit.errors import SegkitError
from segkit.training.budget import BudgetSchedule, lr_factor, parse_budget
from tests.conftest import TINY_DATA, TINY_MODELS, compose_cfg


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FakeTrainer:
    def __init__(self, lr: float) -> None:
        self.optimizers = [torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)]
        self.is_global_zero, self.world_size, self.should_stop = True, 1, False
        self.sanity_checking, self.current_epoch, self.check_val_every_n_epoch = False, 0, 1
        self.global_step, self.num_training_batches, self.max_epochs = 0, 1, -1


def simulate(budget: float, steps: int, step_s, val_s: float, lr: float = 0.01, **kw):
    """Drive the callback's hooks as Lightning's fit loop does; ``step_s(t)`` is the step time at clock t."""
    clock = Clock()
    trainer, cb = FakeTrainer(lr), BudgetSchedule(budget, clock=clock, **kw)
    start = clock.t
    cb.on_fit_start(trainer, None)
    lrs, validated, epoch = [], [], 0
    trainer.num_training_batches = steps
    while not trainer.should_stop and epoch < 100000:  # Lightning's fit loop, as far as the callback sees it
        trainer.current_epoch = epoch
        cb.on_train_epoch_start(trainer, None)
        if epoch == 0 and trainer.check_val_every_n_epoch != 1:
            raise AssertionError("the first epoch validates")
        for b in range(steps):
            cb.on_train_batch_start(trainer, None, None, b)
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
            clock.t += step_s(clock.t - start)
            trainer.global_step += 1
            cb.on_train_batch_end(trainer, None, None, None, b)
            if trainer.should_stop:
                break
        if (epoch + 1) % trainer.check_val_every_n_epoch == 0:
            cb.on_validation_start(trainer, None)
            clock.t += val_s
            cb.on_validation_end(trainer, None)
            validated.append(epoch)
        cb.on_train_epoch_end(trainer, None)
        epoch += 1
    return {"used": clock.t - start, "lrs": lrs, "validated": validated, "epochs": epoch, "cb": cb}


@pytest.mark.parametrize("step", [0.005, 0.2, 3.0])
def test_the_run_ends_annealed_at_the_deadline_whatever_the_step_rate(step):
    budget, steps, val = 600.0, 20, 1.0
    r = simulate(budget, steps, lambda t: step, val)
    assert r["used"] <= budget  # never past the deadline
    # no budget left unused but the plan's margin (1 %)
    assert r["used"] > budget - max(3 * step + 1e-6, 0.01 * budget) - r["cb"].margin * budget
    assert r["validated"][-1] == r["epochs"] - 1  # the last epoch is validated
    lrs = r["lrs"]
    assert lrs[-1] <= 0.01 * 0.02  # annealed: within 2 % of the range above the final lr (1e-5)
    peak = lrs.index(max(lrs))
    assert all(a >= b - 1e-12 for a, b in zip(lrs[peak:], lrs[peak + 1:], strict=False))  # decays monotonically
    assert max(lrs) == pytest.approx(0.01, rel=0.02) and lrs[0] <= 0.01 * 0.05  # warm-up from ~1 % of lr


def test_the_first_step_s_warm_up_does_not_shorten_the_plan():
    # the first step of a fit costs 100 steps' time (allocations, kernel choices): were it counted as a rate,
    # the first plan would be a few steps long and the learning rate would never reach its peak
    r = simulate(30.0, 2, lambda t: 5.0 if t == 0 else 0.05, 0.3)
    assert max(r["lrs"]) == pytest.approx(0.01, rel=0.02)
    assert r["used"] <= 30.0 and r["lrs"][-1] <= 0.01 * 0.02 and r["epochs"] > 50


def test_a_machine_that_slows_down_mid_run_still_ends_before_the_deadline():
    r = simulate(600.0, 20, lambda t: 0.2 if t < 300 else 0.6, 1.0)
    assert 600.0 - 3 * 0.6 - 6.0 - r["cb"].margin * 600.0 < r["used"] <= 600.0
    assert r["lrs"][-1] <= 0.01 * 0.05 and r["validated"][-1] == r["epochs"] - 1


def test_costly_validation_runs_less_often_but_always_last():
    # validation costs 50 % of a training epoch: every ceil(0.5 / 0.1) = 5th epoch, and the last
    r = simulate(600.0, 10, lambda t: 1.0, 5.0)
    gaps = {b - a for a, b in zip(r["validated"][:-2], r["validated"][1:-1], strict=True)}
    assert gaps == {5}
    assert r["validated"][-1] == r["epochs"] - 1 and len(r["validated"]) < r["epochs"] / 3
    assert r["used"] <= 600.0


def test_resume_keeps_the_remaining_budget():
    clock = Clock()
    trainer, cb = FakeTrainer(0.01), BudgetSchedule(100.0, clock=clock)
    cb.on_fit_start(trainer, None)
    clock.t += 40.0
    state = cb.state_dict()
    resumed = BudgetSchedule(100.0, clock=clock)
    resumed.load_state_dict(state)
    resumed.on_fit_start(FakeTrainer(0.01), None)
    clock.t += 10.0
    assert resumed.elapsed() == pytest.approx(50.0) and resumed.base_lrs == [[0.01]]


def test_lr_factor_and_budget_parsing():
    assert lr_factor(0.0, 0.1, 1e-3) == pytest.approx(0.01) and lr_factor(0.1, 0.1, 1e-3) == pytest.approx(1.0)
    assert lr_factor(0.55, 0.1, 0.0) == pytest.approx(0.5)  # cosine midpoint
    assert lr_factor(1.0, 0.1, 1e-3) == pytest.approx(1e-3) and lr_factor(2.0, 0.1, 1e-3) == pytest.approx(1e-3)
    assert parse_budget("45m") == 2700 and parse_budget("2h") == 7200 and parse_budget("1h30m") == 5400
    assert parse_budget("90s") == 90 and parse_budget(20) == 1200 and parse_budget(None) is None
    for bad in ("45", "abc", "-5m", "0m", "5 minutes", True):
        with pytest.raises(SegkitError, match="budget is"):
            parse_budget(bad)


@pytest.mark.slow  # a real 20 s budget; the planner itself is tested on a simulated clock above
def test_a_real_run_keeps_to_its_budget(tmp_path):
    from segkit.training.fit import train

    budget = 20.0  # leaves the first epoch's one-off costs room on a host three times slower than this one
    cfg = compose_cfg(tmp_path, TINY_DATA + TINY_MODELS["unet"] + [f"budget={budget:g}s", "lr=0.004"])
    t0 = time.perf_counter()
    metrics, objects = train(cfg)
    fit_and_eval = time.perf_counter() - t0
    trainer = objects["trainer"]
    assert cfg.trainer.max_epochs == -1 and cfg.scheduler is None  # the budget replaced both
    assert trainer.current_epoch >= 2  # more than the one epoch the tiny config asks for
    cb = next(c for c in trainer.callbacks if isinstance(c, BudgetSchedule))
    # training ended by the deadline, leaving time for the re-evaluation. The plan keeps 1 % of the budget and two
    # validations free; a shared host's stall after the last plan is not foreseeable, hence one second of slack
    # (CI once ended at 20.8 s of 20 s before the margin existed)
    assert cb.fit_elapsed <= budget + 1.0, (cb.fit_elapsed, cb._last_step_at, cb.val_s)
    assert fit_and_eval <= budget + 4.0  # the whole command about at the deadline (its setup takes a second or two)
    assert trainer.optimizers[0].param_groups[0]["lr"] <= 0.004 * 0.05  # annealed at the end
    assert math.isfinite(metrics["val/miou"])


def test_an_epoch_limit_given_with_the_budget_caps_the_plan():
    clock = Clock()
    trainer, cb = FakeTrainer(0.01), BudgetSchedule(3600.0, clock=clock)
    trainer.max_epochs, trainer.num_training_batches = 4, 10
    cb.on_fit_start(trainer, None)
    lrs = []
    for epoch in range(4):
        trainer.current_epoch = epoch
        cb.on_train_epoch_start(trainer, None)
        for b in range(10):
            cb.on_train_batch_start(trainer, None, None, b)
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
            clock.t += 0.1
            trainer.global_step += 1
            cb.on_train_batch_end(trainer, None, None, None, b)
        cb.on_train_epoch_end(trainer, None)
    assert cb.stop_step == 40 and lrs[-1] < 0.01 * 0.02  # annealed at the 4th epoch's end, not at the hour


def test_a_plan_that_runs_out_at_an_unvalidated_epoch_end_still_ends_with_a_validation():
    clock = Clock()
    trainer, cb = FakeTrainer(0.01), BudgetSchedule(100.0, clock=clock)
    trainer.num_training_batches = 10
    cb.on_fit_start(trainer, None)
    cb.on_train_epoch_start(trainer, None)
    for b in range(10):
        cb.on_train_batch_start(trainer, None, None, b)
        clock.t += 1.0
        trainer.global_step += 1
        cb.on_train_batch_end(trainer, None, None, None, b)
    cb.val_s, cb.stop_step, cb._progress = 95.0, 10, 1.0  # the plan ran out exactly at this epoch's end
    cb.on_train_epoch_end(trainer, None)
    assert not trainer.should_stop and cb.stop_step == 11  # one more step...
    trainer.current_epoch = 1
    cb.on_train_epoch_start(trainer, None)
    assert trainer.check_val_every_n_epoch == 1  # ...in an epoch that validates
    cb.on_train_batch_start(trainer, None, None, 0)
    trainer.global_step += 1
    cb.on_train_batch_end(trainer, None, None, None, 0)
    assert trainer.should_stop and trainer.check_val_every_n_epoch == 1  # stops part-way, and Lightning validates


@pytest.mark.parametrize("after_fit_s", [30.0, 120.0])
def test_time_kept_for_the_post_processing_search_is_left_free(after_fit_s):
    # a budget with post-processing tuning keeps its search time plus one validation free after the fit
    budget, steps, step, val = 600.0, 20, 0.2, 1.0
    plain = simulate(budget, steps, lambda t: step, val)
    tuned = simulate(budget, steps, lambda t: step, val, after_fit_s=after_fit_s, after_fit_vals=1)
    free = budget - tuned["used"]
    assert free >= after_fit_s + val  # what the search needs is there after the fit
    assert free <= after_fit_s + val + 0.01 * budget + 3 * step + 3 * val  # and not much more
    # the planned steps shrink by about the reserved time (epoch-end validations are part of the step cost)
    fewer = len(plain["lrs"]) - len(tuned["lrs"])
    assert (after_fit_s + val) / step * 0.8 <= fewer <= (after_fit_s + val) / step * 1.2 + steps
    assert tuned["lrs"][-1] <= 0.01 * 0.02  # still annealed


def test_tuning_seconds_follow_the_budget():
    from segkit.training.budget import tuning_seconds

    assert tuning_seconds(None) == 300.0
    assert tuning_seconds(45 * 60) == pytest.approx(81.0)  # 3 % of 45 min
    assert tuning_seconds(60) == 10.0 and tuning_seconds(10 * 3600) == 300.0
