"""Evaluate a checkpoint: ``python -m segkit.eval ckpt_path=<ckpt> [data=<name> data.root=<folder>] [split=...]``.

Writes into the run directory (``outputs/eval/runs/<time>/``): ``metrics.json``, ``per_image.csv``,
``confusion_matrix.csv``, ``eval_report.md`` with its PNGs (confusion matrix, per-class bars, training
curves, the worst-k images as input | truth | prediction | error overlays), when the data names
object classes, object matching and size distributions, and on ISBI 2012 membrane data the EM challenge
scores (V_rand, V_info, pixel error per slice and their mean: segkit.evaluation.em, ``em_scores`` in
conf/eval.yaml). ``evaluate(...)`` is the plain function.

Aggregations, both reported and named:
- pooled over the dataset: one confusion matrix over every pixel of every image, scores from its totals;
- mean over images: each image's scores from its own confusion matrix, then the mean over images of
  each score (an image where a class is absent from both truth and prediction does not count for it).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from segkit import CONF_DIR
from segkit.config_check import check_config
from segkit.errors import exit_on_user_error
from segkit.runtime import tune_allocator
from segkit.training.cleanup import discard_unused_run_dir


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
def main(cfg: DictConfig) -> float | None:
    with exit_on_user_error(), discard_unused_run_dir():
        check_config(cfg, "eval")
        from segkit.evaluation.evaluate import run_eval  # the heavy imports once the values are good

        tune_allocator(cfg.cpu_allocator)  # tiles' activations reused from the heap (segkit.runtime)
        result = run_eval(cfg)
    return result["pooled"]["miou"]


if __name__ == "__main__":
    main()
