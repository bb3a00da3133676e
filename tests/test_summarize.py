"""``segkit.summarize`` on crafted run dirs: order, status, swept overrides, seed statistics, plots, errors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from PIL import Image

from segkit.evaluation.leaderboard import summarize
from segkit.summarize import main

CLASSES = ["background", "cell"]


def make_run(path: Path, overrides: list[str], miou: float | None = None, status: str | None = "completed", reason: str | None = None,
             test_miou: float | None = None, write_metrics: bool = True) -> Path:
    """A run dir as segkit.train writes it: .hydra/overrides.yaml, status.json (when ``status``), metrics.json."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if status is not None:
        (path / "status.json").write_text(json.dumps({
            "status": status, "reason": reason, "overrides": overrides, "started_at": "2026-11-23T10:00:00",
            "finished_at": None if status == "running" else "2026-11-23T10:01:00",
            "wall_time_s": None if status == "running" else 60.0, "epochs_trained": None if status == "running" else 5}))
    if miou is not None and write_metrics:
        metrics = {"val/miou": miou, "val/iou/background": 0.9, "val/iou/cell": 2 * miou - 0.9, "val/mdice": miou + 0.05,
                   "val/pixel_acc": 0.95, "val/loss": 1 - miou}
        if test_miou is not None:
            metrics["test/miou"] = test_miou
        (path / "metrics.json").write_text(json.dumps({
            "metrics": metrics, "checkpoint": str(path / "checkpoints" / "best.ckpt"), "best_epoch": 4, "epochs_trained": 5,
            "wall_time_s": 61.5}))
    return path


@pytest.fixture
def sweep(tmp_path):
    """An lr sweep with seed=1, two more seeds at lr=0.001, a failed run, a killed run; plus an older runs dir."""
    root = tmp_path / "multiruns" / "2026-11-23_10-00-00.000000"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    mious = {"0.0001": 0.60, "0.001": 0.70, "0.01": 0.80, "0.1": 0.65}
    for i, (lr, m) in enumerate(mious.items()):
        make_run(root / str(i), [f"lr={lr}", "seed=1"], m, test_miou=m - 0.01)
    make_run(root / "4", ["lr=0.001", "seed=2"], 0.74, test_miou=0.72)
    make_run(root / "5", ["lr=0.001", "seed=3"], 0.75, test_miou=0.73)
    make_run(root / "6", ["lr=1.0", "seed=1"], None, status="failed", reason="NaN loss at epoch 3 step 12")
    make_run(root / "7", ["lr=0.003", "seed=1"], None, status="running")
    runs = tmp_path / "runs"
    make_run(runs / "old_completed", ["lr=0.03"], 0.50, status=None)  # older run: metrics.json, no status.json
    make_run(runs / "crashed_early", ["lr=0.3"], None, status=None)  # neither: unknown
    other = runs / "a_predict_job"  # segkit.predict's output dir: not a training run
    (other / ".hydra").mkdir(parents=True)
    (other / ".hydra" / "overrides.yaml").write_text("- input=x\n")
    (other / ".hydra" / "hydra.yaml").write_text("hydra:\n  job:\n    name: predict\n")
    return root, runs


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_leaderboard_orders_runs_and_reports_status_overrides_and_metrics(sweep, tmp_path, capsys):
    root, runs = sweep
    out = tmp_path / "report"
    assert main([str(root), str(runs), "--out", str(out)]) == 0
    rows = read_csv(out / "leaderboard.csv")
    names = [r["run"] for r in rows]
    # completed by val/miou (best first), then runs without the metric, failed last
    assert names[:7] == ["multiruns/2026-11-23_10-00-00.000000/2", "multiruns/2026-11-23_10-00-00.000000/5",
                         "multiruns/2026-11-23_10-00-00.000000/4", "multiruns/2026-11-23_10-00-00.000000/1",
                         "multiruns/2026-11-23_10-00-00.000000/3", "multiruns/2026-11-23_10-00-00.000000/0", "runs/old_completed"]
    assert set(names[7:9]) == {"multiruns/2026-11-23_10-00-00.000000/7", "runs/crashed_early"}
    assert names[9] == "multiruns/2026-11-23_10-00-00.000000/6" and len(rows) == 10  # the predict dir is not a run
    by = {r["run"].rsplit("/", 1)[-1]: r for r in rows}
    assert by["6"]["status"] == "failed" and by["6"]["reason"] == "NaN loss at epoch 3 step 12"
    assert by["7"]["status"] == "running/killed" and by["crashed_early"]["status"] == "unknown"
    assert by["old_completed"]["status"] == "completed" and by["old_completed"]["seed"] == ""
    assert by["2"]["lr"] == "0.01" and by["2"]["seed"] == "1" and by["2"]["overrides"] == "lr=0.01 seed=1"
    assert float(by["2"]["val/miou"]) == pytest.approx(0.80) and float(by["2"]["val/iou/cell"]) == pytest.approx(0.70)
    assert float(by["2"]["test/miou"]) == pytest.approx(0.79) and by["2"]["best epoch"] == "4" and by["2"]["epochs"] == "5"
    assert by["2"]["wall time (s)"] == "60.0"  # status.json's wall time wins over metrics.json's
    header = list(rows[0])
    assert header[:5] == ["run", "status", "reason", "lr", "seed"] and header[5] == "val/miou"
    assert {"val/iou/background", "val/iou/cell", "val/mdice", "val/pixel_acc", "test/miou"} <= set(header)
    md = (out / "leaderboard.md").read_text()
    assert md == capsys.readouterr().out.split("\nLeaderboard: ")[0]  # printed to stdout too
    table = [ln for ln in md.splitlines() if ln.startswith("| multiruns") or ln.startswith("| runs")]
    assert len(table) == 10 and "| failed | NaN loss at epoch 3 step 12 |" in table[-1]
    assert "| overrides" not in md  # the Markdown shows the swept keys as columns, the CSV all overrides


