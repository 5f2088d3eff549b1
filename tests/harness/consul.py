"""Real Consul agents on loopback: a dev agent, an ACL agent, a three-server cluster."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Self

from . import httpc
from .ports import HOST, allocate_ports, release_ports
from .procs import ManagedProcess

READY_TIMEOUT = 30.0
POLL_INTERVAL = 0.05
PROBE_TIMEOUT = 1.0
_names = itertools.count(1)


class ConsulHarnessError(RuntimeError):
    """An agent or cluster did not come up (or down) as expected; carries the log tail."""


class ConsulAgent(ManagedProcess):
    """One ``consul agent`` on 127.0.0.1 with its own ports, data dir and log.

    ``dev=True`` (default) runs ``consul agent -dev``: in-memory state, a leader within about
    a second; ``restart()`` keeps ports and data dir but the dev agent's KV starts empty.
    ``dev=False`` runs a single server (``bootstrap_expect=1``) whose state survives restarts.
    DNS, gRPC and HTTPS are disabled. Ready when ``/v1/status/leader`` names a leader and the
    agent's own node is in the catalog.
    """

    kind = "consul"

    def __init__(
        self,
        consul_bin: str | os.PathLike[str],
        *,
        name: str | None = None,
        dev: bool = True,
        base_dir: str | os.PathLike[str] | None = None,
        extra_config: dict[str, Any] | None = None,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        name = name or f"agent-{os.getpid()}-{next(_names)}"
        self._owns_base = base_dir is None
        base = (
            Path(base_dir)
            if base_dir is not None
            else Path(tempfile.mkdtemp(prefix="handler-consul-"))
        )
        self.dir = base / name
        super().__init__(name, self.dir / "consul.log")
        self.consul_bin = str(consul_bin)
        self.dev = dev
        self.extra_config: dict[str, Any] = dict(extra_config or {})
        self.ready_timeout = ready_timeout
        self.host = HOST
        self._ports = allocate_ports(4)
        self.http_port, self.serf_lan_port, self.serf_wan_port, self.server_port = self._ports
        self.data_dir = self.dir / "data"
        self.config_path = self.dir / "config.json"
        self._closed = False

    # -- addresses -----------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self.http_port

    @property
    def http_addr(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def url(self) -> str:
        return f"http://{self.http_addr}"

    @property
    def serf_lan_addr(self) -> str:
        return f"{self.host}:{self.serf_lan_port}"

    @property
    def server_addr(self) -> str:
        """The server-RPC address, as ``/v1/status/leader`` and ``/v1/status/peers`` name it."""
        return f"{self.host}:{self.server_port}"

    # -- configuration -------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "node_name": self.name,
            "datacenter": "dc1",
            "data_dir": str(self.data_dir),
            "bind_addr": self.host,
            "client_addr": self.host,
            "advertise_addr": self.host,
            "advertise_addr_wan": self.host,
            "ports": {
                "http": self.http_port,
                "https": -1,
                "dns": -1,
                "grpc": -1,
                "grpc_tls": -1,
                "serf_lan": self.serf_lan_port,
                "serf_wan": self.serf_wan_port,
                "server": self.server_port,
            },
            "disable_update_check": True,
            "log_level": "DEBUG",
            "ui_config": {"enabled": False},
            "performance": {"raft_multiplier": 1},
            # Consul closes a connection that sends no request within 10 s (read header
            # timeout) or idles 120 s between requests; toxiproxy passes that close on, so a
            # black-holed request would end in "connection lost" instead of hanging.
            "http_config": {"read_header_timeout": "1h", "idle_timeout": "1h"},
        }
        if not self.dev:
            cfg.update({"server": True, "bootstrap_expect": 1})
        cfg.update(self.extra_config)
        return cfg

    def argv(self) -> list[str]:
        argv = [self.consul_bin, "agent"]
        if self.dev:
            argv.append("-dev")
        return [*argv, "-config-file", str(self.config_path)]

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, *, wait: bool = True) -> Self:
        if self._closed:
            raise ConsulHarnessError(f"{self.name} is closed")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        self._spawn(self.argv(), cwd=self.dir)
        if wait:
            self.wait_ready()
        return self

    def restart(self, *, wait: bool = True) -> Self:
        """Stop (if running) and start again with the same ports and data dir."""
        self.stop()
        return self.start(wait=wait)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            super().close()
        finally:
            release_ports(self._ports)
            if self._owns_base:
                shutil.rmtree(self.dir.parent, ignore_errors=True)

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- HTTP ----------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = httpc.DEFAULT_TIMEOUT,
    ) -> httpc.Response:
        return httpc.request(
            self.http_addr, method, path, body, token=token, headers=headers, timeout=timeout
        )

    def leader_addr(self, timeout: float = PROBE_TIMEOUT) -> str:
        """The server-RPC address of the leader this agent knows ("" when none)."""
        resp = self.request("GET", "/v1/status/leader", timeout=timeout)
        if resp.status != 200:
            raise ConsulHarnessError(f"{self.name}: /v1/status/leader -> {resp.status} {resp.text}")
        return str(resp.json() or "")

    # -- readiness -----------------------------------------------------------------------
    def _not_ready_reason(self) -> str | None:
        """None when ready, else why not (for the timeout message)."""
        try:
            if not self.leader_addr():
                return "no leader yet"
            resp = self.request(
                "GET",
                f"/v1/catalog/node/{self.name}",
                token=self._probe_token(),
                timeout=PROBE_TIMEOUT,
            )
        except OSError as exc:
            return f"HTTP not answering: {exc!r}"
        if resp.status != 200 or resp.body.strip() in (b"", b"null"):
            return f"node not in catalog yet ({resp.status})"
        return None

    def _probe_token(self) -> str | None:
        return None

    def _wait(self, what: str, check: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        reason = "not checked"
        while time.monotonic() < deadline:
            if not self.running:
                raise ConsulHarnessError(
                    f"{self.name} exited (rc={self.returncode}) before {what}; log tail:\n"
                    + self.log_tail()
                )
            reason = check()
            if reason is None:
                return
            time.sleep(POLL_INTERVAL)
        raise ConsulHarnessError(
            f"{self.name} not {what} after {timeout:.0f}s ({reason}); log tail:\n" + self.log_tail()
        )

    def wait_ready(self, timeout: float | None = None) -> None:
        self._wait("ready", self._not_ready_reason, timeout or self.ready_timeout)

    def wait_http(self, timeout: float | None = None) -> None:
        """Wait only until the HTTP API answers (a cluster member may still have no leader)."""

        def check() -> str | None:
            try:
                self.leader_addr()
            except OSError as exc:
                return f"HTTP not answering: {exc!r}"
            return None

        self._wait("answering HTTP", check, timeout or self.ready_timeout)


class AclConsulAgent(ConsulAgent):
    """A dev agent with ACLs enabled, ``default_policy = "deny"``.

    ``management_token`` is the initial management token (also the agent token, so the
    agent can register itself). ``mint_token(rules_hcl)`` creates a policy and a token.
    """

    def __init__(self, consul_bin: str | os.PathLike[str], **kwargs: Any) -> None:
        super().__init__(consul_bin, **kwargs)
        self.management_token = str(uuid.uuid4())
        self._minted = itertools.count(1)

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg["acl"] = {
            "enabled": True,
            "default_policy": "deny",
            "down_policy": "extend-cache",
            "enable_token_persistence": True,
            "tokens": {
                "initial_management": self.management_token,
                "agent": self.management_token,
            },
        }
        cfg.update(self.extra_config)
        return cfg

    def _probe_token(self) -> str | None:
        return self.management_token

    def _not_ready_reason(self) -> str | None:
        reason = super()._not_ready_reason()
        if reason is not None:
            return reason
        try:
            resp = self.request(
                "GET", "/v1/agent/self", token=self.management_token, timeout=PROBE_TIMEOUT
            )
        except OSError as exc:
            return f"HTTP not answering: {exc!r}"
        if resp.status != 200:
            return f"management token not usable yet: {resp.status} {resp.text.strip()}"
        return None

    def mint_token(self, rules_hcl: str, *, description: str | None = None) -> str:
        """Create a policy with ``rules_hcl`` and a token holding it; return its SecretID."""
        n = next(self._minted)
        policy_name = f"harness-{self.name}-{n}-{uuid.uuid4().hex[:8]}"
        resp = self.request(
            "PUT",
            "/v1/acl/policy",
            {"Name": policy_name, "Rules": rules_hcl},
            token=self.management_token,
        )
        if resp.status != 200:
            raise ConsulHarnessError(f"creating policy failed: {resp.status} {resp.text}")
        policy_id = resp.json()["ID"]
        resp = self.request(
            "PUT",
            "/v1/acl/token",
            {"Description": description or policy_name, "Policies": [{"ID": policy_id}]},
            token=self.management_token,
        )
        if resp.status != 200:
            raise ConsulHarnessError(f"creating token failed: {resp.status} {resp.text}")
        return str(resp.json()["SecretID"])


class AgentGroup:
    """Agents started and stopped together; subclasses set ``agents``, ``base_dir`` and
    ``_owns_base`` and define ``start()``."""

    agents: list[ConsulAgent]
    base_dir: Path
    _owns_base: bool

    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        for agent in self.agents:
            with contextlib.suppress(Exception):
                agent.close()
        if self._owns_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_tails(self, n: int = 20) -> str:
        return "\n".join(f"--- {a.describe()}\n{a.log_tail(n)}" for a in self.agents)


class ConsulCluster(AgentGroup):
    """Three (``size``) Consul servers on loopback that elect a leader among themselves."""

    def __init__(
        self,
        consul_bin: str | os.PathLike[str],
        *,
        size: int = 3,
        base_dir: str | os.PathLike[str] | None = None,
        ready_timeout: float = 60.0,
    ) -> None:
        self._owns_base = base_dir is None
        self.base_dir = (
            Path(base_dir)
            if base_dir is not None
            else Path(tempfile.mkdtemp(prefix="handler-consul-cluster-"))
        )
        self.ready_timeout = ready_timeout
        tag = f"{os.getpid()}-{next(_names)}"
        self.agents: list[ConsulAgent] = [
            ConsulAgent(consul_bin, name=f"server-{tag}-{i}", dev=False, base_dir=self.base_dir)
            for i in range(1, size + 1)
        ]
        for agent in self.agents:
            agent.extra_config = {
                "bootstrap_expect": size,
                "retry_join": [a.serf_lan_addr for a in self.agents if a is not agent],
                "retry_interval": "1s",
            }

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> Self:
        try:
            for agent in self.agents:
                agent.start(wait=False)
            for agent in self.agents:
                agent.wait_http()
            deadline = time.monotonic() + self.ready_timeout
            self.wait_for_leader(timeout=self.ready_timeout)
            self._wait_kv_write(deadline)
        except BaseException:
            self.close()
            raise
        return self

    def _wait_kv_write(self, deadline: float) -> None:
        last = ""
        while time.monotonic() < deadline:
            try:
                resp = self.agents[0].request("PUT", "/v1/kv/harness/cluster-ready", b"1")
                if resp.status == 200 and resp.body.strip() == b"true":
                    return
                last = f"{resp.status} {resp.text.strip()}"
            except OSError as exc:
                last = repr(exc)
            time.sleep(POLL_INTERVAL)
        raise ConsulHarnessError(f"cluster KV write never succeeded ({last})\n" + self.log_tails())

    # -- leadership ----------------------------------------------------------------------
    @property
    def running(self) -> list[ConsulAgent]:
        return [a for a in self.agents if a.running]

    def agent_for_server_addr(self, addr: str) -> ConsulAgent | None:
        return next((a for a in self.agents if a.server_addr == addr), None)

    def leader(self) -> ConsulAgent:
        """The agent the running servers name as leader (asked now, no waiting)."""
        errors = []
        for agent in self.running:
            try:
                addr = agent.leader_addr()
            except (OSError, ConsulHarnessError) as exc:
                errors.append(f"{agent.name}: {exc!r}")
                continue
            found = self.agent_for_server_addr(addr) if addr else None
            if found is not None and found.running:
                return found
            errors.append(f"{agent.name}: leader {addr!r}")
        raise ConsulHarnessError("no running leader: " + "; ".join(errors))

    def followers(self) -> list[ConsulAgent]:
        leader = self.leader()
        return [a for a in self.running if a is not leader]

    def wait_for_leader(
        self, exclude: ConsulAgent | None = None, timeout: float = 30.0
    ) -> ConsulAgent:
        """Wait until every running server names the same running leader (not ``exclude``)."""
        deadline = time.monotonic() + timeout
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:
            seen = {}
            for agent in self.running:
                try:
                    seen[agent.name] = agent.leader_addr()
                except (OSError, ConsulHarnessError) as exc:
                    seen[agent.name] = f"<{exc!r}>"
            addrs = set(seen.values())
            if len(addrs) == 1:
                leader = self.agent_for_server_addr(addrs.pop())
                if leader is not None and leader.running and leader is not exclude:
                    return leader
            time.sleep(POLL_INTERVAL)
        raise ConsulHarnessError(
            f"no agreed leader after {timeout:.0f}s (seen {seen}, excluding "
            f"{exclude.name if exclude else None})\n" + self.log_tails()
        )

    def kill_leader(self) -> ConsulAgent:
        """SIGKILL the current leader; returns it (restart it with ``restart(agent)``)."""
        leader = self.leader()
        leader.kill()
        return leader

    def restart(self, agent: ConsulAgent, timeout: float = 30.0) -> ConsulAgent:
        """Restart one server (same ports and data dir) and wait until it follows a leader."""
        agent.restart(wait=False)
        agent.wait_http(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.wait_for_leader(timeout=max(0.1, deadline - time.monotonic()))
            if agent.leader_addr() == leader.server_addr:
                return agent
            time.sleep(POLL_INTERVAL)
        raise ConsulHarnessError(f"{agent.name} did not rejoin\n" + self.log_tails())
