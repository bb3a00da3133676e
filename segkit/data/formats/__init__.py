"""One reader per on-disk dataset format. Each turns a root folder into decoded :class:`Sample` s and
a list of problems (one sentence each, naming the file), so the checker can report them all at once.

Readers: ``folder`` (``images/`` + ``masks/`` or ``labels/`` matched by stem; also registered as
``darkfield``), ``isbi2012`` (PNG pairs or the challenge's TIFF stacks), ``sunnybrook`` (DICOM + polygon
contours) and ``phase_bacteria`` (one labelled image cut into spatially disjoint regions).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segkit.errors import SegkitError


@dataclass
class Sample:
    """One image: ``image`` ``[H, W, C]`` uint8, ``mask`` ``[H, W]`` uint8 class ids, decoded arrays or, for a
    tile of a large image, :class:`segkit.data.regions.RegionArray` views read on access.
    ``group`` is the unit a split never divides (patient, slice, region); ``source`` names the file(s)."""

    stem: str
    image: np.ndarray | Any
    mask: np.ndarray | Any
    group: str
    source: str
    mask_source: str = ""
    dtype: str = "uint8"  # as stored on disk (before scaling to 8 bits)
    tile: tuple[int, int, int, int] | None = None  # a tile of a large image: (y0, y1, x0, x1) in that image


@dataclass
class Reading:
    """What a reader found: samples, problems (fatal for training, all listed by the checker), notes
    (informational), and a split when the format defines one (e.g. regions of one image)."""

    samples: list[Sample] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    split: dict[str, list[str]] | None = None
    class_names: list[str] | None = None  # e.g. from a codes.txt


@dataclass(frozen=True)
class ReadContext:
    """What every reader needs besides its own options."""

    root: Path
    in_channels: int
    num_classes: int | None
    value_map: dict | None = None
    layout: str = ""
    source: str = ""
    #: large images (OME-Zarr, TIFFs over 4 tiles) are cut into tiles of this many px (segkit.data.regions)
    tile_size: int = 2048

    def missing_root(self) -> SegkitError:
        where = f" Get it from {self.source} and set data.root to its folder." if self.source else ""
        expected = self.layout or "the layout described in the data config"
        return SegkitError(
            f"dataset not found: data.root '{self.root}' (absolute: {self.root.resolve()}) does not exist; expected {expected}.{where}"
        )


Reader = Callable[[ReadContext, dict], Reading]
_READERS: dict[str, Reader] = {}


def register(name: str) -> Callable[[Reader], Reader]:
    def deco(fn: Reader) -> Reader:
        _READERS[name] = fn
        return fn

    return deco


def read_dataset(fmt: str, ctx: ReadContext, options: dict | None = None) -> Reading:
    """Run reader ``fmt`` on ``ctx.root`` (a missing root is raised at once: nothing else to check)."""
    from segkit.data.formats import folder, isbi2012, phase_bacteria, sunnybrook  # noqa: F401  (registration)

    if fmt not in _READERS:
        raise SegkitError(f"data.format is '{fmt}'; expected one of {sorted(_READERS)}")
    if not ctx.root.exists():
        raise ctx.missing_root()
    return _READERS[fmt](ctx, dict(options or {}))


def short_list(names: list[str], n: int = 8) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")
