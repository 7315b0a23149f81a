"""Durations as the command line takes them, the same for every option that is one:
seconds (``30``, ``2.5``), or a number with a unit (``30s``, ``2m``, ``12h``, ``7d``),
or several (``1h30m``)."""

from __future__ import annotations

import argparse
import re

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(text: str) -> float:
    """Seconds in ``text`` (see the module).

    Raises:
        ValueError: It is not a duration.
    """
    text = text.strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"not a duration (seconds, or 30s, 2m, 12h, 7d, 1h30m): {text!r}")
    return sum(float(number) * UNITS[unit] for number, unit in parts)


def duration(text: str) -> float:
    """An argparse type: a duration of 0 or more seconds."""
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value < 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds: {text!r}")
    return value


def positive_duration(text: str) -> float:
    """An argparse type: a duration of more than 0 seconds."""
    value = duration(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return value


def whole_seconds(text: str) -> int:
    """An argparse type: a positive duration in whole seconds (an etcd lease's TTL)."""
    value = positive_duration(text)
    if value != int(value):
        raise argparse.ArgumentTypeError(f"must be whole seconds: {text!r}")
    return int(value)
