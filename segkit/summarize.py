"""Leaderboard of training runs: ``python -m segkit.summarize <dir> [<dir> ...] [--metric val/miou] [--out DIR]``.

Each ``<dir>`` may be a sweep dir, a runs dir or one run dir; what is written (leaderboard.md / .csv, seed summary,
plots) and how runs are ranked: :mod:`segkit.evaluation.leaderboard`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segkit.errors import exit_on_user_error
from segkit.evaluation.leaderboard import summarize


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segkit.summarize", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="sweep dirs, runs dirs or run dirs")
    parser.add_argument("--metric", default="val/miou", help="metrics.json key to rank by (default val/miou; 'miou' means val/miou)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the leaderboard (default: the first dir)")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        result = summarize(args.dirs, args.metric, args.out)
    print(result["markdown"])
    print(f"Leaderboard: {result['out'] / 'leaderboard.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