def test_seed_summary_mean_and_sample_std(sweep, tmp_path):
    root, _ = sweep
    result = summarize([root], "val/miou", tmp_path / "o")
    values = [0.70, 0.74, 0.75]  # lr=0.001, seeds 1, 2, 3
    mean = sum(values) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (3 - 1))
    assert (mean, std) == pytest.approx((0.73, 0.026457513), abs=1e-8)
    rows = {(r["group"], r["metric"]): r for r in read_csv(tmp_path / "o" / "seed_summary.csv")}
    assert {g for g, _ in rows} == {"lr=0.001"}  # groups of one run are left out
    r = rows[("lr=0.001", "val/miou")]
    assert r["n"] == "3" and r["seeds"] == "1,2,3" and float(r["mean"]) == pytest.approx(mean) and float(r["std"]) == pytest.approx(std)
    test_vals = [0.69, 0.72, 0.73]
    assert float(rows[("lr=0.001", "test/miou")]["mean"]) == pytest.approx(sum(test_vals) / 3)
    assert ("lr=0.001", "val/iou/cell") in rows and ("lr=0.001", "val/loss") in rows
    md = (tmp_path / "o" / "leaderboard.md").read_text()
    assert "## Seed summary" in md and "ddof=1" in md
    assert f"| val/miou | {mean:.4f} ± {std:.4f} |" in md
    assert [s for s in result["seed_summary"] if s["metric"] == "val/miou"][0]["n"] == 3


def test_no_seed_summary_without_repeated_configurations(tmp_path):
    for i, lr in enumerate(["0.1", "0.01"]):
        make_run(tmp_path / "s" / str(i), [f"lr={lr}", "seed=1"], 0.5 + i / 10)
    result = summarize([tmp_path / "s"])
    assert result["seed_summary"] == [] and "Seed summary" not in result["markdown"]
    assert not (tmp_path / "s" / "seed_summary.csv").exists() and (tmp_path / "s" / "leaderboard.md").is_file()


def test_metric_vs_parameter_plots_are_valid_images_linked_from_the_report(sweep, tmp_path):
    root, _ = sweep
    result = summarize([root], "val/miou", tmp_path / "o")
    assert result["swept"] == ["lr", "seed"]
    md = result["markdown"]
    for name in ("metric_vs_lr.png", "metric_vs_seed.png"):
        png = tmp_path / "o" / name
        assert png.stat().st_size > 5000 and f"]({name})" in md
        with Image.open(png) as im:
            im.verify()
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size[0] > 300


def test_categorical_parameter_and_a_single_run_dir(tmp_path):
    for i, (model, m) in enumerate([("unet", 0.7), ("segnet", 0.6), ("unet", 0.72)]):
        make_run(tmp_path / "runs" / f"r{i}", [f"model={model}", f"seed={i}"], m)
    result = summarize([tmp_path / "runs"], "miou")  # 'miou' is read as val/miou
    assert result["metric"] == "val/miou" and (tmp_path / "runs" / "metric_vs_model.png").stat().st_size > 5000
    single = summarize([tmp_path / "runs" / "r1"], "val/loss", tmp_path / "one")
    assert [r.name for r in single["runs"]] == ["r1"] and single["swept"] == []


def test_loss_metrics_rank_lowest_first(sweep, tmp_path):
    root, _ = sweep
    rows = read_csv(summarize([root], "val/loss", tmp_path / "o")["out"] / "leaderboard.csv")
    assert rows[0]["run"] == "2" and float(rows[0]["val/loss"]) == pytest.approx(0.2)


def test_errors_are_one_sentence_with_exit_code_2(tmp_path, sweep, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as exc:
        main([str(empty)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("segkit: error: no run directory") and str(empty) in err and err.count("\n") == 1
    root, _ = sweep
    with pytest.raises(SystemExit) as exc:
        main([str(root), "--metric", "val/nope"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "'val/nope' is in no run" in err and "val/miou" in err and "val/iou/cell" in err
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "missing")])
    assert exc.value.code == 2 and "is not a directory" in capsys.readouterr().err


def test_single_runs_that_failed_before_training_are_not_ranked_but_sweep_trials_are(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs / "a", ["lr=1e-3"], 0.7)
    setup = make_run(runs / "b", ["data.root=/nowhere"], None, status="failed", reason="data.root '/nowhere' does not exist")
    status = json.loads((setup / "status.json").read_text())
    (setup / "status.json").write_text(json.dumps({**status, "stage": "setup"}))
    trained = make_run(runs / "c", ["lr=10"], None, status="failed", reason="the training loss became nan")
    (trained / "status.json").write_text(json.dumps({**json.loads((trained / "status.json").read_text()), "stage": "training"}))
    result = summarize([runs])
    assert [r.name for r in result["runs"]] == ["a", "c"]
    assert [r.name for r in result["never_trained"]] == ["b"]
    assert "Not ranked: 1 run(s) that failed before training started: `b` (data.root '/nowhere' does not exist)." in result["markdown"]
    # inside a sweep (Hydra's multirun.yaml beside the trials) the same failure is a trial of the sweep: ranked, last
    sweep = tmp_path / "sweep"
    make_run(sweep / "0", ["lr=1e-3"], 0.7)
    failed = make_run(sweep / "1", ["lr=abc"], None, status="failed", reason="lr is 'abc'; expected a positive number")
    (failed / "status.json").write_text(json.dumps({**json.loads((failed / "status.json").read_text()), "stage": "setup"}))
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    assert [(r.name, r.status) for r in summarize([sweep])["runs"]] == [("0", "completed"), ("1", "failed")]
