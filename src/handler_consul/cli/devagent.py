"""A throwaway ``consul agent -dev`` on loopback, for ``handler-consul demo``.

The agent binds 127.0.0.1 only, on free ports, with DNS, gRPC and HTTPS off, and keeps its
state in memory plus a temporary data directory. It runs in its own process group so that
:meth:`DevAgent.stop` can end it and anything it spawned in one signal, and so that a Ctrl-C
in the terminal reaches the CLI (which then stops the agent) rather than the agent directly.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["DevAgent", "DevAgentError", "find_consul"]

LOOPBACK = "127.0.0.1"
READY_TIMEOUT_SECONDS = 30.0
_POLL_SECONDS = 0.05
_START_ATTEMPTS = 3  # a free port can be taken between choosing it and the agent binding it
_BUILT = re.compile(r"^consul-(\d+)\.(\d+)\.(\d+)$")


class DevAgentError(RuntimeError):
    """No consul binary, or the agent did not become ready."""


def _cache_dir() -> Path:
    # The same place scripts/consul-bin builds into.
    explicit = os.environ.get("HANDLER_CONSUL_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "handler-consul"


def find_consul() -> str:
    """$CONSUL_BIN, else ``consul`` on PATH, else the newest build of scripts/consul-bin."""
    explicit = os.environ.get("CONSUL_BIN")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise DevAgentError(f"CONSUL_BIN={explicit} is not an executable file")
        return explicit
    on_path = shutil.which("consul")
    if on_path:
        return on_path
    built: list[tuple[tuple[int, ...], Path]] = []
    with contextlib.suppress(OSError):
        for entry in _cache_dir().iterdir():
            match = _BUILT.match(entry.name)
            binary = entry / "consul"
            if match and os.access(binary, os.X_OK):
                built.append((tuple(int(g) for g in match.groups()), binary))
    if built:
        return str(max(built)[1])
    raise DevAgentError(
        "no consul binary found: set CONSUL_BIN, put `consul` on PATH, "
        "or run scripts/consul-bin to build one (scripts/handler-consul does this for you)"
    )


def _free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free for TCP and UDP (Serf uses both) right now."""
    ports: list[int] = []
    held: list[socket.socket] = []
    try:
        while len(ports) < n:
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(tcp)
            tcp.bind((LOOPBACK, 0))
            port = tcp.getsockname()[1]
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            held.append(udp)
            try:
                udp.bind((LOOPBACK, port))
            except OSError:
                continue
            ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


class DevAgent:
    """One dev agent; use as a context manager so it is always stopped."""

    def __init__(self, consul_bin: str | None = None) -> None:
        self.consul_bin = consul_bin or find_consul()
        self.host = LOOPBACK
        self.port = 0
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _config(self, ports: list[int]) -> dict[str, object]:
        http, serf_lan, serf_wan, server = ports
        return {
            "node_name": "handler-consul-demo",
            "bind_addr": LOOPBACK,
            "client_addr": LOOPBACK,
            "advertise_addr": LOOPBACK,
            "ports": {
                "http": http,
                "https": -1,
                "dns": -1,
                "grpc": -1,
                "grpc_tls": -1,
                "serf_lan": serf_lan,
                "serf_wan": serf_wan,
                "server": server,
            },
            "disable_update_check": True,
            "ui_config": {"enabled": False},
        }

    def start(self, timeout: float = READY_TIMEOUT_SECONDS) -> Self:
        """Start the agent and wait until it has a leader; retried on a port race."""
        try:
            return self._start(timeout)
        except BaseException:
            # Ctrl-C or SIGTERM while waiting for the leader: the agent must not outlive us.
            self.stop()
            raise

    def _start(self, timeout: float) -> Self:
        self._dir = Path(tempfile.mkdtemp(prefix="handler-consul-demo-"))
        last = ""
        for _ in range(_START_ATTEMPTS):
            ports = _free_ports(4)
            self.port = ports[0]
            config = self._dir / "config.json"
            config.write_text(json.dumps(self._config(ports)))
            with open(self._dir / "consul.log", "ab") as log:
                self._proc = subprocess.Popen(  # noqa: S603  # argv of our own, no shell
                    [
                        self.consul_bin,
                        "agent",
                        "-dev",
                        "-config-file",
                        str(config),
                        "-data-dir",
                        str(self._dir / "data"),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
            if self._wait_ready(timeout):
                return self
            last = self.log_tail()
            self._stop_process()
        raise DevAgentError(f"the dev agent did not become ready; its log ends with:\n{last}")

    def _wait_ready(self, timeout: float) -> bool:
        """True once /v1/status/leader names a leader; False if the agent died or timed out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            if self._leader():
                return True
            time.sleep(_POLL_SECONDS)
        return False

    def _leader(self) -> str:
        # http.client directly: no environment proxies, nothing but loopback.
        conn = http.client.HTTPConnection(self.host, self.port, timeout=1.0)
        try:
            conn.request("GET", "/v1/status/leader")
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                return ""
            leader = json.loads(body or b'""')
            return leader if isinstance(leader, str) else ""
        except (OSError, ValueError, http.client.HTTPException):
            return ""
        finally:
            conn.close()

    def log_tail(self, lines: int = 20) -> str:
        if self._dir is None:
            return ""
        try:
            text = (self._dir / "consul.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def version(self) -> str:
        """The first line of ``consul version``, e.g. ``Consul v1.22.7``."""
        try:
            out = subprocess.run(  # noqa: S603
                [self.consul_bin, "version"], capture_output=True, timeout=10, check=False
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            return "consul"
        first = out.decode(errors="replace").splitlines()
        return first[0] if first else "consul"

    def _killpg(self, sig: int) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, sig)

    def _stop_process(self, timeout: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after ``timeout``, reap."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._killpg(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout)
        self._killpg(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout)
        self._proc = None

    def stop(self) -> None:
        """Stop the agent's whole process group and remove its directory; idempotent."""
        try:
            self._stop_process()
        finally:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
