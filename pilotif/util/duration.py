"""Durations on the command line: `30d`, `12h`, `90m`, `45s`, `2w`, or a sum (`1d12h`)."""

import re
from typing import Final

_UNIT_S: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}
_PART: Final = re.compile(r"(\d+)([smhdw])")
_WHOLE: Final = re.compile(r"(?:\d+[smhdw])+")


class DurationError(ValueError):
    """Text that is not a duration; the message says what one looks like."""


def parse_duration(text: str) -> float:
    """Seconds in a duration such as `30d` or `1h30m` (at least one second)."""
    compact = text.strip().lower()
    if not _WHOLE.fullmatch(compact):
        raise DurationError(
            f"{text!r} is not a duration: a number and a unit (s, m, h, d, w), e.g. 30d or 1h30m"
        )
    seconds = sum(int(number) * _UNIT_S[unit] for number, unit in _PART.findall(compact))
    if seconds < 1:
        raise DurationError(f"{text!r} is not a duration of at least one second")
    return seconds
