"""Leaderboard of training runs: ``python -m segkit.summarize <dir> [<dir> ...] [--metric val/miou] [--out DIR]``.

Each ``<dir>`` may be a sweep dir (``outputs/train/multiruns/<stamp>``), a runs dir (``outputs/train/runs``)
or one run dir. Every run dir below it (a folder holding ``status.json``, ``metrics.json`` or
``.hydra/overrides.yaml``) becomes one row. Writes into ``--out`` (default: the first dir):

- ``leaderboard.md`` / ``leaderboard.csv``: one row per run, best first by ``--metric`` (higher is better,
  lower for a ``loss`` metric; runs without the metric next, failed runs last), the swept overrides (those
  that differ between runs; the CSV also has all of them), per-class validation IoU, mIoU/mDice/pixel
  accuracy, test mIoU, best epoch, epochs, wall time;
- a seed summary (in the Markdown, and ``seed_summary.csv``) when runs whose overrides are identical apart
  from ``seed=`` form a group of two or more: n, mean and sample standard deviation (ddof=1) of every val/test
  metric;
- ``metric_vs_<param>.png`` for each swept parameter.

Run status comes from the run's ``status.json`` (completed, failed with its reason, interrupted; ``running`` is
shown as ``running/killed``: a killed process never updates it); without it a run with ``metrics.json`` counts as
completed (older runs), else ``unknown``.
"""

from __future__ import annotations

import csv
import math
import os
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from segkit import rundir
from segkit.errors import SegkitError


@dataclass
class Run:
    path: Path
    status: str = "unknown"
    reason: str | None = None
    overrides: list[str] = field(default_factory=list)
    metrics: dict[str, float | None] = field(default_factory=dict)
    best_epoch: int | None = None
    epochs: int | None = None
    wall_time_s: float | None = None
    name: str = ""
    #: where a failed run stopped: setup (before training started), training, evaluation (status.json)
    stage: str | None = None
    in_sweep: bool = False

    @property
    def params(self) -> dict[str, str]:
        """``key -> value`` of the overrides (``+key=v`` / ``++key=v`` as ``key``; ``~key`` as ``~key -> deleted``)."""
        out = {}
        for o in self.overrides:
            key, sep, value = o.partition("=")
            key = key.lstrip("+")
            out[key] = value if sep else "deleted"
        return out


# ---------------------------------------------------------------------------------------------- reading
def find_run_dirs(root: Path) -> list[Path]:
    """Every training run dir at or below ``root`` (not descending into a run dir); the folders of
    segkit.eval / predict / tune_postprocess are told apart by :meth:`segkit.rundir.RunDir.kind`."""
    if not root.is_dir():
        raise SegkitError(f"'{root}' is not a directory; expected a sweep dir, a runs dir or a run dir of segkit.train")
    found: list[Path] = []
    for dirpath, dirnames, _ in os.walk(root):
        run = rundir.RunDir(Path(dirpath))
        if run.is_run():
            dirnames[:] = []
            if run.kind() in ("train", None):
                found.append(run.path)
            continue
        dirnames[:] = sorted(n for n in dirnames if n not in (rundir.CHECKPOINTS, rundir.TENSORBOARD, "csv", rundir.HYDRA_DIR))
    return sorted(found)


