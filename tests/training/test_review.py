"""What a researcher reviews: train.log, progress.png, and TensorBoard read through its HTTP data API."""

from __future__ import annotations

import json
import logging
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from segkit import rundir
from segkit.evaluation.metrics import scores
from segkit.logs import QuietFilter
from segkit.training.loggers import FINAL_RUN, custom_scalars_layout, metric_order, run_label
from segkit.training.progress import RichProgressBar, RunLog, TQDMProgressBar, class_table
from tests.conftest import REPO, TINY_DATA, TINY_MODELS, cli_env

EPOCHS = 3
CLASSES = ["background", "rbc", "spirochaete"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> Path:
    """One tiny training run through the real command (Hydra's job logging writes train.log)."""
    log_dir = tmp_path_factory.mktemp("review")
    args = [a for a in TINY_DATA if not a.startswith("trainer.max_epochs")] + TINY_MODELS["unet"]
    cmd = [sys.executable, "-m", "segkit.train", *args, f"trainer.max_epochs={EPOCHS}", "lr=0.004", f"paths.log_dir={log_dir}"]
    proc = subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = [p for p in (log_dir / "train" / "runs").iterdir() if p.is_dir()]
    (run / "console.txt").write_text(proc.stdout)
    return run


def _tables(log: str) -> dict[int, dict[str, list[float]]]:
    """epoch -> class -> [IoU, Dice, precision, recall] parsed from train.log's tables."""
    out: dict[int, dict[str, list[float]]] = {}
    for block in re.split(r"validation, epoch ", log)[1:]:
        epoch = int(block.split(",", 1)[0])
        rows = {}
        for line in block.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 7 and cells[0] in CLASSES:
                rows[cells[0]] = [float("nan") if c == "n/a" else float(c) for c in cells[1:5]]
        out[epoch] = rows
    return out


def test_train_log_has_one_line_per_epoch_and_the_tables(cli_run):
    log = rundir.RunDir(cli_run).log_file("train").read_text()
    epochs = [int(m) for m in re.findall(rf"epoch (\d+)/{EPOCHS}  train loss", log)]
    assert epochs == list(range(1, EPOCHS + 1))
    tables = _tables(log)
    assert sorted(tables) == list(range(1, EPOCHS + 1)) and all(set(t) == set(CLASSES) for t in tables.values())
    # the table of the best epoch is the best checkpoint's validation, which train re-evaluates independently
    metrics = rundir.read_metrics(rundir.RunDir(cli_run).metrics)
    best = tables[metrics["best_epoch"]]
    for c in CLASSES:
        assert best[c][0] == pytest.approx(metrics["metrics"][f"val/iou/{c}"], abs=6e-5)
        assert best[c][1] == pytest.approx(metrics["metrics"][f"val/dice/{c}"], abs=6e-5)
    assert "val: mIoU" in log and "Run directory:" in log  # the final summary is kept as text too
    assert "Tip" not in log and "litmodels" not in log and "FLOPs" not in log


def test_progress_png_is_written(cli_run):
    from PIL import Image

    png = rundir.RunDir(cli_run).progress_png
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 600 and im.size[1] > 400


def test_console_numbers_epochs_from_one(cli_run):
    console = (cli_run / "console.txt").read_text()
    assert "Epoch 0" not in console and "Tip" not in console
    assert f"epoch {EPOCHS}/{EPOCHS}" in console  # no progress bar drawing on a pipe: the lines are shown
    assert "best epoch" in console


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, data: dict | None = None):
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    with urllib.request.urlopen(req, timeout=20) as r:
        return json.loads(r.read())


def test_tensorboard_serves_what_matters_first(cli_run):
    port = _free_port()
    tb = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(cli_run), "--port", str(port),
                           "--host", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                runs = _get(f"{base}/data/runs")
                if len(runs) >= 2:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        label = run_label([a for a in TINY_DATA if not a.startswith("trainer.max_epochs")] + TINY_MODELS["unet"]
                          + [f"trainer.max_epochs={EPOCHS}", "lr=0.004", "paths.log_dir=x"])
        main = f"tensorboard/{label}"
        assert set(runs) == {main, f"{main}/{FINAL_RUN}"}, runs
        assert label.startswith("model=unet,lr=0.004")  # the run is named by its overrides, main keys first

        tags = _get(f"{base}/data/plugin/scalars/tags")[main]
        for c in CLASSES:
            assert f"val/iou/{c}" in tags and f"val/dice/{c}" in tags
        assert {"train/loss", "val/loss", "train/lr", "val/miou"} <= set(tags)
        assert "epoch" not in tags and not any(t.startswith("hparams/") for t in tags)
        points = _get(f"{base}/data/plugin/scalars/scalars?run={urllib.request.quote(main)}&tag=val/miou")
        assert [p[1] for p in points] == list(range(1, EPOCHS + 1))  # against the epoch, numbered from 1

        layout = _get(f"{base}/data/plugin/custom_scalars/layout")
        charts = {c["title"]: c["multiline"]["tag"] for c in layout["category"][0]["chart"]}
        assert charts == {k: v[1] for k, v in custom_scalars_layout(CLASSES)["segkit"].items()}
        iou = re.compile(charts["IoU per class (validation)"][0])
        assert sorted(t for t in tags if iou.match(t)) == sorted(f"val/iou/{c}" for c in CLASSES)

        images = _get(f"{base}/data/plugin/images/tags")[main]
        assert {"val/panel", "val/confusion_matrix"} <= set(images)
        text = _get(f"{base}/data/plugin/text/tags")
        assert "config/text_summary" in text[main]

        exp = _get(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
        metrics = [m["name"]["tag"] for m in exp["metricInfos"]]
        assert metrics[:5] == ["val/miou", "val/mdice", *(f"val/iou/{c}" for c in CLASSES)]
        params = [h["name"] for h in exp["hparamInfos"]]
        assert params[:4] == ["loss", "lr", "model", "seed"]  # the five TensorBoard shows by default start here
        groups = _get(f"{base}/data/plugin/hparams/session_groups", {
            "experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS"],
            "colParams": [{"metric": {"group": FINAL_RUN, "tag": "val/miou"}, "order": "ORDER_DESC"}],
            "startIndex": 0, "sliceSize": 10})
        (group,) = groups["sessionGroups"]
        final = rundir.read_metrics(rundir.RunDir(cli_run).metrics)["metrics"]
        value = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        assert value["val/miou"] == pytest.approx(final["val/miou"], abs=1e-6)
        assert group["hparams"]["lr"] == pytest.approx(0.004)
    finally:
        tb.terminate()
        tb.wait(timeout=20)


