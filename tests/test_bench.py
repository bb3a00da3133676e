"""``make bench``: the quick run completes and writes every section (no timing assertions), and the
``model.compile`` option leaves checkpoints loadable without it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segkit.training.module import SegModule

REPO = Path(__file__).resolve().parent.parent

SECTIONS = [
    "## 1. Framework overhead",
    "## 2. Hardware efficiency",
    "## 3. Input pipeline",
    "## 4. Validation and inference",
    "## 5. Scaling and memory",
    "## 6. Mixed precision",
    "## 7. Optimisations, before / after",
    "## 8. Object tables at scale",
    "## 9. Images larger than memory",
    "## 10. Training data from images larger than memory",
    "## Batched augmentation",
]


def _module(compile_net: bool) -> SegModule:
    model = {"_target_": "segkit.models.UNet", "in_channels": 3, "num_classes": 2, "depth": 2, "base_width": 4,
             "compile": compile_net}
    return SegModule(model=model, loss={"name": "ce"}, optimizer={"_target_": "torch.optim.AdamW", "lr": 1e-3},
                     class_names=["a", "b"])


def test_compile_option_keeps_state_dict_keys() -> None:
    plain, compiled = _module(False), _module(True)
    assert list(plain.state_dict()) == list(compiled.state_dict())
    assert not any("_orig_mod" in k for k in compiled.state_dict())
    plain.load_state_dict(compiled.state_dict())  # a compiled run's checkpoint loads without compile


@pytest.mark.parametrize("ignore_index", [255, 0, None])
def test_confusion_matrix_matches_reference(ignore_index: int | None) -> None:
    """The per-step confusion matrix (made faster for the training loop) counts exactly as before."""
    from segkit.evaluation.metrics import confusion_matrix

    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (2, 17, 19), generator=g)
    target[0, :3] = 255
    target[1, 0, :4] = -1
    pred = torch.randint(0, 5, (2, 17, 19), generator=g)  # 4 is out of range: clamped to the last class
    expected = torch.zeros(4, 4, dtype=torch.long)
    for t, p in zip(target.reshape(-1).tolist(), pred.reshape(-1).tolist(), strict=True):
        if 0 <= t < 4 and t != ignore_index:
            expected[t, min(p, 3)] += 1
    assert torch.equal(confusion_matrix(pred, target, 4, ignore_index), expected)


@pytest.mark.slow
def test_bench_quick_writes_every_section(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(tmp_path)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=900, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    text = (tmp_path / "BENCHMARKS.md").read_text()
    for section in SECTIONS:
        assert section in text
    assert text.count("Target") >= 7
    results = json.loads((tmp_path / "results.json").read_text())
    assert {"machine", "training", "pipeline", "inference", "augmentation"} <= set(results)
    assert results["quick"] is True
    assert torch.__version__ == results["machine"]["torch"]
    al = results["training"]["allocator"]
    assert al["default"]["step_s"] > 0 and al["tuned"]["step_s"] > 0
    assert al["speedup"] == round(al["default"]["step_s"] / al["tuned"]["step_s"], 3)
    assert "reused from the heap" in al["tuned"]["note"] or "not tuned" in al["tuned"]["note"]
    for row in results["training"]["overhead"]:
        assert len(row["round_ratios"]) == 1 and row["segkit_faults_per_step"] >= 0
    assert len(results["training"]["efficiency"]["peak_candidates_gflop_per_s"]) == 4
    plan = results["training"]["precision"]["plan"]
    assert plan["gain"] == round(plan["fp32_step_s"] / plan["bf16_step_s"], 2) or abs(plan["gain"] - plan["fp32_step_s"] / plan["bf16_step_s"]) < 0.02
    assert plan["choice"] == ("bf16-mixed" if plan["bf16_instructions"] and plan["fp32_step_s"] / plan["bf16_step_s"] >= 1.2 else "32-true")
    assert 0 <= results["training"]["efficiency"]["conv_only_ceiling"]
    assert not (tmp_path / "history.jsonl").exists()  # quick runs are not measurements: no history line
    large = results["large"]
    assert [c["size"] for c in large["cases"]] == [1024, 2048] and large["cases"][0]["labels_equal_share"] > 0.999
    pr = results["processes"]
    assert pr["identical_outputs"] is True and [r["devices"] for r in pr["rows"]] == [1, 2, 1]
    assert [r["case"] for r in pr["rows"]] == ["one_device", "devices", "all_cores"] and pr["rows"][0]["threads"] == 1
    assert pr["rounds"] == 1 and len(pr["speedup_rounds"]) == 1 and all(len(r["predict_s_rounds"]) == 1 for r in pr["rows"])
    td = results["train_data"]
    assert [c["size"] for c in td["cases"]] == [1024, 2048] and td["tile"] == 256
    for c in td["cases"]:
        assert c["disk"]["mode"] == "disk" and c["memory"]["mode"] == "memory" and c["disk"]["crops"] == td["batches"] * td["batch"] == 8 * 8
        assert c["disk"]["tiles"] == (c["size"] // 256) ** 2
        # decoded: 3 channels + the mask of the large image and of the two 256 px pairs, 1 byte each
        assert c["disk"]["decoded_mb"] == round(4 * (c["size"] ** 2 + 2 * 256 * 256) / 1e6, 1)


def test_history_lines_hold_the_targets_figures(tmp_path: Path) -> None:
    from benchmarks.run import read_history, summary

    results = {"date": "2026-12-01T10:00:00", "total_s": 400.0, "machine": {"load_average_1_5_15_min": [0.1, 0.2, 0.3], "cpu": "x"},
               "training": {"overhead": [{"model": "unet", "ratio": 0.98}, {"model": "segnet", "ratio": 0.96}],
                            "efficiency": {"peak_gflop_per_s": 150.0, "rows": {"channels_last, batch 8": {"efficiency": 0.8}}},
                            "allocator": {"speedup": 1.1}}}
    line = summary(results)
    assert (line["overhead_unet"], line["overhead_segnet"], line["allocator_speedup"]) == (0.98, 0.96, 1.1)
    assert line["segkit_efficiency"] == round(0.8 * 0.98, 3)
    path = tmp_path / "history.jsonl"
    path.write_text(json.dumps(line) + "\n" + json.dumps({**line, "overhead_unet": 0.5}) + "\n")
    assert [h["overhead_unet"] for h in read_history(path)] == [0.98, 0.5]
    assert read_history(tmp_path / "missing.jsonl") == []


def test_the_processes_table_shows_every_round_and_the_median() -> None:
    from benchmarks.report import large_section

    rows = [{"case": c, "devices": d, "threads": 1, "start_method": m, "predict_s": med, "predict_s_rounds": rs, "images_per_s": 1.0,
             "command_s": 9.0} for c, d, m, med, rs in [("one_device", 1, "-", 8.0, [8.2, 8.0, 7.9]),
                                                         ("devices", 2, "fork", 4.3, [4.3, 4.6, 4.2]),
                                                         ("all_cores", 1, "-", 6.0, [6.0, 6.1, 5.9])]]
    pr = {"images": 64, "size": 512, "devices": 2, "rounds": 3, "rows": rows, "speedup": 1.86, "speedup_rounds": [1.907, 1.739, 1.881],
          "speedup_vs_all_cores": 1.395, "identical_outputs": True, "target_speedup": 1.8, "model": "m"}
    lg = {"targets": {"rss_ratio_max": 1.5, "speed_ratio_min": 0.9}, "rss_flat": True, "speed_flat": True,
          "cases": [{"size": 4096, "file_mb": 1, "rss_ratio": 1.0, "speed_ratio": 1.0,
                     "regions": {"seconds": 1, "mpx_per_s": 1, "rss_after_setup_mb": 1, "peak_rss_mb": 1}}]}
    text = "\n".join(large_section(lg, pr))
    assert "Result: x1.86: **met**" in text and "x1.907, x1.739, x1.881" in text
    assert "| devices | 2 | 1 | fork | 4.3 (4.3, 4.6, 4.2) |" in text


def test_a_case_process_reports_its_own_peak_memory_not_its_parents() -> None:
    """The cases of sections 9 and 10 run in fresh processes started from the bench process. Linux carries the
    parent's peak RSS (ru_maxrss) into such a child through fork and exec, so the 2026-12-07 full run reported
    4,775 MB for every case; each case's peak must be its own."""
    ballast = bytearray(600 * 2**20)
    ballast[::4096] = b"\x01" * len(range(0, len(ballast), 4096))  # touch every page: the parent's peak >= 600 MB
    code = ("import json, resource; from benchmarks.rss import peak_rss_mb, rss_mb; "
            "print(json.dumps([peak_rss_mb(), rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    peak, now, inherited = json.loads(out.stdout)
    del ballast
    assert inherited > 600  # what ru_maxrss says in the child: the parent's figure
    assert peak < 100 and now < 100  # a bare interpreter that imported only benchmarks.rss
