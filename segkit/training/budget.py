"""Training to a wall-clock budget: ``python -m segkit.train budget=45m``.

The learning rate is a function of the planned run, not of the epoch: a linear warm-up over the first
``warmup`` share, then a cosine decay that reaches ``lr x final_lr_ratio`` at the last step. The last step is
the one that leaves the final validation, segkit's re-evaluation of the best checkpoint, the post-processing
search when there is one (:func:`tuning_seconds` and one more validation's time) and a margin of 1 % of
the budget before the deadline (a test split's evaluation comes after it), planned from the measured
seconds per training step and per validation and re-planned as the run goes (every ``replan_every`` steps and
every epoch), so the run ends annealed, validated and checkpointed at the deadline on any machine, fast or
slow, busy or idle; the last epoch may stop part-way. Validation runs every epoch while it costs at most
``val_share`` of the training time, less often when it costs more, and always after the last step.

Elapsed time is kept in the checkpoint: a resumed run continues with the budget it had left.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl

from segkit.logs import say
from segkit.training.durations import parse_budget

__all__ = ["BudgetSchedule", "apply_budget", "lr_factor", "parse_budget"]

def lr_factor(progress: float, warmup: float, final_ratio: float) -> float:
    """The learning rate's factor at ``progress`` in [0, 1] of the run: linear warm-up from 1 % over the first
    ``warmup`` share, then cosine from 1 to ``final_ratio`` at progress 1."""
    p = min(max(progress, 0.0), 1.0)
    if warmup > 0 and p < warmup:
        return 0.01 + 0.99 * p / warmup
    q = (p - warmup) / max(1e-12, 1.0 - warmup)
    return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * q))


class BudgetSchedule(pl.Callback):
    """Sets every optimizer's learning rate each step from the planned number of steps; stops the run at the
    step that leaves just the time of the final validation; adapts the validation cadence.

    The plan (``stop_step``, the cadence) is made on the first process from the measured seconds per
    training step and per validation, and broadcast to the others at points every process reaches (each
    ``replan_every`` optimizer steps and each epoch's end), so every process uses the same learning rate and
    stops at the same step. ``clock`` is injectable for tests."""

    def __init__(self, seconds: float, warmup: float = 0.03, final_lr_ratio: float = 1e-3, val_share: float = 0.1,
                 set_lr: bool = True, replan_every: int = 25, after_fit_s: float = 0.0, after_fit_vals: int = 0,
                 clock: Callable[[], float] | None = None) -> None:
        self.seconds = float(seconds)
        # kept free for what follows the fit: ``after_fit_s`` seconds plus ``after_fit_vals`` validations' time
        # (post-processing tuning predicts the validation images once, then searches for ``after_fit_s``)
        self.after_fit_s, self.after_fit_vals = max(0.0, float(after_fit_s)), max(0, int(after_fit_vals))
        self.set_lr = bool(set_lr)
        self.warmup, self.final_lr_ratio, self.val_share = float(warmup), float(final_lr_ratio), float(val_share)
        self.replan_every = max(1, int(replan_every))
        self.margin = 0.01  # share of the budget kept free of planned steps
        self._last_step_at: float | None = None  # elapsed seconds at the end of the last training step
        self.clock = clock or time.monotonic
        self.elapsed_before = 0.0  # seconds spent before a resume
        self.val_total = 0.0  # seconds spent validating, with its figures and checkpoints (since the start)
        self.step_s: float | None = None  # seconds per optimizer step, validation excluded
        self.val_s: float | None = None  # seconds per validation
        self.stop_step: int | None = None  # the planned last optimizer step
        self.every = 1
        self.fit_elapsed: float | None = None  # seconds from the start of the run to the end of fit
        self._t0 = 0.0
        self.fixed_s: float | None = None  # seconds an epoch costs beyond its steps when it does not validate
        self._epoch_mark = 0.0  # clock at the previous epoch's end (or the start)
        self._prev_end: float | None = None  # clock at the previous batch's end in this epoch
        self._batch_t0 = 0.0
        self._epoch_train = 0.0  # seconds of training steps (data loading included) in this epoch
        self._window = [0.0, 0]  # training seconds and steps since the last estimate
        self._warm = False  # whether this fit's first step (one-off allocations and kernel choices) is behind
        self._since_val = 0
        self._next_cadence: int | None = None
        self._progress = 0.0
        self._validated_this_epoch = False
        self._epoch_steps = 0
        self.base_lrs: list[list[float]] = []

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"elapsed": self.elapsed(), "val_total": self.val_total, "step_s": self.step_s, "val_s": self.val_s,
                "stop_step": self.stop_step, "every": self.every, "base_lrs": self.base_lrs, "seconds": self.seconds,
                "progress": self._progress}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.elapsed_before = float(state.get("elapsed", 0.0))
        self.val_total = float(state.get("val_total", 0.0))
        self.step_s, self.val_s, self.stop_step = state.get("step_s"), state.get("val_s"), state.get("stop_step")
        self.every = int(state.get("every", 1))
        self._progress = float(state.get("progress", 0.0))
        self.base_lrs = [list(b) for b in state.get("base_lrs", [])]

    def elapsed(self) -> float:
        return self.elapsed_before + (self.clock() - self._t0 if self._t0 else 0.0)

    def progress(self, step: int) -> float:
        """Share of the planned run done at ``step``; never decreases, so neither does the decayed lr when the
        plan moves by a few steps (it holds until the run catches up when the plan grows)."""
        current = step / self.stop_step if self.stop_step else 0.0
        self._progress = max(self._progress, min(1.0, current))
        return self._progress

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = self.clock()
        self._warm = False
        if not self.base_lrs:
            self.base_lrs = [[float(g["lr"]) for g in opt.param_groups] for opt in trainer.optimizers]
        self._epoch_mark = self.clock()
        left = self.seconds - self.elapsed_before
        if trainer.is_global_zero:
            how = (f"learning rate by planned steps (warm-up {100 * self.warmup:.0f} %, cosine to {self.final_lr_ratio:g} x lr "
                   "at the last step), re-planned from the measured step rate" if self.set_lr else
                   "the scheduler given on the command line sets the learning rate; the budget only ends the run")
            say(f"budget {self.seconds / 60:.1f} min ({left / 60:.1f} min left): {how}")
        self._set_lr(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._next_cadence is not None:
            trainer.check_val_every_n_epoch, self._next_cadence = self._next_cadence, None
        self._validated_this_epoch = False
        self._epoch_steps = 0
        self._prev_end, self._epoch_train = None, 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._prev_end is None:
            self._batch_t0 = self.clock()
        self._set_lr(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = self.clock()
        self._last_step_at = self.elapsed()
        spent = now - (self._prev_end if self._prev_end is not None else self._batch_t0)  # loading + step
        self._prev_end = now
        self._epoch_train += spent
        if self._warm:  # the first step of a fit costs up to tens of times a later one: not a rate
            self._window[0] += spent
            self._window[1] += 1
        self._warm = True
        self._epoch_steps += 1
        step = int(trainer.global_step)
        if step % self.replan_every == 0 or step in (3, 10):  # a first plan soon, then every replan_every steps
            self.plan(trainer)
        if self.stop_step is not None and step >= self.stop_step:
            trainer.check_val_every_n_epoch = 1  # the last step is always followed by a validation
            trainer.should_stop = True

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.fit_elapsed = self.elapsed()
        if trainer.is_global_zero and self._last_step_at is not None:
            say(f"budget: last training step (step {int(trainer.global_step)}) at {self._last_step_at:.1f} s, fit ended at "
                f"{self.fit_elapsed:.1f} s of {self.seconds:.1f} s (final validation and checkpoints "
                f"{self.fit_elapsed - self._last_step_at:.1f} s; planned {self.val_s or 0.0:.1f} s per validation)")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated_this_epoch = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._since_val = 0 if self._validated_this_epoch else self._since_val + 1
        self.plan(trainer, epoch_end=True)

    # ------------------------------------------------------------------ the plan
    def plan(self, trainer: pl.Trainer, epoch_end: bool = False) -> None:
        """Re-estimate seconds per step (and per validation) and the step that leaves the final validation
        just enough time; at an epoch's end also the validation cadence for the next epoch."""
        step, now = int(trainer.global_step), self.clock()
        if self._window[1]:
            rate = self._window[0] / self._window[1]
            self.step_s = rate if self.step_s is None else 0.5 * self.step_s + 0.5 * rate
            self._window = [0.0, 0]
        if epoch_end:
            # what the epoch cost beyond its steps: validation with its figures and checkpoints, logging
            overhead = max(0.0, now - self._epoch_mark - self._epoch_train)
            self._epoch_mark = now
            if self._validated_this_epoch:
                self.val_total += overhead
                self.val_s = overhead if self.val_s is None else max(overhead, 0.5 * self.val_s + 0.5 * overhead)
            else:
                self.fixed_s = overhead if self.fixed_s is None else 0.5 * self.fixed_s + 0.5 * overhead
        plan = None
        if self.step_s:
            val_s = self.val_s or 0.0
            steps_per_epoch = max(1, self._epoch_steps) if epoch_end else _batches_per_epoch(trainer)
            epoch_train_s = self.step_s * steps_per_epoch
            every = max(1, math.ceil(val_s / max(1e-9, self.val_share * epoch_train_s) - 1e-9)) if val_s else 1
            left = self.seconds - self.elapsed()
            # steps S with: S * step_s + (S / steps_per_epoch) * (epoch overheads) + final val_s <= left
            fixed = min(self.fixed_s if self.fixed_s is not None else 0.0, val_s)
            per_step = self.step_s + (val_s / every + fixed * (1 - 1 / every)) / steps_per_epoch
            # reserve: the final validation, segkit's re-evaluation of the best checkpoint after fit, the
            # post-processing search when there is one, and a margin of 1 % of the budget for what no
            # measurement foresees (a busy host's stall after the last plan)
            reserve = (2 + self.after_fit_vals) * val_s + self.after_fit_s + self.margin * self.seconds
            remaining = max(0, int((left - reserve) // per_step))
            stop = step + remaining
            if trainer.max_epochs is not None and trainer.max_epochs > 0:  # trainer.max_epochs given with the budget
                stop = min(stop, int(trainer.max_epochs) * _batches_per_epoch(trainer))
            if self.stop_step and step / self.stop_step < 0.98 and remaining < max(1, round(0.02 * step)):
                # the machine slowed down so much that the plan has no steps left before the learning rate
                # has decayed: a few more (2 % of the run) anneal it, at a small cost past the deadline
                stop = step + min(50, max(1, round(0.02 * step)))
            plan = [stop, every]
        if trainer.world_size > 1:
            plan = trainer.strategy.broadcast(plan, src=0)
        if plan is None:
            return
        self.stop_step, self.every = int(plan[0]), int(plan[1])
        if epoch_end:
            last_by_epochs = trainer.max_epochs is not None and 0 < trainer.max_epochs <= trainer.current_epoch + 2
            validate_next = self._since_val + 1 >= self.every or last_by_epochs
            nxt = trainer.current_epoch + 1  # Lightning validates epoch e when (e + 1) % n == 0
            # set when the next epoch starts: the checkpoint callback still reads this epoch's value at its end
            self._next_cadence = 1 if validate_next else nxt + 2
            capped = trainer.max_epochs is not None and 0 < trainer.max_epochs <= nxt  # Lightning stops here anyway
            if step >= self.stop_step and not self._validated_this_epoch and not capped:
                # the plan ran out at an epoch's end that did not validate: one more step, then the validation
                # that every run ends with (stopping here would leave the annealed weights unvalidated)
                self.stop_step, self._next_cadence = step + 1, 1
            elif step >= self.stop_step:
                trainer.should_stop = True

    def _set_lr(self, trainer: pl.Trainer) -> None:
        if not self.set_lr:
            return
        factor = lr_factor(self.progress(int(trainer.global_step)), self.warmup, self.final_lr_ratio)
        for opt, bases in zip(trainer.optimizers, self.base_lrs, strict=False):
            for group, base in zip(opt.param_groups, bases, strict=False):
                group["lr"] = base * factor


def _batches_per_epoch(trainer: pl.Trainer) -> int:
    n = getattr(trainer, "num_training_batches", 1) or 1
    return max(1, int(n)) if math.isfinite(n) else 1


def tuning_seconds(budget_s: float | None) -> float:
    """Seconds the post-processing search after training may take: 3 % of the budget, 10 s to 5 min; 5 min
    without a budget."""
    return 300.0 if budget_s is None else float(min(300.0, max(10.0, 0.03 * budget_s)))


def apply_budget(cfg: Any, spent: float = 0.0, tuning: bool = False) -> float | None:
    """``budget=45m`` on the training config: the epoch limit lifted (unless ``trainer.max_epochs`` was given),
    Lightning's ``max_time`` as a backstop 5 % + 1 min past the deadline, the epoch scheduler replaced by
    :class:`BudgetSchedule` (unless a ``scheduler`` was given: then it is kept, the budget only ends the run),
    and the callback added to ``cfg.callbacks`` so that ``run_config.yaml`` records it. Returns the budget in
    seconds, or None when there is none. ``spent``: seconds the command has already used (reading the data,
    planning): the run's own budget is what is left of it. Applying it twice (a resume) changes nothing
    but that. ``tuning``: post-processing is tuned after the fit, and the plan keeps its time free
    (:func:`tuning_seconds` and one more validation's time)."""
    from omegaconf import open_dict

    from segkit.training.job import task_overrides

    seconds = parse_budget(cfg.get("budget"))
    if seconds is None:
        return None
    given = {o.lstrip("+~").partition("=")[0] for o in task_overrides()}
    own_scheduler = any(k == "scheduler" or k.startswith("scheduler.") for k in given)
    options = dict(cfg.get("budget_schedule") or {})
    if tuning:
        options.setdefault("after_fit_s", tuning_seconds(seconds))
        options.setdefault("after_fit_vals", 1)
    with open_dict(cfg):
        if not own_scheduler and "trainer.max_epochs" not in given:
            cfg.trainer.max_epochs = -1
        backstop = int(seconds * 1.05 + 60)
        cfg.trainer.max_time = (f"{backstop // 86400:02d}:{backstop % 86400 // 3600:02d}:"
                                f"{backstop % 3600 // 60:02d}:{backstop % 60:02d}")  # Lightning's DD:HH:MM:SS
        if not own_scheduler:
            cfg.scheduler = None
        cfg.callbacks = cfg.get("callbacks") or {}
        cfg.callbacks.budget = {"_target_": "segkit.training.budget.BudgetSchedule", "seconds": max(1.0, seconds - spent),
                                "set_lr": not own_scheduler, **options}
    return seconds
