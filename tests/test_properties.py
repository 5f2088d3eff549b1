"""Property-based tests of the envelope validators, against a real Consul agent.

For generated keys, values, service ids, names, tags and meta (arbitrary unicode with control
characters and lone surrogates, '..', '%2e%2e', '/', very long strings, and near-valid input
such as a valid id with a trailing newline), through a counting proxy in front of the shared
dev agent:

(a) whatever the validators ACCEPT reaches exactly the intended method and path (one request
    line at the proxy: ``PUT|GET /v1/kv/<key percent-encoded>``,
    ``PUT /v1/agent/service/register``, ``PUT /v1/agent/service/deregister/<id>``) and
    round-trips unchanged (kv_put then kv_get gives the value back; a registration read
    from the agent directly shows the same name, tags and meta; deregister removes it);
(b) whatever they REFUSE raises InfraValidationError whose ``context.field`` names an
    offending payload field, and sends nothing (no request line, no byte at the proxy).

Oracles written from the documented rules (README.md, docs/patterns/security_patterns.md)
pin the boundary too: service ids, names, tags and meta are accepted exactly when the rules
say so; a key that breaks a safety rule must be refused and a plain key must be accepted (in
between, (a) or (b) must hold).

Each test keeps one handler (and one proxy) for all its examples, on its own event loop
(``asyncio.Runner``): hypothesis's ``@given`` drives a sync test, which runs each envelope
on that loop. Retries and the breaker are off so one example's outcome cannot change the next
one's (hypothesis must be able to replay an example to shrink it).

Profiles (``HYPOTHESIS_PROFILE``):
  ci (default)  fixed, derandomized examples (280 across the two property tests, 2 envelopes
                each), so CI is reproducible; the whole file takes ~15 s on a 2-core machine.
  long          random examples; ``PROPERTY_EXAMPLES`` per property test (default 25,000, i.e.
                100,000 envelopes). Run it with ``scripts/property-run`` (see its header).

Bugs these properties found are pinned by example tests at the end of this file, so that
they stay fixed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import os
import re
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote

import pytest
from harness import ConsulAgent, CountingProxy
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from handler_consul import (
    BreakerSettings,
    ConsulSettings,
    HandlerConsul,
    InfraValidationError,
    RetrySettings,
)

pytestmark = pytest.mark.usefixtures("clean_consul_env")

# -- profiles ------------------------------------------------------------------------------

# function_scoped_fixture: the handler and the proxy are shared by every example of a test on
#   purpose (one handler per test, not per example, for speed); each example measures the
#   proxy's counters before and after its own envelopes, so sharing cannot leak a result.
# too_slow: from_regex, full-unicode text and 1 KiB keys are slow to draw on a loaded
#   2-core CI machine; that must cost time, not fail the run as a "slow strategy".
# data_too_large: a draw that overruns hypothesis's per-example budget (the long-string
#   branches) is just discarded; that is fine for strategies this wide.
_HEALTH = (HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large)
settings.register_profile(
    "ci",
    deadline=None,  # a request's latency is noise here, not a property
    derandomize=True,  # the same examples on every run: a CI failure reproduces locally
    database=None,  # no .hypothesis/ directory in the work tree
    suppress_health_check=_HEALTH,
    print_blob=False,
)
settings.register_profile(
    "long",
    deadline=None,
    derandomize=False,  # new examples each run: that is what the long run is for
    database=None,
    suppress_health_check=_HEALTH,
    print_blob=True,  # a failure prints @reproduce_failure, so a random find can be replayed
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
LONG_EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", "25000"))


def profile(ci_examples: int) -> settings:
    """This file's settings: the named profile, with the example count for this test."""
    examples = LONG_EXAMPLES if PROFILE == "long" else ci_examples
    return settings(settings.get_profile(PROFILE), max_examples=examples)


# Envelopes sent, accepted and refused, and examples that broke a property (including the
# ones hypothesis replays while shrinking); scripts/property-run prints it as its summary.
TALLY: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _summary() -> Iterator[None]:
    yield
    path = os.environ.get("PROPERTY_SUMMARY")
    if path:
        Path(path).write_text(json.dumps(dict(TALLY)))


@contextlib.contextmanager
def counted_failures() -> Iterator[None]:
    try:
        yield
    except Exception:
        TALLY["failures"] += 1
        raise


