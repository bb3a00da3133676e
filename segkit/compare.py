"""Paired comparison of two runs on the same images: ``python -m segkit.compare <runA> <runB> [--split auto|val|test]
[--metric miou|iou/<class>|dice/<class>|pixel_acc] [--n-boot 10000] [--seed 0] [--out DIR]``.

What is compared and how: :mod:`segkit.evaluation.comparison` (prediction and per-image scores) and
:mod:`segkit.evaluation.paired` (bootstrap CI, Wilcoxon test). Writes ``compare.csv`` and ``compare.md``.
"""

from __future__ import annotations

import argparse
import sys

from segkit.errors import exit_on_user_error
from segkit.evaluation.comparison import compare_runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segkit.compare", description=__doc__.splitlines()[0])
    parser.add_argument("run_a", help="run directory A (or a .ckpt inside one)")
    parser.add_argument("run_b", help="run directory B (or a .ckpt inside one)")
    parser.add_argument("--split", default="auto", choices=["auto", "val", "test"], help="auto: test when the runs have one, else val")
    parser.add_argument("--metric", default="miou", help="miou (default), iou/<class>, dice/<class> or pixel_acc")
    parser.add_argument("--n-boot", type=int, default=10000, help="bootstrap resamples (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--out", default=None, help="output dir (default outputs/compare/<A>__vs__<B>)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        result = compare_runs(args.run_a, args.run_b, args.split, args.metric, args.n_boot, args.seed, args.out, args.device)
    print(result["markdown"])
    print(f"Report: {result['out'] / 'compare.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
