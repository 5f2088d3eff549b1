"""Small helpers shared by the product tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any


def uniq(prefix: str = "t") -> str:
    """A name no other test uses (the session agent is shared)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def envelope(operation: str, **payload: Any) -> dict[str, Any]:
    return {"operation": f"consul.{operation}", "payload": payload}


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception reachable through ``__cause__`` and ``__context__``."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for nxt in (current.__cause__, current.__context__):
            if nxt is not None:
                todo.append(nxt)


def context_dict(exc: Any) -> dict[str, Any]:
    """The error context as plain JSON data."""
    data: dict[str, Any] = exc.context.model_dump(mode="json")
    return data


def expected_context(
    *,
    operation: str | None,
    category: str,
    retryable: bool,
    attempts: int,
    correlation_id: Any = None,
    target: str | None = "consul.default",
    datacenter: str | None = None,
    status_code: int | None = None,
    field: str | None = None,
    request_sent: bool | None = None,
    outcome_unknown: bool | None = None,
) -> dict[str, Any]:
    """The exact ``error.context.model_dump(mode="json")`` a test expects.

    Unless given, ``request_sent`` is whether Consul answered with a status (it got the
    request), and ``outcome_unknown`` whether that status was a 5xx (it may have applied it).
    """
    if request_sent is None:
        request_sent = status_code is not None
    if outcome_unknown is None:
        outcome_unknown = status_code is not None and status_code >= 500
    return {
        "transport": "consul",
        "operation": operation,
        "target": target,
        "correlation_id": None if correlation_id is None else str(correlation_id),
        "datacenter": datacenter,
        "attempts": attempts,
        "retryable": retryable,
        "category": category,
        "status_code": status_code,
        "field": field,
        "request_sent": request_sent,
        "outcome_unknown": outcome_unknown,
    }


def recording_proxy(upstream: Any) -> Any:
    """A started CountingProxy that also keeps the raw client-to-Consul bytes in ``.raw``.

    The harness proxy records request lines only; the header block is what proves where the
    token travels (``X-Consul-Token``) and where it does not (the URL).
    """
    import threading

    from harness import CountingProxy

    class RecordingProxy(CountingProxy):
        def __init__(self, upstream: Any) -> None:
            super().__init__(upstream)
            self._raw = bytearray()
            self._raw_lock = threading.Lock()

        def _record(self, buf: bytearray, data: bytes) -> None:
            with self._raw_lock:
                self._raw += data
            super()._record(buf, data)

        @property
        def raw(self) -> bytes:
            with self._raw_lock:
                return bytes(self._raw)

    return RecordingProxy(upstream).start()


class LogCollector:
    """Collects every record that reaches the root logger while installed."""

    def __init__(self) -> None:
        import logging

        collector = self

        class _Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                collector.records.append(record)

        self.records: list[logging.LogRecord] = []
        self.handler = _Handler(logging.DEBUG)

    def named(self, prefix: str) -> list[Any]:
        return [r for r in self.records if r.name == prefix or r.name.startswith(prefix + ".")]

    def for_correlation(self, correlation_id: Any) -> list[Any]:
        cid = str(correlation_id)
        return [r for r in self.records if getattr(r, "correlation_id", None) == cid]


def install_log_collector(level: int) -> tuple[LogCollector, Any]:
    """Install a collector on the root logger with ``handler_consul`` at ``level``.

    Returns the collector and a function that undoes everything.
    """
    import logging

    collector = LogCollector()
    root = logging.getLogger()
    ours = logging.getLogger("handler_consul")
    saved = (root.level, ours.level)
    root.addHandler(collector.handler)
    root.setLevel(logging.DEBUG)
    ours.setLevel(level)

    def undo() -> None:
        root.removeHandler(collector.handler)
        root.setLevel(saved[0])
        ours.setLevel(saved[1])

    return collector, undo
