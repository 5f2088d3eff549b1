"""Logging for the CLI: stderr, with each record's structured fields shown."""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import IO, Any

from handler_consul._log import CorrelationIdFilter, record_fields

# -- logging ---------------------------------------------------------------------------------


def _iso_utc(record: logging.LogRecord) -> str:
    """ISO 8601 in UTC with milliseconds and the zone, e.g. 2026-12-01T04:32:13.629Z:
    sortable, unambiguous across hosts, and what log pipelines parse without a hint."""
    moment = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class FieldsFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...`` with the record's structured fields."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _iso_utc(record)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = record_fields(record)
        if not fields:
            return text
        return text + " " + " ".join(f"{k}={v}" for k, v in fields.items())


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and the structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": _iso_utc(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **record_fields(record),
        }
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def configure_logging(level: str, fmt: str, stream: IO[str] | None = None) -> None:
    """Send the ``handler_consul`` logger tree to stderr; leave the root logger alone."""
    handler = logging.StreamHandler(stream or sys.stderr)
    # Every record gets a correlation_id ("-" outside an envelope), so the field is always
    # there for whoever filters on it.
    handler.addFilter(CorrelationIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else FieldsFormatter())
    root = logging.getLogger("handler_consul")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