# -- the documented rules (oracles) --------------------------------------------------------

MAX_KEY = 1024
MAX_VALUE_BYTES = 512 * 1024
_ID_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
_NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_META_KEY_RULE = re.compile(r"[A-Za-z0-9_-]{1,128}")
_PLAIN_KEY_RULE = re.compile(r"[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*/?")
# What may stand unencoded in a request path (RFC 3986 pchar and '/'); '%' only as %XX.
_RAW_PATH = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*")


def utf8_ok(text: str) -> bool:
    """False for a string with a lone surrogate (no UTF-8 form, so no wire form)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def id_ok(value: str) -> bool:
    return _ID_RULE.fullmatch(value) is not None and ".." not in value


def name_ok(value: str) -> bool:
    return _NAME_RULE.fullmatch(value) is not None and ".." not in value


def tag_ok(tag: str) -> bool:
    return 1 <= len(tag) <= 255 and tag.isprintable()


def meta_key_ok(key: str) -> bool:
    return _META_KEY_RULE.fullmatch(key) is not None and not key.startswith("consul-")


def meta_problems(meta: dict[str, str]) -> list[str]:
    """Consul's own rules (agent/structs validateMetaPair); its limits count UTF-8 bytes."""
    problems = []
    if len(meta) > 64:
        problems.append("more than 64 pairs")
    for key, value in meta.items():
        if not meta_key_ok(key):
            problems.append(f"key {key!r}")
        if not utf8_ok(value) or len(value.encode("utf-8")) > 512:
            problems.append(f"value of {key!r}")
    return problems


def key_must_be_refused(key: str) -> bool:
    """The safety rules for anything that becomes a path: these keys must never be sent."""
    if not key or len(key) > MAX_KEY or not key.isprintable():
        return True
    if key.startswith("/") or "\\" in key:
        return True
    segments = key.split("/")
    if key.endswith("/"):
        segments = segments[:-1]
    if any(segment in {"", ".", ".."} for segment in segments):
        return True
    decoded = unquote(key)
    # Consul decodes a key once more and refuses a '..' in that form (with a 500).
    return decoded != key and (".." in decoded or "\\" in decoded)


def key_must_be_accepted(key: str) -> bool:
    return len(key) <= MAX_KEY and _PLAIN_KEY_RULE.fullmatch(key) is not None


def value_bytes(value: str | bytes, encoding: str | None) -> bytes | None:
    """The bytes a kv_put value stands for, or None when the documented rules refuse it."""
    if isinstance(value, bytes):
        data = value if encoding in (None, "utf-8") else None
    elif encoding == "base64":
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            data = None
    else:
        data = value.encode("utf-8") if utf8_ok(value) else None
    return data if data is not None and len(data) <= MAX_VALUE_BYTES else None


# -- the live handler ----------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one envelope did: its result or error, and what reached the proxy meanwhile."""

    result: dict[str, Any] | None
    error: BaseException | None
    lines: list[str]
    bytes_sent: int
    connections: int

    def __str__(self) -> str:
        error = None if self.error is None else f"{type(self.error).__name__}: {self.error}"
        field = getattr(getattr(self.error, "context", None), "field", None)
        return f"result={self.result!r} error={error!r} field={field!r} sent={self.lines!r}"


