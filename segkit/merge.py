"""Merge a sharded prediction: ``python -m segkit.merge <output dir>``.

After ``python -m segkit.predict -m shard=range(N) num_shards=N output=<dir>`` (one job per shard, e.g. on
SLURM), writes ``<dir>/predict.json`` (every complete image's record) and the pooled ``<dir>/objects.csv``
from the per-image records and object tables (:func:`segkit.inference.files.merge_outputs`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segkit.errors import SegkitError, exit_on_user_error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segkit.merge", description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="the output= folder the shards of segkit.predict wrote into")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        from segkit.inference.files import merge_outputs

        if not args.output.is_dir():
            raise SegkitError(f"'{args.output}' is not a folder; expected the output= folder of a sharded segkit.predict")
        summary = merge_outputs(args.output)
    objects = sum(int(e.get("objects", 0)) for e in summary["images"])
    print(f"{len(summary['images'])} images merged ({objects} objects) into {args.output / 'predict.json'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
