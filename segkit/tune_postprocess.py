"""Choose post-processing on the VALIDATION split: ``python -m segkit.tune_postprocess ckpt_path=<ckpt>``.

A grid search, one parameter at a time (coordinate ascent, two rounds): a probability threshold per
object class, then the median-filter window, then the minimum object size, each kept only when it
raises ``metric`` (pooled over the validation images). The held-out test split is never touched. The
choice and the validation metric before/after are printed and written to ``postprocess.json`` next to
the checkpoint, which ``segkit.predict`` then uses by default.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from segkit import CONF_DIR
from segkit.config_check import check_config
from segkit.errors import exit_on_user_error
from segkit.training.cleanup import discard_unused_run_dir


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="tune_postprocess")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error(), discard_unused_run_dir():
        check_config(cfg, "tune_postprocess")
        from segkit.evaluation.postprocess_search import (
            run_tune,  # the heavy imports once the values are good
        )

        run_tune(cfg)


if __name__ == "__main__":
    main()
