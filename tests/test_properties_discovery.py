"""Property-based tests of the discovery fields, against a real Consul agent.

The same method as tests/test_properties.py (its handler, proxy, strategies and checks): for
generated service names, tags, datacenters, ``near`` nodes, node metadata, check IDs, check
outputs and fallbacks, through a counting proxy in front of the shared dev agent,

(a) whatever the validators ACCEPT reaches exactly the intended endpoint, once, with each
    filter as the query parameter it means (``GET /v1/health/service/<name>?tag=..&dc=..``,
    ``PUT /v1/agent/check/update/<id>``), and a fallback comes back as the host and port
    it names;
(b) whatever they REFUSE raises InfraValidationError naming an offending field, and sends
    nothing.

Oracles from the documented rules (docs/patterns/service_discovery.md) pin the boundary.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from typing import Any

import pytest
from harness import ConsulAgent, CountingProxy
from hypothesis import given, note
from hypothesis import strategies as st
from test_properties import (
    ANY_TEXT,
    META,
    SERVICE_NAMES,
    TAGS,
    VALID_META_KEY,
    VALID_META_VALUE,
    VALID_NAME,
    VALID_TAG,
    Live,
    Outcome,
    assert_one_request,
    assert_refused,
    counted_failures,
    long_text,
    name_ok,
    near,
    profile,
    regex,
    tag_ok,
    utf8_ok,
    weighted,
)

from handler_consul import InfraConnectionError, InfraConsulError

pytestmark = pytest.mark.usefixtures("clean_consul_env")

_DC_RULE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CHECK_ID_RULE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._:@-]{0,255}")
_META_KEY_RULE = re.compile(r"[A-Za-z0-9_-]{1,128}")
DISCOVER_QUERY = {"tag", "passing", "dc", "near", "node-meta"}


def dc_ok(value: str) -> bool:
    return _DC_RULE.fullmatch(value) is not None


def near_ok(value: str) -> bool:
    return value == "_agent" or name_ok(value)


def node_meta_ok(meta: dict[str, str]) -> bool:
    return len(meta) <= 64 and all(
        _META_KEY_RULE.fullmatch(k) and len(v) <= 512 and v.isprintable() for k, v in meta.items()
    )


def check_id_ok(value: str) -> bool:
    return _CHECK_ID_RULE.fullmatch(value) is not None and ".." not in value


def output_ok(value: str) -> bool:
    return utf8_ok(value) and len(value.encode("utf-8")) <= 4096


@pytest.fixture
def live(counting_proxy: CountingProxy, consul_agent: ConsulAgent) -> Iterator[Live]:
    handler = Live(counting_proxy, consul_agent)
    yield handler
    handler.close()


DATACENTERS = weighted(
    (3, st.just("dc1")),
    (2, near(st.just("dc1"))),
    (2, ANY_TEXT),
    (1, regex(r"[a-z0-9_-]{1,8}")),
    (1, long_text(63, 66, "d")),
)
NEARS = weighted(
    (2, st.sampled_from(["_agent", "shared-dev"])),
    (2, near(st.sampled_from(["_agent", "shared-dev"]))),
    (2, ANY_TEXT),
    (1, VALID_NAME),
)
NODE_META = weighted(
    (3, st.dictionaries(VALID_META_KEY, VALID_META_VALUE, max_size=2)),
    (2, META),
    (1, st.dictionaries(ANY_TEXT, ANY_TEXT, min_size=1, max_size=2)),
)


@st.composite
def discover_payloads(draw: st.DrawFn) -> dict[str, Any]:
    """A valid discover payload (uncached), then some of its fields drawn wide."""
    payload: dict[str, Any] = {"service": draw(VALID_NAME), "cache": False}
    wild = {
        "service": SERVICE_NAMES,
        "tags": TAGS,
        "datacenter": DATACENTERS,
        "near": NEARS,
        "node_meta": NODE_META,
    }
    valid = {
        "tags": st.lists(VALID_TAG, max_size=2),
        "datacenter": st.sampled_from(["dc1"]),
        "near": st.sampled_from(["_agent"]),
        "node_meta": st.dictionaries(VALID_META_KEY, VALID_META_VALUE, max_size=2),
    }
    for field in ("tags", "datacenter", "near", "node_meta"):
        if draw(st.booleans()):
            payload[field] = draw(valid[field])
    chosen = draw(st.sets(st.sampled_from(sorted(wild)), max_size=2))
    for field in sorted(chosen):
        payload[field] = draw(wild[field])
    return payload


@profile(ci_examples=120)
@given(payload=discover_payloads())
def test_discover_filters_reach_consul_as_query_parameters(
    live: Live, payload: dict[str, Any]
) -> None:
    bad = {
        "service": not name_ok(payload["service"]),
        "tags": not all(tag_ok(t) for t in payload.get("tags", [])),
        "datacenter": "datacenter" in payload and not dc_ok(payload["datacenter"]),
        "near": "near" in payload and not near_ok(payload["near"]),
        "node_meta": "node_meta" in payload and not node_meta_ok(payload["node_meta"]),
    }
    offending = {field for field, is_bad in bad.items() if is_bad}
    with counted_failures():
        out = live.send("discover", payload)
        if offending:
            assert_refused(out, payload, offending)
            return
        note(f"accepted discover: {out}")
        dc = payload.get("datacenter", "dc1")
        if dc != "dc1":
            # Forwarded to a datacenter the agent has no path to: its 500, one request.
            assert isinstance(out.error, InfraConnectionError), str(out)
            assert len(out.lines) == 1, str(out)
            return
        params = assert_one_request(
            out, "GET", "/v1/health/service/", payload["service"], DISCOVER_QUERY
        )
        assert params.get("tag", []) == payload.get("tags", []), str(out)
        assert params.get("passing") == ["1"], str(out)
        assert params.get("dc", ["dc1"]) == ["dc1"], str(out)
        assert params.get("near", [None])[0] == payload.get("near"), str(out)
        meta = [f"{k}:{v}" for k, v in payload.get("node_meta", {}).items()]
        assert params.get("node-meta", []) == meta, str(out)
        assert out.result is not None
        assert out.result["service"] == payload["service"]


CHECK_IDS = weighted(
    (2, regex(r"service:[A-Za-z0-9][A-Za-z0-9_:@-]{0,12}")),
    (3, near(regex(r"service:[a-z0-9]{1,8}"))),
    (2, ANY_TEXT),
    (1, long_text(255, 258, "c")),
)
STATUSES = st.sampled_from(["passing", "warning", "critical", "ok", "Passing", ""])
OUTPUTS = weighted(
    (3, regex(r"[ -~]{0,24}")),
    (2, ANY_TEXT),
    (1, long_text(4095, 4097, "o")),
    (1, long_text(1365, 1367, "\u20ac")),  # 3 bytes each: around 4096 bytes
)


@profile(ci_examples=100)
@given(check_id=CHECK_IDS, status=STATUSES, output=OUTPUTS)
def test_check_update_reaches_only_its_check(
    live: Live, check_id: str, status: str, output: str
) -> None:
    payload = {"check_id": check_id, "status": status, "output": output}
    bad = {
        "check_id": not check_id_ok(check_id),
        "status": status not in ("passing", "warning", "critical"),
        "output": not output_ok(output),
    }
    offending = {field for field, is_bad in bad.items() if is_bad}
    with counted_failures():
        out = live.send("check_update", payload)
        if offending:
            assert_refused(out, payload, offending)
            return
        # No such check on the agent: exactly one request to its path, a typed 404.
        assert isinstance(out.error, InfraConsulError), str(out)
        assert out.error.context.status_code == 404, str(out)
        assert f"unknown check {check_id!r}" in out.error.message
        assert_request_line(out, "PUT", "/v1/agent/check/update/", check_id)


def assert_request_line(
    out: Outcome, method: str, prefix: str, ident: str, query: set[str] | None = None
) -> None:
    """:func:`assert_one_request` on what was sent, whatever Consul answered."""
    sent = Outcome(None, None, out.lines, out.bytes_sent, out.connections)
    assert_one_request(sent, method, prefix, ident, query or set())


HOSTS = weighted(
    (2, st.sampled_from(["10.0.0.1", "backup.internal", "[::1]", "[2001:db8::1]", "h"])),
    (2, ANY_TEXT),
    (1, near(st.sampled_from(["10.0.0.1", "backup.internal"]))),
)
PORT_TEXT = weighted(
    (3, st.integers(0, 70000).map(str)),
    (1, ANY_TEXT),
    (1, st.sampled_from(["", "080", "+80", "65535", "65536", "١٢٣"])),
)


def expected_fallback(text: str) -> tuple[str, int] | None:
    """The (host, port) a fallback names by the documented rule, or None if refused."""
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            return (
                (host, int(port))
                if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
                else None
            )
        except ValueError:
            return None
    if ":" in host:
        return None
    return host, int(port)


@profile(ci_examples=80)
@given(host=HOSTS, port=PORT_TEXT, sep=st.sampled_from([":", ":", "", "::"]))
def test_a_fallback_is_the_host_and_port_it_names_or_refused(
    live: Live, host: str, port: str, sep: str
) -> None:
    fallback = f"{host}{sep}{port}"
    name = "prop-nobody"
    payload = {"service": name, "cache": False, "fallback": fallback}
    with counted_failures():
        out = live.send("endpoint", payload)
        wanted = expected_fallback(fallback)
        if out.error is not None:
            assert_refused(out, payload, {"fallback"})
            return
        note(f"accepted fallback: {out}")
        assert wanted is not None, f"accepted a fallback the rule refuses: {out}"
        assert out.result is not None
        assert (out.result["address"], out.result["port"]) == wanted, str(out)
        assert out.result["source"] == "fallback"
        # One read of the (empty) service, then the fallback: nothing else was sent.
        assert_request_line(out, "GET", "/v1/health/service/", name, {"passing"})
