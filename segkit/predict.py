"""Predict masks for new images: ``python -m segkit.predict ckpt_path=<ckpt | [a,b,c]> input=<file|dir|glob> [output=<dir>]``.

Any image size (Gaussian-blended sliding window), optional test-time augmentation, ensembles of
checkpoints averaged in probability space, and post-processing (median filter, per-class thresholds,
small-object removal, hole filling; by default the values ``segkit.tune_postprocess`` chose on the
validation split). Per image: ``<stem>_labels.png`` (class ids), ``<stem>_labels.tif`` (the same, with the
class names in its ImageJ metadata), ``<stem>_overlay.png``, optionally ``<stem>_probs.npy``; for the
data's object classes ``<stem>_objects.csv`` and a pooled ``objects.csv``. OME-Zarr inputs and TIFFs over
``inference.region_above_mpx`` are predicted region by region (``segkit.inference.large``: tiled OME-TIFF or
OME-Zarr labels). Each image's outputs are written atomically and its record (``records/<stem>.json``) last,
so a rerun into the same ``output=`` skips complete images; ``devices=N`` runs N processes, and
``shard=k num_shards=N`` one share of a cluster array, merged by ``python -m segkit.merge <output>``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from segkit import CONF_DIR
from segkit.config_check import check_config
from segkit.errors import exit_on_user_error
from segkit.runtime import tune_allocator
from segkit.training.cleanup import discard_unused_run_dir


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="predict")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error(), discard_unused_run_dir():
        check_config(cfg, "predict")
        from segkit.inference.files import run_predict  # the heavy imports once the values are good

        tune_allocator(cfg.cpu_allocator)  # tiles' activations reused from the heap (segkit.runtime)
        run_predict(cfg)


if __name__ == "__main__":
    main()
