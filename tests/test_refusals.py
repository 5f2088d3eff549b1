"""Every refusal sends nothing: bad envelopes fail with InfraValidationError before any request.

The handler talks to the shared agent through a counting proxy. After initialize() its
request count, bytes sent and connection count are noted; a refused envelope must leave all
three unchanged. A final good request proves the proxy was counting all along.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from harness import ConsulAgent, CountingProxy
from support import assert_json_ready, envelope, expected_context, kv_put, settings_for, uniq

from handler_consul import HandlerConsul, InfraValidationError

pytestmark = pytest.mark.usefixtures("clean_consul_env")

SESSION = "8d7f4a4e-5b7c-4b64-9d39-0f6f2a1f0c11"


@pytest.fixture(scope="module")
def proxy(consul_agent: ConsulAgent) -> Iterator[CountingProxy]:
    """One counting proxy for the module (each test compares counts before and after)."""
    with CountingProxy(consul_agent) as counting:
        yield counting


@pytest.fixture
async def handler(proxy: CountingProxy, clean_consul_env: None) -> Any:
    h = HandlerConsul(settings=settings_for(proxy))
    await h.initialize()
    yield h
    await h.shutdown()


def snapshot(proxy: CountingProxy) -> tuple[int, int, int]:
    return proxy.requests, proxy.bytes_up, proxy.connections


async def assert_refused(
    handler: HandlerConsul, proxy: CountingProxy, env: Any, field: str
) -> InfraValidationError:
    before = snapshot(proxy)
    with pytest.raises(InfraValidationError) as caught:
        await handler.execute(env)
    error = caught.value
    assert snapshot(proxy) == before, f"a refused envelope reached Consul: {proxy.paths[-3:]}"
    assert error.context.field == field, str(error)
    assert error.context.category == "validation"
    assert error.context.attempts == 0
    assert error.context.retryable is False
    # The proxy still counts: one good request shows up as exactly one request line.
    await handler.execute(envelope("kv_get", key=f"{uniq('probe')}/k"))
    assert proxy.requests == before[0] + 1
    return error


def case(op: str, payload: dict[str, Any], field: str, id: str, *marks: Any) -> Any:
    return pytest.param(op, payload, field, id=f"{op}-{id}", marks=list(marks))


BAD_PAYLOADS = [
    # keys that would address another endpoint, or are not keys at all
    case(
        "kv_put",
        {"key": "../agent/service/deregister/payments", "value": "x"},
        "payload.key",
        "key-exploit",
    ),
    case("kv_put", {"key": "a/../b", "value": "x"}, "payload.key", "key-dotdot-mid"),
    case("kv_put", {"key": "a/..", "value": "x"}, "payload.key", "key-dotdot-end"),
    case("kv_put", {"key": "..", "value": "x"}, "payload.key", "key-dotdot"),
    case("kv_put", {"key": "a//b", "value": "x"}, "payload.key", "key-empty-segment"),
    case("kv_put", {"key": "/lead", "value": "x"}, "payload.key", "key-leading-slash"),
    case("kv_put", {"key": "./x", "value": "x"}, "payload.key", "key-dot-lead"),
    case("kv_put", {"key": "a/./b", "value": "x"}, "payload.key", "key-dot-mid"),
    case("kv_put", {"key": "a\\..\\b", "value": "x"}, "payload.key", "key-backslash"),
    case("kv_put", {"key": "a\x00b", "value": "x"}, "payload.key", "key-nul"),
    case("kv_put", {"key": "a\nb", "value": "x"}, "payload.key", "key-newline"),
    case("kv_put", {"key": "a\rb", "value": "x"}, "payload.key", "key-cr"),
    case("kv_put", {"key": "a\tb", "value": "x"}, "payload.key", "key-tab"),
    case("kv_put", {"key": "a\x7fb", "value": "x"}, "payload.key", "key-del"),
    case("kv_put", {"key": "a\x1bb", "value": "x"}, "payload.key", "key-esc"),
    case("kv_put", {"key": "k" * 1025, "value": "x"}, "payload.key", "key-too-long"),
    case("kv_put", {"key": "", "value": "x"}, "payload.key", "key-empty"),
    case(
        "kv_put",
        {"key": "a%2F..%2Fb", "value": "x"},
        "payload.key",
        "key-pct-dotdot-slash",
    ),
    case(
        "kv_put",
        {"key": "x/%2e%2e", "value": "x"},
        "payload.key",
        "key-pct-2e2e-suffix",
    ),
    case(
        "kv_put",
        {"key": "%2e%2e/x", "value": "x"},
        "payload.key",
        "key-pct-2e2e-prefix",
    ),
    case("kv_get", {"key": "a%2e%2e"}, "payload.key", "key-pct-2e2e"),
    case("kv_get", {"key": "a/../b"}, "payload.key", "key-dotdot"),
    case("kv_get", {"key": "../agent/self", "recurse": True}, "payload.key", "recurse-dotdot"),
    case("kv_get", {"key": "a//", "keys_only": True}, "payload.key", "keys-empty-segment"),
    # values and numbers
    case(
        "kv_put", {"key": "k", "value": "x" * (512 * 1024 + 1)}, "payload.value", "value-too-large"
    ),
    case(
        "kv_put",
        {"key": "k", "value": b"\x00" * (512 * 1024 + 1)},
        "payload.value",
        "bytes-too-large",
    ),
    case(
        "kv_put",
        {"key": "k", "value": "!!notbase64", "encoding": "base64"},
        "payload.value",
        "value-bad-base64",
    ),
    case(
        "kv_put",
        {"key": "k", "value": "x", "encoding": "latin-1"},
        "payload.encoding",
        "encoding-unknown",
    ),
    case("kv_put", {"key": "k", "value": "x", "flags": 2**64}, "payload.flags", "flags-2e64"),
    case("kv_put", {"key": "k", "value": "x", "flags": -1}, "payload.flags", "flags-negative"),
    case("kv_put", {"key": "k", "value": "x", "cas": -1}, "payload.cas", "cas-negative"),
    case("kv_put", {"key": "k", "value": "x", "cas": 2**64}, "payload.cas", "cas-2e64"),
    # wrong types: never coerced
    case("kv_put", {"key": "k", "value": "x", "flags": True}, "payload.flags", "flags-bool"),
    case("kv_put", {"key": "k", "value": "x", "flags": "1"}, "payload.flags", "flags-str"),
    case("kv_put", {"key": "k", "value": "x", "flags": 1.0}, "payload.flags", "flags-float"),
    case("kv_put", {"key": "k", "value": "x", "cas": "0"}, "payload.cas", "cas-str"),
    case("kv_put", {"key": "k", "value": None}, "payload.value", "value-none"),
    case("kv_put", {"key": "k", "value": 30}, "payload.value", "value-int"),
    case("kv_put", {"key": "k", "value": {"a": 1}}, "payload.value", "value-dict"),
    case("kv_put", {"key": ["k"], "value": "x"}, "payload.key", "key-list"),
    case("kv_put", {"key": 5, "value": "x"}, "payload.key", "key-int"),
    case("kv_get", {"key": "a", "recurse": "true"}, "payload.recurse", "recurse-str"),
    case("kv_get", {"key": "a", "recurse": 1}, "payload.recurse", "recurse-int"),
    case("kv_get", {"key": "a", "keys_only": "yes"}, "payload.keys_only", "keys-only-str"),
    case(
        "kv_get",
        {"key": "a", "consistency": "eventual"},
        "payload.consistency",
        "consistency-unknown",
    ),
    # unknown and missing fields, exclusive options
    case("kv_put", {"key": "k", "value": "x", "ttl": 3}, "payload.ttl", "unknown-field"),
    case("kv_put", {"key": "k", "value": "x", "Key": "k"}, "payload.Key", "wrong-case-field"),
    case("kv_put", {"key": "k"}, "payload.value", "missing-value"),
    case("kv_put", {"value": "x"}, "payload.key", "missing-key"),
    case("kv_get", {}, "payload.key", "missing-key"),
    case(
        "kv_put",
        {"key": "k", "value": "x", "acquire": SESSION, "release": SESSION},
        "payload",
        "acquire-and-release",
    ),
    case(
        "kv_put",
        {"key": "k", "value": "x", "acquire": "not-a-session"},
        "payload.acquire",
        "acquire-not-uuid",
    ),
    case(
        "kv_put",
        {"key": "k", "value": "x", "release": "../x"},
        "payload.release",
        "release-traversal",
    ),
    case(
        "kv_get",
        {"key": "a", "recurse": True, "keys_only": True},
        "payload",
        "recurse-and-keys-only",
    ),
    case(
        "kv_get",
        {"key": "a", "separator": "/"},
        "payload.separator",
        "separator-without-keys-only",
    ),
    case("kv_get", {"key": ""}, "payload.key", "empty-key-single"),
    case(
        "kv_get",
        {"key": "a", "keys_only": True, "separator": "\n"},
        "payload.separator",
        "separator-control-char",
    ),
    # register: ids, names, addresses, ports, meta, tags, checks
    case("register", {"service_id": "a/b", "name": "svc"}, "payload.service_id", "id-slash"),
    case("register", {"service_id": "..", "name": "svc"}, "payload.service_id", "id-dotdot"),
    case(
        "register", {"service_id": "a..b", "name": "svc"}, "payload.service_id", "id-inner-dotdot"
    ),
    case("register", {"service_id": "a?b", "name": "svc"}, "payload.service_id", "id-question"),
    case("register", {"service_id": "a#b", "name": "svc"}, "payload.service_id", "id-hash"),
    case("register", {"service_id": "a b", "name": "svc"}, "payload.service_id", "id-space"),
    case("register", {"service_id": "a%2fb", "name": "svc"}, "payload.service_id", "id-percent"),
    case("register", {"service_id": "x" * 129, "name": "svc"}, "payload.service_id", "id-too-long"),
    case("register", {"service_id": "", "name": "svc"}, "payload.service_id", "id-empty"),
    case(
        "register",
        {"consul_service_id": "../x", "name": "svc"},
        "payload.consul_service_id",
        "legacy-id-traversal",
    ),
    case("register", {"name": "a/b"}, "payload.name", "name-slash"),
    case("register", {"name": "a b"}, "payload.name", "name-space"),
    case("register", {"name": ".."}, "payload.name", "name-dotdot"),
    case("register", {"name": "svc", "port": "30"}, "payload.port", "port-str"),
    case("register", {"name": "svc", "port": 1.0}, "payload.port", "port-float"),
    case("register", {"name": "svc", "port": True}, "payload.port", "port-bool"),
    case("register", {"name": "svc", "port": 65536}, "payload.port", "port-too-big"),
    case("register", {"name": "svc", "port": -1}, "payload.port", "port-negative"),
    case("register", {"name": "svc", "address": "0.0.0.0"}, "payload.address", "address-any-v4"),
    case("register", {"name": "svc", "address": "::"}, "payload.address", "address-any-v6"),
    case("register", {"name": "svc", "address": "h/x"}, "payload.address", "address-slash"),
    case("register", {"name": "svc", "address": "a b"}, "payload.address", "address-space"),
    case(
        "register",
        {"name": "svc", "meta": {f"k{i}": "v" for i in range(65)}},
        "payload.meta",
        "meta-65-pairs",
    ),
    case(
        "register",
        {"name": "svc", "meta": {"consul-x": "v"}},
        "payload.meta",
        "meta-reserved-prefix",
    ),
    case("register", {"name": "svc", "meta": {"k": "v" * 513}}, "payload.meta", "meta-value-513"),
    case("register", {"name": "svc", "meta": {"k" * 129: "v"}}, "payload.meta", "meta-key-129"),
    case("register", {"name": "svc", "meta": {"bad key": "v"}}, "payload.meta", "meta-key-space"),
    case("register", {"name": "svc", "meta": {"bad.key": "v"}}, "payload.meta", "meta-key-dot"),
    case("register", {"name": "svc", "meta": {"k": 1}}, "payload.meta.k", "meta-value-int"),
    case("register", {"name": "svc", "tags": "a"}, "payload.tags", "tags-str"),
    case("register", {"name": "svc", "tags": ["a\nb"]}, "payload.tags.0", "tag-newline"),
    case(
        "register",
        {"name": "svc", "check": {"ttl": "10"}},
        "payload.check.ttl",
        "check-bad-duration",
    ),
    case(
        "register",
        {"name": "svc", "check": {"http": "http://x"}},
        "payload.check",
        "check-no-interval",
    ),
    case(
        "register",
        {"name": "svc", "check": {"ttl": "1s", "tcp": "h:1", "interval": "1s"}},
        "payload.check",
        "check-two-kinds",
    ),
    case(
        "register",
        {"name": "svc", "check": {"http": "file:///etc/passwd", "interval": "1s"}},
        "payload.check.http",
        "check-file-url",
    ),
    case(
        "register",
        {"name": "svc", "check": {"script": "rm -rf /", "interval": "1s"}},
        "payload.check.script",
        "check-script",
    ),
    case(
        "register",
        {"name": "svc", "weights": {"passing": 0}},
        "payload.weights.passing",
        "weights-zero",
    ),
    case(
        "register",
        {"name": "svc", "enable_tag_override": "yes"},
        "payload.enable_tag_override",
        "tag-override-str",
    ),
    case("register", {"name": "svc", "Name": "x"}, "payload.Name", "unknown-field"),
    case("register", {"port": 1}, "payload.name", "missing-name"),
    case("deregister", {"service_id": "../../../kv/x"}, "payload.service_id", "id-traversal"),
    case("deregister", {"service_id": "a/b"}, "payload.service_id", "id-slash"),
    case(
        "deregister", {"consul_service_id": "a?x=1"}, "payload.consul_service_id", "legacy-id-query"
    ),
    case("deregister", {}, "payload.service_id", "missing-id"),
    case("deregister", {"service_id": 5}, "payload.service_id", "id-int"),
    case("deregister", {"service_id": "a", "extra": True}, "payload.extra", "unknown-field"),
    # discovery: every field of discover, services and check_update, and datacenter anywhere
    case("discover", {}, "payload.service", "missing-service"),
    case("discover", {"service": "a/b"}, "payload.service", "service-slash"),
    case("discover", {"service": ".."}, "payload.service", "service-dotdot"),
    case("discover", {"service": "a?b"}, "payload.service", "service-query"),
    case("discover", {"service": 5}, "payload.service", "service-int"),
    case("discover", {"service": "web", "tags": "a"}, "payload.tags", "tags-str"),
    case("discover", {"service": "web", "tags": ["a\nb"]}, "payload.tags.0", "tag-newline"),
    case("discover", {"service": "web", "tags": [""]}, "payload.tags.0", "tag-empty"),
    case(
        "discover",
        {"service": "web", "tags": [f"t{i}" for i in range(65)]},
        "payload.tags",
        "tags-65",
    ),
    case(
        "discover",
        {"service": "web", "passing_only": "true"},
        "payload.passing_only",
        "passing-str",
    ),
    case("discover", {"service": "web", "passing_only": 1}, "payload.passing_only", "passing-int"),
    case("discover", {"service": "web", "cache": "no"}, "payload.cache", "cache-str"),
    case("discover", {"service": "web", "datacenter": "dc/1"}, "payload.datacenter", "dc-slash"),
    case("discover", {"service": "web", "datacenter": "dc1&x=1"}, "payload.datacenter", "dc-query"),
    case("discover", {"service": "web", "datacenter": ""}, "payload.datacenter", "dc-empty"),
    case("discover", {"service": "web", "datacenter": "d" * 65}, "payload.datacenter", "dc-65"),
    case("discover", {"service": "web", "datacenter": "dc 1"}, "payload.datacenter", "dc-space"),
    case("discover", {"service": "web", "datacenter": 1}, "payload.datacenter", "dc-int"),
    case("discover", {"service": "web", "near": "a/b"}, "payload.near", "near-slash"),
    case("discover", {"service": "web", "near": ""}, "payload.near", "near-empty"),
    case("discover", {"service": "web", "near": "_agentx"}, "payload.near", "near-underscore"),
    case("discover", {"service": "web", "near": "n&tag=x"}, "payload.near", "near-query"),
    case(
        "discover", {"service": "web", "node_meta": {"a:b": "v"}}, "payload.node_meta", "meta-colon"
    ),
    case(
        "discover",
        {"service": "web", "node_meta": {"": "v"}},
        "payload.node_meta",
        "meta-key-empty",
    ),
    case(
        "discover",
        {"service": "web", "node_meta": {"k": "a\nb"}},
        "payload.node_meta",
        "meta-newline",
    ),
    case(
        "discover",
        {"service": "web", "node_meta": {"k": "v" * 513}},
        "payload.node_meta",
        "meta-513",
    ),
    case(
        "discover",
        {"service": "web", "node_meta": {f"k{i}": "v" for i in range(65)}},
        "payload.node_meta",
        "meta-65-pairs",
    ),
    case("discover", {"service": "web", "node_meta": {"k": 1}}, "payload.node_meta.k", "meta-int"),
    case("discover", {"service": "web", "node_meta": ["k:v"]}, "payload.node_meta", "meta-list"),
    case("discover", {"service": "web", "index": 5}, "payload.index", "unknown-field"),
    case("services", {"datacenter": "../dc"}, "payload.datacenter", "dc-traversal"),
    case("services", {"datacenter": None, "x": 1}, "payload.x", "unknown-field"),
    case("kv_get", {"key": "a", "datacenter": "dc?x"}, "payload.datacenter", "dc-query"),
    case(
        "kv_put", {"key": "a", "value": "v", "datacenter": "dc/2"}, "payload.datacenter", "dc-slash"
    ),
    case("check_update", {"status": "passing"}, "payload.check_id", "missing-id"),
    case("check_update", {"check_id": "a/b", "status": "passing"}, "payload.check_id", "id-slash"),
    case(
        "check_update",
        {"check_id": "service:../x", "status": "passing"},
        "payload.check_id",
        "id-dotdot",
    ),
    case("check_update", {"check_id": "a?b", "status": "passing"}, "payload.check_id", "id-query"),
    case(
        "check_update", {"check_id": "c" * 257, "status": "passing"}, "payload.check_id", "id-257"
    ),
    case("check_update", {"check_id": "c"}, "payload.status", "missing-status"),
    case("check_update", {"check_id": "c", "status": "ok"}, "payload.status", "status-unknown"),
    case("check_update", {"check_id": "c", "status": "Passing"}, "payload.status", "status-case"),
    case(
        "check_update",
        {"check_id": "c", "status": "passing", "output": "x" * 4097},
        "payload.output",
        "output-4097",
    ),
    case(
        "check_update",
        {"check_id": "c", "status": "passing", "output": "é" * 2049},
        "payload.output",
        "output-4098-bytes",
    ),
    case(
        "check_update",
        {"check_id": "c", "status": "passing", "output": "\ud800"},
        "payload.output",
        "output-surrogate",
    ),
    case(
        "check_update",
        {"check_id": "c", "status": "passing", "output": 1},
        "payload.output",
        "output-int",
    ),
    # digits that are not ASCII (found by the property tests): str.isdigit() and int() take
    # them, Go does not
    case(
        "register",
        {"name": "svc", "check": {"ttl": "\u0661\u0660s"}},
        "payload.check.ttl",
        "ttl-arabic-indic-digits",
    ),
    case(
        "register",
        {"name": "svc", "check": {"tcp": "h:\u0661\u0662", "interval": "1s"}},
        "payload.check.tcp",
        "tcp-port-arabic-indic-digits",
    ),
    case(
        "endpoint",
        {"service": "web", "fallback": "10.0.0.1:\u0661\u0662\u0663"},
        "payload.fallback",
        "fallback-port-arabic-indic-digits",
    ),
    case(
        "endpoint",
        {"service": "web", "fallback": "10.0.0.1"},
        "payload.fallback",
        "fallback-no-port",
    ),
    case(
        "endpoint", {"service": "web", "fallback": "::1:80"}, "payload.fallback", "fallback-bare-v6"
    ),
    case(
        "endpoint",
        {"service": "web", "fallback": "[h]:80"},
        "payload.fallback",
        "fallback-brackets",
    ),
    case(
        "endpoint",
        {"service": "web", "fallback": "h:65536"},
        "payload.fallback",
        "fallback-port-big",
    ),
    case("endpoint", {"service": "web", "fallback": "a/b:80"}, "payload.fallback", "fallback-path"),
    case(
        "endpoint",
        {"service": "web", "strategy": "fastest"},
        "payload.strategy",
        "strategy-unknown",
    ),
    case(
        "endpoint",
        {"service": "web", "strategy": "least_connections"},
        "payload.strategy",
        "strategy-python-only",
    ),
    case("endpoint", {"service": "a/b"}, "payload.service", "service-slash"),
    case("endpoint", {"service": "web", "datacenter": "x y"}, "payload.datacenter", "dc-space"),
    case(
        "register",
        {"name": "svc", "check": {"ttl": "500ms"}, "maintain": True},
        "payload.maintain",
        "maintain-ttl-under-1s",
    ),
    case("register", {"name": "svc", "maintain": "yes"}, "payload.maintain", "maintain-str"),
]


@pytest.mark.parametrize(("op", "payload", "field"), BAD_PAYLOADS)
async def test_refused_payload_sends_nothing(handler, proxy, op, payload, field):
    correlation_id = uuid.uuid4()
    env = {**envelope(op, **payload), "correlation_id": str(correlation_id)}
    error = await assert_refused(handler, proxy, env, field)
    assert error.context.operation == f"consul.{op}"
    assert error.context.correlation_id == correlation_id
    assert error.errors[0]["field"] == field


BAD_ENVELOPES = [
    pytest.param({"operation": "consul.nope", "payload": {}}, "operation", id="unknown-operation"),
    pytest.param(
        {"operation": "kv_get", "payload": {"key": "a"}}, "operation", id="unprefixed-operation"
    ),
    pytest.param({"payload": {"key": "a"}}, "operation", id="missing-operation"),
    pytest.param({"operation": 5, "payload": {}}, "operation", id="operation-int"),
    pytest.param({"operation": "consul.kv_get"}, "payload.key", id="missing-payload"),
    pytest.param(
        {"operation": "consul.kv_get", "payload": [["key", "a"]]}, "payload", id="payload-list"
    ),
    pytest.param({"operation": "consul.kv_get", "payload": "key=a"}, "payload", id="payload-str"),
    pytest.param(
        {"operation": "consul.kv_get", "payload": {"key": "a"}, "extra": 1},
        "extra",
        id="unknown-envelope-field",
    ),
    pytest.param(
        {"operation": "consul.kv_get", "payload": {"key": "a"}, "correlation_id": "nope"},
        "correlation_id",
        id="bad-correlation-id",
    ),
    pytest.param(
        {"operation": "consul.kv_get", "payload": {"key": "a"}, "envelope_id": 7},
        "envelope_id",
        id="bad-envelope-id",
    ),
    pytest.param(
        {"operation": "consul.kv_get", "payload": {"key": "a"}, "timeout_seconds": 0},
        "timeout_seconds",
        id="timeout-zero",
    ),
    pytest.param(
        {"operation": "consul.kv_get", "payload": {"key": "a"}, "timeout_seconds": -1},
        "timeout_seconds",
        id="timeout-negative",
    ),
    pytest.param("consul.kv_get", "envelope", id="envelope-str"),
    pytest.param(None, "envelope", id="envelope-none"),
    pytest.param([("operation", "consul.kv_get")], "envelope", id="envelope-list"),
]


@pytest.mark.parametrize(("env", "field"), BAD_ENVELOPES)
async def test_refused_envelope_sends_nothing(handler, proxy, env, field):
    await assert_refused(handler, proxy, env, field)


async def test_refusal_message_and_to_dict_never_echo_the_value(handler, proxy):
    secretish = "sentinel-value-7c1e"
    error = await assert_refused(
        handler, proxy, kv_put(key=f"a/../{secretish}", value="x"), "payload.key"
    )
    assert secretish not in str(error)
    assert secretish not in repr(error.to_dict())


async def test_refusal_context_and_to_dict_are_exact(make_handler, consul_agent):
    handler = await make_handler(consul_agent)
    correlation_id = uuid.uuid4()
    with pytest.raises(InfraValidationError) as caught:
        await handler.execute(
            {
                "operation": "consul.kv_put",
                "payload": {"key": "a/../b", "value": "v"},
                "correlation_id": str(correlation_id),
            }
        )
    error = caught.value
    assert error.context.model_dump(mode="json") == expected_context(
        operation="consul.kv_put",
        category="validation",
        retryable=False,
        attempts=0,
        correlation_id=correlation_id,
        field="payload.key",
    )
    data = assert_json_ready(error)
    assert data["errors"][0]["field"] == "payload.key"


async def test_refusal_context_names_the_breaker(proxy, clean_consul_env):
    h = HandlerConsul(settings=settings_for(proxy, datacenter="dc1"))
    await h.initialize()
    try:
        error = await assert_refused(h, proxy, kv_put(key="a//b", value="x"), "payload.key")
    finally:
        await h.shutdown()
    assert (error.context.target, error.context.datacenter) == ("consul.dc1", "dc1")


async def test_bad_keys_do_not_open_the_breaker(proxy, clean_consul_env):
    h = HandlerConsul(settings=settings_for(proxy, breaker={"failure_threshold": 2}))
    await h.initialize()
    try:
        for _ in range(3):
            with pytest.raises(InfraValidationError):
                await h.execute(envelope("kv_get", key="x/%2e%2e"))
        assert h.describe()["circuit_breakers"]["consul.default"]["state"] == "closed"
    finally:
        await h.shutdown()


# -- what is accepted addresses exactly the key it names -------------------------------------------


@pytest.mark.parametrize(
    ("key", "path"),
    [
        ("a?b", "a%3Fb"),
        ("a#b", "a%23b"),
        ("a%2fb", "a%252fb"),
        ("a b", "a%20b"),
        ("a..b/c...", "a..b/c..."),
        ("dir/", "dir/"),
    ],
)
async def test_accepted_odd_keys_address_only_the_kv_endpoint(
    handler, proxy, consul_agent, key, path
):
    prefix = uniq("odd")
    full = f"{prefix}/{key}"
    proxy.reset()
    response = await handler.execute(kv_put(key=full, value="odd"))
    assert response.result == {"key": full, "applied": True}
    (line,) = proxy.request_lines
    assert line == f"PUT /v1/kv/{prefix}/{path} HTTP/1.1"
    got = await handler.execute(envelope("kv_get", key=full))
    assert (got.result["key"], got.result["value"]) == (full, "odd")


# -- the reference exploit, proved harmless --------------------------------------------------------


async def test_kv_put_traversal_does_not_deregister_payments(handler, proxy, consul_agent):
    proxy.reset()  # the module's proxy saw earlier tests' requests (this one's other I/O mode)
    registered = await handler.execute(
        envelope("register", service_id="payments", name="payments", port=8080)
    )
    assert registered.result == {"service_id": "payments", "name": "payments", "registered": True}
    try:
        before = snapshot(proxy)
        with pytest.raises(InfraValidationError) as caught:
            await handler.execute(kv_put(key="../agent/service/deregister/payments", value="pwned"))
        assert caught.value.context.field == "payload.key"
        assert snapshot(proxy) == before
        assert not any("deregister" in p for p in proxy.paths)
        service = consul_agent.request("GET", "/v1/agent/service/payments")
        assert service.status == 200
        assert service.json()["Service"] == "payments"
        # Nothing was written under any spelling of that key either.
        assert consul_agent.request("GET", "/v1/kv/agent/service/deregister/payments").status == 404
    finally:
        await handler.execute(envelope("deregister", service_id="payments"))


async def test_deregister_traversal_does_not_write_kv(handler, proxy, consul_agent):
    # urllib3 would turn this deregister into PUT /v1/kv/x; ours refuses it.
    key = uniq("victim")
    before = snapshot(proxy)
    with pytest.raises(InfraValidationError):
        await handler.execute(envelope("deregister", service_id=f"../../../kv/{key}"))
    assert snapshot(proxy) == before
    assert consul_agent.request("GET", f"/v1/kv/{key}").status == 404
