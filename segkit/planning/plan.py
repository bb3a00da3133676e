"""``plan_for``: the fingerprint, the machine and the plan for a composed training config and its prepared
data, shared by ``python -m segkit.plan`` (prints it) and ``segkit.train`` (applies it, writes ``plan.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segkit.planning.fingerprint import fingerprint_of, machine
from segkit.planning.planner import apply_plan, make_plan, plan_table, resolve_sources
from segkit.runtime import tune_allocator
from segkit.training.durations import parse_budget
from segkit.training.job import task_overrides

MODES = ("auto", "report", "off")


def plan_for(cfg: Any, dm: Any, overrides: list[str] | None = None, measure=None) -> dict[str, Any] | None:
    """The plan as a record (``plan.yaml``): mode, budget, fingerprint, machine and the items with their
    reasons and sources. ``plan=auto`` applies it to ``cfg`` (and ``dm``); ``report`` only records it;
    ``off`` returns None and changes nothing."""
    mode = str(cfg.get("plan", "auto"))
    if mode == "off":
        return None
    if overrides is None:
        from segkit.training.job import _hydra_config

        if _hydra_config() is None and mode == "auto":
            # called without Hydra (a notebook, a test): which keys the caller set is unknown, so the plan
            # is recorded, not applied (pass overrides= to apply it)
            mode = "report"
    fp = fingerprint_of(dm)
    # step times are measured as training will run them: with segkit's allocator setting, which the trainer applies
    # too (glibc's default maps fresh pages for every large activation: fp32 steps measured up to 2x slower)
    tune_allocator(str(cfg.get("cpu_allocator", "tuned")))
    mach = machine()
    budget_s = parse_budget(cfg.get("budget"))
    kwargs = {"measure": measure} if measure is not None else {}
    items = make_plan(fp, cfg, mach, budget_s, **kwargs)
    items = resolve_sources(items, cfg, task_overrides() if overrides is None else overrides)
    if mode == "auto":
        apply_plan(items, cfg, dm)
    return {"mode": mode, "budget_s": budget_s, "items": [i.as_dict() for i in items], "fingerprint": fp,
            "machine": mach, "table": plan_table(items)}


def write_plan(record: dict[str, Any], path: Path) -> None:
    """``plan.yaml`` (plain YAML data), written atomically."""
    import os

    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(yaml.safe_dump({k: v for k, v in record.items() if k != "table"}, sort_keys=False))
    tmp.replace(path)