def test_class_table_matches_independent_scores():
    cm = np.array([[50, 5, 0], [10, 30, 0], [5, 0, 0]])
    table = class_table(cm, CLASSES)
    s = scores(torch.as_tensor(cm))
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ") and "IoU" not in line}
    assert f"{float(s['iou'][0]):.4f}" in rows["background"] and f"{40 / 45:.4f}" not in rows["background"]
    assert f"{30 / 45:.4f}" in rows["rbc"]  # IoU rbc = 30 / (30 + 5 + 10)
    assert "n/a" in rows["spirochaete"] and f"{5 / 100 * 100:.2f}" in rows["spirochaete"]  # never predicted; 5 % of pixels


def test_predicted_nowhere_warns_after_three_validations(caplog, capsys):
    log = RunLog(warn_after=3)

    class Trainer:
        loggers = []

    never = np.array([[50, 0], [7, 0]])
    seen = np.array([[50, 0], [2, 5]])
    for epoch, cm in enumerate([never, never, seen, never, never], start=1):
        log._check_nowhere(Trainer(), ["background", "cell"], cm, epoch)
    assert "predicted nowhere" not in capsys.readouterr().out  # the streak was broken at epoch 3
    log._check_nowhere(Trainer(), ["background", "cell"], never, 6)
    out = capsys.readouterr().out
    assert out.count("predicted nowhere") == 1 and "epochs 4-6" in out and "12.28 %" in out


def test_quiet_filter_drops_adverts_only():
    def rec(msg: str) -> logging.LogRecord:
        return logging.LogRecord("pytorch_lightning", logging.INFO, __file__, 1, msg, None, None)

    f = QuietFilter()
    assert not f.filter(rec("💡 Tip: For seamless cloud uploads and versioning, try installing [litmodels](...)"))
    assert not f.filter(rec("TPU available: False, using: 0 TPU cores"))
    assert f.filter(rec("GPU available: True (cuda), used: True"))
    assert f.filter(rec("`Trainer.fit` stopped: `max_epochs=3` reached."))


def test_progress_bars_count_epochs_from_one():
    class T:
        max_epochs = 30
        current_epoch = 0

    bar = RichProgressBar()
    bar._trainer = T()
    assert bar._get_train_description(0).strip() == "Epoch 1/30"
    assert bar._get_train_description(29).strip() == "Epoch 30/30"
    assert hasattr(TQDMProgressBar, "on_train_epoch_start")


def test_run_label_and_metric_order():
    assert run_label([]) == "defaults"
    assert run_label(["data.root=/data/darkfield/", "lr=1e-3", "model=segnet"]) == "model=segnet,lr=1e-3,data.root=darkfield"
    assert run_label(["model=segnet", "optimizer.weight_decay=0.1"], swept=["optimizer.weight_decay"]).startswith("optimizer.weight_decay=0.1,")
    assert run_label(["ckpt_path=/x/last.ckpt", "hydra.run.dir=/y"]) == "defaults"
    order = metric_order({"val/pixel_acc": 1, "val/iou/b": 1, "val/miou": 1, "test/miou": 1, "val/dice/a": 1}, "val/iou/b", ["a", "b"])
    assert order == ["val/iou/b", "val/miou", "test/miou", "val/pixel_acc", "val/dice/a"]


def test_progress_bar_null_means_no_bar(tmp_path):
    """``callbacks.progress_bar=null``: no bar at all (Lightning would add its own, counting epochs from 0 and showing
    'Epoch 213/-2' under a budget); the epoch lines go to the console instead. A bar in the config is kept."""
    from segkit.training.trainer import build_trainer
    from tests.conftest import compose_cfg

    off = build_trainer(compose_cfg(tmp_path, TINY_DATA + TINY_MODELS["unet"]))  # TINY_DATA sets callbacks.progress_bar=null
    assert off.progress_bar_callback is None
    on = build_trainer(compose_cfg(tmp_path, [o for o in TINY_DATA if "progress_bar" not in o] + TINY_MODELS["unet"]))
    assert isinstance(on.progress_bar_callback, RichProgressBar)
