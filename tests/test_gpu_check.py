"""``make gpu-check`` (benchmarks/gpu_check.py): its pure helpers on fixed inputs, and (slow) the whole check as a
CPU dry run (``--cpu --quick``) in a subprocess, every section with numbers."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys

import pytest
import torch

from benchmarks import gpu_check as gc
from tests.conftest import REPO

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="2" tests="5" time="3.2">
<testcase classname="tests.gpu.test_gpu" name="test_a" time="0.1"/>
<testcase classname="tests.gpu.test_gpu" name="test_b" time="0.1"><failure message="AssertionError: 0.5 &gt; 0.1&#10;second line">trace</failure></testcase>
<testcase classname="tests.gpu.test_gpu" name="test_c" time="0.0"><skipped type="pytest.skip" message="needs CUDA">skip</skipped></testcase>
<testcase classname="tests.gpu.test_gpu" name="test_d" time="0.0"><skipped type="pytest.skip" message="needs CUDA">skip</skipped></testcase>
<testcase classname="tests.gpu.test_gpu" name="test_e" time="0.0"><error message="fixture broke">trace</error></testcase>
</testsuite></testsuites>
"""


def _stamp(t: float) -> str:
    return dt.datetime.fromtimestamp(t).strftime("%Y/%m/%d %H:%M:%S.%f")[:-3]


def test_parse_smi_samples_reads_timestamps_and_skips_junk():
    t0 = 1_800_000_000.0
    text = "\n".join([f"{_stamp(t0)}, 87", f"{_stamp(t0 + 0.1)}, 91", "timestamp, utilization.gpu [%]",
                      f"{_stamp(t0 + 0.2)}, [N/A]", "", f"{_stamp(t0 + 0.3)}, 0"])
    samples = gc.parse_smi_samples(text)
    assert [u for _, u in samples] == [87.0, 91.0, 0.0]
    assert [round(t - t0, 3) for t, _ in samples] == [0.0, 0.1, 0.3]


def test_parse_smi_query():
    rows = gc.parse_smi_query("NVIDIA H200, 570.124.06, 143771 MiB\n\n")
    assert rows == [{"name": "NVIDIA H200", "driver": "570.124.06", "memory": "143771 MiB"}]


def test_util_summary_keeps_samples_inside_the_windows_after_settling():
    samples = [(10.0, 0.0), (10.2, 5.0), (10.5, 80.0), (11.0, 90.0), (11.5, 100.0), (12.5, 3.0)]
    s = gc.util_summary(samples, [(10.0, 11.5)], settle_s=0.3)  # 10.5, 11.0, 11.5 are in; 10.2 settles; 12.5 is after
    assert s == {"mean": 90.0, "median": 90.0, "samples": 3}
    none = gc.util_summary(samples, [(20.0, 21.0)])
    assert none["mean"] is None and none["samples"] == 0 and none["reason"]


def test_parse_junit_counts_and_names_failures(tmp_path):
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT)
    r = gc.parse_junit(path)
    assert (r["tests"], r["passed"], r["failed"], r["errors"], r["skipped"]) == (5, 1, 1, 1, 2)
    assert [f["test"] for f in r["failures"]] == ["tests.gpu.test_gpu::test_b", "tests.gpu.test_gpu::test_e"]
    assert r["failures"][0]["message"] == "AssertionError: 0.5 > 0.1"
    assert r["skip_reasons"] == ["needs CUDA"]


def test_max_time_format():
    assert gc.max_time(59) == "00:00:00:59"
    assert gc.max_time(3 * 3600 + 2 * 60 + 5) == "00:03:02:05"
    assert gc.max_time(86400 + 61) == "01:00:01:01"