class Live:
    """One handler behind the counting proxy, on its own event loop."""

    def __init__(self, proxy: CountingProxy, agent: ConsulAgent) -> None:
        self.proxy = proxy
        self.agent = agent
        self.runner = asyncio.Runner()
        self.handler = HandlerConsul(
            settings=ConsulSettings(
                host=proxy.host,
                port=proxy.port,
                timeout_seconds=10.0,
                # One attempt: a 5xx shows up as one request and an error, not three requests
                # and a budget spent that would change how the next example is treated.
                retry=RetrySettings(max_attempts=1),
                # No breaker: a failing example must not open it for the examples after it.
                breaker=BreakerSettings(enabled=False),
            )
        )
        self.runner.run(self.handler.initialize())

    def close(self) -> None:
        try:
            self.runner.run(self.handler.shutdown())
        finally:
            self.runner.close()

    def __repr__(self) -> str:  # hypothesis prints the fixture in a falsifying example
        return f"<Live handler via {self.proxy.listen_addr}>"

    def send(self, operation: str, payload: dict[str, Any]) -> Outcome:
        proxy = self.proxy
        before = (proxy.requests, proxy.bytes_up, proxy.connections)
        result: dict[str, Any] | None = None
        error: BaseException | None = None
        TALLY["envelopes"] += 1
        try:
            response = self.runner.run(
                self.handler.execute({"operation": f"consul.{operation}", "payload": payload})
            )
            result = dict(response.result)
        except Exception as exc:  # every outcome is judged by the property, not here
            error = exc
        TALLY["refused" if isinstance(error, InfraValidationError) else "accepted"] += 1
        return Outcome(
            result,
            error,
            proxy.request_lines[before[0] :],
            proxy.bytes_up - before[1],
            proxy.connections - before[2],
        )

    # Reads and clean-ups straight at the agent, past the proxy and the handler (urllib with
    # no proxy handler: an HTTP_PROXY in the environment must not see or change these).
    def agent_call(self, method: str, path: str) -> tuple[int, Any]:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(f"{self.agent.url}{path}", method=method)
        try:
            with opener.open(request, timeout=10) as response:
                body = response.read()
                return response.status, json.loads(body) if body else None
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read().decode("utf-8", "replace")

    def agent_service(self, service_id: str) -> dict[str, Any] | None:
        # The whole list, not /v1/agent/service/<id>: an id such as "deregister" or
        # "register" makes that path another endpoint (found by the long run: 405).
        status, body = self.agent_call("GET", "/v1/agent/services")
        assert status == 200, (status, body)
        found = body.get(service_id)
        return None if found is None else dict(found)

    def forget_service(self, service_id: str) -> None:
        path = f"/v1/agent/service/deregister/{quote(service_id, safe='')}"
        self.agent_call("PUT", path)

    def forget_key(self, key: str) -> None:
        self.agent_call("DELETE", f"/v1/kv/{quote(key, safe='/')}")


@pytest.fixture
def live(counting_proxy: CountingProxy, consul_agent: ConsulAgent) -> Iterator[Live]:
    handler = Live(counting_proxy, consul_agent)
    yield handler
    handler.close()


# -- what a request and a refusal must look like ---------------------------------------------


def assert_refused(out: Outcome, payload: dict[str, Any], offending: set[str]) -> str:
    """(b): InfraValidationError naming one of the offending payload fields; nothing sent."""
    assert isinstance(out.error, InfraValidationError), f"not refused: {out}"
    field = out.error.context.field
    assert field is not None, str(out)
    assert field.startswith("payload."), f"field {field!r}: {out}"
    top = field.split(".")[1]
    assert top in payload, f"field {field!r}: {out}"
    assert top in offending, f"field {field!r}, offending {offending}: {out}"
    assert out.error.context.attempts == 0, str(out)
    assert (out.lines, out.bytes_sent, out.connections) == ([], 0, 0), f"refused, sent: {out}"
    return field


def assert_one_request(
    out: Outcome, method: str, prefix: str, ident: str | None, query: set[str]
) -> dict[str, list[str]]:
    """(a): exactly one request, ``method prefix<ident percent-encoded>``, no other endpoint."""
    assert out.error is None, f"accepted but failed: {out}"
    assert len(out.lines) == 1, f"not exactly one request: {out}"
    sent_method, target, _version = out.lines[0].split(" ")
    path, _, raw_query = target.partition("?")
    assert sent_method == method, str(out)
    if ident is None:
        assert path == prefix, str(out)
    else:
        assert path.startswith(prefix), str(out)
        rest = path[len(prefix) :]
        assert unquote(rest, errors="strict") == ident, f"path {path!r} is not {ident!r}"
        assert _RAW_PATH.fullmatch(rest), f"unencoded characters in {path!r}"
    # Nothing a normaliser (client, proxy, Go's router) would rewrite into another endpoint.
    for segment in path.split("/")[1:]:
        assert segment not in {".", ".."}, f"dot segment in {path!r}"
        assert unquote(segment) not in {".", ".."}, f"encoded dot segment in {path!r}"
    params = parse_qs(raw_query, keep_blank_values=True)
    assert set(params) <= query, f"unexpected query {raw_query!r}"
    return params


