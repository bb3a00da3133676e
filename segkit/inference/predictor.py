"""Image -> class probabilities (and labels): ensembles of sliding-window predictions with optional
test-time augmentation and post-processing, the one path shared by predict, eval, tune_postprocess and compare."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from segkit.models.network import SegNetwork

LARGE_IMAGE_PIXELS = 16_000_000


def stitch_device_for(setting: str, pixels: int, model_device: torch.device) -> torch.device:
    if setting == "auto":
        return torch.device("cpu") if pixels > LARGE_IMAGE_PIXELS else model_device
    return torch.device(setting)


def make_predictor(modules: Sequence[SegNetwork], inference: dict, tta: dict, pixels: int,
                   progress: Callable[[int, int], None] | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``image uint8 [C, H, W]`` -> probabilities ``[K, H, W]`` (on the CPU): ensemble of sliding-window
    predictions, each optionally averaged over test-time flips/rotations."""
    from segkit.inference import ensemble_probs, sliding_window_probs, tta_probs

    def one(module: SegNetwork) -> Callable[[torch.Tensor], torch.Tensor]:
        device = module.device
        stitch = stitch_device_for(str(inference.get("stitch_device", "auto")), pixels, device)

        def window(x: torch.Tensor) -> torch.Tensor:
            return module(x)  # SegNetwork normalises, pads to its stride and crops back

        def probs(image: torch.Tensor) -> torch.Tensor:
            return sliding_window_probs(window, image.to(device), module.num_classes, tile=int(inference.get("tile", 512)),
                                        overlap=float(inference.get("overlap", 0.25)), stride=1, batch_size=int(inference.get("batch_size", 4)),
                                        blend=str(inference.get("blend", "gaussian")), stitch_device=stitch, progress=progress).cpu()

        if tta.get("flips") or tta.get("rot90"):
            return lambda image: tta_probs(probs, image, flips=bool(tta.get("flips")), rot90=bool(tta.get("rot90")))
        return probs

    members = [one(m) for m in modules]
    if len(members) == 1:
        return members[0]
    return lambda image: ensemble_probs(members, image)


def predict_probs(module: SegNetwork, image: np.ndarray, tile: int = 1024, overlap: float = 0.25, batch_size: int = 4) -> torch.Tensor:
    """Softmax probabilities ``[K, H, W]`` (on the CPU) for one ``[H, W, C]`` uint8 image, by the same
    path as ``segkit.predict``: one forward pass when it fits in a tile, else a Gaussian-blended sliding window."""
    return label_probs([module], {"tile": tile, "overlap": overlap, "batch_size": batch_size}, {})(image)


def label_probs(modules: Sequence[SegNetwork], inference: dict, tta: dict) -> Callable[[np.ndarray], torch.Tensor]:
    """``[H, W, C]`` uint8 image -> probabilities ``[K, H, W]`` (CPU): :func:`make_predictor`
    (sliding window, ensemble, TTA) with eval's defaults (tiles of 1024, stitched on the CPU)."""
    from segkit.inference.predictor import make_predictor

    settings = {"tile": 1024, "overlap": 0.25, "batch_size": 4, "stitch_device": "cpu", **inference}

    def probs(image: np.ndarray) -> torch.Tensor:
        predictor = make_predictor(modules, settings, tta, image.shape[0] * image.shape[1])
        with torch.inference_mode():
            return predictor(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))

    return probs


def label_function(modules: Sequence[SegNetwork], inference: dict, tta: dict, post: dict | None,
                   on_probs: Callable[[np.ndarray], None] | None = None,
                   notes: list[list[dict]] | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """Image -> labels: one checkpoint, or an ensemble averaged in probability space, with optional
    test-time flips/rotations, then ``post`` (segkit.inference.postprocess) or the argmax. ``on_probs``
    (optional) sees each image's ``[K, H, W]`` probabilities before they become labels; ``notes`` (optional)
    gets one list per image of the classes ``post``'s thresholds removed entirely."""
    from segkit.inference import postprocess

    probs_of = label_probs(modules, inference, tta)

    def labels(image: np.ndarray) -> np.ndarray:
        p = probs_of(image).numpy()
        if on_probs is not None:
            on_probs(p)
        mine: list[dict] = []
        out = postprocess(p, post, mine) if post else p.argmax(0)
        if notes is not None:
            notes.append(mine)
        return out

    return labels
