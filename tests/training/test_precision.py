import torch

from segkit.training.precision import cpu_bf16_is_fast, resolve_precision


def test_auto_is_fp32_on_cpu():
    assert resolve_precision("auto", "cpu") == ("32-true", None)


def test_mixed_precision_on_a_slow_bf16_cpu_falls_back_with_a_note(monkeypatch):
    import segkit.training.precision as p

    monkeypatch.setattr(p, "cpu_bf16_is_fast", lambda: False)
    for req in ("16-mixed", "bf16-mixed"):
        prec, note = resolve_precision(req, "cpu")
        assert prec == "32-true" and req in note and "CPU" in note


def test_bf16_kept_on_a_fast_bf16_cpu(monkeypatch):
    import segkit.training.precision as p

    monkeypatch.setattr(p, "cpu_bf16_is_fast", lambda: True)
    assert resolve_precision("bf16-mixed", "cpu") == ("bf16-mixed", None)
    assert resolve_precision("16-mixed", "cpu")[0] == "32-true"


def test_fp32_untouched():
    assert resolve_precision("32-true", "cpu") == ("32-true", None)


def test_probe_runs_and_agrees_with_a_direct_timing():
    # the probe answers a bool; it is cached, so asking twice costs nothing
    assert cpu_bf16_is_fast() in (True, False)
    assert cpu_bf16_is_fast() is cpu_bf16_is_fast()
    if not torch.cuda.is_available():
        assert resolve_precision("auto", "auto")[0] == "32-true"
