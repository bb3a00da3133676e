"""Durations on the command line (``budget=45m``), parsed without importing Lightning, so that a bad
value is answered before the heavy imports (``segkit.config_check``)."""

from __future__ import annotations

import math
import re
from typing import Any

from segkit.errors import SegkitError

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_budget(value: Any, key: str = "budget") -> float | None:
    """Seconds from ``45m``, ``2h``, ``1h30m``, ``90s`` or a bare number of minutes; None for null."""
    if value is None or value is False:
        return None
    if isinstance(value, bool):
        raise SegkitError(f"{key} is {value}; expected a duration such as 45m, 2h, 1h30m or 90s (or null)")
    if isinstance(value, (int, float)):
        seconds = float(value) * 60.0
    else:
        text = str(value).strip().lower().replace(" ", "")
        parts = _PART.findall(text)
        if not parts or "".join(f"{n}{u}" for n, u in parts) != text:
            raise SegkitError(f"{key} is '{value}'; expected a duration such as 45m, 2h, 1h30m or 90s (or null)")
        seconds = sum(float(n) * _UNIT[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise SegkitError(f"{key} is '{value}'; expected a positive duration such as 45m, 2h, 1h30m or 90s (or null)")
    return seconds
