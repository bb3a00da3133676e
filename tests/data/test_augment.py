import math

import pytest
import torch

from segkit.data.augment import BatchAugment
from segkit.errors import SegkitError

OFF = {"hflip": False, "vflip": False, "rot90": False}
FULL = {
    "affine_p": 1.0,
    "rotate_deg": 15.0,
    "shear_deg": 10.0,
    "scale": (0.9, 1.1),
    "elastic_p": 1.0,
    "elastic_alpha": 5.0,
    "elastic_sigma": 8.0,
    "brightness": 0.2,
    "contrast": 0.2,
    "gamma": 0.2,
    "noise_std": 3.0,
    "blur_p": 0.5,
}
GEOMETRY = {
    k: FULL[k]
    for k in ("affine_p", "rotate_deg", "shear_deg", "scale", "elastic_p", "elastic_alpha", "elastic_sigma")
}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(n=8, c=3, h=64, w=64, classes=4, seed=0):
    g = _gen(seed)
    image = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g)
    mask = torch.randint(0, classes, (n, h, w), dtype=torch.uint8, generator=g)
    return image, mask


def _blocky_mask(n, h, w, block, seed):
    """Random blocks of ids 0, 1, 2 (row term + column term, each 0 or 1), so that neighbouring
    blocks differ by at most 1 and bilinear mixing across an edge rounds to one of its two sides."""
    g = _gen(seed)
    rows = torch.randint(0, 2, (n, h // block, 1), generator=g)
    cols = torch.randint(0, 2, (n, 1, w // block), generator=g)
    return (rows + cols).repeat_interleave(block, 1).repeat_interleave(block, 2).to(torch.uint8)


def _coordinates(n, h, w, offset=100.0):
    """Float image whose channels are x + offset and y + offset, so that sampled values reveal
    where each output pixel was taken from (bilinear interpolation of a ramp is exact)."""
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    return torch.stack([xs, ys])[None].repeat(n, 1, 1, 1) + offset


def _dihedral(t, k):
    if k & 1:
        t = t.flip(-1)
    if k & 2:
        t = t.flip(-2)
    if k & 4:
        t = t.rot90(1, (-2, -1))
    return t


def test_all_off_is_identity():
    image, mask = _batch()
    out, m = BatchAugment(**OFF)(image, mask, _gen(0))
    assert out.dtype == torch.float32 and m.dtype == torch.uint8
    assert torch.equal(out, image.float()) and torch.equal(m, mask)
    f = image.float()
    out, _ = BatchAugment(**OFF)(f, mask)
    assert torch.equal(out, f) and out.data_ptr() != f.data_ptr()  # never modifies the caller's tensor


def test_hflip_flips_image_and_mask_together():
    image, mask = _batch(n=16)
    out, m = BatchAugment(hflip=True, vflip=False, rot90=False)(image, mask, _gen(1))
    flipped = []
    for i in range(16):
        if torch.equal(out[i], image[i].float()):
            assert torch.equal(m[i], mask[i])
            flipped.append(False)
        else:
            assert torch.equal(out[i], torch.flip(image[i], [-1]).float())
            assert torch.equal(m[i], torch.flip(mask[i], [-1]))
            flipped.append(True)
    assert any(flipped) and not all(flipped)


def test_flips_and_rot90_are_dihedral_and_shared():
    image, mask = _batch(n=32)
    out, m = BatchAugment()(image, mask, _gen(2))
    seen = set()
    for i in range(32):
        k = next(k for k in range(8) if torch.equal(out[i], _dihedral(image[i], k).float()))
        assert torch.equal(m[i], _dihedral(mask[i], k))
        seen.add(k)
    assert len(seen) >= 6
    # rot90 is skipped on non-square crops
    image, mask = _batch(n=8, h=32, w=48)
    out, m = BatchAugment()(image, mask, _gen(3))
    assert out.shape == (8, 3, 32, 48) and m.shape == (8, 32, 48)
    for i in range(8):
        assert any(torch.equal(m[i], _dihedral(mask[i], k)) for k in range(4))


def test_flips_inside_the_warp_grid_match_exact_flips():
    image, mask = _batch(n=16)
    exact_img, exact_mask = BatchAugment()(image, mask, _gen(4))
    # a scale range of width 1e-6 forces the grid path without moving any pixel centre noticeably
    warp_img, warp_mask = BatchAugment(affine_p=1.0, scale=(1.0, 1.0 + 1e-6))(image, mask, _gen(4))
    assert torch.equal(warp_mask, exact_mask)
    assert torch.allclose(warp_img, exact_img, atol=0.05)


def test_geometric_mask_has_only_input_ids_and_outside_is_ignored():
    image, _ = _batch(n=8)
    mask = torch.tensor([0, 1, 2, 5], dtype=torch.uint8)[torch.randint(0, 4, (8, 64, 64), generator=_gen(5))]
    mask[:, :4, :4] = 255
    aug = BatchAugment(**{**GEOMETRY, "scale": (0.8, 0.8)})
    out, m = aug(image, mask, _gen(5))
    assert set(m.unique().tolist()) <= {0, 1, 2, 5, 255}
    outside = m == 255
    assert outside.sum() > 0.1 * m.numel()  # zooming out by 0.8 leaves a border outside the input
    assert (out.amax(1)[outside] == 0).float().mean() > 0.97  # the rest are input ignore pixels
    # signed ids and a negative ignore index
    mask64 = mask.long().masked_fill(mask == 255, -100)
    _, m64 = BatchAugment(**GEOMETRY, ignore_index=-100)(image, mask64, _gen(6))
    assert m64.dtype == torch.int64 and set(m64.unique().tolist()) <= {-100, 0, 1, 2, 5}


def test_image_and_mask_stay_aligned_after_affine_and_elastic():
    n, size = 8, 128
    mask = _blocky_mask(n, size, size, block=16, seed=7)
    image = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=_gen(7))
    image[:, 0] = mask * 80
    aug = BatchAugment(**{**GEOMETRY, "elastic_alpha": 10.0, "elastic_sigma": 10.0})
    out, m = aug(image, mask, _gen(8))
    valid = m != 255
    assert valid.float().mean() > 0.5
    ids = torch.round(out[:, 0] / 80)
    assert (ids == m.float())[valid].float().mean() >= 0.99
    assert not torch.equal(m, mask)
    # the check is sensitive: a mask flipped against its image fails it
    flipped = m.flip(-1)
    assert (ids == flipped.float())[flipped != 255].float().mean() < 0.8


def test_scale_and_rotation_are_the_documented_maps():
    n, h, w = 4, 64, 64
    coords = _coordinates(n, h, w)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    # scale 0.5 shrinks the content: output pixel q shows input pixel centre + 2 (q - centre)
    out, _ = BatchAugment(**OFF, affine_p=1.0, scale=(0.5, 0.5), value_range=1e4)(
        coords, torch.zeros(n, h, w, dtype=torch.uint8)
    )
    inner = slice(20, 44)
    assert torch.allclose(out[:, 0, inner, inner] - 100, (cx + 2 * (xs - cx))[inner, inner], atol=1e-3)
    assert torch.allclose(out[:, 1, inner, inner] - 100, (cy + 2 * (ys - cy))[inner, inner], atol=1e-3)
    # rotation only: the sampled positions are a rotation about the centre by at most 20 degrees
    out, _ = BatchAugment(**OFF, affine_p=1.0, rotate_deg=20.0, value_range=1e4)(
        coords, torch.zeros(n, h, w, dtype=torch.uint8), _gen(9)
    )
    q = torch.stack([xs - cx, ys - cy], -1)[inner, inner].reshape(-1, 2)
    for i in range(n):
        p = torch.stack([out[i, 0] - 100 - cx, out[i, 1] - 100 - cy], -1)[inner, inner].reshape(-1, 2)
        a = torch.linalg.lstsq(q, p).solution  # p = q @ a
        assert torch.allclose(a @ a.T, torch.eye(2), atol=1e-4) and torch.det(a) > 0
        assert abs(math.degrees(math.atan2(a[0, 1], a[0, 0]))) <= 20.0 + 1e-3


def test_elastic_displacement_is_smooth_and_at_most_alpha():
    n, h, w, alpha = 4, 96, 96, 4.0
    coords = _coordinates(n, h, w)
    aug = BatchAugment(**OFF, elastic_p=1.0, elastic_alpha=alpha, elastic_sigma=10.0, value_range=1e4)
    out, _ = aug(coords, torch.zeros(n, h, w, dtype=torch.uint8), _gen(10))
    inner = slice(8, h - 8)
    d = (out - coords)[:, :, inner, inner]
    length = d.square().sum(1).sqrt()
    assert length.amax() <= alpha * (1 + 1e-4)
    assert length.amax() >= 0.8 * alpha
    assert (d[..., 1:, :] - d[..., :-1, :]).abs().max() < 1.0 and (d[..., 1:] - d[..., :-1]).abs().max() < 1.0
    assert length.mean() > 0.2 * alpha


def test_intensity_transforms_leave_the_mask_bit_identical():
    image, mask = _batch(n=8)
    intensity = {k: FULL[k] for k in ("brightness", "contrast", "gamma", "noise_std", "blur_p")}
    geo_img, geo_mask = BatchAugment(**GEOMETRY)(image, mask, _gen(11))
    all_img, all_mask = BatchAugment(**GEOMETRY, **intensity)(image, mask, _gen(11))
    assert torch.equal(all_mask, geo_mask) and not torch.equal(all_img, geo_img)
    out, m = BatchAugment(**OFF, **intensity)(image, mask, _gen(12))
    assert torch.equal(m, mask) and not torch.equal(out, image.float())


def test_brightness_contrast_gamma_follow_their_formulas():
    g = _gen(13)
    image = torch.randint(100, 151, (16, 3, 32, 32), generator=g).to(
        torch.uint8
    )  # far from 0 and 255: no clamping
    x = image.float()
    mask = torch.zeros(16, 32, 32, dtype=torch.uint8)
    out, _ = BatchAugment(**OFF, brightness=0.2)(image, mask, _gen(14))
    shift = (out - x).flatten(1)
    assert torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-4)
    assert shift.abs().max() <= 0.2 * 255 + 1e-3 and shift[:, 0].std() > 5
    out, _ = BatchAugment(**OFF, contrast=0.5)(image, mask, _gen(15))
    mean = x.mean((1, 2, 3), keepdim=True)
    c = ((out - mean) * (x - mean)).sum((1, 2, 3)) / (x - mean).square().sum((1, 2, 3))
    assert torch.allclose(out, mean + c[:, None, None, None] * (x - mean), atol=1e-3)
    assert c.min() >= 0.5 - 1e-5 and c.max() <= 1.5 + 1e-5 and c.std() > 0.1
    out, _ = BatchAugment(**OFF, gamma=0.5)(image, mask, _gen(16))
    gam = torch.log(out[:, 0, 0, 0] / 255) / torch.log(x[:, 0, 0, 0] / 255)
    assert torch.allclose(out, 255 * (x / 255) ** gam[:, None, None, None], rtol=1e-4, atol=1e-3)
    assert gam.min() >= 1 / 1.5 - 1e-4 and gam.max() <= 1.5 + 1e-4 and (gam < 1).any() and (gam > 1).any()


def test_noise_and_blur():
    flat = torch.full((16, 1, 32, 32), 128, dtype=torch.uint8)
    mask = torch.zeros(16, 32, 32, dtype=torch.uint8)
    out, _ = BatchAugment(**OFF, noise_std=10.0)(flat, mask, _gen(17))
    std = (out - 128).flatten(1).std(1)
    assert std.max() <= 10.0 * 1.1 and std.max() > 5.0 and std.min() < std.max() / 2
    # blur of a constant is constant; blur of an impulse is the outer product of 1D Gaussians
    out, _ = BatchAugment(**OFF, blur_p=1.0)(flat, mask, _gen(18))
    assert torch.allclose(out, flat.float(), atol=1e-3)
    impulse = torch.zeros(4, 1, 21, 21)
    impulse[:, :, 10, 10] = 1000.0
    out, _ = BatchAugment(**OFF, blur_p=1.0, blur_sigma=(1.0, 1.0), value_range=1000.0)(
        impulse, torch.zeros(4, 21, 21, dtype=torch.long)
    )
    k = torch.exp(-(torch.arange(-3.0, 4.0) ** 2) / 2)  # truncated at 3 sigma
    k = k / k.sum()
    assert torch.allclose(
        out[:, 0],
        torch.nn.functional.pad(1000 * k[:, None] * k[None, :], (7, 7, 7, 7)).expand(4, 21, 21),
        atol=1e-3,
    )
    # blur_p=0.5 blurs some samples and leaves the others untouched
    image, mask = _batch(n=16)
    out, _ = BatchAugment(**OFF, blur_p=0.5)(image, mask, _gen(19))
    same = [torch.equal(out[i], image[i].float()) for i in range(16)]
    assert any(same) and not all(same)


def test_same_seed_same_output_different_seed_different():
    image, mask = _batch(n=4)
    aug = BatchAugment(**FULL)
    a = aug(image, mask, _gen(20))
    b = aug(image, mask, _gen(20))
    c = aug(image, mask, _gen(21))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1])