def _numeric(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


def read_run(path: Path) -> Run:
    folder = rundir.RunDir(path)
    run = Run(path, in_sweep=folder.in_sweep())
    status = folder.read_status()
    summary = folder.read_metrics()
    if status is not None:
        s = str(status.get("status") or "unknown")
        run.status = "running/killed" if s == "running" else s
        run.reason = status.get("reason")
        run.overrides = [str(o) for o in status.get("overrides") or []]
        run.epochs = status.get("epochs_trained")
        run.wall_time_s = status.get("wall_time_s")
        run.best_epoch = status.get("best_epoch")
        run.stage = status.get("stage")
    elif summary is not None:
        run.status = "completed"
    if not run.overrides and folder.hydra_overrides.is_file():
        loaded = yaml.safe_load(folder.hydra_overrides.read_text()) or []
        run.overrides = [str(o) for o in loaded]
    if summary is not None:
        raw = summary.get("metrics") or {}
        run.metrics = {k: _numeric(v) for k, v in raw.items() if not isinstance(v, dict)}
        run.best_epoch = run.best_epoch if run.best_epoch is not None else summary.get("best_epoch")
        run.epochs = run.epochs if run.epochs is not None else summary.get("epochs_trained")
        run.wall_time_s = run.wall_time_s if run.wall_time_s is not None else summary.get("wall_time_s")
    return run


# ---------------------------------------------------------------------------------------------- tables
def swept_keys(runs: list[Run]) -> list[str]:
    """Override keys whose value differs between runs (or that some runs lack), in first-seen order."""
    keys: list[str] = []
    for r in runs:
        keys += [k for k in r.params if k not in keys]
    return [k for k in keys if len({r.params.get(k) for r in runs}) > 1]


def lower_is_better(metric: str) -> bool:
    return "loss" in metric


def sort_runs(runs: list[Run], metric: str) -> list[Run]:
    sign = 1.0 if lower_is_better(metric) else -1.0

    def key(r: Run):
        v = r.metrics.get(metric)
        failed = r.status == "failed"
        return (failed, v is None, sign * v if v is not None else 0.0, str(r.path))

    return sorted(runs, key=key)


def resolve_metric(metric: str, runs: list[Run]) -> str:
    available = sorted({k for r in runs for k in r.metrics})
    if any(metric in r.metrics for r in runs):
        return metric
    if any(f"val/{metric}" in r.metrics for r in runs):
        return f"val/{metric}"
    listed = ", ".join(available) if available else "none (no run has a metrics.json)"
    raise SegkitError(f"metric '{metric}' is in no run's metrics.json; available metrics: {listed}")


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def _md_cell(v: Any) -> str:
    return _fmt(v).replace("|", "\\|").replace("\n", " ")


def leaderboard_columns(runs: list[Run], metric: str, swept: list[str]) -> list[tuple[str, Any]]:
    """(header, getter) pairs shared by the Markdown and CSV tables (the CSV adds all overrides)."""
    classes: list[str] = []
    for r in runs:
        classes += [k.split("/", 2)[2] for k in r.metrics if k.startswith("val/iou/") and k.split("/", 2)[2] not in classes]
    cols: list[tuple[str, Any]] = [("run", lambda r: r.name), ("status", lambda r: r.status), ("reason", lambda r: r.reason or "")]
    cols += [(k, lambda r, k=k: r.params.get(k, "")) for k in swept]
    metric_keys = [metric] + [k for k in [*(f"val/iou/{c}" for c in classes), "val/miou", "val/mdice", "val/pixel_acc"] if k != metric]
    if any("test/miou" in r.metrics for r in runs) and metric != "test/miou":
        metric_keys.append("test/miou")
    cols += [(k, lambda r, k=k: r.metrics.get(k)) for k in metric_keys]
    cols += [("best epoch", lambda r: r.best_epoch), ("epochs", lambda r: r.epochs),
             ("wall time (s)", lambda r: None if r.wall_time_s is None else f"{float(r.wall_time_s):.1f}")]
    return cols


def seed_groups(runs: list[Run]) -> dict[tuple[str, ...], list[Run]]:
    """Completed runs grouped by their overrides without ``seed=`` (in leaderboard order)."""
    groups: dict[tuple[str, ...], list[Run]] = {}
    for r in runs:
        if r.status != "completed" or not r.metrics:
            continue
        key = tuple(sorted(o for o in r.overrides if o.lstrip("+").partition("=")[0] != "seed"))
        groups.setdefault(key, []).append(r)
    return groups


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for a single value)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else float("nan")


def seed_summary(runs: list[Run], metric: str = "val/miou") -> list[dict[str, Any]]:
    """Rows ``group, n, seeds, metric, n_values, mean, std, overrides`` for groups of two or more runs; ``group``
    names the group by its swept overrides other than the seed, ``overrides`` lists all of them."""
    rows = []
    swept = [k for k in swept_keys(runs) if k != "seed"]
    for key, members in seed_groups(runs).items():
        if len(members) < 2:
            continue
        found = {k for r in members for k in r.metrics if k.startswith(("val/", "test/"))}
        names = sorted(found, key=lambda k: (k != metric, k.startswith("test/"), k))
        seeds = sorted((r.params.get("seed", "default") for r in members), key=lambda v: (_as_float(v) is None, _as_float(v) or 0.0, v))
        for name in names:
            values = [r.metrics[name] for r in members if r.metrics.get(name) is not None]
            if not values:
                continue
            mean, std = mean_std(values)
            label = " ".join(o for o in key if o.lstrip("+").partition("=")[0] in swept) or "all runs"
            rows.append({"group": label, "n": len(members), "seeds": ",".join(seeds), "metric": name, "n_values": len(values),
                         "mean": mean, "std": std, "overrides": " ".join(key)})
    return rows


