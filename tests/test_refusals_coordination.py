"""Every new KV-coordination field refuses bad input by name, and nothing is sent.

kv_delete, txn (each operation's fields by position), session_create, session_renew and
session_destroy, watch, and kv_get's cached consistency: as tests/test_refusals.py does for
the first four operations, a counting proxy in front of the shared agent must show the same
request count, bytes and connections after each refusal, and one good request afterwards
proves it was counting.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from harness import ConsulAgent, CountingProxy
from support import envelope, settings_for, uniq

from handler_consul import HandlerConsul, InfraValidationError

pytestmark = pytest.mark.usefixtures("clean_consul_env")

SESSION = "8d7f4a4e-5b7c-4b64-9d39-0f6f2a1f0c11"


@pytest.fixture(scope="module")
def proxy(consul_agent: ConsulAgent) -> Iterator[CountingProxy]:
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


def case(op: str, payload: dict[str, Any], field: str, id: str) -> Any:
    return pytest.param(op, payload, field, id=f"{op}-{id}")


def txn(*operations: Any) -> dict[str, Any]:
    return {"operations": list(operations)}


def kv(verb: str, key: str = "k", **fields: Any) -> dict[str, Any]:
    return {"verb": verb, "key": key, **fields}


BIG = "x" * (300 * 1024)  # each fits on its own; two exceed a transaction's 512 KiB

BAD_PAYLOADS = [
    # kv_delete
    case("kv_delete", {"key": "../agent/service/deregister/x"}, "payload.key", "key-traversal"),
    case("kv_delete", {"key": "a/%2e%2e/b"}, "payload.key", "key-pct-dotdot"),
    case("kv_delete", {"key": ""}, "payload.key", "key-empty-without-recurse"),
    case("kv_delete", {"key": "", "recurse": True}, "payload.confirm_root", "root-unconfirmed"),
    case(
        "kv_delete",
        {"key": "", "recurse": True, "confirm_root": False},
        "payload.confirm_root",
        "root-confirm-false",
    ),
    case(
        "kv_delete", {"key": "a", "confirm_root": True}, "payload.confirm_root", "confirm-not-root"
    ),
    case(
        "kv_delete",
        {"key": "a/", "recurse": True, "confirm_root": True},
        "payload.confirm_root",
        "confirm-with-prefix",
    ),
    case(
        "kv_delete",
        {"key": "", "recurse": True, "confirm_root": "yes"},
        "payload.confirm_root",
        "confirm-str",
    ),
    case("kv_delete", {"key": "a", "recurse": "true"}, "payload.recurse", "recurse-str"),
    case("kv_delete", {"key": "a", "cas": 0}, "payload.cas", "cas-zero"),
    case("kv_delete", {"key": "a", "cas": -1}, "payload.cas", "cas-negative"),
    case("kv_delete", {"key": "a", "cas": 2**64}, "payload.cas", "cas-2e64"),
    case("kv_delete", {"key": "a", "cas": "5"}, "payload.cas", "cas-str"),
    case("kv_delete", {"key": "a/", "recurse": True, "cas": 5}, "payload.cas", "cas-with-recurse"),
    case("kv_delete", {"key": "a", "value": "x"}, "payload.value", "unknown-field"),
    case("kv_delete", {}, "payload.key", "missing-key"),
    # txn: the list
    case("txn", {}, "payload.operations", "missing-operations"),
    case("txn", txn(), "payload.operations", "no-operations"),
    case("txn", txn(*[kv("get")] * 65), "payload.operations", "65-operations"),
    case("txn", {"operations": {"verb": "get", "key": "k"}}, "payload.operations", "not-a-list"),
    case("txn", txn("get k"), "payload.operations.0", "operation-str"),
    case(
        "txn",
        txn(kv("set", "a", value=BIG), kv("set", "b", value=BIG)),
        "payload.operations",
        "body-too-large",
    ),
    case("txn", {**txn(kv("get")), "consistency": "stale"}, "payload.consistency", "unknown"),
    # txn: each operation, named by position
    case("txn", txn(kv("get"), kv("put", value="x")), "payload.operations.1.verb", "verb-unknown"),
    case("txn", txn({"key": "k"}), "payload.operations.0.verb", "verb-missing"),
    case("txn", txn(kv("get", "../agent/self")), "payload.operations.0.key", "key-traversal"),
    case("txn", txn(kv("get", "a//b")), "payload.operations.0.key", "key-empty-segment"),
    case("txn", txn(kv("set", "", value="x")), "payload.operations.0.key", "key-empty"),
    case("txn", txn(kv("delete-tree", "")), "payload.operations.0.key", "delete-tree-root"),
    case("txn", txn({"verb": "get"}), "payload.operations.0.key", "key-missing"),
    case("txn", txn(kv("set")), "payload.operations.0.value", "set-without-value"),
    case("txn", txn(kv("set", value="x", index=3)), "payload.operations.0.index", "set-index"),
    case(
        "txn",
        txn(kv("set", value="x", session=SESSION)),
        "payload.operations.0.session",
        "set-session",
    ),
    case("txn", txn(kv("cas", value="x")), "payload.operations.0.index", "cas-without-index"),
    case("txn", txn(kv("get", value="x")), "payload.operations.0.value", "get-value"),
    case("txn", txn(kv("get", flags=1)), "payload.operations.0.flags", "get-flags"),
    case("txn", txn(kv("get", encoding="base64")), "payload.operations.0.encoding", "get-encoding"),
    case("txn", txn(kv("check-index")), "payload.operations.0.index", "check-index-missing"),
    case("txn", txn(kv("check-index", index=0)), "payload.operations.0.index", "check-index-0"),
    case("txn", txn(kv("delete-cas", index=0)), "payload.operations.0.index", "delete-cas-0"),
    case("txn", txn(kv("check-session")), "payload.operations.0.session", "check-session-none"),
    case("txn", txn(kv("lock", value="v")), "payload.operations.0.session", "lock-no-session"),
    case(
        "txn", txn(kv("unlock", session=SESSION)), "payload.operations.0.value", "unlock-no-value"
    ),
    case(
        "txn",
        txn(kv("lock", value="v", session="../../kv/x")),
        "payload.operations.0.session",
        "session-traversal",
    ),
    case("txn", txn(kv("set", value="x", flags=-1)), "payload.operations.0.flags", "flags-neg"),
    case("txn", txn(kv("set", value="x", flags=2**64)), "payload.operations.0.flags", "flags-2e64"),
    case("txn", txn(kv("cas", value="x", index=-1)), "payload.operations.0.index", "index-neg"),
    case("txn", txn(kv("cas", value="x", index="1")), "payload.operations.0.index", "index-str"),
    case(
        "txn",
        txn(kv("set", value="!!", encoding="base64")),
        "payload.operations.0.value",
        "value-bad-base64",
    ),
    case("txn", txn(kv("set", value=5)), "payload.operations.0.value", "value-int"),
    case(
        "txn",
        txn(kv("set", value="x" * (512 * 1024 + 1))),
        "payload.operations.0.value",
        "value-too-large",
    ),
    case(
        "txn", txn(kv("set", value="x", encoding="latin-1")), "payload.operations.0.encoding", "enc"
    ),
    case("txn", txn(kv("get", Verb="get")), "payload.operations.0.Verb", "unknown-field"),
    # session_create
    case("session_create", {"ttl": "5s"}, "payload.ttl", "ttl-below-10s"),
    case("session_create", {"ttl": "9999ms"}, "payload.ttl", "ttl-just-below"),
    case("session_create", {"ttl": "24h1s"}, "payload.ttl", "ttl-over-a-day"),
    case("session_create", {"ttl": "15"}, "payload.ttl", "ttl-no-unit"),
    case("session_create", {"ttl": 15}, "payload.ttl", "ttl-int"),
    case("session_create", {"behavior": "keep"}, "payload.behavior", "behavior-unknown"),
    case("session_create", {"lock_delay": "61s"}, "payload.lock_delay", "lock-delay-over-60s"),
    case("session_create", {"lock_delay": "soon"}, "payload.lock_delay", "lock-delay-text"),
    case("session_create", {"lock_delay": 5}, "payload.lock_delay", "lock-delay-int"),
    case("session_create", {"checks": "serfHealth"}, "payload.checks", "checks-str"),
    case("session_create", {"checks": ["a\nb"]}, "payload.checks.0", "check-newline"),
    case("session_create", {"checks": [""]}, "payload.checks.0", "check-empty"),
    case("session_create", {"checks": ["c"] * 65}, "payload.checks", "checks-65"),
    case("session_create", {"node": "a/b"}, "payload.node", "node-slash"),
    case("session_create", {"node": "-x"}, "payload.node", "node-dash-first"),
    case("session_create", {"name": ""}, "payload.name", "name-empty"),
    case("session_create", {"name": "a\x00b"}, "payload.name", "name-nul"),
    case("session_create", {"name": "n" * 257}, "payload.name", "name-too-long"),
    case("session_create", {"TTL": "15s"}, "payload.TTL", "unknown-field"),
    # session_renew / session_destroy
    case("session_renew", {}, "payload.session_id", "missing"),
    case("session_renew", {"session_id": "not-a-uuid"}, "payload.session_id", "not-uuid"),
    case("session_renew", {"session_id": f"../{SESSION}"}, "payload.session_id", "traversal"),
    case("session_renew", {"session_id": 7}, "payload.session_id", "int"),
    case("session_destroy", {"session_id": f"{SESSION}/x"}, "payload.session_id", "suffix"),
    case("session_destroy", {"session_id": SESSION, "force": True}, "payload.force", "unknown"),
    # watch
    case("watch", {"key": "k"}, "payload.kind", "kind-missing"),
    case("watch", {"kind": "node", "key": "k"}, "payload.kind", "kind-unknown"),
    case("watch", {"kind": "key"}, "payload.key", "key-missing"),
    case("watch", {"kind": "prefix"}, "payload.prefix", "prefix-missing"),
    case("watch", {"kind": "service"}, "payload.service", "service-missing"),
    case("watch", {"kind": "key", "key": "k", "prefix": "p/"}, "payload.prefix", "two-targets"),
    case("watch", {"kind": "service", "service": "s", "key": "k"}, "payload.key", "key-for-svc"),
    case("watch", {"kind": "key", "key": "../agent/self"}, "payload.key", "key-traversal"),
    case("watch", {"kind": "prefix", "prefix": "a//"}, "payload.prefix", "prefix-empty-seg"),
    case("watch", {"kind": "service", "service": "a/b"}, "payload.service", "service-slash"),
    case("watch", {"kind": "service", "service": ".."}, "payload.service", "service-dotdot"),
    case("watch", {"kind": "key", "key": "k", "index": -1}, "payload.index", "index-negative"),
    case("watch", {"kind": "key", "key": "k", "index": 2**64}, "payload.index", "index-2e64"),
    case("watch", {"kind": "key", "key": "k", "index": "5"}, "payload.index", "index-str"),
    case("watch", {"kind": "key", "key": "k", "wait": 0}, "payload.wait", "wait-zero"),
    case("watch", {"kind": "key", "key": "k", "wait": -1}, "payload.wait", "wait-negative"),
    case("watch", {"kind": "key", "key": "k", "wait": 601}, "payload.wait", "wait-over-10m"),
    case("watch", {"kind": "key", "key": "k", "wait": "5s"}, "payload.wait", "wait-str"),
    case("watch", {"kind": "key", "key": "k", "recurse": True}, "payload.recurse", "unknown"),
    case("watch", {"kind": "key", "key": "k", "consistency": "cached"}, "payload.consistency", "c"),
    case(
        "watch",
        {"kind": "service", "service": "s", "consistency": "stale"},
        "payload.consistency",
        "stale-service",
    ),
    # kv_get's cached consistency: the other fields keep their rules
    case("kv_get", {"key": "a/../b", "consistency": "cached"}, "payload.key", "cached-traversal"),
    case("kv_get", {"key": "a", "consistency": "Cached"}, "payload.consistency", "cached-case"),
]


@pytest.mark.parametrize(("op", "payload", "field"), BAD_PAYLOADS)
async def test_refused_payload_sends_nothing(handler, proxy, op, payload, field):
    correlation_id = uuid.uuid4()
    env = {**envelope(op, **payload), "correlation_id": str(correlation_id)}
    before = snapshot(proxy)
    with pytest.raises(InfraValidationError) as caught:
        await handler.execute(env)
    error = caught.value
    assert snapshot(proxy) == before, f"a refused envelope reached Consul: {proxy.paths[-3:]}"
    assert error.context.field == field, str(error)
    assert error.errors[0]["field"] == field
    assert (error.context.category, error.context.attempts) == ("validation", 0)
    assert error.context.request_sent is False
    assert error.context.operation == f"consul.{op}"
    assert error.context.correlation_id == correlation_id
    # The proxy still counts: one good request shows up as exactly one request line.
    await handler.execute(envelope("kv_get", key=f"{uniq('probe')}/k"))
    assert proxy.requests == before[0] + 1
