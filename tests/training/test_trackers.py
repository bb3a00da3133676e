"""``logger=wandb`` and ``logger=mlflow``: the configs compose (alone and next to TensorBoard), and
``segkit.training.tracking`` puts images, figures, text, hyper-parameters, final metrics and the best
checkpoint into a real MLflow file store and a real offline W&B run, read back from the stores. Nothing leaves
the machine: W&B is offline, MLflow a file store, and every tracker folder (and HOME) is under tmp_path."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
from hydra.utils import instantiate
from PIL import Image

from segkit.training import tracking
from tests.conftest import TINY_DATA, TINY_MODELS, compose_cfg, to_plain

wandb = pytest.importorskip("wandb")
# mlflow is imported by the fixture, after telemetry is switched off: `import mlflow` starts its usage reporter
pytestmark = pytest.mark.skipif(find_spec("mlflow") is None, reason="mlflow is not installed (pip install -e '.[trackers]')")

_TRACKER_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID",
                "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_ID", "WANDB_NAME")


@pytest.fixture
def local_trackers(tmp_path, monkeypatch):
    """W&B offline and silent, every W&B / MLflow folder and HOME under tmp_path, no tracking server; the
    working directory is tmp_path (no git repository for the trackers to describe, nothing relative lands
    in the checkout). The W&B run and service are torn down afterwards."""
    for name in _TRACKER_ENV:  # set, then delete: monkeypatch restores the original state afterwards
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # MLflow 3 reports usage unless told not to
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("WANDB_DISABLE_CODE", "true")
    for name, sub in (("WANDB_DIR", "wandb_dir"), ("WANDB_CACHE_DIR", "wandb_cache"), ("WANDB_CONFIG_DIR", "wandb_config"),
                      ("WANDB_DATA_DIR", "wandb_data"), ("WANDB_ARTIFACT_DIR", "wandb_artifacts")):
        monkeypatch.setenv(name, str(tmp_path / sub))
    monkeypatch.chdir(tmp_path)
    import mlflow.telemetry

    mlflow.telemetry.set_telemetry_client()  # re-reads the switch (no client) should mlflow be imported already
    assert mlflow.telemetry.get_telemetry_client() is None
    yield tmp_path
    wandb.finish()
    wandb.teardown()


# --- reading back ------------------------------------------------------------------------------------------

def wandb_records(run_dir: Path) -> list:
    """The records of an offline W&B run (``run-<id>.wandb``: a LevelDB-style log of ``Record`` protobufs,
    the file ``wandb sync`` uploads). Offline, W&B writes config, summary, history and artifacts only there."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("run-*.wandb")
    data, block = path.read_bytes(), 32768
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0)
    out, pos, chunk = [], 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += left
            continue
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(chunk)
            out.append(record)
            chunk = b""
    return out


def _items(updates) -> dict[str, object]:
    return {"/".join(u.nested_key) if u.nested_key else u.key: json.loads(u.value_json) for u in updates}


def wandb_view(run_dir: Path) -> dict:
    """config, summary (last values), history rows and artifacts of an offline W&B run."""
    view: dict = {"config": {}, "summary": {}, "history": [], "artifacts": []}
    for r in wandb_records(run_dir):
        kind = r.WhichOneof("record_type")
        if kind == "config":
            view["config"].update(_items(r.config.update))
        elif kind == "summary":
            view["summary"].update(_items(r.summary.update))
        elif kind == "history":
            view["history"].append(_items(r.history.item))
        elif kind == "artifact":
            view["artifacts"].append(r.artifact)
    return view


def offline_run(root: Path) -> Path:
    (run_dir,) = (root / "wandb").glob("offline-run-*")
    return run_dir


def mlflow_file(client, run_id: str, artifact: str, into: Path) -> Path:
    return Path(client.download_artifacts(run_id, artifact, str(into)))


def _pattern() -> np.ndarray:
    image = np.zeros((12, 20, 3), np.uint8)
    image[..., 0] = np.arange(20, dtype=np.uint8)[None] * 10
    image[..., 1] = np.arange(12, dtype=np.uint8)[:, None] * 20
    image[3:5, 7:9] = (255, 0, 255)
    return image


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2), dpi=50)
    ax.imshow(np.eye(3))
    return fig


def _trainer(logger) -> pl.Trainer:
    return pl.Trainer(logger=[logger], enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      accelerator="cpu", devices=1)


def _checkpoint(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(range(256)) * 40)
    return path


