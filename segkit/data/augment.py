"""Batched training augmentation: tensor operations on a whole batch, on the device that trains.

:class:`BatchAugment` replaces per-sample transforms in the data loader workers with a handful of
batch-wide tensor operations that run wherever the batch lives (GPU in training, one CPU core in the
benchmark). The choices, and why:

* **Every sample draws its own parameters** from one ``torch.rand(N, 14)`` call (coins and uniforms
  in fixed columns), followed by the elastic noise and the pixel noise. The stream therefore depends
  only on the seed and the config, never on which coins came up, and a given generator reproduces
  the output exactly. A generator on another device than the batch (the usual case: a CPU generator
  and a CUDA batch) seeds a fresh generator on the batch's device, so the random numbers are drawn
  where they are used instead of being copied over.
* **One sampling grid.** Flips, the 90-degree rotation (square crops only), rotation, shear, scale
  and the elastic displacement all go into one grid, sampled once for the image (bilinear) and once
  for the mask (nearest). The grid is built on a coarse lattice of nodes about ``elastic_sigma / 2``
  pixels apart and brought to full resolution by bilinear interpolation with ``align_corners=True``.
  That interpolation reproduces the linear (affine) part exactly, and the Gaussian-smoothed field has
  essentially no energy above the lattice's Nyquist frequency (``exp(-2 pi^2)``), so the coarse
  lattice costs nothing in accuracy while the smoothing costs almost nothing in time.
* **Elastic** follows Simard et al. / the U-Net paper: white noise smoothed by a Gaussian of
  ``elastic_sigma`` pixels (two small matrix products on the coarse lattice), then scaled per sample
  so that its largest displacement is exactly ``elastic_alpha`` pixels (bilinear interpolation never
  exceeds the largest node value, so that holds at full resolution too).
* **Out-of-image pixels** are 0 in the image and ``ignore_index`` in the mask. The mask is sampled
  as ``mask - min(mask.min(), 0) + 1`` in float32 (exact for ids below 2**24) with zero padding, so
  a sampled 0 means "came from outside" by the same nearest-neighbour rule that picked the id; the
  image is set to 0 there, after blur and noise. Pixels that were ``ignore_index`` in the input stay
  so, and keep their image values.
* **No warp, exact ops.** When no sample of the batch needs an affine or elastic warp, flips and
  rot90 are done by index operations (one gather per dihedral group element present), which are
  exact and cheaper than sampling. Inside the warp path a sample that is only flipped is sampled at
  exact pixel centres: exact mask, image equal up to float rounding.
* **Intensity** transforms touch only the image. Gamma (log-uniform in ``[1/(1+g), 1+g]``),
  contrast (factor in ``[1-c, 1+c]`` around the sample's mean) and brightness (additive shift of up
  to ``b * value_range``) are pointwise and run before the warp, fused into one multiply-add after
  the power. Blur (separable Gaussian with a per-sample sigma: one depthwise convolution per
  direction with ``groups = samples * channels``) and Gaussian noise (per-sample std uniform in
  ``[0, noise_std]``, in image units) run after the warp so that they are not resampled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from segkit.errors import SegkitError

# Columns of the per-sample uniform draws.
_HFLIP, _VFLIP, _ROT90, _AFFINE, _ROTATE, _SHEAR, _SCALE, _ELASTIC = range(8)
_BRIGHT, _CONTRAST, _GAMMA, _NOISE, _BLUR, _BLUR_SIGMA = range(8, 14)
_NUM_DRAWS = 14


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.type == "cpu" or a.index is None or b.index is None or a.index == b.index)


def _lattice(length: int, sigma: float | None) -> tuple[int, float]:
    """Number of coarse nodes spanning pixel centres ``0 .. length-1`` and their spacing in pixels.

    Without elastic (``sigma=None``) two nodes at the ends suffice for the affine part."""
    if length < 2:
        return 1, 1.0
    step = 1.0e9 if sigma is None else max(1.0, sigma / 2.0)
    nodes = max(2, math.ceil((length - 1) / step) + 1)
    return nodes, (length - 1) / (nodes - 1)


def _smoothing_matrix(nodes: int, spacing: float, sigma: float, device: torch.device) -> torch.Tensor:
    """``[nodes, nodes + 2r]``: Gaussian smoothing (sigma in pixels) of white noise on the lattice
    extended by ``r`` nodes each side, so that the field has no border effects."""
    sigma_c = sigma / spacing
    r = math.ceil(3.0 * sigma_c)
    offsets = torch.arange(nodes + 2 * r, device=device, dtype=torch.float32)[None, :] - r
    centres = torch.arange(nodes, device=device, dtype=torch.float32)[:, None]
    return torch.exp(-((offsets - centres) ** 2) / (2.0 * sigma_c**2))


class BatchAugment(torch.nn.Module):
    """Random geometric and intensity augmentation of an image batch and its mask batch.

    ``forward(image [N, C, H, W], mask [N, H, W])`` returns ``(float32 image in [0, value_range],
    mask of the input dtype)``; see the module docstring for what each option does. Defaults change
    nothing but flips and rot90. ``elastic_alpha`` is the largest displacement in pixels and
    ``elastic_sigma`` the smoothness in pixels; ``brightness``, ``contrast`` and ``gamma`` are maximum
    relative changes; ``noise_std`` is in image units; ``*_p`` are per-sample probabilities.
    """

    OPTIONS: tuple[str, ...] = (
        "hflip",
        "vflip",
        "rot90",
        "affine_p",
        "rotate_deg",
        "shear_deg",
        "scale",
        "elastic_p",
        "elastic_alpha",
        "elastic_sigma",
        "brightness",
        "contrast",
        "gamma",
        "noise_std",
        "blur_p",
        "blur_sigma",
    )

    def __init__(
        self,
        hflip: bool = True,
        vflip: bool = True,
        rot90: bool = True,
        affine_p: float = 0.0,
        rotate_deg: float = 0.0,
        shear_deg: float = 0.0,
        scale: tuple[float, float] = (1.0, 1.0),
        elastic_p: float = 0.0,
        elastic_alpha: float = 0.0,
        elastic_sigma: float = 10.0,
        brightness: float = 0.0,
        contrast: float = 0.0,
        gamma: float = 0.0,
        noise_std: float = 0.0,
        blur_p: float = 0.0,
        blur_sigma: tuple[float, float] = (0.5, 1.5),
        ignore_index: int = 255,
        value_range: float = 255.0,
    ) -> None:
        super().__init__()
        for key, p in (("affine_p", affine_p), ("elastic_p", elastic_p), ("blur_p", blur_p)):
            if not 0.0 <= float(p) <= 1.0:
                raise SegkitError(f"data.augment.{key} must be a probability in [0, 1], got {p}.")
        nonneg = {"rotate_deg": rotate_deg, "shear_deg": shear_deg, "elastic_alpha": elastic_alpha}
        nonneg |= {"brightness": brightness, "gamma": gamma, "noise_std": noise_std}
        for key, v in nonneg.items():
            if float(v) < 0.0:
                raise SegkitError(f"data.augment.{key} must be >= 0, got {v}.")
        if not 0.0 <= float(contrast) <= 1.0:
            raise SegkitError(f"data.augment.contrast must be in [0, 1], got {contrast}.")
        if float(shear_deg) >= 90.0:
            raise SegkitError(f"data.augment.shear_deg must be below 90 degrees, got {shear_deg}.")
        if float(elastic_sigma) <= 0.0:
            raise SegkitError(f"data.augment.elastic_sigma must be > 0 pixels, got {elastic_sigma}.")
        for key, pair in (("scale", scale), ("blur_sigma", blur_sigma)):
            if len(pair) != 2 or not 0.0 < float(pair[0]) <= float(pair[1]):
                raise SegkitError(
                    f"data.augment.{key} must be two numbers 0 < low <= high, got {list(pair)}."
                )
        if float(value_range) <= 0.0:
            raise SegkitError(f"value_range must be > 0, got {value_range}.")
        self.hflip, self.vflip, self.rot90 = bool(hflip), bool(vflip), bool(rot90)
        self.affine_p, self.rotate_deg, self.shear_deg = float(affine_p), float(rotate_deg), float(shear_deg)
        self.scale = (float(scale[0]), float(scale[1]))
        self.elastic_p, self.elastic_alpha, self.elastic_sigma = (
            float(elastic_p),
            float(elastic_alpha),
            float(elastic_sigma),
        )
        self.brightness, self.contrast, self.gamma = float(brightness), float(contrast), float(gamma)
        self.noise_std, self.blur_p = float(noise_std), float(blur_p)
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        self.ignore_index, self.value_range = int(ignore_index), float(value_range)
        self._matrices: dict[tuple, torch.Tensor] = {}

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], ignore_index: int, value_range: float) -> BatchAugment:
        """Build from the ``data.augment`` config group (a mapping of any subset of :attr:`OPTIONS`)."""
        unknown = [k for k in cfg if k not in cls.OPTIONS]
        if unknown:
            accepted = ", ".join(cls.OPTIONS)
            raise SegkitError(
                f"data.augment.{unknown[0]} is not an augmentation option; accepted keys are {accepted}."
            )
        kwargs: dict[str, Any] = {}
        for key, value in cfg.items():
            if key in ("scale", "blur_sigma"):
                if isinstance(value, str | bytes) or not hasattr(value, "__len__") or len(value) != 2:
                    raise SegkitError(f"data.augment.{key} must be a list of two numbers, got {value!r}.")
                value = (float(value[0]), float(value[1]))
            kwargs[key] = value
        return cls(**kwargs, ignore_index=ignore_index, value_range=value_range)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={getattr(self, k)}" for k in self.OPTIONS)

    # ------------------------------------------------------------------ helpers

    def _affine_active(self) -> bool:
        return self.affine_p > 0 and (self.rotate_deg > 0 or self.shear_deg > 0 or self.scale != (1.0, 1.0))

    def _elastic_active(self) -> bool:
        return self.elastic_p > 0 and self.elastic_alpha > 0

    def _matrix(self, nodes: int, spacing: float, device: torch.device) -> torch.Tensor:
        key = (nodes, spacing, self.elastic_sigma, str(device))
        if key not in self._matrices:
            self._matrices[key] = _smoothing_matrix(nodes, spacing, self.elastic_sigma, device)
        return self._matrices[key]

    def _warped(self, u: torch.Tensor) -> torch.Tensor:
        """Which samples get an affine or elastic warp (beyond a flip/rot90)."""
        warped = torch.zeros(u.shape[0], dtype=torch.bool, device=u.device)
        if self._affine_active():
            warped |= u[:, _AFFINE] < self.affine_p
        if self._elastic_active():
            warped |= u[:, _ELASTIC] < self.elastic_p
        return warped

    def _linear_maps(self, u: torch.Tensor, square: bool) -> torch.Tensor:
        """Per-sample ``[N, 2, 2]`` map from output to input pixel offsets (x right, y down)."""
        n, dev = u.shape[0], u.device
        one = torch.ones(n, device=dev)
        sx = torch.where(u[:, _HFLIP] < 0.5, -one, one) if self.hflip else one
        sy = torch.where(u[:, _VFLIP] < 0.5, -one, one) if self.vflip else one
        # torch.rot90(x, 1, (-2, -1)) samples input (x, y) = (-y_out, x_out), applied after the flips.
        rot = (
            (u[:, _ROT90] < 0.5) if (self.rot90 and square) else torch.zeros(n, dtype=torch.bool, device=dev)
        )
        dihedral = torch.zeros(n, 2, 2, device=dev)
        dihedral[:, 0, 0] = torch.where(rot, 0.0, sx)
        dihedral[:, 0, 1] = torch.where(rot, -sx, 0.0)
        dihedral[:, 1, 0] = torch.where(rot, sy, 0.0)
        dihedral[:, 1, 1] = torch.where(rot, 0.0, sy)
        if not self._affine_active():
            return dihedral
        on = u[:, _AFFINE] < self.affine_p
        theta = torch.deg2rad((2 * u[:, _ROTATE] - 1) * self.rotate_deg) * on
        shear = torch.tan(torch.deg2rad((2 * u[:, _SHEAR] - 1) * self.shear_deg)) * on
        lo, hi = self.scale
        s = torch.where(on, lo + (hi - lo) * u[:, _SCALE], 1.0)
        # Forward map M = R(theta) @ [[1, shear], [0, 1]] * s; sampling needs its inverse.
        c, si = torch.cos(theta), torch.sin(theta)
        inv = torch.stack([torch.stack([c + shear * si, si - shear * c], 1), torch.stack([-si, c], 1)], 1)
        inv = inv / s[:, None, None]
        return dihedral @ inv

    def _grid(self, u: torch.Tensor, noise_gen: torch.Generator | None, h: int, w: int) -> torch.Tensor:
        """The sampling grid ``[N, H, W, 2]`` (normalised, ``align_corners=False``) of all warps."""
        n, dev = u.shape[0], u.device
        linear = self._linear_maps(u, square=h == w)
        elastic = self._elastic_active()
        ny, dy = _lattice(h, self.elastic_sigma if elastic else None)
        nx, dx = _lattice(w, self.elastic_sigma if elastic else None)
        # Node positions as pixel offsets from the image centre.
        yc = torch.arange(ny, device=dev, dtype=torch.float32) * dy - (h - 1) / 2
        xc = torch.arange(nx, device=dev, dtype=torch.float32) * dx - (w - 1) / 2
        px = linear[:, 0, 0, None, None] * xc + linear[:, 0, 1, None, None] * yc[:, None]
        py = linear[:, 1, 0, None, None] * xc + linear[:, 1, 1, None, None] * yc[:, None]
        field = torch.stack([px, py], 1)  # [N, 2, ny, nx] input positions in pixels
        if elastic:
            gy, gx = self._matrix(ny, dy, dev), self._matrix(nx, dx, dev)
            white = torch.randn(n, 2, gy.shape[1], gx.shape[1], device=dev, generator=noise_gen)
            smooth = gy @ white @ gx.T
            on = u[:, _ELASTIC] < self.elastic_p
            peak = smooth.square().sum(1).sqrt().amax((-2, -1)).clamp_min(1e-12)
            field += smooth * (self.elastic_alpha * on / peak)[:, None, None, None]
        # Pixel offsets -> normalised coordinates: x_n = (x + (w - 1) / 2 + 0.5) * 2 / w - 1 = 2 x / w.
        field[:, 0] *= 2.0 / w
        field[:, 1] *= 2.0 / h
        if (ny, nx) != (h, w):
            field = F.interpolate(field, size=(h, w), mode="bilinear", align_corners=True)
        return field.permute(0, 2, 3, 1).contiguous()

    @staticmethod
    def _dihedral_exact(
        image: torch.Tensor, mask: torch.Tensor, code: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Flips (bit 0: horizontal, bit 1: vertical) then rot90 (bit 2) by index operations, one
        batched op per group element present; ``image`` is modified in place, ``mask`` is copied."""
        mask = mask.clone()
        for k in torch.unique(code).tolist():
            if k == 0:
                continue
            idx = (code == k).nonzero().squeeze(1)
            im, ma = image.index_select(0, idx), mask.index_select(0, idx)
            if k & 1:
                im, ma = im.flip(-1), ma.flip(-1)
            if k & 2:
                im, ma = im.flip(-2), ma.flip(-2)
            if k & 4:
                im, ma = im.rot90(1, (-2, -1)), ma.rot90(1, (-2, -1))
            image.index_copy_(0, idx, im.contiguous())
            mask.index_copy_(0, idx, ma.contiguous())
        return image, mask

    def _blur(self, image: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Gaussian blur (radius ``ceil(3 * max sigma)``, replicated border) of the chosen samples, in place."""
        idx = (u[:, _BLUR] < self.blur_p).nonzero().squeeze(1)
        if idx.numel() == 0:
            return image
        n, c, h, w = image.shape
        chosen = idx.numel()
        # Round the number of blurred samples up to a multiple of 8 (repeating some, discarded after):
        # convolution backends compile a kernel per shape, and a new count every batch would keep
        # paying for that.
        idx = idx[torch.arange(min(n, -(-chosen // 8) * 8), device=idx.device) % chosen]
        lo, hi = self.blur_sigma
        sigma = lo + (hi - lo) * u[idx, _BLUR_SIGMA]
        r = max(1, math.ceil(3.0 * hi))
        taps = torch.arange(-r, r + 1, device=image.device, dtype=torch.float32)
        kernel = torch.exp(-(taps**2) / (2.0 * sigma[:, None] ** 2))
        kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [k * C, 2r + 1]
        groups = kernel.shape[0]
        x = F.pad(image.index_select(0, idx).reshape(1, groups, h, w), (r, r, r, r), mode="replicate")
        x = F.conv2d(x, kernel.view(groups, 1, 1, -1), groups=groups)
        x = F.conv2d(x, kernel.view(groups, 1, -1, 1), groups=groups)
        return image.index_copy_(0, idx[:chosen], x.view(-1, c, h, w)[:chosen])

    # ------------------------------------------------------------------ forward

    def forward(
        self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment ``image`` ``[N, C, H, W]`` (uint8, int32 or float, values in ``[0, value_range]``)
        and ``mask`` ``[N, H, W]`` (integer class ids) together.

        Returns the image as float32 ``[N, C, H, W]`` in ``[0, value_range]`` and the mask in its
        input dtype. With a ``generator`` (on the batch's device or the CPU) the result depends only
        on its seed. Runs without autograd and outside any autocast region (the grid needs float32).
        """
        with torch.no_grad(), torch.autocast(device_type=image.device.type, enabled=False):
            return self._augment(image, mask, generator)

    def _augment(
        self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if (
            image.dim() != 4
            or mask.dim() != 3
            or image.shape[0] != mask.shape[0]
            or image.shape[-2:] != mask.shape[-2:]
        ):
            shapes = f"{tuple(image.shape)} and {tuple(mask.shape)}"
            raise ValueError(f"expected image [N, C, H, W] and mask [N, H, W], got {shapes}")
        if mask.dtype.is_floating_point or mask.dtype.is_complex:
            raise ValueError(f"mask must hold integer class ids, got {mask.dtype}")
        dev = image.device
        if generator is not None and not _same_device(generator.device, dev):
            seed = int(torch.randint(0, 2**62, (), generator=generator))
            generator = torch.Generator(device=dev).manual_seed(seed)
        n, _, h, w = image.shape
        rng = self.value_range
        u = torch.rand(n, _NUM_DRAWS, device=dev, generator=generator)
        x = image.to(torch.float32, copy=True)

        # Pointwise intensity, one multiply-add after the power:
        # x <- (x / R) ** g * (R * c) + (mean * (1 - c) + b * R).
        factor = torch.ones(n, device=dev)
        shift = torch.zeros(n, device=dev)
        if self.gamma > 0:
            g = torch.exp(math.log1p(self.gamma) * (2 * u[:, _GAMMA] - 1))
            x = x.clamp_(0.0, rng).div_(rng).pow_(g[:, None, None, None])
            factor = factor * rng
        if self.contrast > 0:
            c = 1.0 + self.contrast * (2 * u[:, _CONTRAST] - 1)
            shift = shift + x.mean((1, 2, 3)) * factor * (1 - c)
            factor = factor * c
        if self.brightness > 0:
            shift = shift + self.brightness * rng * (2 * u[:, _BRIGHT] - 1)
        if self.gamma > 0 or self.contrast > 0 or self.brightness > 0:
            x = x.mul_(factor[:, None, None, None]).add_(shift[:, None, None, None])

        # Geometry: one grid for everything when anything in the batch is warped, else exact index ops.
        outside = None
        if bool(self._warped(u).any()):
            grid = self._grid(u, generator, h, w)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            offset = 1 - mask.amin().clamp(max=0).to(torch.float32)  # sampled ids >= 1, outside = 0
            m = F.grid_sample(
                mask.to(torch.float32).add_(offset)[:, None],
                grid,
                mode="nearest",
                padding_mode="zeros",
                align_corners=False,
            )
            outside = m == 0
            mask = m.sub_(offset).masked_fill_(outside, self.ignore_index)[:, 0].to(mask.dtype)
        else:
            code = torch.zeros(n, dtype=torch.long, device=dev)
            if self.hflip:
                code += u[:, _HFLIP] < 0.5
            if self.vflip:
                code += 2 * (u[:, _VFLIP] < 0.5)
            if self.rot90 and h == w:
                code += 4 * (u[:, _ROT90] < 0.5)
            if bool(code.any()):
                x, mask = self._dihedral_exact(x, mask, code)
            else:
                mask = mask.clone()

        if self.blur_p > 0:
            x = self._blur(x, u)
        if self.noise_std > 0:
            std = self.noise_std * u[:, _NOISE]
            x = x.addcmul_(torch.randn(x.shape, device=dev, generator=generator), std[:, None, None, None])
        if outside is not None:
            x = x.masked_fill_(outside, 0.0)
        return x.clamp_(0.0, rng), mask
