"""Logging as an operator meets it: ``%(correlation_id)s`` in a plain ``basicConfig`` format
(``CorrelationIdFilter``), the structured fields a JSON formatter takes (``record_fields``),
and every initialize and shutdown outcome at INFO or WARNING while per-envelope records stay
at DEBUG (docs/patterns/observability.md)."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import textwrap
import uuid

import pytest
from harness import ConsulAgent, Toxiproxy
from pydantic import SecretStr
from support import (
    LogCollector,
    MakeHandler,
    agent_env,
    kv_get,
    kv_put,
    settings_for,
    unique_key,
    with_correlation_id,
)

from handler_consul import (
    ConsulSettings,
    CorrelationIdFilter,
    HandlerConsul,
    InfraConfigurationError,
    InfraConnectionError,
    InfraUnavailableError,
    InfraValidationError,
)
from handler_consul._log import ENVELOPE_FIELDS, NO_CORRELATION_ID, record_fields

pytestmark = pytest.mark.usefixtures("clean_consul_env")


def handler_records(logs: LogCollector, at_least: int = logging.DEBUG) -> list[logging.LogRecord]:
    return [r for r in logs.named("handler_consul") if r.levelno >= at_least]


# -- CorrelationIdFilter -----------------------------------------------------------------------


def test_the_filter_fills_in_a_dash_and_keeps_every_record() -> None:
    bare = logging.makeLogRecord({"msg": "from the application"})
    none = logging.makeLogRecord({"msg": "refused", "correlation_id": None})
    cid = str(uuid.uuid4())
    envelope = logging.makeLogRecord({"msg": "kv_get succeeded", "correlation_id": cid})
    the_filter = CorrelationIdFilter()

    assert all(the_filter.filter(r) for r in (bare, none, envelope))
    assert (bare.correlation_id, none.correlation_id) == (NO_CORRELATION_ID, NO_CORRELATION_ID)
    assert envelope.correlation_id == cid
    fmt = logging.Formatter("%(correlation_id)s %(message)s")
    assert fmt.format(bare) == "- from the application"
    assert fmt.format(envelope) == f"{cid} kv_get succeeded"


_BASIC_CONFIG = textwrap.dedent(
    """\
    import asyncio, logging, sys

    from handler_consul import CorrelationIdFilter, HandlerConsul

    logging.basicConfig(
        stream=sys.stdout,
        level=logging.DEBUG,
        format="%(levelname)s %(correlation_id)s %(name)s: %(message)s",
    )
    if sys.argv[3] == "filter":
        for handler in logging.getLogger().handlers:
            handler.addFilter(CorrelationIdFilter())


    async def main() -> None:
        logging.getLogger("app").info("starting")
        async with HandlerConsul() as handler:
            await handler.execute({
                "operation": "consul.kv_put",
                "payload": {"key": sys.argv[1], "value": "1"},
                "correlation_id": sys.argv[2],
            })


    asyncio.run(main())
    """
)


def _run_basic_config(agent: ConsulAgent, mode: str) -> subprocess.CompletedProcess[str]:
    cid = str(uuid.uuid4())
    return subprocess.run(
        [sys.executable, "-c", _BASIC_CONFIG, unique_key("logfmt"), cid, mode],
        env=agent_env(agent),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_basic_config_with_the_filter_shows_each_records_correlation_id(
    consul_agent: ConsulAgent,
) -> None:
    result = _run_basic_config(consul_agent, "filter")
    assert result.returncode == 0, result.stderr
    assert "Logging error" not in result.stderr, result.stderr
    cid = result.args[4]
    lines = result.stdout.splitlines()
    assert "INFO - app: starting" in lines
    assert f"DEBUG {cid} handler_consul.envelope: consul.kv_put succeeded" in lines
    assert any(line.startswith("INFO - handler_consul.handler: initialized: ") for line in lines)
    assert "INFO - handler_consul.handler: shut down" in lines


def test_without_the_filter_such_a_format_breaks_on_other_records(
    consul_agent: ConsulAgent,
) -> None:
    # Why the filter exists: logging reports a KeyError for every record of no envelope.
    result = _run_basic_config(consul_agent, "no-filter")
    assert result.returncode == 0, result.stderr
    assert "--- Logging error ---" in result.stderr
    assert "correlation_id" in result.stderr


# -- record_fields: what a JSON formatter adds ---------------------------------------------------


async def test_record_fields_put_the_envelope_fields_first(
    handler: HandlerConsul, debug_logs: LogCollector
) -> None:
    env = with_correlation_id(kv_get(unique_key("logfields")))
    await handler.execute(env)
    (record,) = debug_logs.for_correlation(env["correlation_id"])
    CorrelationIdFilter().filter(record)  # a no-op here: the record has its ID
    fields = record_fields(record)
    assert tuple(fields) == ENVELOPE_FIELDS
    assert fields["correlation_id"] == env["correlation_id"]
    assert fields["operation"] == "consul.kv_get"
    assert fields["outcome"] == "success"
    json.dumps(fields, default=str)


def test_record_fields_leave_out_the_placeholder_and_keep_other_extras() -> None:
    record = logging.makeLogRecord(
        {"msg": "circuit breaker", "target": "consul.dc1", "breaker_to": "open"}
    )
    CorrelationIdFilter().filter(record)
    assert record_fields(record) == {"target": "consul.dc1", "breaker_to": "open"}


# -- lifecycle outcomes at INFO or WARNING; envelopes at DEBUG ----------------------------------


async def test_a_failed_initialize_is_one_warning_naming_the_target(
    dead_port: int, info_logs: LogCollector
) -> None:
    handler = HandlerConsul(ConsulSettings(host="127.0.0.1", port=dead_port, timeout_seconds=2))
    with pytest.raises(InfraConnectionError) as caught:
        await handler.initialize()
    (record,) = handler_records(info_logs)
    assert record.levelno == logging.WARNING
    assert record.name == "handler_consul.handler"
    assert record.getMessage() == f"initialize failed: {caught.value.message}"
    assert record.target == "consul.default"


async def test_a_configuration_failure_is_a_warning_without_the_secret(
    info_logs: LogCollector,
) -> None:
    secret = "00000000-0000-4000-8000-00000000beef"
    handler = HandlerConsul(ConsulSettings(token=SecretStr(secret)))
    with pytest.raises(InfraConfigurationError):
        await handler.initialize({"port": 70000})
    (record,) = handler_records(info_logs)
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith("initialize failed: ")
    assert "port" in record.getMessage()
    assert secret not in record.getMessage()
    assert secret not in json.dumps(record_fields(record), default=str)


async def test_initialize_and_shutdown_are_info_and_envelopes_never_above_debug(
    consul_agent: ConsulAgent, info_logs: LogCollector, debug_logs: LogCollector
) -> None:
    async with HandlerConsul(settings_for(consul_agent)) as handler:
        await handler.execute(kv_put(unique_key("loglevels"), "1"))
        with pytest.raises(InfraValidationError):
            await handler.execute(kv_put("../agent/self", "x"))
    # Only the lifecycle reaches INFO: initialized, shut down.
    lifecycle = handler_records(info_logs, logging.INFO)
    assert [(r.levelno, r.getMessage().split(":")[0]) for r in lifecycle] == [
        (logging.INFO, "initialized"),
        (logging.INFO, "shut down"),
    ]
    per_envelope = debug_logs.named("handler_consul.envelope")
    assert len(per_envelope) == 2
    assert {r.levelno for r in per_envelope} == {logging.DEBUG}


async def test_a_shutdown_that_fails_envelopes_says_so_at_warning(
    make_handler: MakeHandler, toxiproxy: Toxiproxy, info_logs: LogCollector
) -> None:
    handler = await make_handler(toxiproxy, shutdown_grace_seconds=0.1, timeout_seconds=5)
    toxiproxy.latency(1500)
    task = asyncio.ensure_future(handler.execute(kv_get(unique_key("loggrace"))))
    await asyncio.sleep(0.05)
    await handler.shutdown()
    with pytest.raises(InfraUnavailableError):
        await task
    records = [(r.levelno, r.getMessage()) for r in handler_records(info_logs, logging.INFO)]
    assert (logging.WARNING, "shutdown: grace period over, failed 1 in-flight envelopes") in (
        records
    )
    assert records[-1] == (logging.INFO, "shut down")


def test_cli_json_logs_carry_iso_8601_utc_times_and_a_correlation_id() -> None:
    """The CLI's JSON lines: a time any log pipeline parses, in UTC with its zone; records of
    no envelope carry no placeholder id in JSON, envelope records carry theirs."""
    import datetime as dt
    import io
    import json as _json

    from handler_consul.cli.logs import configure_logging

    stream = io.StringIO()
    configure_logging("debug", "json", stream)
    ours = logging.getLogger("handler_consul.handler")
    try:
        ours.info("lifecycle line")
        logging.getLogger("handler_consul.envelope").debug(
            "env line", extra={"correlation_id": "6f1c0000-0000-4000-8000-000000000000"}
        )
    finally:
        root = logging.getLogger("handler_consul")
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.addHandler(logging.NullHandler())
        root.propagate = True
        root.setLevel(logging.NOTSET)
    first, second = (_json.loads(line) for line in stream.getvalue().splitlines())
    assert first["time"].endswith("Z")
    parsed = dt.datetime.fromisoformat(first["time"].replace("Z", "+00:00"))
    assert parsed.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.UTC) - parsed).total_seconds()) < 60
    assert "correlation_id" not in first
    assert second["correlation_id"] == "6f1c0000-0000-4000-8000-000000000000"
