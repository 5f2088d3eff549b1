"""Rules for every input that ends up in a URL path, a query or a Consul-validated field.

Keys and service IDs are interpolated into paths such as ``/v1/kv/<key>`` and
``/v1/agent/service/deregister/<id>``. A ``..`` segment there is normalised away by HTTP
clients and by Go's router, so ``../agent/service/deregister/payments`` as a KV key would
deregister a live service. These rules refuse anything that could make a path address an
endpoint the operation did not mean; refused input never reaches Consul.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated
from urllib.parse import unquote, unquote_to_bytes

from pydantic import AfterValidator

__all__ = [
    "DATACENTER",
    "LOCK_DELAY_MAX_SECONDS",
    "MAX_CHECK_OUTPUT_BYTES",
    "MAX_KEY_LENGTH",
    "MAX_META_KEY_LENGTH",
    "MAX_META_PAIRS",
    "MAX_META_VALUE_LENGTH",
    "MAX_VALUE_BYTES",
    "SESSION_TTL_MAX_SECONDS",
    "SESSION_TTL_MIN_SECONDS",
    "UINT64_MAX",
    "AgentCheckId",
    "CheckId",
    "CheckOutput",
    "Datacenter",
    "Duration",
    "HostPort",
    "KvKey",
    "KvPrefix",
    "LockDelay",
    "NearNode",
    "NodeMeta",
    "NodeName",
    "ServiceAddress",
    "ServiceId",
    "ServiceName",
    "SessionId",
    "SessionTtl",
    "Tag",
    "Text",
    "check_meta",
    "check_node_meta",
    "check_text",
    "duration_seconds",
    "split_host_port",
]

# Consul's default kv_max_value_size (limits.kv_max_value_size) is 512 KiB.
MAX_VALUE_BYTES = 512 * 1024
UINT64_MAX = 2**64 - 1
MAX_KEY_LENGTH = 1024
# Consul's own limits on service metadata (agent/structs: metaKeyFormat and friends).
MAX_META_PAIRS = 64
MAX_META_KEY_LENGTH = 128
MAX_META_VALUE_LENGTH = 512
# Consul keeps at most this much of a check's output (check_output_max_size's default).
MAX_CHECK_OUTPUT_BYTES = 4096

# A datacenter travels as ``?dc=`` and names a breaker: the same rule as the setting.
DATACENTER = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

_SERVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
_SERVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_META_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
# A check ID in an agent URL path (/v1/agent/check/update/<id>): the service's ID behind
# "service:" (plus ":<n>" for its n-th check), or a name; no '/', no spaces.
_AGENT_CHECK_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._:@-]{0,255}$")
_SESSION_ID = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
# Go's time.ParseDuration syntax, which is what Consul parses check intervals with.
# ASCII digits only: ``\d`` alone also matches other scripts' digits, which Go refuses.
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+$", re.ASCII)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", re.ASCII)
_DURATION_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
# Consul's bounds for a session: session_ttl_min (default 10s) to 24h, and a lock-delay it
# caps at 60s (a larger one would be cut silently, so it is refused instead).
SESSION_TTL_MIN_SECONDS = 10.0
SESSION_TTL_MAX_SECONDS = 86400.0
LOCK_DELAY_MAX_SECONDS = 60.0
# Node names and check IDs travel in a JSON body, not a path; still, only what Consul itself
# produces is accepted, so a typo is caught here rather than as a session bound to nothing.
_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CHECK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/ -]{0,127}$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*\.?$"
)


# The common case, accepted in one regex match: segments of safe characters, none starting
# with '.' (so none is '.' or '..'), no '%' or '\\', an optional trailing '/'. Everything
# else takes the full checks below.
_PLAIN_KEY = re.compile(
    r"[A-Za-z0-9_\-:@=+,~][A-Za-z0-9_\-.:@=+,~]*(?:/[A-Za-z0-9_\-:@=+,~][A-Za-z0-9_\-.:@=+,~]*)*/?"
)


# A lone surrogate is a str that no UTF-8 encoder accepts: it would fail in the worker, or
# be stored as U+FFFD by Consul after JSON escaping. Refused where it is typed in.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _printable(value: str) -> bool:
    return value.isprintable()


def check_text(value: str) -> str:
    """Any text that must survive the trip to Consul unchanged: no lone surrogates."""
    if _SURROGATE.search(value):
        raise ValueError("must be valid Unicode text (it contains a lone surrogate)")
    return value


def _check_key_segments(value: str, *, allow_empty: bool) -> str:
    if len(value) <= MAX_KEY_LENGTH and _PLAIN_KEY.fullmatch(value):
        return value
    if not value:
        if allow_empty:
            return value
        raise ValueError("must not be empty")
    if len(value) > MAX_KEY_LENGTH:
        raise ValueError(f"must be at most {MAX_KEY_LENGTH} characters")
    if not _printable(value):
        raise ValueError("must not contain control or non-printable characters")
    if value.startswith("/"):
        raise ValueError("must not start with '/'")
    if "\\" in value:
        raise ValueError("must not contain '\\'")
    # Consul answers 500 ("leading/trailing spaces are not allowed") to these: refused here
    # for the same reason as the '..' rule below (a 500 is retried and counted as an outage).
    if value.startswith(" ") or value.endswith(" "):
        raise ValueError("must not start or end with a space")
    _check_segments(value)
    # Consul percent-decodes a key once more and answers 500 ("path traversal is not
    # allowed") when the decoded form contains '..'. A 500 would be retried and counted by
    # the breaker, so one bad caller could open it for everyone: refuse such keys here.
    if "%" in value:
        decoded = unquote(value)
        if decoded != value:
            if ".." in decoded or "\\" in decoded:
                raise ValueError("must not contain percent-encoded '..' or '\\'")
            _check_segments(decoded)
        # Consul refuses a key whose decoded form has a space anywhere (500, as above).
        if b" " in unquote_to_bytes(value):
            raise ValueError("must not contain a percent-encoded space")
    return value


def _check_segments(value: str) -> None:
    # A trailing '/' names a folder and is fine; an empty segment anywhere else ('a//b')
    # and dot segments are rewritten by path normalisation, i.e. they address another path.
    segments = value.split("/")
    if value.endswith("/"):
        segments = segments[:-1]
    for segment in segments:
        if segment in {"", ".", ".."}:
            raise ValueError("must not contain empty, '.' or '..' path segments")


def _key(value: str) -> str:
    return _check_key_segments(value, allow_empty=False)


def _prefix(value: str) -> str:
    return _check_key_segments(value, allow_empty=True)


def _service_id(value: str) -> str:
    if not _SERVICE_ID.fullmatch(value) or ".." in value:
        raise ValueError(
            "must be 1-128 characters of letters, digits, '.', '_', ':', '@' or '-', "
            "starting with a letter or digit, without '..'"
        )
    return value


def _service_name(value: str) -> str:
    if not _SERVICE_NAME.fullmatch(value) or ".." in value:
        raise ValueError(
            "must be 1-128 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, without '..'"
        )
    return value


def _address(value: str) -> str:
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        if not _HOSTNAME.fullmatch(value):
            raise ValueError("must be an IP address or a DNS name") from None
        return value
    if ip.is_unspecified:
        raise ValueError(f"must not be the unspecified address {value}")
    return value


def split_host_port(value: str) -> tuple[str, int]:
    """``"host:port"`` (``"[v6]:port"`` for IPv6) as its host and port."""
    host, sep, port = value.rpartition(":")
    # isascii(): Arabic-Indic digits pass str.isdigit() and int() reads them.
    digits = port.isascii() and port.isdigit()
    if not sep or not digits or len(port) > 5 or not 1 <= int(port) <= 65535:
        raise ValueError("must be 'host:port' with a port of 1-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise ValueError("must put only an IPv6 address in brackets")
    elif ":" in host:
        raise ValueError("must put an IPv6 address in brackets ('[::1]:8080')")
    return _address(host), int(port)


def _host_port(value: str) -> str:
    split_host_port(value)
    return value


def _session(value: str) -> str:
    if not _SESSION_ID.fullmatch(value):
        raise ValueError("must be a session UUID")
    return value


def _duration(value: str) -> str:
    if not _DURATION.fullmatch(value):
        raise ValueError("must be a Go duration such as '10s', '500ms' or '1m30s'")
    return value


def _datacenter(value: str) -> str:
    if not DATACENTER.fullmatch(value):
        raise ValueError("must be 1-64 letters, digits, '-' or '_'")
    return value


def _agent_check_id(value: str) -> str:
    if not _AGENT_CHECK_ID.fullmatch(value) or ".." in value:
        raise ValueError(
            "must be 1-256 characters of letters, digits, '.', '_', ':', '@' or '-', "
            "starting with a letter, digit or '_', without '..'"
        )
    return value


def duration_seconds(value: str) -> float:
    """A Go duration (already checked by :data:`Duration`) in seconds."""
    return sum(
        float(number) * _DURATION_UNIT[unit] for number, unit in _DURATION_PART.findall(value)
    )


def _session_ttl(value: str) -> str:
    seconds = duration_seconds(_duration(value))
    if not SESSION_TTL_MIN_SECONDS <= seconds <= SESSION_TTL_MAX_SECONDS:
        raise ValueError("must be between 10s and 24h (86400s), Consul's bounds for a session")
    return value


def _lock_delay(value: str) -> str:
    if duration_seconds(_duration(value)) > LOCK_DELAY_MAX_SECONDS:
        raise ValueError("must be at most 60s (Consul caps a session's lock-delay there)")
    return value


def _node_name(value: str) -> str:
    if not _NODE_NAME.fullmatch(value):
        raise ValueError(
            "must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


def _near(value: str) -> str:
    if value != "_agent" and (not _NODE_NAME.fullmatch(value) or ".." in value):
        raise ValueError("must be a node name (1-128 letters, digits, '.', '_' or '-') or '_agent'")
    return value


def _check_output(value: str) -> str:
    check_text(value)
    if len(value) * 4 > MAX_CHECK_OUTPUT_BYTES and (
        len(value.encode("utf-8")) > MAX_CHECK_OUTPUT_BYTES
    ):
        raise ValueError(f"must be at most {MAX_CHECK_OUTPUT_BYTES} bytes in UTF-8")
    return value


def check_node_meta(meta: dict[str, str]) -> dict[str, str]:
    """Node metadata filters, sent as ``node-meta=key:value``: Consul's key rules, and a
    value it could hold (printable, within its length)."""
    if len(meta) > MAX_META_PAIRS:
        raise ValueError(f"must have at most {MAX_META_PAIRS} pairs")
    for key, value in meta.items():
        if not _META_KEY.fullmatch(key):
            raise ValueError(f"key {key!r} must be 1-128 letters, digits, '_' or '-'")
        if len(value) > MAX_META_VALUE_LENGTH or not _printable(value):
            raise ValueError(
                f"value of {key!r} must be at most {MAX_META_VALUE_LENGTH} printable characters"
            )
    return meta


def _check_id(value: str) -> str:
    if not _CHECK_ID.fullmatch(value) or value.endswith(" "):
        raise ValueError(
            "must be 1-128 letters, digits, '.', '_', ':', '@', '/', '-' or spaces, "
            "starting with a letter or digit"
        )
    return value


def _tag(value: str) -> str:
    if not value or len(value) > 255 or not _printable(value):
        raise ValueError("must be 1-255 printable characters")
    return value


def check_meta(meta: dict[str, str]) -> dict[str, str]:
    """Consul's rules for service metadata, checked before the request is made."""
    if len(meta) > MAX_META_PAIRS:
        raise ValueError(f"must have at most {MAX_META_PAIRS} pairs")
    for key, value in meta.items():
        if not _META_KEY.fullmatch(key):
            raise ValueError(f"key {key!r} must be 1-128 letters, digits, '_' or '-'")
        if key.startswith("consul-"):
            raise ValueError(f"key {key!r} uses the reserved 'consul-' prefix")
        if len(value) > MAX_META_VALUE_LENGTH:
            raise ValueError(f"value of {key!r} must be at most {MAX_META_VALUE_LENGTH} characters")
        if _SURROGATE.search(value):
            raise ValueError(f"value of {key!r} contains a lone surrogate")
        # Consul counts the limit in UTF-8 bytes, not characters.
        if len(value) * 4 > MAX_META_VALUE_LENGTH and (
            len(value.encode("utf-8")) > MAX_META_VALUE_LENGTH
        ):
            raise ValueError(
                f"value of {key!r} must be at most {MAX_META_VALUE_LENGTH} bytes in UTF-8"
            )
    return meta


