"""Where the transport connects, and the connections it opens: TCP, TLS (optionally for
another name than the host), or a unix socket.

Each is an ``http.client`` connection whose connect is bounded by its ``timeout``, which the
transport sets to what is left of the request's deadline.
"""

from __future__ import annotations

import http.client
import socket
import ssl

__all__ = ["TransportConfig", "new_connection"]


class TransportConfig:
    """Where and how to connect; built once from the settings."""

    __slots__ = (
        "address",
        "cacert",
        "cert",
        "host",
        "key",
        "max_response_bytes",
        "port",
        "scheme",
        "server_name",
        "timeout",
        "unix_socket",
        "verify",
    )

    def __init__(
        self,
        *,
        host: str,
        port: int,
        scheme: str,
        timeout: float,
        max_response_bytes: int,
        verify: bool = True,
        cacert: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        unix_socket: str | None = None,
        server_name: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.scheme = scheme
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        self.verify = verify
        self.cacert = cacert
        self.cert = cert
        self.key = key
        # A unix socket replaces host and port; server_name replaces host for TLS only.
        self.unix_socket = unix_socket
        self.server_name = server_name
        shown = f"[{host}]" if ":" in host else host
        self.address = f"unix://{unix_socket}" if unix_socket else f"{scheme}://{shown}:{port}"


def new_connection(
    config: TransportConfig, *, timeout: float, ssl_context: ssl.SSLContext | None
) -> http.client.HTTPConnection:
    """An unconnected connection to the agent; it connects on its first request."""
    if config.unix_socket:
        return UnixHTTPConnection(config.unix_socket, timeout=timeout)
    if ssl_context is None:
        return http.client.HTTPConnection(config.host, config.port, timeout=timeout)
    if config.server_name:
        return NamedHTTPSConnection(
            config.host,
            config.port,
            timeout=timeout,
            context=ssl_context,
            server_name=config.server_name,
        )
    return http.client.HTTPSConnection(
        config.host, config.port, timeout=timeout, context=ssl_context
    )


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 to an agent whose API listens on a unix socket (``addresses.http = unix://``)."""

    def __init__(self, path: str, *, timeout: float) -> None:
        # http.client needs a host for the Host header; the agent does not look at it.
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.unix_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class NamedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS whose SNI and certificate check use ``server_name`` instead of the host.

    For an agent reached by IP or through a load balancer whose certificate names something
    else (Consul's ``CONSUL_TLS_SERVER_NAME``); verification stays on, for that name.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float,
        context: ssl.SSLContext,
        server_name: str,
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self.tls_context = context
        self.server_name = server_name

    def connect(self) -> None:
        # The parent's TCP connect, then the handshake for the configured name
        # (HTTPSConnection.connect would use the host). The transport never sets a tunnel.
        http.client.HTTPConnection.connect(self)
        self.sock = self.tls_context.wrap_socket(self.sock, server_hostname=self.server_name)