def _report() -> dict:
    return {
        "started_at": "2026-12-01T10:00:00", "total_s": 401.25, "budget_s": 480.0, "within_budget": True,
        "mode": {"device": "cuda", "quick": False},
        "machine": {"gpu": {"name": "NVIDIA H200", "memory_gib": 139.8, "capability": "9.0", "cudnn_benchmark": False,
                            "tf32_convolutions": True, "tf32_matmul": False},
                    "driver": {"driver": "570.1", "source": "nvml"}, "cuda": "12.8", "cudnn": 91000, "torch": "2.11.0",
                    "versions": {"pytorch-lightning": "2.6.1", "hydra-core": "1.3.8", "omegaconf": "2.3.1",
                                 "segmentation-models-pytorch": "0.6.0"}, "python": "3.12.3", "cpu_cores": 16},
        "steps": {"pytest": {"status": "ok", "seconds": 41.0}, "overhead": {"status": "ok", "seconds": 90.0},
                  "utilization": {"status": "ok", "seconds": 20.0},
                  "pipeline": {"status": "failed", "seconds": 1.0, "error": "RuntimeError: boom"},
                  "training": {"status": "ok", "seconds": 60.0}},
        "pytest": {"tests": 8, "passed": 7, "failed": 1, "errors": 0, "skipped": 0, "seconds": 41.0, "junit": "gpu_pytest.xml",
                   "log": "gpu_pytest.log", "failures": [{"test": "tests.gpu.test_gpu::test_x", "message": "AssertionError"}]},
        "overhead": {"rows": [{"model": "unet", "precision": "16-mixed", "precision_used": "16-mixed", "size": 512, "batch": 8,
                               "segkit_step_ms": 20.0, "plain_step_ms": 17.0, "segkit_images_per_s": 400.0,
                               "plain_images_per_s": 470.59, "ratio": 0.85, "steps_timed": 84}],
                     "rounds": 3, "steps_per_round": 30, "skipped_steps_per_round": 2},
        "utilization": {"source": "nvml", "reason": None, "precision": "bf16-mixed", "batch": 8, "size": 512, "steps": 400,
                        "segkit": {"mean": 71.5, "median": 74.0, "samples": 60}, "plain": {"mean": 88.0, "median": 90.0, "samples": 55},
                        "segkit_seconds": 7.9, "plain_seconds": 6.8},
        "training": {"data": "embedded", "epochs": 20, "seed": 42, "tolerance": 0.02, "miou_diff": 0.031, "agree": False,
                     "same_steps": True, "runs": [
                         {"requested": "16-mixed", "used": "16-mixed", "epochs_trained": 20, "global_step": 380, "val_miou": 0.921, "wall_s": 30.0},
                         {"requested": "32-true", "used": "32-true", "epochs_trained": 20, "global_step": 380, "val_miou": 0.952, "wall_s": 33.0}]},
    }


def test_render_markdown_from_a_fixed_report():
    md = gc.render_markdown(_report())
    assert md.startswith("# segkit GPU check\n")
    assert "NVIDIA H200 (139.8 GiB, compute capability 9.0); driver 570.1 (nvml)" in md
    for heading in ("## 1. GPU tests", "## 2. Framework overhead", "## 3. GPU utilisation", "## 4. Input pipeline", "## 5. Short training"):
        assert heading in md
    # tests: a failure makes the target unmet and is named
    assert "Result: **NOT met**." in md and "- FAILED `tests.gpu.test_gpu::test_x`: AssertionError" in md
    assert "| 8 | 7 | 1 | 0 | 0 | 41.00 |" in md
    # overhead row with units and the ratio in bold
    assert "| unet | 16-mixed (16-mixed) | 8 x 512x512 | 20.00 | 17.00 | 400.00 | 470.59 | **0.850** | 84 |" in md
    assert "| segkit | 60 | 71.50 | 74.00 | 7.90 |" in md and "| plain PyTorch | 55 | 88.00 | 90.00 | 6.80 |" in md
    # the failed step is reported in its section instead of a table
    assert "**This step failed**: `RuntimeError: boom`." in md and "| pipeline | failed | 1.0 | RuntimeError: boom |" in md
    # training: 0.031 apart is outside 0.02
    assert "Result: **NOT met** (|difference| 0.0310)." in md
    assert "| 16-mixed | 16-mixed | 20 | 380 | 0.9210 | 30.0 |" in md


