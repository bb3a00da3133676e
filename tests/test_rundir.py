"""``segkit.rundir``: the run folder's file names, a run found from its checkpoint, metrics.json's kind."""

from __future__ import annotations

import json

import pytest

from segkit import rundir
from segkit.errors import SegkitError


def test_a_run_is_found_from_its_checkpoint_and_only_there(tmp_path):
    run = rundir.run_of_checkpoint(tmp_path / "r" / "checkpoints" / "best.ckpt")
    assert run is not None and run.path == (tmp_path / "r").resolve()
    assert run.best_ckpt == run.path / "checkpoints" / "best.ckpt" and run.splits == run.path / "splits.json"
    assert rundir.run_of_checkpoint(tmp_path / "elsewhere" / "model.ckpt") is None
    assert rundir.postprocess_file(tmp_path / "r" / "checkpoints" / "best.ckpt") == tmp_path / "r" / "checkpoints" / "postprocess.json"


def test_metrics_json_has_a_kind_and_a_version_and_old_files_get_one(tmp_path):
    path = rundir.write_metrics(tmp_path / "metrics.json", "train", {"metrics": {"val/miou": 0.5}})
    assert json.loads(path.read_text()) == {"schema_version": rundir.METRICS_SCHEMA_VERSION, "kind": "train", "metrics": {"val/miou": 0.5}}
    with pytest.raises(ValueError, match="metrics kind 'predict'"):
        rundir.write_metrics(tmp_path / "m.json", "predict", {})
    # segkit 0.1 wrote no kind: eval's metrics are nested per aggregation, train's are flat
    (tmp_path / "old_eval.json").write_text(json.dumps({"metrics": {"pooled": {"miou": 0.4}, "mean_over_images": {"miou": 0.3}}}))
    (tmp_path / "old_train.json").write_text(json.dumps({"metrics": {"val/miou": 0.4}}))
    assert rundir.read_metrics(tmp_path / "old_eval.json")["kind"] == "eval"
    assert rundir.read_metrics(tmp_path / "old_train.json")["kind"] == "train"
    assert rundir.read_metrics(tmp_path / "old_train.json")["schema_version"] == 0


def test_the_kind_of_a_folder(tmp_path):
    train, ev, pred, bare = (rundir.RunDir(tmp_path / n) for n in ("t", "e", "p", "b"))
    for r in (train, ev, pred, bare):
        (r.path / ".hydra").mkdir(parents=True)
        (r.path / ".hydra" / "overrides.yaml").write_text("[]\n")
    train.status.write_text(json.dumps({"status": "completed"}))
    rundir.write_metrics(ev.metrics, "eval", {"metrics": {}})
    pred.hydra_job.write_text("hydra:\n  job:\n    name: predict\n")
    assert [r.kind() for r in (train, ev, pred, bare)] == ["train", "eval", "predict", None]
    assert all(r.is_run() for r in (train, ev, pred, bare)) and not rundir.RunDir(tmp_path).is_run()


def test_best_checkpoint_is_the_one_metrics_json_names_else_best_ckpt(tmp_path):
    run = rundir.RunDir(tmp_path)
    with pytest.raises(SegkitError, match=r"run '.*' has no checkpoint \(.*best\.ckpt does not exist"):
        run.best_checkpoint()
    run.checkpoints.mkdir()
    run.best_ckpt.write_bytes(b"x")
    assert run.best_checkpoint() == run.best_ckpt
    other = run.checkpoints / "epoch=3.ckpt"
    other.write_bytes(b"x")
    rundir.write_metrics(run.metrics, "train", {"checkpoint": str(other)})
    assert run.best_checkpoint() == other


def test_unreadable_json_is_one_sentence(tmp_path):
    (tmp_path / "status.json").write_text("{not json")
    with pytest.raises(SegkitError, match=r"cannot read '.*status\.json': .*; expected a JSON file written by segkit"):
        rundir.RunDir(tmp_path).read_status()
