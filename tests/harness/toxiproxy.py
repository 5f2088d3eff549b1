"""toxiproxy-server driven over its HTTP API, with one proxy in front of a Consul agent."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Self

from . import httpc
from .ports import HOST, allocate_ports, release_ports
from .procs import ManagedProcess

_names = itertools.count(1)


class ToxiproxyError(RuntimeError):
    pass


class ToxiproxyServer(ManagedProcess):
    """``toxiproxy-server -host 127.0.0.1 -port <free>``; its API at ``api_addr``."""

    kind = "toxiproxy"

    def __init__(
        self,
        toxiproxy_bin: str | os.PathLike[str],
        *,
        base_dir: str | os.PathLike[str] | None = None,
        ready_timeout: float = 15.0,
    ) -> None:
        self._owns_base = base_dir is None
        self.dir = (
            Path(base_dir)
            if base_dir is not None
            else Path(tempfile.mkdtemp(prefix="handler-consul-toxiproxy-"))
        )
        name = f"toxiproxy-{os.getpid()}-{next(_names)}"
        super().__init__(name, self.dir / f"{name}.log")
        self.toxiproxy_bin = str(toxiproxy_bin)
        self.host = HOST
        self._ports = allocate_ports(1)
        (self.api_port,) = self._ports
        self.ready_timeout = ready_timeout
        self._closed = False

    @property
    def api_addr(self) -> str:
        return f"{self.host}:{self.api_port}"

    @property
    def api_url(self) -> str:
        return f"http://{self.api_addr}"

    def start(self) -> Self:
        self._spawn(
            [self.toxiproxy_bin, "-host", self.host, "-port", str(self.api_port)], cwd=self.dir
        )
        deadline = time.monotonic() + self.ready_timeout
        last = ""
        while time.monotonic() < deadline:
            if not self.running:
                raise ToxiproxyError(
                    f"toxiproxy-server exited (rc={self.returncode}); log:\n{self.log_tail()}"
                )
            try:
                resp = self.api("GET", "/version", timeout=1.0)
                if resp.status == 200:
                    return self
                last = f"{resp.status}"
            except OSError as exc:
                last = repr(exc)
            time.sleep(0.05)
        raise ToxiproxyError(f"toxiproxy-server not ready ({last}); log:\n{self.log_tail()}")

    def api(
        self, method: str, path: str, body: Any = None, *, timeout: float = 5.0
    ) -> httpc.Response:
        return httpc.request(self.api_addr, method, path, body, timeout=timeout)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """An API call that must succeed; returns the decoded JSON (or None)."""
        resp = self.api(method, path, body)
        if resp.status >= 300:
            raise ToxiproxyError(f"{method} {path} -> {resp.status} {resp.text.strip()}")
        return resp.json() if resp.body.strip() else None

    def version(self) -> str:
        return self.api("GET", "/version").text.strip()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            super().close()
        finally:
            release_ports(self._ports)
            if self._owns_base:
                shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Toxiproxy:
    """One toxiproxy proxy ``listen_addr`` -> ``upstream`` (an agent or "host:port").

    Point the client at ``host``/``listen_port`` (or ``url``) instead of the agent. Pass a
    running ``server`` to share one toxiproxy-server; otherwise this starts (and owns) one.
    """

    def __init__(
        self,
        upstream: Any,
        *,
        server: ToxiproxyServer | None = None,
        toxiproxy_bin: str | os.PathLike[str] | None = None,
        name: str | None = None,
    ) -> None:
        self.upstream = upstream
        self.upstream_addr: str = getattr(upstream, "http_addr", None) or str(upstream)
        if server is None:
            if toxiproxy_bin is None:
                raise ValueError("Toxiproxy needs a running server or a toxiproxy_bin")
            self.server = ToxiproxyServer(toxiproxy_bin).start()
            self._owns_server = True
        else:
            self.server = server
            self._owns_server = False
        self.name = name or f"consul-{os.getpid()}-{next(_names)}"
        self.host = HOST
        self._ports = allocate_ports(1)
        (self.listen_port,) = self._ports
        self._toxics = itertools.count(1)
        self._closed = False
        try:
            self.server.call(
                "POST",
                "/proxies",
                {
                    "name": self.name,
                    "listen": self.listen_addr,
                    "upstream": self.upstream_addr,
                    "enabled": True,
                },
            )
        except BaseException:
            self.close()
            raise

    @property
    def port(self) -> int:
        return self.listen_port

    @property
    def listen_addr(self) -> str:
        return f"{self.host}:{self.listen_port}"

    @property
    def http_addr(self) -> str:
        return self.listen_addr

    @property
    def url(self) -> str:
        return f"http://{self.listen_addr}"

    # -- toxics --------------------------------------------------------------------------
    def add_toxic(
        self,
        type_: str,
        attributes: dict[str, Any],
        *,
        stream: str = "downstream",
        toxicity: float = 1.0,
    ) -> str:
        """Add any toxiproxy toxic; returns its name (for ``remove_toxic``)."""
        toxic_name = f"{type_}_{stream}_{next(self._toxics)}"
        self.server.call(
            "POST",
            f"/proxies/{self.name}/toxics",
            {
                "name": toxic_name,
                "type": type_,
                "stream": stream,
                "toxicity": toxicity,
                "attributes": attributes,
            },
        )
        return toxic_name

    def latency(self, ms: int, jitter: int = 0, *, stream: str = "downstream") -> str:
        """Delay data by ``ms`` (+- ``jitter``) ms; downstream = Consul's answers."""
        return self.add_toxic("latency", {"latency": ms, "jitter": jitter}, stream=stream)

    def timeout(self, ms: int = 0, *, stream: str = "upstream") -> str:
        """Drop all data; close the connection after ``ms`` (0: never, a black hole).

        Upstream by default, so the request never reaches Consul and no answer comes back.
        The connection stays open as long as Consul keeps its end open: harness agents wait
        an hour for a request (Consul's defaults close after 10 s, or 120 s when idle).
        """
        return self.add_toxic("timeout", {"timeout": ms}, stream=stream)

    def reset_peer(self, timeout_ms: int = 0, *, stream: str = "downstream") -> str:
        """Reset connections (TCP RST) at once or after ``timeout_ms``."""
        return self.add_toxic("reset_peer", {"timeout": timeout_ms}, stream=stream)

    def bandwidth(self, kb_per_s: int, *, stream: str = "downstream") -> str:
        return self.add_toxic("bandwidth", {"rate": kb_per_s}, stream=stream)

    def remove_toxic(self, toxic_name: str) -> None:
        self.server.call("DELETE", f"/proxies/{self.name}/toxics/{toxic_name}")

    def toxics(self) -> list[dict[str, Any]]:
        return list(self.server.call("GET", f"/proxies/{self.name}/toxics") or [])

    def clear(self) -> None:
        """Remove every toxic (the proxy stays as enabled/disabled as it was)."""
        for toxic in self.toxics():
            self.remove_toxic(toxic["name"])

    def down(self) -> None:
        """Disable the proxy: it stops listening and drops open connections (refused)."""
        self.server.call("POST", f"/proxies/{self.name}", {"enabled": False})

    def up(self) -> None:
        self.server.call("POST", f"/proxies/{self.name}", {"enabled": True})

    @property
    def enabled(self) -> bool:
        return bool(self.server.call("GET", f"/proxies/{self.name}")["enabled"])

    # -- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self.server.running:
                with contextlib.suppress(ToxiproxyError, OSError):
                    self.server.call("DELETE", f"/proxies/{self.name}")
        finally:
            release_ports(self._ports)
            if self._owns_server:
                self.server.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Toxiproxy {self.name} {self.listen_addr} -> {self.upstream_addr}>"
