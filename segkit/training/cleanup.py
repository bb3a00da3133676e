"""A command that stops on a user error before it wrote anything leaves no half-made run folder behind.

Hydra creates the run folder (``outputs/<task>/runs/<time>/`` with ``.hydra/`` and an empty
``<task>.log``) before ``main`` runs. On a :class:`~segkit.errors.SegkitError` that folder is removed,
but only when it is this single run's Hydra folder and holds nothing but Hydra's own records: a sweep
trial's folder (its status.json is the trial's record), a resumed run, or a folder holding anything
else (status.json, logs with content, checkpoints, a file of the user's) is never touched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from segkit.errors import SegkitError
from segkit.training.job import _hydra_config

HYDRA_RECORDS = {"config.yaml", "hydra.yaml", "overrides.yaml"}


def is_unused_run_dir(path: str | Path) -> bool:
    """Only ``.hydra/`` (Hydra's config.yaml, hydra.yaml, overrides.yaml) and empty ``*.log`` files."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return False
    for entry in path.iterdir():
        if entry.is_symlink():
            return False
        if entry.name == ".hydra" and entry.is_dir():
            if any(f.is_symlink() or not f.is_file() or f.name not in HYDRA_RECORDS for f in entry.iterdir()):
                return False
        elif not (entry.suffix == ".log" and entry.is_file() and entry.stat().st_size == 0):
            return False
    return True


def remove_unused_run_dir() -> Path | None:
    """Remove this process's Hydra run folder when :func:`is_unused_run_dir`; returns it when removed.
    File by file, then ``rmdir``: anything that appears meanwhile keeps the folder."""
    from hydra.types import RunMode

    hc = _hydra_config()
    if hc is None or hc.mode != RunMode.RUN:
        return None
    path = Path(hc.runtime.output_dir).resolve()
    cwd = Path.cwd().resolve()
    if path == cwd or path in cwd.parents or not is_unused_run_dir(path):
        return None
    try:
        for entry in path.iterdir():
            if entry.is_dir():
                for f in entry.iterdir():
                    f.unlink()
                entry.rmdir()
            else:
                entry.unlink()
        path.rmdir()
    except OSError:
        return None
    return path


@contextlib.contextmanager
def discard_unused_run_dir(enabled: bool = True) -> Iterator[None]:
    """On a :class:`SegkitError` inside, :func:`remove_unused_run_dir` (when ``enabled``), then re-raise."""
    try:
        yield
    except SegkitError:
        if enabled:
            remove_unused_run_dir()
        raise