MARKDOWN = "| class | IoU |\n|---|---|\n| rbc <b> | 0.5 |\n"
PARAMS = {"lr": 0.002, "model": "unet", "long": "x" * 7000, "flag": True, "max_epochs": 3, "optimizer": "AdamW"}
FINAL = {"val/miou": 0.625, "val/iou/rbc": 0.5, "val/iou/spiro (c)": 0.25, "val/pixel_acc": None}


# --- configs ------------------------------------------------------------------------------------------------

def test_tensorboard_and_mlflow_compose_into_two_loggers(local_trackers, monkeypatch):
    tmp = local_trackers
    cfg = compose_cfg(tmp, ["logger=[tensorboard,mlflow]"])
    plain = to_plain(cfg)["logger"]
    assert sorted(plain) == ["mlflow", "tensorboard"]
    assert plain["mlflow"]["tracking_uri"] == f"file:{tmp / 'outputs'}/mlruns"  # shared by every run of log_dir
    assert (plain["mlflow"]["experiment_name"], plain["mlflow"]["log_model"]) == ("segkit", False)
    assert to_plain(compose_cfg(tmp, ["logger=mlflow", "logger.mlflow.tracking_uri=http://127.0.0.1:9"])
                    )["logger"]["mlflow"]["tracking_uri"] == "http://127.0.0.1:9"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert to_plain(compose_cfg(tmp, ["logger=mlflow"]))["logger"]["mlflow"]["tracking_uri"] == "sqlite:///elsewhere.db"


def test_wandb_composes_offline_unless_the_environment_says_online(local_trackers, monkeypatch):
    tmp = local_trackers
    monkeypatch.delenv("WANDB_MODE")
    cfg = compose_cfg(tmp, ["logger=wandb"])
    plain = to_plain(cfg)["logger"]
    assert list(plain) == ["wandb"]
    w = plain["wandb"]
    assert (w["mode"], w["offline"], w["project"], w["name"], w["log_model"]) == ("offline", False, "segkit", None, False)
    assert w["save_dir"] == str(tmp / "run")
    logger = instantiate(cfg.logger.wandb)  # the W&B run itself starts on first use
    assert isinstance(logger, pl.loggers.WandbLogger)
    assert (logger.save_dir, logger._wandb_init["mode"], logger._wandb_init["project"]) == (str(tmp / "run"), "offline", "segkit")
    monkeypatch.setenv("WANDB_MODE", "online")
    assert to_plain(compose_cfg(tmp, ["logger=wandb"]))["logger"]["wandb"]["mode"] == "online"
    assert to_plain(compose_cfg(tmp, ["logger=wandb", "logger.wandb.mode=disabled"]))["logger"]["wandb"]["mode"] == "disabled"


def test_mlflow_logger_opens_a_file_store_without_mlflows_opt_in(local_trackers):
    """MLflow 3 refuses ``file:`` stores unless MLFLOW_ALLOW_FILE_STORE is set; segkit's logger sets it for a
    file store only."""
    import os

    remote = tracking.SegkitMLFlowLogger(experiment_name="segkit", tracking_uri="http://127.0.0.1:9")  # not contacted
    assert remote._tracking_uri == "http://127.0.0.1:9" and "MLFLOW_ALLOW_FILE_STORE" not in os.environ
    cfg = compose_cfg(local_trackers, ["logger=[tensorboard,mlflow]"])
    loggers = [instantiate(lg) for lg in cfg.logger.values()]
    logger = loggers[1]
    assert isinstance(logger, pl.loggers.MLFlowLogger)
    assert logger.run_id and os.environ["MLFLOW_ALLOW_FILE_STORE"] == "true"
    assert (local_trackers / "outputs" / "mlruns" / logger.experiment_id / logger.run_id).is_dir()


# --- MLflow -------------------------------------------------------------------------------------------------

