"""segkit.inference: sliding-window prediction, TTA, ensembles and post-processing, checked against
numbers computed independently here (whole-image forward passes, numpy transforms, hand-made masks)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segkit.errors import SegkitError
from segkit.inference import (
    apply_thresholds,
    ensemble_probs,
    fill_holes,
    gaussian_weight,
    median_filter_probs,
    postprocess,
    remove_small_objects,
    sliding_window_probs,
    tta_probs,
    window_starts,
)


# ---------------------------------------------------------------- toy networks
class ConvNet(nn.Module):
    """``layers`` 3x3 convs (padding 1, stride 1): receptive field ``2 * layers + 1``."""

    output_stride = 1

    def __init__(
        self, in_ch: int = 1, classes: int = 3, width: int = 8, layers: int = 3, seed: int = 0
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)
        chans = [in_ch] + [width] * (layers - 1) + [classes]
        mods: list[nn.Module] = []
        for i in range(layers):
            mods.append(nn.Conv2d(chans[i], chans[i + 1], 3, padding=1))
            if i < layers - 1:
                mods.append(nn.ReLU())
        self.body = nn.Sequential(*mods)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class PixelNet(nn.Module):
    """1x1 convs only: the logits of a pixel depend on that pixel alone (flip/rotation equivariant).
    With ``stride`` it refuses inputs that are not multiples of it."""

    def __init__(self, in_ch: int = 1, classes: int = 3, stride: int = 1, seed: int = 1) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.output_stride = stride
        self.body = nn.Sequential(nn.Conv2d(in_ch, 6, 1), nn.Tanh(), nn.Conv2d(6, classes, 1))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-2] % self.output_stride == 0 and x.shape[-1] % self.output_stride == 0, x.shape
        return self.body(x) * 3.0


class Stride8Net(nn.Module):
    """Pools by 8 and upsamples back: inputs must be multiples of 8."""

    output_stride = 8

    def __init__(self, in_ch: int = 1, classes: int = 2) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.coarse = nn.Conv2d(in_ch, classes, 3, padding=1)
        self.fine = nn.Conv2d(in_ch, classes, 1)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 8 or x.shape[-1] % 8:
            raise AssertionError(f"input {tuple(x.shape)} is not a multiple of 8")
        coarse = F.interpolate(self.coarse(F.avg_pool2d(x, 8)), scale_factor=8, mode="nearest")
        return coarse + self.fine(x)


def smooth_image(h: int, w: int, channels: int = 1, seed: int = 0) -> torch.Tensor:
    """A smooth random field plus a little noise, ``[C, h, w]``."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(1, channels, max(2, h // 16), max(2, w // 16), generator=g)
    field = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[0]
    return field + 0.1 * torch.randn(channels, h, w, generator=g)


