"""Errors a user can cause and fix, reported on the command line as one sentence without a traceback."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


class SegkitError(Exception):
    """A problem in the user's data, paths or config; the message names the file or key, what was
    found and what was expected."""


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn a :class:`SegkitError` into ``segkit: error: <message>`` on stderr and exit status 2."""
    try:
        yield
    except SegkitError as err:
        print(f"segkit: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
