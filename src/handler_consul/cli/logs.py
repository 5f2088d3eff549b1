"""Logging for the CLI: stderr, with each record's structured fields shown."""

from __future__ import annotations

import json
import logging
import sys
from typing import IO, Any

# -- logging ---------------------------------------------------------------------------------

_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_FIRST_FIELDS = ("correlation_id", "operation", "attempt", "duration_ms", "outcome")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields a record carries (its ``extra=``), the envelope ones first."""
    extra = {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS}
    first = {k: extra.pop(k) for k in _FIRST_FIELDS if k in extra}
    return {**first, **extra}


class FieldsFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...`` with the record's structured fields."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = _fields(record)
        if not fields:
            return text
        return text + " " + " ".join(f"{k}={v}" for k, v in fields.items())


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and the structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def configure_logging(level: str, fmt: str, stream: IO[str] | None = None) -> None:
    """Send the ``handler_consul`` logger tree to stderr; leave the root logger alone."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else FieldsFormatter())
    root = logging.getLogger("handler_consul")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