def test_tracking_functions_fill_an_mlflow_file_store(local_trackers):
    from mlflow.tracking import MlflowClient

    uri = f"file:{local_trackers / 'mlruns'}"
    logger = tracking.SegkitMLFlowLogger(experiment_name="segkit", tracking_uri=uri)
    trainer = _trainer(logger)
    logger.log_hyperparams({"max_epochs": 5, "optimizer": {"lr": 0.002}})  # as Lightning does at the start of fit

    image = _pattern()
    tracking.image_to_loggers(trainer, "val/panel", image, step=3)
    tracking.figure_to_loggers(trainer, "val/confusion_matrix", _figure(), step=3)
    tracking.text_to_loggers(trainer, "warnings", MARKDOWN, step=2)
    tracking.hparams_to_trackers(trainer, PARAMS, FINAL)
    tracking.hparams_to_trackers(trainer, PARAMS, FINAL)  # again: MLflow params are immutable, must not raise
    ckpt = _checkpoint(local_trackers / "run" / "checkpoints" / "best.ckpt")
    tracking.artifact_to_trackers(trainer, ckpt)
    logger.finalize("success")

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("segkit").experiment_id])
    rid, got = run.info.run_id, local_trackers / "got"
    params, metrics = run.data.params, run.data.metrics
    assert params["lr"] == "0.002" and params["model"] == "unet" and params["flag"] == "True"
    assert len(params["long"]) == 6000  # MLflow's limit
    assert params["max_epochs"] == "5" and params["hparams/max_epochs"] == "3"  # a held key is not overwritten
    assert params["optimizer/lr"] == "0.002" and params["hparams/optimizer"] == "AdamW"  # the file store's folder
    assert metrics == {"hparams/val/miou": 0.625, "hparams/val/iou/rbc": 0.5, "hparams/val/iou/spiro c": 0.25}

    images = [a.path for a in client.list_artifacts(rid, "images")]
    (png,) = [p for p in images if p.startswith("images/val~panel+step+3+") and p.endswith(".png")]
    assert np.array_equal(np.asarray(Image.open(mlflow_file(client, rid, png, got))), image)
    fig_png = mlflow_file(client, rid, "figures/val/confusion_matrix/step_000003.png", got)
    assert Image.open(fig_png).size == (100, 100)
    assert mlflow_file(client, rid, "text/warnings/step_000002.md", got).read_text() == MARKDOWN
    assert [a.path for a in client.list_artifacts(rid, "checkpoints")] == ["checkpoints/best.ckpt"]
    assert mlflow_file(client, rid, "checkpoints/best.ckpt", got).read_bytes() == ckpt.read_bytes()


# --- W&B ----------------------------------------------------------------------------------------------------

def test_tracking_functions_fill_an_offline_wandb_run(local_trackers):
    root = local_trackers / "run"
    logger = pl.loggers.WandbLogger(save_dir=str(root), project="segkit", mode="offline")
    trainer = _trainer(logger)
    logger.log_hyperparams({"max_epochs": 5, "optimizer": {"lr": 0.002}})  # as Lightning does at the start of fit
    logger.log_metrics({"val/miou": 0.5}, step=10)
    run_id = logger.experiment.id

    image = _pattern()
    tracking.image_to_loggers(trainer, "val/panel", image, step=3)  # a smaller step than the scalar's: kept
    tracking.figure_to_loggers(trainer, "val/confusion_matrix", _figure(), step=3)
    tracking.text_to_loggers(trainer, "warnings", MARKDOWN, step=2)
    tracking.hparams_to_trackers(trainer, PARAMS, FINAL)
    ckpt = _checkpoint(local_trackers / "ckpt" / "best.ckpt")
    tracking.artifact_to_trackers(trainer, ckpt)
    wandb.finish()

    run_dir = offline_run(root)
    view = wandb_view(run_dir)
    config, summary = view["config"], view["summary"]
    assert config["lr"] == 0.002 and config["model"] == "unet" and config["flag"] is True and len(config["long"]) == 7000
    assert config["max_epochs"] == 5 and config["hparams/max_epochs"] == 3
    assert config["optimizer"] == {"lr": 0.002} and config["hparams/optimizer"] == "AdamW"
    assert summary["hparams/val/miou"] == 0.625 and summary["hparams/val/iou/spiro (c)"] == 0.25
    assert "hparams/val/pixel_acc" not in summary and summary["val/miou"] == 0.5

    rows = {k: row for row in view["history"] for k in row if k.split("/")[0] in ("val", "warnings") and "/" in k}
    panel = rows["val/panel/path"]
    assert panel["val/panel/_type"] == "image-file" and panel["trainer/global_step"] == 3
    assert rows["val/confusion_matrix/_type"]["trainer/global_step"] == 3
    assert rows["warnings/_type"]["warnings/_type"] == "html-file" and rows["warnings/_type"]["trainer/global_step"] == 2
    assert np.array_equal(np.asarray(Image.open(run_dir / "files" / panel["val/panel/path"]).convert("RGB")), image)
    (fig_png,) = (run_dir / "files" / "media" / "images" / "val").glob("confusion_matrix_*.png")
    assert Image.open(fig_png).size == (100, 100)
    (html,) = (run_dir / "files" / "media" / "html").glob("warnings_*.html")
    assert "| rbc &lt;b&gt; | 0.5 |" in html.read_text()

    (artifact,) = view["artifacts"]
    assert (artifact.name, artifact.type, artifact.run_id) == (f"best_checkpoint-{run_id}", "model", run_id)
    assert {"best", "latest"} <= set(artifact.aliases)
    (entry,) = artifact.manifest.contents
    assert entry.path == "best.ckpt" and entry.size == ckpt.stat().st_size
    assert entry.digest == base64.b64encode(hashlib.md5(ckpt.read_bytes()).digest()).decode()
    staged = Path(entry.local_path)  # offline: a copy waits in WANDB_DATA_DIR for `wandb sync`
    assert staged.is_relative_to(local_trackers) and staged.read_bytes() == ckpt.read_bytes()