# -- strategies ------------------------------------------------------------------------------


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """A branch of weight n is drawn n times as often as one of weight 1. (st.one_of drops
    a repeated strategy, so repeating it there weighs nothing; sampled_from draws evenly
    from its list, repeats included.) Shrinking goes towards the first branch."""
    branches = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(branches).flatmap(lambda strategy: strategy)


# Every code point, lone surrogates (Cs) and controls (Cc) included: st.characters() leaves
# surrogates out unless asked, and they are exactly what a UTF-8 wire cannot carry.
ANY_CHAR = st.characters(categories=["L", "M", "N", "P", "S", "Z", "Cc", "Cf", "Cs", "Co", "Cn"])
TRICKY = [
    "..", ".", "", "/", "//", "%2e%2e", "%2E%2e", "%2e", "%2f", "%2F", "%5c", "%5C", "\\",
    "%", "%25", "%252e%252e", "%20", "%zz", " ", "\n", "\r", "\t", "\x00", "\x7f", "\x85",
    "\ud800", "\udfff", "\u2028", "\u00a0", "\ufeff", "\u200b", "?", "#", ";", "&", "=", "+",
    "~", ":", "@", "\u00e9", "\u65e5\u672c", "\U0001f600", "\uff0e\uff0e", "$", "'", "*", ",",
]  # fmt: skip
# Arbitrary text; hypothesis seldom draws a surrogate by itself (8 in 3,000), so a quarter of
# the time the text is made of the pieces above instead.
ANY_TEXT = weighted(
    (3, st.text(ANY_CHAR, max_size=24)),
    (1, st.lists(st.sampled_from(TRICKY), min_size=1, max_size=4).map("".join)),
)
# What turns a valid-looking string invalid, or nearly: stuck on its end, its start or inside.
# Drawn evenly; the first entries are where hypothesis shrinks to.
SUFFIXES = ["\n", " ", "\r\n", "\t", "\x00", "/", "..", "/..", "/.", "%2e%2e", "%20", "\ud800"]
SUFFIXES += ["\u00e9", "%", ":", "@", ".", "\x85", "\u2028", "\n\n", "%0a"]
PREFIXES = ["\n", " ", "/", ".", "..", "../", "-", "_", "%2e%2e/", "\u00e9", "\ufeff"]
INFIXES = ["..", "/", "/../", "\n", " ", "%2e%2e", "%2f", "\\", "\x00", "\ud800", "//"]


