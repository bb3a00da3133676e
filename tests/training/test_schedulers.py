import pytest
import torch

from segkit.training.schedulers import ExponentialDecayLR


def _lrs(**kw):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = ExponentialDecayLR(opt, **kw)
    out = []
    for _ in range(6):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_exponential_decay_matches_formula():
    assert _lrs(decay_rate=0.5, decay_steps=2) == pytest.approx([0.1 * 0.5 ** (k / 2) for k in range(6)])


def test_staircase():
    assert _lrs(decay_rate=0.5, decay_steps=2, staircase=True) == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])


def test_bad_values():
    with pytest.raises(ValueError, match="decay_rate"):
        _lrs(decay_rate=1.5)