def test_runs_without_wandb_or_mlflow_loggers_skip_their_branches(local_trackers):
    """The W&B and MLflow branches are skipped (and their packages not needed) without their loggers."""
    logger = pl.loggers.CSVLogger(str(local_trackers / "csv"))
    trainer = _trainer(logger)
    tracking.image_to_loggers(trainer, "val/panel", _pattern(), step=1)
    tracking.figure_to_loggers(trainer, "val/confusion_matrix", _figure(), step=1)
    tracking.text_to_loggers(trainer, "warnings", MARKDOWN)
    tracking.hparams_to_trackers(trainer, PARAMS, FINAL)
    tracking.artifact_to_trackers(trainer, _checkpoint(local_trackers / "c.ckpt"))
    assert wandb.run is None


# --- a real run ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_training_fills_tensorboard_mlflow_and_wandb(local_trackers):
    from mlflow.tracking import MlflowClient

    from segkit.training.fit import hparam_summary, train

    tmp = local_trackers
    cfg = compose_cfg(tmp, TINY_DATA + TINY_MODELS["unet"] + ["logger=[tensorboard,mlflow,wandb]", "lr=0.003"])
    metrics, objects = train(cfg)
    wandb.finish()
    best = Path(objects["summary"]["checkpoint"])
    assert best.is_file()
    classes = list(cfg.data.class_names)
    model = hparam_summary(cfg)["model"]  # UNet
    assert model and model in cfg.model._target_
    assert (Path(cfg.paths.output_dir) / "tensorboard").is_dir()

    # MLflow: the file store under paths.log_dir
    client = MlflowClient(f"file:{tmp / 'outputs'}/mlruns")
    (run,) = client.search_runs([client.get_experiment_by_name("segkit").experiment_id])
    rid = run.info.run_id
    assert run.info.status == "FINISHED"
    assert {"val/miou", f"val/iou/{classes[1]}", "train/loss"} <= set(run.data.metrics)
    # "model" is a folder of Lightning's module params (model/_target_, ...): the summary's model sits next to it
    assert run.data.params["lr"] == "0.003" and run.data.params["hparams/model"] == model
    assert run.data.params["model/_target_"] == "segkit.models.UNet"
    assert run.data.metrics["hparams/val/miou"] == pytest.approx(metrics["val/miou"])
    images = [a.path for a in client.list_artifacts(rid, "images")]
    figures = [a.path for a in client.list_artifacts(rid, "figures/val")]
    assert any(p.startswith("images/val~panel+") for p in images) or "figures/val/panel" in figures, (images, figures)
    assert "figures/val/confusion_matrix" in figures or any("confusion_matrix" in p for p in images), (images, figures)
    got = mlflow_file(client, rid, f"checkpoints/{best.name}", tmp / "got")
    assert got.read_bytes() == best.read_bytes()

    # W&B: the offline run in the run folder
    run_dir = offline_run(Path(cfg.paths.output_dir))
    view = wandb_view(run_dir)
    history_keys = {k for row in view["history"] for k in row}
    assert {"val/miou", f"val/iou/{classes[1]}", "trainer/global_step"} <= history_keys
    assert view["config"]["lr"] == 0.003 and view["config"]["hparams/model"] == model
    assert view["config"]["model"]["_target_"] == "segkit.models.UNet"  # the module's own, not overwritten
    assert view["summary"]["hparams/val/miou"] == pytest.approx(metrics["val/miou"])
    media = sorted(p.name for p in (run_dir / "files" / "media" / "images").rglob("*.png"))
    assert any(n.startswith("panel_") for n in media) and any(n.startswith("confusion_matrix_") for n in media), media
    (artifact,) = view["artifacts"]
    (entry,) = artifact.manifest.contents
    assert artifact.type == "model" and entry.path == best.name and entry.size == best.stat().st_size
    assert Path(entry.local_path).read_bytes() == best.read_bytes()
