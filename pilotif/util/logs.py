"""Structured logging: one line per event, as `key=value` text or as JSON.

Nothing here is called per packet; the data path only bumps counters.
"""

import json
import logging
import sys
import time
from typing import Any

_LOGGER = logging.getLogger("pilotif")


class _EventFormatter(logging.Formatter):
    def __init__(self, as_json: bool) -> None:
        super().__init__()
        self._as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", {})
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        stamp += f".{int(record.msecs):03d}Z"
        if self._as_json:
            return json.dumps(
                {"time": stamp, "level": record.levelname.lower(), "event": record.msg, **fields},
                default=str,
            )
        text = " ".join(f"{key}={_quote(value)}" for key, value in fields.items())
        return f"{stamp} {record.levelname.lower()} {record.msg} {text}".rstrip()


def _quote(value: object) -> str:
    text = str(value)
    if not text or not text.isprintable() or any(c in text for c in ' "='):
        return json.dumps(text)
    return text


def setup_logging(*, as_json: bool = False) -> None:
    """Send events to stderr (the daemon's stderr is its log file)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_EventFormatter(as_json))
    _LOGGER.handlers[:] = [handler]
    _LOGGER.setLevel(logging.INFO)
    _LOGGER.propagate = False


def log_event(event: str, *, level: int = logging.INFO, **fields: object) -> None:
    """Log one event with its fields."""
    _LOGGER.log(level, event, extra={"fields": fields})
