"""What segkit prints, and where it is kept.

Under a segkit command, Hydra's job logging (``conf/hydra/default.yaml``) sends the ``segkit`` logger and
Lightning's messages to the console and to the run folder's ``<task>.log`` (``train.log``, ``eval.log``,
``predict.log``, ...). :func:`say` is segkit's one way to tell the user something: logged when that is set
up, printed otherwise (a notebook or a test calling ``segkit.training.fit.train`` directly). A record said
with ``console=False`` goes to the log file only (the per-class table while a progress bar is drawing).

Lightning's adverts for other products are dropped wherever segkit runs (:class:`QuietFilter`).
"""

from __future__ import annotations

import logging
import re

LOG = logging.getLogger("segkit")

#: Lightning lines that carry nothing for a segkit user (adverts for other products, absent accelerators)
QUIET_PATTERNS = (
    re.compile(r"^💡 Tip"),
    re.compile(r"litmodels|litlogger", re.IGNORECASE),
    re.compile(r"^(TPU|HPU|IPU) available:"),
)


class QuietFilter(logging.Filter):
    """Drops the records matching :data:`QUIET_PATTERNS`."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.search(message) for p in QUIET_PATTERNS)


class ConsoleFilter(logging.Filter):
    """On the console handler: drops records said with ``console=False`` (they stay in the log file)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return bool(getattr(record, "console", True))


def quiet_lightning() -> None:
    """Install :class:`QuietFilter` on the logger Lightning's ``rank_zero_info`` writes to (idempotent)."""
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero",
                 "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, QuietFilter) for f in logger.filters):
            logger.addFilter(QuietFilter())


def _log_file_configured() -> bool:
    """segkit's job logging is in place: a file handler carrying :class:`QuietFilter` (conf/hydra/default.yaml)."""
    return any(isinstance(h, logging.FileHandler) and any(isinstance(f, QuietFilter) for f in h.filters)
               for h in logging.getLogger().handlers)


def say(message: str, console: bool = True, level: int = logging.INFO) -> None:
    """Tell the user ``message``: to the console (unless ``console=False``) and to the run's log file."""
    if _log_file_configured():
        LOG.log(level, message, extra={"console": console})
    elif console:
        print(message, flush=True)


def warn(message: str) -> None:
    """A warning line, console and log file alike."""
    say(f"WARNING: {message}", level=logging.WARNING)