def whole_probs(net: nn.Module, image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(net(image[None]), dim=1)[0]


# ---------------------------------------------------------------- weights and grid
def test_gaussian_weight_values() -> None:
    h, w = 64, 48
    weight = gaussian_weight((h, w), sigma_scale=0.125).numpy()
    i, j = np.mgrid[0:h, 0:w]
    expected = np.exp(-0.5 * ((i - 31.5) / (0.125 * h)) ** 2 - 0.5 * ((j - 23.5) / (0.125 * w)) ** 2)
    expected = np.maximum(expected / expected.max(), 1e-3)
    assert weight.shape == (h, w) and weight.dtype == np.float32
    np.testing.assert_allclose(weight, expected, rtol=1e-5, atol=1e-7)
    assert weight.max() == pytest.approx(1.0, abs=1e-6)
    assert weight.min() > 0  # the corners still count
    np.testing.assert_array_equal(weight, weight[::-1, ::-1])


def test_window_grid_covers_image_with_positive_weight_sum() -> None:
    height, width, tile, overlap = 300, 200, 64, 0.25
    ys, xs = window_starts(height, tile, overlap), window_starts(width, tile, overlap)
    assert ys[:3] == [0, 48, 96] and ys[-1] == height - tile  # step 64 * 0.75, last flush with the border
    assert xs[-1] == width - tile
    assert len(ys) == math.ceil((height - tile) / 48) + 1
    weight = gaussian_weight((tile, tile)).numpy()
    total = np.zeros((height, width))
    for y in ys:
        for x in xs:
            total[y : y + tile, x : x + tile] += weight
    assert total.min() > 0
    assert window_starts(50, 64, 0.25) == [0]


# ---------------------------------------------------------------- sliding window
def test_one_tile_equals_whole_image_forward() -> None:
    net = ConvNet()
    image = smooth_image(96, 128)
    probs = sliding_window_probs(net, image, num_classes=3, tile=128, overlap=0.25, stride=1)
    assert probs.shape == (3, 96, 128)
    torch.testing.assert_close(probs, whole_probs(net, image), atol=1e-6, rtol=0)


def test_small_image_padded_to_stride_and_cropped() -> None:
    net = Stride8Net()
    image = smooth_image(100, 123)
    probs = sliding_window_probs(net, image, num_classes=2, tile=128, stride=8)
    # independent: numpy reflect padding to 104 x 128, forward, crop
    padded = torch.from_numpy(np.pad(image.numpy(), ((0, 0), (0, 4), (0, 5)), mode="reflect"))
    expected = whole_probs(net, padded)[:, :100, :123]
    assert probs.shape == (2, 100, 123)
    torch.testing.assert_close(probs, expected, atol=1e-6, rtol=0)


def test_overlapping_tiles_close_to_whole_image_forward() -> None:
    net = ConvNet(layers=3)  # receptive field 7: only pixels within 3 px of a tile edge differ
    image = smooth_image(200, 260)
    expected = whole_probs(net, image)
    probs = sliding_window_probs(net, image, num_classes=3, tile=64, overlap=0.25, stride=1, batch_size=4)
    assert probs.shape == (3, 200, 260)
    torch.testing.assert_close(probs.sum(0), torch.ones(200, 260), atol=1e-5, rtol=0)
    assert (probs - expected).abs().max().item() < 0.05
    agreement = (probs.argmax(0) == expected.argmax(0)).float().mean().item()
    assert agreement >= 0.995
    # constant blending averages the tile-edge errors in with full weight: never closer than Gaussian
    flat = sliding_window_probs(net, image, num_classes=3, tile=64, overlap=0.25, stride=1, blend="constant")
    assert (flat - expected).abs().mean() >= (probs - expected).abs().mean()


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_pixelwise_net_stitches_exactly(blend: str) -> None:
    net = PixelNet(stride=8)
    image = smooth_image(203, 157)  # not multiples of the stride, tiles (60) not either
    expected = whole_probs(PixelNet(stride=1), image)
    probs = sliding_window_probs(
        net, image, num_classes=3, tile=60, overlap=0.5, stride=8, blend=blend, batch_size=3
    )
    assert probs.shape == (3, 203, 157)
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=0)
    single = sliding_window_probs(
        net, image, num_classes=3, tile=60, overlap=0.5, stride=8, blend=blend, batch_size=1
    )
    torch.testing.assert_close(single, probs, atol=1e-6, rtol=0)


def test_stride8_net_non_multiple_size_returns_original_size() -> None:
    image = smooth_image(203, 157)
    probs = sliding_window_probs(Stride8Net(), image, num_classes=2, tile=64, overlap=0.25, stride=8)
    assert probs.shape == (2, 203, 157)
    torch.testing.assert_close(probs.sum(0), torch.ones(203, 157), atol=1e-5, rtol=0)
    assert probs.min() >= 0


def test_progress_and_stitch_device() -> None:
    calls: list[tuple[int, int]] = []
    image = smooth_image(130, 100)
    probs = sliding_window_probs(
        PixelNet(),
        image,
        num_classes=3,
        tile=48,
        overlap=0.25,
        stride=1,
        batch_size=4,
        stitch_device="cpu",
        progress=lambda done, total: calls.append((done, total)),
    )
    n = (math.ceil((130 - 48) / 36) + 1) * (math.ceil((100 - 48) / 36) + 1)  # 4 * 3
    assert n == 12 and calls == [(4, 12), (8, 12), (12, 12)]
    assert probs.device.type == "cpu"


