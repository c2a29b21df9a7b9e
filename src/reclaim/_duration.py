"""Durations as people write them: ``90``, ``90s``, ``30m``, ``2h``, ``1d``, ``1w``, ``1.5h``."""

from __future__ import annotations

import math
import re
from typing import Final

__all__ = ["parse_duration"]

_UNITS: Final = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_DURATION_RE: Final = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([smhdw]?)\s*", re.IGNORECASE)


def parse_duration(text: str | float) -> float:
    """Seconds in ``text``: a number of seconds, or a number followed by s, m, h, d or w.

    Raises:
        ValueError: the text is not such a duration (the message shows what is accepted).
    """
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a duration")
    if isinstance(text, int | float):
        seconds = float(text)
        if not math.isfinite(seconds):
            raise ValueError(f"{text!r} is not a duration: give a finite number of seconds")
    else:
        match = _DURATION_RE.fullmatch(text)
        if match is None:
            raise ValueError(
                f"{text!r} is not a duration: give seconds (90) or a number with a unit:"
                " 90s, 30m, 2h, 1d, 1w"
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if seconds < 0:
        raise ValueError(f"{text!r}: a duration cannot be negative")
    return seconds
