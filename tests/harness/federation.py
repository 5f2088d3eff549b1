"""Two datacenters on loopback: a single-server agent in each, joined over the WAN."""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from pathlib import Path
from typing import Self

from .consul import POLL_INTERVAL, AgentGroup, ConsulAgent, ConsulHarnessError

_names = itertools.count(1)


class TwoDatacenters(AgentGroup):
    """``dc1`` and ``dc2``, one server each (state on disk), WAN-joined.

    Ready when each server names a leader and ``dc1``'s agent answers a query forwarded to
    ``dc2`` (``GET /v1/catalog/services?dc=dc2``). ``dc2`` joins ``dc1`` with
    ``retry_join_wan``, so a restarted ``dc2`` finds its way back on its own.
    """

    def __init__(
        self,
        consul_bin: str | os.PathLike[str],
        *,
        base_dir: str | os.PathLike[str] | None = None,
        ready_timeout: float = 60.0,
    ) -> None:
        self._owns_base = base_dir is None
        self.base_dir = (
            Path(base_dir)
            if base_dir is not None
            else Path(tempfile.mkdtemp(prefix="handler-consul-wan-"))
        )
        self.ready_timeout = ready_timeout
        tag = f"{os.getpid()}-{next(_names)}"
        self.dc1 = ConsulAgent(
            consul_bin,
            name=f"dc1-{tag}",
            dev=False,
            base_dir=self.base_dir,
            extra_config={"datacenter": "dc1"},
        )
        self.dc2 = ConsulAgent(
            consul_bin,
            name=f"dc2-{tag}",
            dev=False,
            base_dir=self.base_dir,
            extra_config={
                "datacenter": "dc2",
                "retry_join_wan": [f"{self.dc1.host}:{self.dc1.serf_wan_port}"],
                "retry_interval_wan": "1s",
            },
        )

    @property
    def agents(self) -> list[ConsulAgent]:
        return [self.dc1, self.dc2]

    def start(self) -> Self:
        try:
            for agent in self.agents:
                agent.start(wait=False)
            for agent in self.agents:
                agent.wait_ready(self.ready_timeout)
            self.wait_federated()
        except BaseException:
            self.close()
            raise
        return self

    def wait_federated(self, timeout: float | None = None) -> None:
        """Wait until dc1's agent forwards a query to dc2 and gets an answer."""
        deadline = time.monotonic() + (timeout or self.ready_timeout)
        last = ""
        while time.monotonic() < deadline:
            try:
                resp = self.dc1.request("GET", "/v1/catalog/services?dc=dc2")
                if resp.status == 200:
                    return
                last = f"{resp.status} {resp.text.strip()}"
            except OSError as exc:
                last = repr(exc)
            time.sleep(POLL_INTERVAL)
        raise ConsulHarnessError(f"dc1 never reached dc2 ({last})\n" + self.log_tails())