def near(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A valid string with one thing stuck on its end (likeliest), its start, or inside."""
    # tuples().map() rather than builds(): hypothesis then prints the string it made.
    return weighted(
        (3, st.tuples(valid, st.sampled_from(SUFFIXES)).map("".join)),
        (1, st.tuples(st.sampled_from(PREFIXES), valid).map("".join)),
        (1, st.tuples(valid, st.sampled_from(INFIXES), valid).map("".join)),
    )


def long_text(lo: int, hi: int, chars: str = "k") -> st.SearchStrategy[str]:
    """Strings around a length limit, built cheaply (not drawn one character at a time)."""
    return st.builds(lambda n, c: c * n, st.integers(lo, hi), st.sampled_from(chars))


def regex(pattern: str) -> st.SearchStrategy[str]:
    return st.from_regex(pattern, fullmatch=True)


SEGMENT = weighted(
    (2, regex(r"[A-Za-z0-9_-]{1,8}")),
    (2, st.sampled_from(TRICKY)),
    (1, st.text(ANY_CHAR, max_size=4)),
)
PLAIN_KEY = regex(r"[A-Za-z0-9_-]{1,12}(/[A-Za-z0-9_-]{1,12}){0,3}/?")
KEYS = weighted(
    (2, ANY_TEXT),
    (3, st.lists(SEGMENT, min_size=1, max_size=6).map("/".join)),
    (4, near(PLAIN_KEY)),
    (2, PLAIN_KEY),
    (1, long_text(1020, 1030)),
    (1, st.builds(lambda n, tail: "k/" * n + tail, st.integers(509, 512), SEGMENT)),
)
VALUES = weighted(
    (3, ANY_TEXT),
    (2, regex(r"[ -~]{0,16}")),
    (2, st.binary(max_size=32)),
    (1, st.sampled_from(["", "\n", " ", "null", "\ud800", "\udfff\ud800", "a\x00b"])),
    (1, long_text(MAX_VALUE_BYTES - 2, MAX_VALUE_BYTES + 2, "v")),
    (1, long_text(MAX_VALUE_BYTES // 3 - 1, MAX_VALUE_BYTES // 3 + 1, "\u20ac")),  # 3 bytes each
    (1, st.binary(min_size=1, max_size=24).map(lambda b: base64.b64encode(b).decode())),
)
ENCODINGS = st.sampled_from([None, None, "utf-8", "base64"])
READ_MODES = st.sampled_from(["plain", "recurse", "keys_only"])

# A refusal only says something about a field when the other fields are fine, so a service
# starts valid and has none, one (most often) or several of its fields drawn wide instead.
VALID_ID = regex(r"[A-Za-z0-9][A-Za-z0-9_:@-]{0,10}(\.[A-Za-z0-9_:@-]{1,10}){0,2}")
VALID_NAME = regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,10}(\.[A-Za-z0-9_-]{1,10}){0,2}")
VALID_TAG = regex(r"[A-Za-z0-9=:._ -]{1,16}")
VALID_META_KEY = regex(r"[A-Za-z0-9_-]{1,16}").filter(lambda key: not key.startswith("consul-"))
VALID_META_VALUE = regex(r"[ -~]{0,16}")
SERVICE_IDS = weighted(
    (1, VALID_ID),
    (4, near(regex(r"[A-Za-z0-9][A-Za-z0-9_:@-]{0,12}"))),
    (2, ANY_TEXT),
    (1, st.lists(SEGMENT, min_size=1, max_size=4).map("/".join)),
    (1, long_text(126, 130, "sS9")),
)
SERVICE_NAMES = weighted(
    (1, VALID_NAME),
    (4, near(regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,12}"))),
    (2, ANY_TEXT),
    (1, long_text(126, 130, "nN0")),
)
TAGS = st.lists(
    weighted(
        (2, VALID_TAG),
        (2, ANY_TEXT),
        (2, near(regex(r"[a-z0-9]{1,8}"))),
        (1, long_text(253, 257, "t")),
    ),
    min_size=1,
    max_size=3,
)
META = weighted(
    (
        6,
        st.dictionaries(
            weighted(
                (3, VALID_META_KEY),
                (1, regex(r"consul-[a-z]{1,8}")),
                (2, ANY_TEXT),
                (2, near(regex(r"[a-z0-9]{1,8}"))),
                (1, long_text(127, 129, "m")),
            ),
            weighted(
                (2, VALID_META_VALUE),
                (2, ANY_TEXT),
                (1, long_text(510, 514, "v")),
                (2, long_text(170, 520, "\u00e9\u20ac\U0001f600")),  # <= 512 chars, > 512 bytes
            ),
            min_size=1,
            max_size=3,
        ),
    ),
    (1, st.builds(lambda n: {f"k{i}": "v" for i in range(n)}, st.integers(63, 65))),
)
WILD_SERVICE_FIELDS = {"service_id": SERVICE_IDS, "name": SERVICE_NAMES, "tags": TAGS, "meta": META}


@st.composite
def services(draw: st.DrawFn) -> dict[str, Any]:
    """A register payload's service fields: valid, then some of them drawn wide."""
    service: dict[str, Any] = {
        "service_id": draw(st.one_of(st.none(), VALID_ID)),
        "name": draw(VALID_NAME),
        "tags": draw(st.lists(VALID_TAG, max_size=3)),
        "meta": draw(st.dictionaries(VALID_META_KEY, VALID_META_VALUE, max_size=3)),
    }
    fields = list(WILD_SERVICE_FIELDS)
    wild = draw(
        weighted(
            (1, st.just(())),
            (6, st.sampled_from(fields).map(lambda field: (field,))),
            (2, st.sets(st.sampled_from(fields), min_size=2)),
        )
    )
    for field in sorted(wild):  # sorted: the draw order must not depend on set order
        service[field] = draw(WILD_SERVICE_FIELDS[field])
    return service


ADDRESSES = st.sampled_from([None, "127.0.0.1", "::1", "svc.example.internal"])
PORTS = st.one_of(st.none(), st.integers(0, 65535))


# -- the properties ------------------------------------------------------------------------


KV_PUT_QUERY = {"flags", "cas", "acquire", "release"}
KV_GET_QUERY = {"recurse", "keys", "separator", "consistent", "stale"}
REGISTER_QUERY: set[str] = set()


def stored_bytes(entry: dict[str, Any]) -> bytes:
    if entry["encoding"] == "base64":
        return base64.b64decode(entry["value"])
    return str(entry["value"]).encode("utf-8")


@profile(ci_examples=150)
@given(key=KEYS, value=VALUES, encoding=ENCODINGS, mode=READ_MODES)
def test_kv_put_then_get(live: Live, key: str, value: Any, encoding: str | None, mode: str) -> None:
    payload: dict[str, Any] = {"key": key, "value": value}
    if encoding is not None:
        payload["encoding"] = encoding
    read: dict[str, Any] = {"key": key}
    if mode != "plain":
        read[mode] = True
    expected = value_bytes(value, encoding)
    with counted_failures():
        put = live.send("kv_put", payload)
        try:
            check_kv(live, key, mode, payload, read, expected, put)
        finally:
            if not isinstance(put.error, InfraValidationError):
                live.forget_key(key)  # keep the shared agent's KV small across examples


def check_kv(
    live: Live,
    key: str,
    mode: str,
    payload: dict[str, Any],
    read: dict[str, Any],
    expected: bytes | None,
    put: Outcome,
) -> None:
    if isinstance(put.error, InfraValidationError):
        # The key is checked first, so a bad key is named even when the value is bad too.
        offending = {"key"} if key_must_be_refused(key) else set()
        if not offending:
            offending |= set() if key_must_be_accepted(key) else {"key"}
            offending |= set() if expected is not None else {"value"}
        field = assert_refused(put, payload, offending)
        get = live.send("kv_get", read)
        if field == "payload.key" and (key != "" or mode == "plain"):
            assert_refused(get, read, {"key"})  # a prefix follows the key's rules
        else:  # the key itself is fine (or "" as a prefix): the read goes out
            assert_one_request(get, "GET", "/v1/kv/", key, KV_GET_QUERY)
        return

    note(f"accepted kv_put: {put}")
    assert not key_must_be_refused(key), f"unsafe key accepted: {put}"
    assert expected is not None, f"invalid value accepted: {put}"
    assert_one_request(put, "PUT", "/v1/kv/", key, KV_PUT_QUERY)
    assert put.result == {"key": key, "applied": True}, str(put)
    get = live.send("kv_get", read)
    params = assert_one_request(get, "GET", "/v1/kv/", key, KV_GET_QUERY)
    assert ("recurse" in params, "keys" in params) == (mode == "recurse", mode == "keys_only")
    assert get.result is not None
    if mode == "keys_only":
        assert key in get.result["keys"], str(get)
        return
    if mode == "recurse":
        entries = [item for item in get.result["items"] if item["key"] == key]
        assert len(entries) == 1, str(get)
        entry = entries[0]
    else:
        entry = get.result
        assert entry["found"] is True, str(get)
        assert entry["key"] == key, str(get)
    assert stored_bytes(entry) == expected, f"value changed on the way: {get}"


@profile(ci_examples=130)
@given(service=services(), address=ADDRESSES, port=PORTS)
def test_register_then_deregister(
    live: Live, service: dict[str, Any], address: str | None, port: int | None
) -> None:
    service_id, name, tags, meta = (service[f] for f in ("service_id", "name", "tags", "meta"))
    payload: dict[str, Any] = {"name": name, "tags": tags, "meta": meta}
    for field, given_value in (("service_id", service_id), ("address", address), ("port", port)):
        if given_value is not None:
            payload[field] = given_value
    effective = service_id if service_id is not None else name
    bad = {
        "service_id": service_id is not None and not id_ok(service_id),
        "name": not name_ok(name),
        "tags": not all(tag_ok(tag) for tag in tags),
        "meta": bool(meta_problems(meta)),
    }
    offending = {field for field, is_bad in bad.items() if is_bad}
    with counted_failures():
        register = live.send("register", payload)
        try:
            check_service(live, payload, effective, offending, register)
        finally:
            if register.error is None and id_ok(effective):
                live.forget_service(effective)  # gone already unless a check failed


def check_service(
    live: Live, payload: dict[str, Any], effective: str, offending: set[str], register: Outcome
) -> None:
    if offending:
        assert_refused(register, payload, offending)
    else:
        assert_one_request(register, "PUT", "/v1/agent/service/register", None, REGISTER_QUERY)
        name = payload["name"]
        assert register.result == {"service_id": effective, "name": name, "registered": True}
        seen = live.agent_service(effective)
        assert seen is not None, f"registered, not on the agent: {register}"
        assert (seen["ID"], seen["Service"], seen["Tags"], seen["Meta"]) == (
            effective,
            name,
            payload["tags"],
            payload["meta"],
        ), f"the agent has {seen}"
        assert (seen["Address"], seen["Port"]) == (
            payload.get("address", ""),
            payload.get("port", 0),
        ), f"the agent has {seen}"
    deregister = live.send("deregister", {"service_id": effective})
    if not id_ok(effective):
        assert_refused(deregister, {"service_id": effective}, {"service_id"})
        return
    assert_one_request(deregister, "PUT", "/v1/agent/service/deregister/", effective, set())
    assert deregister.result == {"service_id": effective, "deregistered": not offending}
    assert live.agent_service(effective) is None, f"still registered after {deregister}"


# -- examples: bugs found by these properties -----------------------------------------------
# Each was found by the properties above against an earlier version of the validators and
# fixed since; kept as plain tests so they stay fixed.


@pytest.mark.parametrize(
    ("operation", "payload", "field"),
    [
        pytest.param(
            "register",
            {"service_id": "web\n", "name": "web"},
            "payload.service_id",
            id="service-id-trailing-newline",  # was registered as ID "web\n"
        ),
        pytest.param("deregister", {"service_id": "web\n"}, "payload.service_id", id="dereg-nl"),
        pytest.param(
            "register",
            {"name": "0\n"},
            "payload.name",
            id="service-name-trailing-newline",  # was registered as "0\n"
        ),
        pytest.param(
            "register",
            {"name": "web", "meta": {"0\n": ""}},
            "payload.meta",
            id="meta-key-trailing-newline",  # was sent; Consul answered 400
        ),
        pytest.param(
            "register",
            {"name": "web", "meta": {"a": "\ud800"}},
            "payload.meta",
            id="meta-value-lone-surrogate",  # was sent; Consul stored U+FFFD
        ),
        pytest.param(
            "kv_put",
            {"key": "k", "value": "\ud800"},
            "payload.value",
            id="kv-value-lone-surrogate",  # was InfraConsulError (UnicodeEncodeError) in a worker
        ),
    ],
)
def test_example_fixed_bug_stays_fixed(
    live: Live, operation: str, payload: dict[str, Any], field: str
) -> None:
    out = live.send(operation, payload)
    try:
        assert assert_refused(out, payload, {field.split(".")[1]}) == field
    finally:
        if operation == "register" and out.error is None:
            live.forget_service(payload.get("service_id", payload["name"]))


@pytest.mark.parametrize("key", [" ", "a ", " a", "a%20b", "k/%20"])
def test_example_key_with_a_space_consul_refuses_is_refused_unsent(live: Live, key: str) -> None:
    # Was sent: "500: invalid key name, leading/trailing spaces are not allowed", an
    # InfraConnectionError (retryable; the breaker counted it).
    for operation, payload in (("kv_put", {"key": key, "value": "x"}), ("kv_get", {"key": key})):
        out = live.send(operation, payload)
        if out.error is None:
            live.forget_key(key)
        assert assert_refused(out, payload, {"key"}) == "payload.key"


@pytest.mark.parametrize("value", ["\u00e9" * 257, "\u20ac" * 171, "\U0001f600" * 129])
def test_example_meta_value_over_512_utf8_bytes_is_refused_unsent(live: Live, value: str) -> None:
    # Was sent: "400: Invalid Service Meta: ... Value is too long", an InfraConsulError.
    payload = {"service_id": "prop-meta-bytes", "name": "web", "meta": {"a": value}}
    out = live.send("register", payload)
    try:
        assert assert_refused(out, payload, {"meta"}) == "payload.meta"
    finally:
        if out.error is None:
            live.forget_service("prop-meta-bytes")