def test_sliding_window_rejects_bad_arguments() -> None:
    image = smooth_image(64, 64)
    with pytest.raises(SegkitError, match="4 classes, expected num_classes=3"):
        sliding_window_probs(PixelNet(classes=4), image, num_classes=3, stride=1)
    with pytest.raises(SegkitError, match="overlap"):
        sliding_window_probs(PixelNet(), image, num_classes=3, stride=1, overlap=1.0)
    with pytest.raises(SegkitError, match="blend"):
        sliding_window_probs(PixelNet(), image, num_classes=3, stride=1, blend="linear")
    with pytest.raises(SegkitError, match=r"expected \[C, H, W\]"):
        sliding_window_probs(PixelNet(), image[0], num_classes=3, stride=1)


def test_large_image_2048() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    image = torch.randn(1, 2048, 2048)
    start = time.perf_counter()
    probs = sliding_window_probs(net, image, num_classes=2, tile=512, overlap=0.25, stride=32)
    elapsed = time.perf_counter() - start
    assert probs.shape == (2, 2048, 2048)
    assert torch.isfinite(probs).all()
    torch.testing.assert_close(probs[:, ::97, ::89].sum(0), torch.ones(22, 24), atol=1e-5, rtol=0)
    assert elapsed < 30


# ---------------------------------------------------------------- TTA
def test_tta_on_equivariant_net_is_the_plain_prediction() -> None:
    net = PixelNet()
    image = smooth_image(40, 56)  # non-square: rotations swap H and W

    def predict(img: torch.Tensor) -> torch.Tensor:
        return sliding_window_probs(net, img, num_classes=3, stride=1, tile=64)

    plain = predict(image)
    for flips, rot90 in [(True, True), (True, False), (False, True)]:
        torch.testing.assert_close(
            tta_probs(predict, image, flips=flips, rot90=rot90), plain, atol=1e-6, rtol=0
        )


def _positional_probs(img: np.ndarray) -> np.ndarray:
    """A non-equivariant toy: the logits depend on the pixel's row and column index."""
    h, w = img.shape[-2:]
    i, j = np.mgrid[0:h, 0:w].astype(np.float64)
    logits = np.stack([img[0], 0.05 * i - img[0], 0.03 * j + 0.5 * img[0]])
    e = np.exp(logits - logits.max(0))
    return e / e.sum(0)


NUMPY_DIHEDRAL = {  # name: (transform, inverse) on [..., H, W]
    "id": (lambda a: a, lambda a: a),
    "hflip": (lambda a: a[..., ::-1], lambda a: a[..., ::-1]),
    "vflip": (lambda a: a[..., ::-1, :], lambda a: a[..., ::-1, :]),
    "rot90": (lambda a: np.rot90(a, 1, axes=(-2, -1)), lambda a: np.rot90(a, -1, axes=(-2, -1))),
    "rot180": (lambda a: np.rot90(a, 2, axes=(-2, -1)), lambda a: np.rot90(a, 2, axes=(-2, -1))),
    "rot270": (lambda a: np.rot90(a, 3, axes=(-2, -1)), lambda a: np.rot90(a, 1, axes=(-2, -1))),
    "transpose": (lambda a: np.swapaxes(a, -1, -2), lambda a: np.swapaxes(a, -1, -2)),
    "antitranspose": (
        lambda a: np.rot90(np.swapaxes(a, -1, -2), 2, axes=(-2, -1)),
        lambda a: np.rot90(np.swapaxes(a, -1, -2), 2, axes=(-2, -1)),
    ),
}


