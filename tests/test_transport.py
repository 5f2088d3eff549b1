"""The HTTP transport under python-consul2: framing, kept-alive connections (as many as there
are worker threads, so none is discarded under full concurrency), stale connections, header
limits."""

from __future__ import annotations

import asyncio
import http.client
import io
import uuid

import pytest
from harness import ConsulAgent, CountingProxy
from support import CountFor, DirectFor, MakeHandler, kv_get, pool_snapshot, unique_key

from handler_consul._transport import TransportError
from handler_consul._transport.response import Headers, parse_headers

pytestmark = pytest.mark.consul


async def test_large_chunked_listing_is_read_whole(
    consul_agent: ConsulAgent, direct: DirectFor
) -> None:
    prefix = f"transport/{uuid.uuid4().hex}/"
    client = direct(consul_agent)
    value = "x" * 4096
    for i in range(40):
        assert await client(lambda c, i=i: c.kv.put(f"{prefix}{i:03d}", value)) is True
    raw = await client(
        lambda c: c.http._request("GET", f"/v1/kv/{prefix}", [("recurse", "1")], None)
    )
    # ~220 KB of JSON: Go's server streams it chunked, so that path is exercised.
    assert raw.headers.get("Transfer-Encoding") == "chunked"
    assert raw.code == 200
    index, items = await client(lambda c: c.kv.get(prefix, recurse=True))
    assert int(index) >= 1
    assert [item["Key"] for item in items] == [f"{prefix}{i:03d}" for i in range(40)]
    assert all(item["Value"] == value.encode() for item in items)


async def test_consul_headers_are_case_insensitive(
    consul_agent: ConsulAgent, direct: DirectFor
) -> None:
    client = direct(consul_agent)
    raw = await client(lambda c: c.http._request("GET", "/v1/kv/transport-none", None, None))
    assert raw.code == 404
    index = raw.headers["X-Consul-Index"]
    assert index is not None
    assert int(index) > 0
    assert raw.headers.get("x-consul-index") == index
    assert "X-CONSUL-INDEX" in raw.headers
    assert raw.headers["X-Not-There"] is None


async def test_one_kept_alive_connection_serves_sequential_requests(
    counting_proxy: CountingProxy, direct: DirectFor
) -> None:
    client = direct(counting_proxy)
    key = f"transport/{uuid.uuid4().hex}"
    for i in range(50):
        assert await client(lambda c, i=i: c.kv.put(key, f"v{i}")) is True
        assert (await client(lambda c: c.kv.get(key)))[1]["Value"] == f"v{i}".encode()
    assert counting_proxy.requests == 100
    assert counting_proxy.connections == 1


async def test_no_connection_is_discarded_under_full_concurrency(
    consul_agent: ConsulAgent, counting_proxy_for: CountFor, make_tuned_handler: MakeHandler
) -> None:
    counter = counting_proxy_for(consul_agent)
    workers = 8
    handler = await make_tuned_handler(counter, max_concurrent_operations=workers)
    keys = [unique_key() for _ in range(64)]

    async def round_() -> None:
        results = await asyncio.gather(*(handler.execute(kv_get(k)) for k in keys))
        assert all(r.status == "success" for r in results)

    for _ in range(3):
        await round_()
    warmed = counter.connections
    assert 1 <= warmed <= workers
    assert pool_snapshot(handler)["peak_busy"] == workers
    for _ in range(20):
        await round_()
    assert counter.connections == warmed
    assert counter.requests == 1 + 23 * len(keys)


async def test_a_stale_kept_alive_connection_is_replaced(
    fresh_consul_agent: ConsulAgent, direct: DirectFor
) -> None:
    """The agent restarts: the pooled connection is dead; the next request goes out on a
    fresh one instead of failing."""
    client = direct(fresh_consul_agent)
    assert await client(lambda c: c.status.leader())
    await asyncio.to_thread(fresh_consul_agent.restart)
    assert await client(lambda c: c.kv.put("transport/after-restart", "v")) is True


async def test_a_closed_transport_refuses_without_sending(
    counting_proxy: CountingProxy, direct: DirectFor
) -> None:
    client = direct(counting_proxy)
    client.close()
    with pytest.raises(TransportError) as caught:
        await client(lambda c: c.status.leader())
    assert caught.value.request_sent is False
    assert counting_proxy.requests == 0


def test_parse_headers_joins_repeats_and_stops_at_the_blank_line() -> None:
    block = b"Content-Type: a\r\nX-Twice: 1\r\nx-twice: 2\r\nno colon here\r\n\r\nbody"
    fp = io.BytesIO(block)
    headers = parse_headers(fp)
    assert dict(headers) == {"content-type": "a", "x-twice": "1, 2"}
    assert headers.get_all("X-Twice") == ["1, 2"]
    assert headers.get_all("missing", []) == []
    assert fp.read() == b"body"


def test_parse_headers_keeps_http_client_limits() -> None:
    with pytest.raises(http.client.LineTooLong):
        parse_headers(io.BytesIO(b"X: " + b"a" * 70000 + b"\r\n\r\n"))
    many = b"".join(b"H%d: v\r\n" % i for i in range(101)) + b"\r\n"
    with pytest.raises(http.client.HTTPException, match="more than 100 headers"):
        parse_headers(io.BytesIO(many))


def test_headers_mapping_matches_what_python_consul2_reads() -> None:
    headers = Headers({"x-consul-index": "42"})
    assert headers["X-Consul-Index"] == "42"
    assert headers.get("X-Consul-Knownleader", "default") == "default"
    assert 42 not in headers
