"""Sentinel tokens, and the checks that none of them shows anywhere a caller or a log can see.

``SENTINEL`` is UUID-shaped so that Consul accepts it as a real SecretID (tests/test_secrets.py
creates it on the ACL agent); the others are never known to Consul.
"""

from __future__ import annotations

import json
import logging
import traceback
import uuid
from collections.abc import Iterable
from typing import Any

from handler_consul import InfraError

from .envelopes import exception_chain

SENTINEL = str(uuid.uuid4())  # a real SecretID on the ACL agent (test_secrets.sentinel_token)
SENTINEL_TEXT = "sentinel-4f1d2c9e-secret-token"  # never known to Consul
UNKNOWN_UUID = str(uuid.uuid4())  # UUID-shaped, never known to Consul
NEEDLES = (SENTINEL, SENTINEL.split("-")[-1], SENTINEL_TEXT, UNKNOWN_UUID)


def assert_no_secret(text: str, where: str, needles: Iterable[str] = NEEDLES) -> None:
    for needle in needles:
        assert needle not in text, f"token found in {where}: {text[:300]!r}"


def assert_error_clean(error: BaseException, needles: Iterable[str] = NEEDLES) -> None:
    """The error, every exception chained to it, their args, dicts and formatted traceback."""
    needles = tuple(needles)
    for exc in exception_chain(error):
        name = type(exc).__name__
        assert_no_secret(str(exc), f"str({name})", needles)
        assert_no_secret(repr(exc), f"repr({name})", needles)
        assert_no_secret(repr(exc.args), f"{name}.args", needles)
        if isinstance(exc, InfraError):
            assert_no_secret(json.dumps(exc.to_dict()), f"{name}.to_dict()", needles)
            assert_no_secret(repr(exc.context), f"{name}.context", needles)
    assert_no_secret("".join(traceback.format_exception(error)), "formatted traceback", needles)


def assert_logs_clean(records: list[logging.LogRecord], needles: Iterable[str] = NEEDLES) -> None:
    """Every record's message, every attribute (repr and str) and any formatted exception."""
    needles = tuple(needles)
    formatter = logging.Formatter()
    for record in records:
        where = f"log record {record.name}:{record.lineno}"
        assert_no_secret(record.getMessage(), where, needles)
        for attr, value in record.__dict__.items():
            assert_no_secret(repr(value), f"{where} .{attr}", needles)
            assert_no_secret(str(value), f"{where} .{attr}", needles)
        if record.exc_info:
            formatted = formatter.formatException(record.exc_info)
            assert_no_secret(formatted, f"{where} exc_info", needles)


def assert_introspection_clean(handler: Any, needles: Iterable[str] = NEEDLES) -> None:
    """``repr``, ``str`` and ``describe()`` of the handler."""
    needles = tuple(needles)
    assert_no_secret(repr(handler), "repr(handler)", needles)
    assert_no_secret(str(handler), "str(handler)", needles)
    assert_no_secret(json.dumps(handler.describe()), "describe()", needles)