@pytest.mark.parametrize(
    ("flips", "rot90", "names"),
    [
        (True, True, list(NUMPY_DIHEDRAL)),
        (True, False, ["id", "hflip", "vflip"]),
        (False, True, ["id", "rot90", "rot180", "rot270"]),
        (False, False, ["id"]),
    ],
)
def test_tta_averages_inverse_mapped_predictions(flips: bool, rot90: bool, names: list[str]) -> None:
    image = smooth_image(24, 30, seed=3)
    arr = image.numpy().astype(np.float64)
    expected = np.mean(
        [inv(_positional_probs(fwd(arr))) for fwd, inv in (NUMPY_DIHEDRAL[n] for n in names)], axis=0
    )

    def predict(img: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(_positional_probs(img.numpy().astype(np.float64))).float()

    got = tta_probs(predict, image, flips=flips, rot90=rot90).numpy()
    assert got.shape == (3, 24, 30)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    if len(names) > 1:  # the averaging really changed the prediction
        assert np.abs(got - _positional_probs(arr)).max() > 1e-2


# ---------------------------------------------------------------- ensemble
def test_ensemble_mean_and_class_mismatch() -> None:
    image = torch.zeros(1, 5, 7)
    a = torch.tensor([0.2, 0.3, 0.5]).view(3, 1, 1).expand(3, 5, 7)
    b = torch.tensor([0.6, 0.2, 0.2]).view(3, 1, 1).expand(3, 5, 7)
    mean = ensemble_probs([lambda img: a, lambda img: b], image)
    torch.testing.assert_close(mean, torch.tensor([0.4, 0.25, 0.35]).view(3, 1, 1).expand(3, 5, 7))
    two = torch.full((2, 5, 7), 0.5)
    with pytest.raises(SegkitError, match="member 1 predicts 2 classes, expected 3"):
        ensemble_probs([lambda img: a, lambda img: two], image)
    with pytest.raises(SegkitError, match="no predictors"):
        ensemble_probs([], image)


# ---------------------------------------------------------------- post-processing
def test_median_filter_removes_isolated_spikes() -> None:
    probs = np.zeros((2, 20, 20), dtype=np.float32)
    probs[0], probs[1] = 0.9, 0.1
    for y, x in [(3, 4), (10, 10), (15, 2), (0, 19)]:
        probs[:, y, x] = [0.05, 0.95]
    assert (probs.argmax(0) == 1).sum() == 4
    out = median_filter_probs(probs, 3)
    assert (out.argmax(0) == 0).all()
    np.testing.assert_allclose(out[:, 10, 10], [0.9, 0.1], atol=1e-6)  # medians 0.9 and 0.1, sum 1
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-6)
    np.testing.assert_array_equal(median_filter_probs(probs, 1), probs)
    with pytest.raises(SegkitError, match="odd"):
        median_filter_probs(probs, 4)


def test_thresholds_send_unsure_pixels_to_background() -> None:
    probs = np.array([[[0.3, 0.1, 0.6]], [[0.7, 0.9, 0.4]]], dtype=np.float32)  # K=2, H=1, W=3
    labels = apply_thresholds(probs, {1: 0.8})
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, [[0, 1, 0]])  # p(cell)=0.7 < 0.8 -> background, 0.9 stays
    np.testing.assert_array_equal(apply_thresholds(probs, None), [[1, 1, 0]])
    with pytest.raises(SegkitError, match="class 5"):
        apply_thresholds(probs, {5: 0.5})


def _objects_mask() -> np.ndarray:
    labels = np.zeros((30, 40), dtype=np.uint8)
    labels[2, 2:5] = 1  # 3 px
    labels[10:12, 2:7] = 1  # 10 px
    labels[20:25, 20:30] = 1  # 50 px
    labels[2, 30], labels[3, 31], labels[4, 32] = 2, 2, 2  # 3 px of class 2, 8-connected diagonal
    return labels


def test_remove_small_objects_keeps_only_large_components() -> None:
    labels = _objects_mask()
    out = remove_small_objects(labels, min_size=11, classes=[1])
    assert (out == 1).sum() == 50 and out[20:25, 20:30].all()
    assert (out == 2).sum() == 3  # class 2 not listed
    out_all = remove_small_objects(labels, min_size=11, classes=None)
    assert (out_all == 2).sum() == 0 and (out_all == 1).sum() == 50
    # 8-connectivity: the diagonal line is one 3 px object, kept at min_size 3
    assert (remove_small_objects(labels, min_size=3, classes=[2]) == 2).sum() == 3
    np.testing.assert_array_equal(labels, _objects_mask())  # input untouched


