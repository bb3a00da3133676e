"""Hydra callbacks for sweeps: when a ``-m`` sweep ends, write its leaderboard (``segkit.summarize``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SummarizeSweep(Callback):
    """After the last trial: ``leaderboard.md`` / ``.csv``, seed summary and plots in the sweep dir, and
    one line saying how many trials failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from segkit.errors import SegkitError
        from segkit.evaluation.leaderboard import summarize

        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        try:
            result = summarize([sweep_dir], metric=str(config.get("optimized_metric") or "val/miou"), out=sweep_dir)
        except (SegkitError, OSError, ValueError) as err:  # a summary must never turn a finished sweep into an error
            print(f"segkit: no leaderboard for {sweep_dir}: {err}", file=sys.stderr, flush=True)
            return
        board = sweep_dir / "leaderboard.md"
        if board.is_file():
            leaderboard_to_tensorboard(board, sweep_dir / "tensorboard_leaderboard")
        runs = result.get("runs", []) if isinstance(result, dict) else []
        failed = sum(1 for r in runs if getattr(r, "status", None) == "failed")
        print(f"segkit: sweep finished: {len(runs)} trials, {failed} failed; leaderboard: {sweep_dir / 'leaderboard.md'}", flush=True)


def leaderboard_to_tensorboard(board: Path, log_dir: Path) -> None:
    """The sweep's leaderboard (runs ranked by the key metric, the swept parameters beside them) as one
    TensorBoard run with a Text entry: it opens with the sweep, without typing a filter."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(log_dir)) as writer:
        lines = [line for line in board.read_text().splitlines() if not line.startswith("![")]  # PNGs stay in the folder
        writer.add_text("leaderboard", "\n".join(lines), global_step=0)
