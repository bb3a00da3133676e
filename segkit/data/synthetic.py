"""The embedded default dataset: procedurally generated darkfield-like microscopy.

Dark, noisy background; bright ring-shaped "red blood cells" (class 1, the whole disk); thin wavy
bright "spirochaete" curves (class 2, drawn over cells where they cross). Files are written in the
real darkfield layout (``images/NNN.png`` RGB, ``masks/NNN.png`` single-channel class ids), so the
same reader serves both. Generation is deterministic for a given set of parameters.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

try:  # POSIX; elsewhere generation is unlocked (run sweeps sequentially the first time)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

CLASS_NAMES = ("background", "rbc", "spirochaete")
MARKER = "synthetic.json"
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of the generated set; a different spec generates a different set."""

    num_images: int = 48
    min_size: int = 192
    max_size: int = 288
    seed: int = 0


def _blur3(x: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur along the first two axes (a cheap optical point-spread)."""
    p = np.pad(x, [(1, 1), (1, 1)] + [(0, 0)] * (x.ndim - 2), mode="edge")
    x = (p[:-2] + 2 * p[1:-1] + p[2:]) / 4.0
    return (x[:, :-2] + 2 * x[:, 1:-1] + x[:, 2:]) / 4.0


def _draw_cell(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> None:
    h, w = mask.shape
    r = rng.uniform(9.0, 17.0)
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    y0, y1 = int(max(cy - r - 4, 0)), int(min(cy + r + 5, h))
    x0, x1 = int(max(cx - r - 4, 0)), int(min(cx + r + 5, w))
    if y1 <= y0 or x1 <= x0:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    # slightly elliptical cells
    e = rng.uniform(0.85, 1.15)
    d = np.sqrt(((yy - cy) * e) ** 2 + ((xx - cx) / e) ** 2)
    # darkfield shows a bright rim and a dimmer, biconcave centre
    rim = np.exp(-((d - r) ** 2) / (2 * 1.6**2))
    inner = 0.35 * (d < r) * (0.6 + 0.4 * (d / r) ** 2)
    brightness = rng.uniform(120, 190)
    colour = np.array([1.0, rng.uniform(0.55, 0.75), rng.uniform(0.5, 0.7)])
    add = (brightness * (rim + inner))[..., None] * colour
    img[y0:y1, x0:x1] = np.maximum(img[y0:y1, x0:x1], add)
    mask[y0:y1, x0:x1][d <= r + 0.5] = 1


def _draw_spirochaete(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> None:
    h, w = mask.shape
    length = rng.uniform(40, 90)
    amp = rng.uniform(2.0, 4.5)
    period = rng.uniform(7.0, 12.0)
    theta = rng.uniform(0, np.pi)
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    t = np.arange(-length / 2, length / 2, 0.5)
    off = amp * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
    # a gentle overall bend
    off += rng.uniform(-0.01, 0.01) * t**2
    py = cy + t * np.sin(theta) + off * np.cos(theta)
    px = cx + t * np.cos(theta) - off * np.sin(theta)
    y0, y1 = int(max(py.min() - 4, 0)), int(min(py.max() + 5, h))
    x0, x1 = int(max(px.min() - 4, 0)), int(min(px.max() + 5, w))
    if y1 <= y0 or x1 <= x0:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    d2 = (yy[..., None] - py) ** 2 + (xx[..., None] - px) ** 2
    d = np.sqrt(d2.min(axis=-1))
    brightness = rng.uniform(110, 220)
    colour = np.array([rng.uniform(0.85, 1.0), rng.uniform(0.9, 1.0), 1.0])
    add = (brightness * np.exp(-(d**2) / (2 * 1.1**2)))[..., None] * colour
    img[y0:y1, x0:x1] = np.maximum(img[y0:y1, x0:x1], add)
    mask[y0:y1, x0:x1][d <= 1.6] = 2


def generate_sample(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One image ``[H, W, 3]`` uint8 and its class-id mask ``[H, W]`` uint8."""
    img = np.zeros((height, width, 3), dtype=np.float64)
    mask = np.zeros((height, width), dtype=np.uint8)
    area = height * width
    for _ in range(rng.poisson(area / 2600)):
        _draw_cell(img, mask, rng)
    for _ in range(rng.poisson(area / 9000) + 1):
        _draw_spirochaete(img, mask, rng)
    img = _blur3(img)
    # uneven illumination plus sensor noise on a dark background
    yy, xx = np.mgrid[0:height, 0:width]
    vignette = 12 + 10 * np.cos(np.pi * (yy / height - 0.5)) * np.cos(np.pi * (xx / width - 0.5))
    img += vignette[..., None] * np.array([1.0, 0.9, 1.1])
    img += rng.normal(0.0, 6.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def _write_set(folder: Path, spec: SyntheticSpec) -> None:
    rng = np.random.default_rng(spec.seed)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir(parents=True)
    for i in range(spec.num_images):
        h, w = rng.integers(spec.min_size, spec.max_size + 1, size=2)
        image, mask = generate_sample(rng, int(h), int(w))
        Image.fromarray(image, "RGB").save(folder / "images" / f"{i:03d}.png")
        Image.fromarray(mask, "L").save(folder / "masks" / f"{i:03d}.png")
    meta = {"format_version": _FORMAT_VERSION, "class_names": list(CLASS_NAMES), **asdict(spec)}
    (folder / MARKER).write_text(json.dumps(meta, indent=2) + "\n")


def ensure_synthetic(root: str | os.PathLike, spec: SyntheticSpec) -> Path:
    """Generate the set under ``root`` unless the same spec is already there; returns ``root``.

    Concurrent runs (DDP processes, parallel sweep trials) take turns under an exclusive lock on
    ``.<name>.lock`` beside ``root``: the first one writes the set, the others find it finished and
    reuse it, so no process ever replaces a set another one is reading. The set is written into a
    temporary sibling and renamed into place, so a crash never leaves a half-written set either.
    """
    root = Path(root)
    want = {"format_version": _FORMAT_VERSION, "class_names": list(CLASS_NAMES), **asdict(spec)}
    if _holds(root, want):  # the common case: no lock needed to reuse a finished set
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(root.parent / f".{root.name}.lock"):
        if _holds(root, want):  # another process generated it while this one waited
            return root
        if not (root / MARKER).is_file() and root.exists() and any(root.iterdir()):
            from segkit.errors import SegkitError

            raise SegkitError(
                f"data.root '{root}' holds files that segkit did not generate (no {MARKER}); "
                "expected an empty or missing folder for the synthetic dataset, so point data.root elsewhere"
            )
        tmp = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            _write_set(tmp, spec)
            if root.exists():  # an earlier spec's set (or an empty folder): replaced in place
                old = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
                root.rename(old)
                shutil.rmtree(old, ignore_errors=True)
            tmp.rename(root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _holds(root: Path, want: dict) -> bool:
    """Whether ``root`` holds a finished set generated with exactly these parameters."""
    try:
        return json.loads((root / MARKER).read_text()) == want
    except (OSError, json.JSONDecodeError):
        return False


@contextmanager
def _exclusive_lock(path: Path):
    """An exclusive advisory lock (``flock``) held for the ``with`` block; released if the process dies."""
    with open(path, "a+b") as f:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