KvKey = Annotated[str, AfterValidator(_key)]
KvPrefix = Annotated[str, AfterValidator(_prefix)]
ServiceId = Annotated[str, AfterValidator(_service_id)]
ServiceName = Annotated[str, AfterValidator(_service_name)]
ServiceAddress = Annotated[str, AfterValidator(_address)]
SessionId = Annotated[str, AfterValidator(_session)]
Duration = Annotated[str, AfterValidator(_duration)]
SessionTtl = Annotated[str, AfterValidator(_session_ttl)]
LockDelay = Annotated[str, AfterValidator(_lock_delay)]
NodeName = Annotated[str, AfterValidator(_node_name)]
CheckId = Annotated[str, AfterValidator(_check_id)]
Tag = Annotated[str, AfterValidator(_tag)]
Text = Annotated[str, AfterValidator(check_text)]
Datacenter = Annotated[str, AfterValidator(_datacenter)]
AgentCheckId = Annotated[str, AfterValidator(_agent_check_id)]
NearNode = Annotated[str, AfterValidator(_near)]
CheckOutput = Annotated[str, AfterValidator(_check_output)]
NodeMeta = Annotated[dict[str, str], AfterValidator(check_node_meta)]
HostPort = Annotated[str, AfterValidator(_host_port)]
