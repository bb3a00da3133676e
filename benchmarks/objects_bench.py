"""Objects per second of :func:`segkit.evaluation.objects.object_table` (vectorised) against the former
one-``regionprops``-call-per-object table, on one CPU core.

``python benchmarks/objects_bench.py [--quick]`` measures synthetic instance maps of small shapes on a
grid (discs, squares, rectangles, rings with a hole, lines, single pixels, some cells left empty):

* about 10^4 objects (a 1600 x 1600 map of 16-pixel cells): the new table and the reference, and
  whether the two tables agree (``area``, ``solidity``, ``touches_border``, ids and classes exactly;
  the float columns to 1e-9 relative, see ``tests/evaluation/test_objects_fast.py``);
* about 10^6 objects (an 8192 x 8192 map of 8-pixel cells): the new table only; the reference would
  take about 1,000 s and is not run (the dict says so);
* the tiled table (:func:`~segkit.evaluation.objects.object_table_tiled`, 1024-pixel tiles, objects
  numbered by connected components across the seams) on the 10^4 map, and whether it equals the
  whole-image table;
* with ``../shared/data`` present, the instance maps of a few real masks (darkfield red blood cells
  and spirochaetes, the labelled phase-contrast bacteria): new vs reference.

``run(quick)`` returns the numbers as a dict (``quick`` uses a 2048 x 2048 map instead of the 10^6
case and skips the shared data). numpy is single-threaded here; BLAS threads are pinned to 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

try:
    from segkit.evaluation.objects import (  # noqa: E402
        _object_table_reference,
        instances,
        object_columns,
        object_table,
        object_table_tiled,
    )
except ModuleNotFoundError:  # run as a script from a checkout without an installed segkit
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from segkit.evaluation.objects import (  # noqa: E402
        _object_table_reference,
        instances,
        object_columns,
        object_table,
        object_table_tiled,
    )

CLASS_NAMES = ["background", "cell", "debris"]
SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def _templates(cell: int) -> np.ndarray:
    """Shapes that fit a ``cell`` x ``cell`` square with a 1-pixel gap: [K, cell, cell] bool."""
    yy, xx = np.mgrid[:cell, :cell]
    inner = cell - 1
    out = [np.zeros((cell, cell), bool)]  # an empty cell
    one = np.zeros((cell, cell), bool)
    one[inner // 2, inner // 2] = True
    out.append(one)
    for r in np.linspace(0.8, (inner - 1) / 2, 6):
        for cy, cx in ((inner / 2 - 0.5, inner / 2 - 0.5), (inner / 2 - 0.3, inner / 2 - 0.7)):
            out.append((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)
    for h in range(1, inner + 1, 2):
        for w in range(1, inner + 1, 3):
            m = np.zeros((cell, cell), bool)
            m[:h, :w] = True
            out.append(m)
    if inner >= 5:  # a ring with a hole, a diagonal line, an L
        ring = (yy - inner / 2) ** 2 + (xx - inner / 2) ** 2
        out.append((ring <= (inner / 2 - 0.5) ** 2) & (ring > 1.5))
        out.append((yy == xx) & (yy < inner))
        ell = np.zeros((cell, cell), bool)
        ell[: inner, 0] = True
        ell[inner - 1, : inner] = True
        out.append(ell)
    return np.stack(out)


def synthetic_instances(n_side: int, cell: int, seed: int = 0) -> tuple[np.ndarray, dict[int, int]]:
    """An ``n_side * cell`` square instance map with one shape (or nothing) per grid cell; ids in raster
    order of the cells, classes 1 and 2 at random."""
    rng = np.random.default_rng(seed)
    t = _templates(cell)
    pick = rng.integers(0, t.shape[0], size=(n_side, n_side))
    masks = t[pick]  # [n, n, cell, cell]
    # shift each shape by a random offset within its slack (columns only: cheap and keeps the gap)
    width = masks.any(axis=2).sum(axis=-1)
    slack = np.maximum(cell - 1 - width, 0)
    shift = (rng.random((n_side, n_side)) * (slack + 1)).astype(np.int64)
    cols = (np.arange(cell)[None, None, :] - shift[..., None]) % cell
    masks = np.take_along_axis(masks, cols[:, :, None, :].repeat(cell, axis=2), axis=3)
    has = masks.any(axis=(2, 3))
    ids = np.zeros((n_side, n_side), dtype=np.int32)
    ids[has] = np.arange(1, int(has.sum()) + 1, dtype=np.int32)
    inst = np.where(masks, ids[:, :, None, None], 0).astype(np.int32)
    inst = inst.transpose(0, 2, 1, 3).reshape(n_side * cell, n_side * cell)
    classes = rng.integers(1, 3, size=int(has.sum()) + 1)
    return inst, {i: int(classes[i]) for i in range(1, int(has.sum()) + 1)}


def compare_tables(new: list[dict], ref: list[dict]) -> dict[str, Any]:
    """Exact equality of ids, classes, area, solidity and touches_border; the largest relative
    difference of each float column; ``equal`` when the exact columns agree and every float column is
    within its tolerance: 1e-9 relative, and for ``minor_axis`` (``eccentricity``) also up to 3e-8 x
    ``major_axis`` (3e-8) absolute, the floor of skimage's ``eigvalsh`` on a near-zero eigenvalue
    (see ``tests/evaluation/test_objects_fast.py``)."""
    out: dict[str, Any] = {"rows_new": len(new), "rows_ref": len(ref)}
    if len(new) != len(ref):
        out["equal"] = False
        return out
    worst: dict[str, float] = {}
    ok = True
    for a, b in zip(new, ref, strict=True):
        if list(a) != list(b):
            ok = False
            break
        for k, v in a.items():
            w = b[k]
            if not isinstance(v, float) or k == "solidity":
                ok &= v == w
                continue
            d = abs(v - w) / max(abs(w), 1.0)
            worst[k] = max(worst.get(k, 0.0), d)
            if k.startswith("minor_axis"):
                major = a["major_axis_um"] if k.endswith("_um") else a["major_axis"]
                ok &= math.isclose(v, w, rel_tol=1e-9, abs_tol=3e-8 * major + 1e-12)
            elif k == "eccentricity":
                ok &= abs(v - w) <= 3e-8
            else:
                ok &= math.isclose(v, w, rel_tol=1e-9, abs_tol=1e-12)
    out["max_rel_diff"] = {k: float(f"{v:.3g}") for k, v in sorted(worst.items())}
    out["equal"] = bool(ok)
    return out


def _time(fn, repeats: int = 1) -> tuple[float, Any]:
    best, result = math.inf, None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def _case(n_side: int, cell: int, reference: bool, tiled: bool, repeats: int) -> dict[str, Any]:
    t_gen = time.perf_counter()
    inst, cls = synthetic_instances(n_side, cell)
    gen = time.perf_counter() - t_gen
    n = len(cls)
    out: dict[str, Any] = {"map": list(inst.shape), "objects": n, "generate_s": round(gen, 2)}
    secs, rows = _time(lambda: object_table(inst, cls, CLASS_NAMES, 0.5, "synthetic"), repeats)
    out["new_s"] = round(secs, 3)
    out["new_objects_per_s"] = round(n / secs)
    secs_c, _ = _time(lambda: object_columns(inst), repeats)  # the numbers without building row dicts
    out["new_columns_s"] = round(secs_c, 3)
    out["new_columns_objects_per_s"] = round(n / secs_c)
    if reference:
        secs_ref, ref = _time(lambda: _object_table_reference(inst, cls, CLASS_NAMES, 0.5, "synthetic"))
        out["reference_s"] = round(secs_ref, 3)
        out["reference_objects_per_s"] = round(n / secs_ref)
        out["speedup"] = round(secs_ref / secs, 1)
        out["vs_reference"] = compare_tables(rows, ref)
    else:
        out["reference"] = f"not run (about {n / 1000:.0f} s at 1,000 objects/s)"
    if tiled:
        lut = np.zeros(n + 1, np.uint8)  # the same objects as a class map (the cells never touch)
        lut[1:] = [cls[i] for i in range(1, n + 1)]
        labels = lut[inst]
        r_inst, r_cls = instances(labels, [1, 2])
        whole = object_table(r_inst, r_cls, CLASS_NAMES)
        secs_t, rows_t = _time(lambda: object_table_tiled(labels, labels.shape, CLASS_NAMES, object_classes=[1, 2],
                                                          tile=1024))
        out["tiled_components_s"] = round(secs_t, 3)
        out["tiled_components_objects_per_s"] = round(n / secs_t)
        out["tiled_equals_whole"] = rows_t == whole
    return out


def _new_vs_ref(inst: np.ndarray, cls: dict[int, int], names: list[str], image: str) -> dict[str, Any]:
    t_new, new = _time(lambda: object_table(inst, cls, names, image=image))
    t_ref, ref = _time(lambda: _object_table_reference(inst, cls, names, image=image))
    return {"objects": len(cls), "new_s": round(t_new, 3), "reference_s": round(t_ref, 3), **compare_tables(new, ref)}


def _shared_masks() -> dict[str, Any]:
    """New vs reference on the instance maps of a few real masks in ../shared/data."""
    if not SHARED.is_dir():
        return {"skipped": f"{SHARED} not found"}
    from PIL import Image

    out: dict[str, Any] = {}
    masks = sorted((SHARED / "darkfield" / "masks").glob("*.png"))[:3]
    for p in masks:
        with Image.open(p) as im:
            lab = np.asarray(im)
        lab = lab[..., 0] if lab.ndim == 3 else lab
        inst, cls = instances(lab, [1, 2])
        out[f"darkfield/{p.name}"] = _new_vs_ref(inst, cls, ["background", "rbc", "spirochaete"], p.name)
    phase = SHARED / "phase_bacteria" / "Masks"
    if (phase / "image_027_mask_cells.npy").exists():
        cells = np.load(phase / "image_027_mask_cells.npy") > 0
        edges = np.load(phase / "image_027_mask_edges.npy") > 0
        lab = np.zeros(cells.shape, np.uint8)
        lab[cells] = 1
        lab[edges] = 2
        names = ["background", "cell", "edge"]
        for tag, edge in (("components", None), ("watershed", 2)):
            inst, cls = instances(lab, [1], edge)
            out[f"phase_bacteria/027 ({tag})"] = _new_vs_ref(inst, cls, names, "027")
    out["all_equal"] = all(v.get("equal") for v in out.values() if isinstance(v, dict))
    return out


def run(quick: bool = False) -> dict[str, Any]:
    """Objects per second of the new table (10^4 and 10^6 objects) vs the reference (10^4 only)."""
    res: dict[str, Any] = {"threads": 1}
    res["objects_1e4"] = _case(100, 16, reference=True, tiled=True, repeats=1 if quick else 3)
    if quick:
        res["objects_6e4"] = _case(256, 8, reference=False, tiled=False, repeats=1)
    else:
        res["objects_1e6"] = _case(1024, 8, reference=False, tiled=False, repeats=1)
        res["shared_data"] = _shared_masks()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2048 x 2048 instead of the 10^6 case; no shared data")
    ap.add_argument("--json", type=Path, help="also write the dict to this file")
    args = ap.parse_args()
    res = run(args.quick)
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
