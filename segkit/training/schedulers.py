"""Learning-rate schedules that torch does not ship."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class ExponentialDecayLR(LRScheduler):
    """``lr = base_lr * decay_rate ** (step / decay_steps)`` (TensorFlow's ``exponential_decay``).

    With ``staircase=True`` the exponent is ``floor(step / decay_steps)``. ``step`` counts calls to
    :meth:`step` (optimizer steps when the config says ``interval: step``).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        decay_rate: float = 0.75,
        decay_steps: int = 100,
        staircase: bool = False,
        last_epoch: int = -1,
    ) -> None:
        if not 0.0 < decay_rate <= 1.0:
            raise ValueError(f"scheduler.decay_rate must be in (0, 1], found {decay_rate}")
        if decay_steps < 1:
            raise ValueError(f"scheduler.decay_steps must be a positive integer, found {decay_steps}")
        self.decay_rate = decay_rate
        self.decay_steps = decay_steps
        self.staircase = staircase
        super().__init__(optimizer, last_epoch)

    def _factor(self, step: int) -> float:
        exponent = step / self.decay_steps
        if self.staircase:
            exponent = math.floor(exponent)
        return self.decay_rate**exponent

    def get_lr(self) -> list[float]:
        return [base * self._factor(self.last_epoch) for base in self.base_lrs]
