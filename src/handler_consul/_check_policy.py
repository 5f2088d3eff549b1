"""What a registered health check may point the Consul agent at (``checks.*`` settings).

An HTTP check is a request the agent itself makes, from its own network position: aimed at
the agent's API it could deregister a live service or write a key. :class:`CheckPolicy`
refuses such targets unless the settings allow them; payload validation applies it.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

__all__ = ["DEFAULT_CHECK_POLICY", "CheckPolicy"]


_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


def _is_loopback(host: str) -> bool:
    """Whether ``host`` reaches this machine: loopback names and addresses, their IPv4-mapped
    IPv6 forms (``::ffff:127.0.0.1``), and the unspecified addresses (a connection to
    ``0.0.0.0`` or ``::`` lands on the local host)."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:
        ip = mapped
    return ip.is_loopback or ip.is_unspecified


@dataclass(frozen=True, slots=True)
class CheckPolicy:
    """What a registered health check may point the agent at.

    The agent runs a check's HTTP request itself, with its own network position: a check
    aimed at ``/v1/agent/service/deregister/<id>`` with ``PUT`` deregisters a live service, one
    aimed at ``/v1/kv/...`` writes a key. By default a check may not target the Consul API
    (any ``/v1`` path, or the configured Consul address) and may only GET or HEAD.
    """

    consul_host: str = "localhost"
    consul_port: int = 8500
    allowed_methods: frozenset[str] = frozenset({"GET", "HEAD"})
    allow_consul_api: bool = False

    def check_url(self, url: str) -> str:
        if self.allow_consul_api:
            return url
        parts = urlsplit(url)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ValueError("has an invalid port") from None
        host = (parts.hostname or "").lower().rstrip(".")
        consul = self.consul_host.lower().rstrip(".")
        same_host = host == consul or (_is_loopback(host) and _is_loopback(consul))
        if same_host and port == self.consul_port:
            raise ValueError(
                "must not target the Consul agent's own address (set checks.allow_consul_api "
                "to allow it)"
            )
        # Decode as the agent's server will, then normalise as a router would: '//v1',
        # '/./v1', '/%76%31/' and '/x/../v1' all reach the API.
        path = unquote(unquote(parts.path))
        path = posixpath.normpath(re.sub("/+", "/", "/" + path))
        if path == "/v1" or path.startswith("/v1/"):
            raise ValueError(
                "must not target a Consul API path (/v1/...); set checks.allow_consul_api "
                "to allow it"
            )
        return url

    def check_method(self, method: str) -> str:
        if method not in self.allowed_methods:
            allowed = ", ".join(sorted(self.allowed_methods))
            raise ValueError(
                f"must be one of {allowed} (widen it with the checks.allowed_methods setting)"
            )
        return method


DEFAULT_CHECK_POLICY = CheckPolicy()