def test_fill_holes_fills_enclosed_hole_but_not_open_notch() -> None:
    labels = np.zeros((20, 30), dtype=np.uint8)
    labels[2:9, 2:9] = 1
    labels[4:7, 4:7] = 0  # enclosed 3x3 hole
    labels[2:9, 12:19] = 1
    labels[4:7, 14:17] = 0
    labels[5, 17:19] = 0  # cavity opened to the outside background
    labels[12:20, 2:11] = 1
    labels[15:20, 5:7] = 0  # notch open to the image border
    out = fill_holes(labels, classes=[1])
    expected = labels.copy()
    expected[4:7, 4:7] = 1
    np.testing.assert_array_equal(out, expected)
    assert (fill_holes(labels, classes=[2]) == labels).all()


def test_a_threshold_above_every_probability_of_a_class_is_reported_not_silent() -> None:
    from segkit.inference.postprocess import emptied_message

    probs = np.zeros((3, 10, 10), dtype=np.float32)
    probs[0] = 0.9
    probs[1:, :, :] = 0.05
    probs[:, 2:6, 2:6] = np.array([0.12, 0.758, 0.122], np.float32)[:, None, None]  # a capped cell: 16 px at 0.758
    probs[:, 7:9, 7:9] = np.array([0.1, 0.2, 0.7], np.float32)[:, None, None]  # class 2 survives its threshold
    notes: list = []
    labels = postprocess(probs, {"thresholds": {1: 0.8, 2: 0.6}}, notes)
    assert not (labels == 1).any() and (labels == 2).sum() == 4
    assert len(notes) == 1 and notes[0]["class"] == 1 and notes[0]["argmax_pixels"] == 16
    assert notes[0]["max_probability"] == pytest.approx(0.758) and notes[0]["threshold"] == 0.8
    message = emptied_message("phase_020.tif", notes, ["other", "cell", "edge"])
    assert "phase_020.tif" in message and "'cell' (threshold 0.8" in message and "0.758" in message
    # a class the names do not cover (a checkpoint with fewer names than classes) is named by its index
    assert "'1' (threshold 0.8" in emptied_message("phase_020.tif", notes, ["other"])
    notes = []
    postprocess(probs, {"thresholds": {1: 0.75}}, notes)  # keeps the cell: nothing to say
    assert notes == []


def test_postprocess_chain_and_unknown_key() -> None:
    probs = np.zeros((2, 24, 24), dtype=np.float32)
    probs[0], probs[1] = 0.95, 0.05
    probs[1, 4:16, 4:16] = 0.9  # a cell ...
    probs[1, 8:11, 8:11] = 0.7  # ... with an unsure 3x3 centre (a hole after thresholding)
    probs[1, 20, 20:23] = 0.99  # a 3 px speck
    probs[0] = 1 - probs[1]
    cfg = {"thresholds": {1: 0.8}, "min_object_size": 10, "object_classes": [1], "fill_holes": True}
    labels = postprocess(probs, cfg)
    expected = np.zeros((24, 24), dtype=np.uint8)
    expected[4:16, 4:16] = 1
    np.testing.assert_array_equal(labels, expected)
    # without hole filling the unsure centre stays background; without removal the speck stays
    assert (postprocess(probs, {"thresholds": {1: 0.8}})[8:11, 8:11] == 0).all()
    assert postprocess(probs, {"thresholds": {1: 0.8}})[20, 20:23].tolist() == [1, 1, 1]
    assert postprocess(probs, {}).tolist() == postprocess(probs, None).tolist()
    with pytest.raises(SegkitError, match=r"postprocess\.min_size"):
        postprocess(probs, {"min_size": 10})
    with pytest.raises(SegkitError, match=r"postprocess\.median_size"):
        postprocess(probs, {"median_size": 2})
