"""``python -m segkit.data check|stats [data=<name>] [experiment=<name>] [key=value ...]``.

``check`` reads every sample of the configured dataset and prints ALL problems, one line each
(naming the file, what was found, what was expected and the fix), then exits 1 if there were any.
``stats`` prints the train split's statistics and the class weights each method would give.
Both compose the same configuration as ``segkit.train``, so any override that works there works here.
"""

from __future__ import annotations

import sys

from segkit.errors import exit_on_user_error

USAGE = "usage: python -m segkit.data {check,stats} [data=<name>] [data.root=<folder>] [key=value ...]"
HELP = {
    "": f"""{USAGE}

commands:
  check   read every sample of the dataset and print every problem, one line each (the file, what was
          found, what was expected and the fix); exit 0 when clean, 1 with problems, 2 on a config error
  stats   print the train split's statistics and the class weights each method would give

Both compose the same configuration as `python -m segkit.train`: any override that works there works here,
e.g. data=folder data.root=/path/to/data data.value_map='{{255: 1}}' data.in_channels=1.
`python -m segkit.data <command> --help` describes one command.""",
    "check": """usage: python -m segkit.data check [data=<name>] [data.root=<folder>] [key=value ...]

Read every sample of the configured dataset with its reader and print ALL problems, one line each
(`PROBLEM: ...`, naming the file, what was found, what was expected and the fix): unreadable or unpaired
files, size mismatches, blank images, mask values that are not class ids, and data that training would
silently lose (0/255 masks with 255 = data.ignore_index, values data.value_map does not map, alpha
channels that are not opaque, ...). Training runs the same checks and stops on them.
Exit status: 0 no problems, 1 problems found, 2 configuration error.""",
    "stats": """usage: python -m segkit.data stats [data=<name>] [data.root=<folder>] [key=value ...]

Print the train split's statistics (stored dtypes, image sizes, per-channel mean / std / percentiles)
and, per class, the pixel share, the number of images holding it and the class weight each
weighting method would give. Exit status: 0 done, 2 when the data has problems (run `check`).""",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):  # asked for: stdout and exit 0 (Hydra would take it for an override)
        print(HELP[argv[0] if argv[0] in ("check", "stats") else ""])
        return 0
    if not argv or argv[0] not in ("check", "stats"):
        print(USAGE, file=sys.stderr)
        return 2
    from segkit.data.inspect import (  # Lightning (~10 s) only when there is work: --help answers at once
        check,
        stats,
    )

    with exit_on_user_error():
        return check(argv[1:]) if argv[0] == "check" else stats(argv[1:])
    return 2  # pragma: no cover - exit_on_user_error exits


if __name__ == "__main__":
    sys.exit(main())