# ---------------------------------------------------------------------------------------------- plots
def _as_float(v: str) -> float | None:
    try:
        f = float(v)
    except ValueError:
        return None
    return f if math.isfinite(f) else None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "param"


def param_plot(runs: list[Run], metric: str, param: str, path: Path) -> Path | None:
    """``metric`` against one swept override: points per run, mean per value joined by a line; a log x axis
    for positive numbers spanning more than 10x; a jittered strip plot for categorical values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    pts = [(r.params.get(param, "(default)"), r.metrics[metric]) for r in runs if r.metrics.get(metric) is not None]
    if not pts:
        return None
    nums = [_as_float(x) for x, _ in pts]
    numeric = all(n is not None for n in nums) and len(set(nums)) > 1
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    if numeric:
        xs, ys = np.array(nums, dtype=float), np.array([y for _, y in pts])
        log = bool(np.all(xs > 0) and xs.max() / xs.min() > 10)
        ax.scatter(xs, ys, s=28, alpha=0.75, label="run", zorder=3)
        ux = np.unique(xs)
        ax.plot(ux, [ys[xs == u].mean() for u in ux], color="black", lw=1.2, marker="_", ms=14, label="mean over runs", zorder=2)
        if log:
            ax.set_xscale("log")
        ax.set_xticks(ux, [f"{u:g}" for u in ux], rotation=30 if len(ux) > 6 else 0)
        ax.minorticks_off()
        ax.set_xlabel(f"{param}{' (log scale)' if log else ''}")
    else:
        cats = list(dict.fromkeys(str(x) for x, _ in pts))
        rng = np.random.default_rng(0)
        pos = np.array([cats.index(str(x)) for x, _ in pts], dtype=float)
        ys = np.array([y for _, y in pts])
        ax.scatter(pos + rng.uniform(-0.12, 0.12, len(pos)), ys, s=28, alpha=0.75, label="run", zorder=3)
        for i in range(len(cats)):
            ax.hlines(ys[pos == i].mean(), i - 0.3, i + 0.3, color="black", lw=1.5, label="mean over runs" if i == 0 else None)
        ax.set_xticks(range(len(cats)), cats, rotation=30 if sum(len(c) for c in cats) > 40 else 0)
        ax.set_xlim(-0.6, len(cats) - 0.4)
        ax.set_xlabel(param)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs {param} ({len(pts)} runs with the metric)")
    missing = [r for r in runs if r.metrics.get(metric) is None]
    if missing:
        failed = [r.params.get(param, "(default)") for r in missing if r.status == "failed"]
        note = f"not shown: {len(missing)} run(s) without {metric}"
        if failed:
            note += f"; failed at {param}=" + ", ".join(dict.fromkeys(failed))
        fig.text(0.01, 0.01, note, fontsize=7, color="dimgray", ha="left", va="bottom")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout(rect=(0, 0.04 if missing else 0, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- output
def summarize(dirs: list[Path], metric: str = "val/miou", out: Path | None = None) -> dict[str, Any]:
    """Find the runs under ``dirs``, write the leaderboard files into ``out``; returns what was written."""
    dirs = [Path(d) for d in dirs]
    found: list[Path] = []
    for d in dirs:
        runs_here = find_run_dirs(d)
        if not runs_here:
            raise SegkitError(f"no run directory (a folder with {', '.join(rundir.MARKERS)}) found under '{d}'; expected a sweep dir, "
                              "a runs dir or a run dir of segkit.train")
        found += [p for p in runs_here if p not in found]
    out = Path(out) if out is not None else dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    runs = [read_run(p) for p in found]
    base = Path(os.path.commonpath([str(d.resolve()) for d in dirs]))
    for r in runs:
        rel = os.path.relpath(r.path.resolve(), base)
        r.name = r.path.resolve().name if rel == "." else rel
    # a single run stopped by a user error before its first training step has nothing to rank (a sweep's
    # failed trials stay in the table: they are part of what the sweep asked for)
    never_trained = [r for r in runs if r.status == "failed" and r.stage == "setup" and not r.in_sweep]
    runs = [r for r in runs if r not in never_trained]
    if not runs:
        raise SegkitError(f"every run under {', '.join(f'{d}' for d in dirs)} failed before training started "
                          f"(e.g. '{never_trained[0].path}': {never_trained[0].reason}); expected at least one run that trained")
    metric = resolve_metric(metric, runs)
    runs = sort_runs(runs, metric)
    swept = swept_keys(runs)
    cols = leaderboard_columns(runs, metric, swept)

    with (out / "leaderboard.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([h for h, _ in cols] + ["overrides"])
        for r in runs:
            writer.writerow(["" if (v := g(r)) is None else v for _, g in cols] + [" ".join(r.overrides)])

    direction = "lower is better" if lower_is_better(metric) else "higher is better"
    counts = {s: sum(r.status == s for r in runs) for s in dict.fromkeys(r.status for r in runs)}
    md = [
        f"# Leaderboard: {metric}",
        "",
        f"{len(runs)} runs ({', '.join(f'{n} {s}' for s, n in counts.items())}) under {', '.join(f'`{d}`' for d in dirs)}; "
        f"sorted by `{metric}` ({direction}), runs without it next, failed runs last. "
        f"Swept overrides: {', '.join(f'`{k}`' for k in swept) or 'none'} (every override of each run is in `leaderboard.csv`). "
        "Scores are pooled over the split (one confusion matrix per split) as `segkit.train` wrote them to `metrics.json`.",
        "",
        "| " + " | ".join(h for h, _ in cols) + " |",
        "|" + "---|" * len(cols),
        *["| " + " | ".join(_md_cell(g(r)) for _, g in cols) + " |" for r in runs],
        "",
    ]
    if never_trained:
        md += [f"Not ranked: {len(never_trained)} run(s) that failed before training started: "
               + "; ".join(f"`{r.name}` ({r.reason})" for r in never_trained) + ".", ""]
    optuna = [d / "optimization_results.yaml" for d in dirs if (d / "optimization_results.yaml").is_file()]
    for path in optuna:
        res = yaml.safe_load(path.read_text()) or {}
        md += [f"Optuna (`{path}`): best value {res.get('best_value')} with {res.get('best_params')}.", ""]

    seeds = seed_summary(runs, metric)
    if seeds:
        with (out / "seed_summary.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(seeds[0]))
            writer.writeheader()
            writer.writerows(seeds)
        groups = list(dict.fromkeys((s["group"], s["n"], s["seeds"]) for s in seeds))
        names = list(dict.fromkeys(s["metric"] for s in seeds))
        cell = {(s["group"], s["metric"]): s for s in seeds}

        def fmt_cell(s: dict | None) -> str:
            if s is None:
                return ""
            text = f"{s['mean']:.4f} ± {s['std']:.4f}" if s["n_values"] > 1 else f"{s['mean']:.4f} ± n/a"
            return text + (f" (n={s['n_values']})" if s["n_values"] != s["n"] else "")

        md += [
            "## Seed summary",
            "",
            "Runs whose overrides are identical apart from `seed=` (completed runs only); mean ± sample standard "
            "deviation (ddof=1) over the seeds; groups of one run are left out. Also in `seed_summary.csv`.",
            "",
            "| metric | " + " | ".join(f"{_md_cell(g)} (n={n}, seeds {sd})" for g, n, sd in groups) + " |",
            "|---|" + "---|" * len(groups),
            *[f"| {name} | " + " | ".join(fmt_cell(cell.get((g, name))) for g, _, _ in groups) + " |" for name in names],
            "",
        ]

    plots = []
    for param in swept:
        png = param_plot(runs, metric, param, out / f"metric_vs_{_safe(param)}.png")
        if png is not None:
            plots.append((param, png))
    if plots:
        md += ["## Metric against each swept parameter", ""]
        md += [f"![{metric} vs {param}]({png.name})\n" for param, png in plots]
    text = "\n".join(md)
    (out / "leaderboard.md").write_text(text)
    return {"runs": runs, "metric": metric, "swept": swept, "seed_summary": seeds, "plots": [p for _, p in plots],
            "markdown": text, "out": out, "never_trained": never_trained}
