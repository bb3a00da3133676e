"""Leaderboard of training runs: ``python -m segkit.summarize <dir> [<dir> ...] [--metric val/miou] [--out DIR]``.

Each ``<dir>`` may be a sweep dir (``outputs/train/multiruns/<stamp>``), a runs dir (``outputs/train/runs``)
or one run dir. Every run dir below it (a folder holding ``status.json``, ``metrics.json`` or
``.hydra/overrides.yaml``) becomes one row. Writes into ``--out`` (default: the first dir):

- ``leaderboard.md`` / ``leaderboard.csv``: one row per run, best first by ``--metric`` (higher is better,
  lower for a ``loss`` metric; runs without the metric next, failed runs last), the swept overrides (those
  that differ between runs; the CSV also has all of them), per-class validation IoU, mIoU/mDice/pixel
  accuracy, test mIoU, best epoch, epochs, wall time;
- a seed summary (in the Markdown, and ``seed_summary.csv``) when runs whose overrides are identical apart
  from ``seed=`` form a group of two or more: n, mean and sample standard deviation (ddof=1) of every val/test
  metric;
- ``metric_vs_<param>.png`` for each swept parameter.

Run status comes from the run's ``status.json`` (completed, failed with its reason, interrupted; ``running`` is
shown as ``running/killed``: a killed process never updates it); without it a run with ``metrics.json`` counts as
completed (older runs), else ``unknown``.
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