@pytest.mark.parametrize("channels", [1, 3])
def test_one_and_three_channels(channels):
    image, mask = _batch(n=4, c=channels)
    out, m = BatchAugment(**FULL)(image, mask, _gen(22))
    assert (
        out.shape == image.shape
        and out.dtype == torch.float32
        and m.shape == mask.shape
        and m.dtype == mask.dtype
    )
    assert out.min() >= 0 and out.max() <= 255
    if channels == 3:  # identical channels stay identical without (per-channel) noise
        same = image[:, :1].repeat(1, 3, 1, 1)
        out, _ = BatchAugment(**{**FULL, "noise_std": 0.0})(same, mask, _gen(23))
        assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])


def test_uint16_range_input_stays_in_range():
    image = torch.randint(0, 65536, (4, 1, 64, 64), dtype=torch.int32, generator=_gen(24))
    mask = torch.randint(0, 3, (4, 64, 64), dtype=torch.uint8, generator=_gen(25))
    aug = BatchAugment(**{**FULL, "brightness": 0.5, "noise_std": 2000.0}, value_range=65535.0)
    out, m = aug(image, mask, _gen(26))
    assert out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 65535
    assert out.max() > 60000 and (out == 65535).any()  # clamped at the top, not scaled to 8 bits


def test_from_config():
    aug = BatchAugment.from_config(
        {"hflip": False, "scale": [0.8, 1.2], "affine_p": 0.5}, ignore_index=0, value_range=4095.0
    )
    assert aug.scale == (0.8, 1.2) and aug.hflip is False and aug.vflip is True and aug.affine_p == 0.5
    assert aug.ignore_index == 0 and aug.value_range == 4095.0
    with pytest.raises(SegkitError, match=r"data\.augment\.flip .*hflip, vflip, rot90"):
        BatchAugment.from_config({"flip": True}, ignore_index=255, value_range=255.0)
    with pytest.raises(SegkitError, match=r"data\.augment\.affine_p"):
        BatchAugment.from_config({"affine_p": 2.0}, ignore_index=255, value_range=255.0)
    with pytest.raises(SegkitError, match=r"data\.augment\.scale"):
        BatchAugment.from_config({"scale": [1.0]}, ignore_index=255, value_range=255.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_with_cpu_or_cuda_generator():
    image, mask = _batch(n=4)
    image, mask = image.cuda(), mask.cuda()
    aug = BatchAugment(**FULL)
    for make in (lambda s: _gen(s), lambda s: torch.Generator(device="cuda").manual_seed(s)):
        a, b = aug(image, mask, make(27)), aug(image, mask, make(27))
        assert a[0].is_cuda and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert a[0].min() >= 0 and a[0].max() <= 255
        assert set(a[1].unique().tolist()) <= {0, 1, 2, 3, 255}