def test_render_markdown_when_every_test_skipped_and_training_agrees():
    r = _report()
    r["pytest"] |= {"passed": 0, "failed": 0, "skipped": 8, "failures": []}
    r["training"] |= {"miou_diff": 0.004, "agree": True}
    r["utilization"] = {"reason": "no GPU: utilisation is a GPU figure (CPU run)", "segkit": None, "plain": None}
    md = gc.render_markdown(r)
    assert "Result: not measured (every test skipped: no CUDA)." in md
    assert "Result: **met** (|difference| 0.0040)." in md
    assert "Not measured: no GPU: utilisation is a GPU figure (CPU run)." in md


def test_agreement_of_the_two_short_trainings():
    def run(req, used, miou, steps=380):
        return {"requested": req, "used": used, "val_miou": miou, "global_step": steps}

    within = gc.agreement([run("16-mixed", "16-mixed", 0.931), run("32-true", "32-true", 0.950)])
    assert within == {"miou_diff": 0.019, "agree": True, "same_steps": True}
    outside = gc.agreement([run("16-mixed", "16-mixed", 0.929), run("32-true", "32-true", 0.950, steps=300)])
    assert outside == {"miou_diff": 0.021, "agree": False, "same_steps": False}
    same = gc.agreement([run("bf16-mixed", "32-true", 0.5), run("32-true", "32-true", 0.5)])
    assert same["agree"] and "the same precision twice: bf16-mixed ran as 32-true" in same["note"]
    missing = gc.agreement([run("16-mixed", "16-mixed", 0.9), {"requested": "32-true", "skipped": "out of time budget"}])
    assert missing == {"miou_diff": None, "agree": None, "same_steps": None}


def test_run_step_records_a_failure_and_the_next_step_still_runs():
    report: dict = {"steps": {}}
    gc.run_step(report, "a", lambda: 1 / 0)
    gc.run_step(report, "b", lambda: {"x": 1})
    gc.run_step(report, "c", lambda: None, skip_reason="out of time budget")
    assert report["steps"]["a"]["status"] == "failed" and report["steps"]["a"]["error"].startswith("ZeroDivisionError")
    assert "ZeroDivisionError" in report["tracebacks"]["a"] and "a" not in report
    assert report["steps"]["b"]["status"] == "ok" and report["b"] == {"x": 1}
    assert report["steps"]["c"] == {"status": "skipped", "seconds": 0.0, "error": "out of time budget"}


def test_without_cuda_and_without_cpu_flag_it_writes_the_machine_and_exits_2(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gc.main([str(tmp_path)]) == 2
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert "no CUDA device visible" in report["error"] and report["machine"]["torch"] == torch.__version__
    assert report["steps"] == {} and "no CUDA device visible" in (tmp_path / "gpu_check.md").read_text()


def test_device_step_trains_on_the_cpu_like_the_plain_step():
    """The plain loop of the overhead step: a step lowers the loss on a fixed batch; bf16 autocast stays finite."""
    from segkit.models import UNet
    from segkit.training.losses import build_loss

    torch.manual_seed(0)
    image = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    mask = torch.randint(0, 3, (2, 32, 32), dtype=torch.uint8)
    for precision in ("32-true", "bf16-mixed"):
        net = UNet(in_channels=3, num_classes=3, depth=2, base_width=4)
        step = gc.DeviceStep(net, build_loss(name="ce", num_classes=3, ignore_index=255), [0.5] * 3, [0.25] * 3,
                             torch.device("cpu"), precision, lr=1e-2)
        losses = [float(step(image, mask)) for _ in range(4)]
        assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], (precision, losses)
        assert all(p.is_contiguous(memory_format=torch.channels_last) for p in step.net.parameters() if p.dim() == 4)


