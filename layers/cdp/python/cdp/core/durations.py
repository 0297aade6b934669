"""Durations as written in segment definitions: ``10m``, ``24h``, ``7d``, ``26w``."""

from __future__ import annotations

import re

MINUTE = 60
HOUR = 3600
DAY = 86400
WEEK = 7 * DAY

_UNITS = {"s": 1, "m": MINUTE, "h": HOUR, "d": DAY, "w": WEEK}
_PATTERN = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")


def parse_duration(text: object, *, allow_zero: bool = False) -> int:
    """Return the duration in seconds, or raise ValueError saying what is wrong."""
    if isinstance(text, bool) or not isinstance(text, str):
        raise ValueError(f"{text!r} is not a duration (write e.g. 10m, 24h, 7d, 26w)")
    match = _PATTERN.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (write e.g. 10m, 24h, 7d, 26w)")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0 and not allow_zero:
        raise ValueError(f"{text!r} must be longer than zero")
    return seconds


def format_duration(seconds: int) -> str:
    """A readable exact spelling: 10m, 24h, 2d, 7d, 26w (the largest unit that gives at least 2)."""
    if seconds == 0:
        return "0s"
    for unit, size in (("w", WEEK), ("d", DAY), ("h", HOUR), ("m", MINUTE)):
        if seconds % size == 0 and (seconds // size >= 2 or size == MINUTE):
            return f"{seconds // size}{unit}"
    for unit, size in (("w", WEEK), ("d", DAY), ("h", HOUR), ("m", MINUTE)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
