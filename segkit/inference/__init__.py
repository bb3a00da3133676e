"""Inference beyond one forward pass: sliding-window prediction of large images, test-time
augmentation, model ensembles and post-processing of the probabilities into label maps.

Every predictor returns float32 softmax probabilities ``[K, H, W]`` for one image ``[C, H, W]``, so
they compose, e.g. a TTA ensemble of sliding-window predictions::

    def member(model):
        return lambda img: sliding_window_probs(model, img, model.num_classes, stride=model.stride)

    probs = ensemble_probs([lambda img, m=m: tta_probs(member(m), img) for m in models], image)
    labels = postprocess(probs.cpu().numpy(), {"thresholds": {1: 0.8}, "min_object_size": 30})
"""

from .ensemble import ensemble_probs
from .postprocess import (
    apply_thresholds,
    fill_holes,
    median_filter_probs,
    postprocess,
    remove_small_objects,
)
from .sliding_window import gaussian_weight, sliding_window_probs, window_starts
from .tta import dihedral_transforms, tta_probs

__all__ = [
    "apply_thresholds",
    "dihedral_transforms",
    "ensemble_probs",
    "fill_holes",
    "gaussian_weight",
    "median_filter_probs",
    "postprocess",
    "remove_small_objects",
    "sliding_window_probs",
    "tta_probs",
    "window_starts",
]