@pytest.mark.slow  # about a minute on 2 CPU cores
def test_cpu_quick_dry_run_writes_every_section(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", str(tmp_path), "--cpu", "--quick"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    r = json.loads((tmp_path / "gpu_check.json").read_text())
    assert r["kind"] == "gpu_check" and r["mode"] == {"device": "cpu", "cpu_flag": True, "quick": True, "data_root": None}
    assert {k: v["status"] for k, v in r["steps"].items()} == dict.fromkeys(gc.STEP_SHARES, "ok")
    assert r["within_budget"] and 0 < r["total_s"] <= r["budget_s"] and r["exit_status"] == 0
    m = r["machine"]
    assert m["torch"] == torch.__version__ and m["versions"]["hydra-core"] and m["versions"]["omegaconf"]
    assert m["versions"]["segmentation-models-pytorch"] and m["gpu"] is None
    # pytest -m gpu on a CPU: every GPU test collected and skipped, none run
    p = r["pytest"]
    assert p["tests"] >= 8 and p["skipped"] == p["tests"] and p["passed"] == p["failed"] == p["errors"] == 0
    assert (tmp_path / "gpu_pytest.xml").is_file() and "skipped" in (tmp_path / "gpu_pytest.log").read_text()
    # overhead: every model x precision, positive figures
    rows = r["overhead"]["rows"]
    assert {(x["model"], x["precision"]) for x in rows} == {(mo, pr) for mo in gc.MODELS for pr in gc.PRECISIONS}
    for x in rows:
        assert x["ratio"] > 0 and x["segkit_images_per_s"] > 0 and x["plain_images_per_s"] > 0 and x["steps_timed"] >= 2
        assert x["precision_used"] in ("32-true", "bf16-mixed")
        assert x["ratio"] == pytest.approx(x["segkit_images_per_s"] / x["plain_images_per_s"], rel=0.02)
    # utilisation: a GPU figure, null with its reason on a CPU
    u = r["utilization"]
    assert u["segkit"] is None and u["plain"] is None and "no GPU" in u["reason"] and u["steps"] >= 5
    # pipeline vs consumption
    q = r["pipeline"]
    assert q["pipeline_samples_per_s"] > 0 and q["model_samples_per_s"] > 0 and q["ratio"] > 0
    assert q["ratio"] == pytest.approx(q["pipeline_samples_per_s"] / q["model_samples_per_s"], rel=0.01)
    assert len(q["rows"]) == 4 and all(x["samples_per_s"] > 0 for x in q["rows"])
    # the two short trainings: same steps, mIoU in [0, 1], agreement stated
    t = r["training"]
    assert [x["requested"] for x in t["runs"]] == ["bf16-mixed", "32-true"]
    assert all(0.0 <= x["val_miou"] <= 1.0 and x["global_step"] > 0 for x in t["runs"])
    assert t["same_steps"] and t["miou_diff"] == pytest.approx(abs(t["runs"][0]["val_miou"] - t["runs"][1]["val_miou"]), abs=1e-4)
    assert t["agree"] == (t["miou_diff"] <= 0.02)
    if t["runs"][0]["used"] == t["runs"][1]["used"]:
        assert "the same precision twice" in t["note"]
    md = (tmp_path / "gpu_check.md").read_text()
    for heading in ("## 1. GPU tests", "## 2. Framework overhead", "## 3. GPU utilisation", "## 4. Input pipeline", "## 5. Short training"):
        assert heading in md
    assert "| model | precision (used) | input | segkit ms/step |" in md
    assert "| stage (cumulative) | samples/s | / network consumption |" in md
    assert "| precision asked | used | epochs | optimiser steps | val mIoU | wall s |" in md
    assert md.count("| unet |") == 3 and md.count("| segnet |") == 3
