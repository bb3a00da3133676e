"""``python -m segkit.analysis sizes <objects.csv> <objects.csv> [...] --class cell [--value area] [--png sizes.png]``

Compares the size distributions of one object class between object tables (``segkit.predict``'s
``objects.csv``, ``segkit.eval``'s ``objects_true.csv`` / ``objects_pred.csv``): every pair of tables
gets the two-sample Kolmogorov-Smirnov statistic and p-value, pooled over the images of each table
(as the phase-contrast write-up compared cell sizes of unlabelled images with the hand-labelled one).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
from pathlib import Path

import numpy as np

from segkit.errors import SegkitError, exit_on_user_error
from segkit.evaluation.objects import size_distribution_test, size_histogram_png


def read_sizes(path: Path, class_name: str, value: str) -> list[float]:
    if not path.is_file():
        raise SegkitError(f"object table '{path}' does not exist; expected an objects.csv written by segkit.predict or segkit.eval")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if rows and value not in rows[0]:
        raise SegkitError(f"object table '{path}' has no column '{value}'; expected one of {sorted(rows[0])}")
    return [float(r[value]) for r in rows if r.get("class") == class_name and r.get(value) not in (None, "")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segkit.analysis", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sizes = sub.add_parser("sizes", help="KS tests between the size distributions of object tables")
    sizes.add_argument("tables", nargs="+", type=Path)
    sizes.add_argument("--class", dest="class_name", required=True, help="object class name, e.g. cell")
    sizes.add_argument("--value", default="area", help="column to compare (area, area_um2, major_axis, ...)")
    sizes.add_argument("--labels", nargs="*", default=None, help="a name per table for the plot (default: file paths)")
    sizes.add_argument("--png", type=Path, default=None, help="write overlaid histograms here")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    with exit_on_user_error():
        if len(args.tables) < 2:
            raise SegkitError("sizes needs at least two object tables; expected e.g. predicted/objects.csv labelled/objects_true.csv")
        labels = args.labels or [str(t) for t in args.tables]
        if len(labels) != len(args.tables):
            raise SegkitError(f"--labels has {len(labels)} names for {len(args.tables)} tables; expected one per table")
        groups = {lab: read_sizes(t, args.class_name, args.value) for lab, t in zip(labels, args.tables, strict=True)}
        for lab, values in groups.items():
            print(f"{lab}: {len(values)} {args.class_name} objects" + (f", median {args.value} {float(np.median(values)):.1f}" if values else ""))
        for a, b in itertools.combinations(groups, 2):
            r = size_distribution_test(groups[a], groups[b])
            print(f"KS {a} vs {b}: D = {r['statistic']:.4f}, p = {r['pvalue']:.4g}" + (f" ({r['reason']})" if r.get("reason") else ""))
        if args.png:
            size_histogram_png(groups, args.png, title=f"{args.class_name}: {args.value}", xlabel=args.value.replace("_", " "))
            print(f"histogram: {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
