"""Test harness: real Consul agents, a three-server cluster, two WAN-joined datacenters,
toxiproxy, a counting proxy, and misbehaving HTTP servers (harness.misbehaving).

Test code, not product code; stdlib only. Import it as ``harness`` (tests/ is on sys.path
through tests/conftest.py). The fixtures in tests/conftest.py are the usual way in.
"""

from .binaries import BinaryUnavailable, NotBuiltYet, resolve, version
from .consul import AclConsulAgent, ConsulAgent, ConsulCluster, ConsulHarnessError
from .counting import CountingProxy
from .federation import TwoDatacenters
from .httpc import Response, request
from .misbehaving import (
    EarlyHints,
    ForwardThenDrop,
    OversizedBody,
    ReceivedRequest,
    TrickleBody,
    TrickleHeaders,
)
from .ports import allocate_ports, release_ports
from .procs import ManagedProcess, live_processes, stop_all
from .toxiproxy import Toxiproxy, ToxiproxyError, ToxiproxyServer

__all__ = [
    "AclConsulAgent",
    "BinaryUnavailable",
    "ConsulAgent",
    "ConsulCluster",
    "ConsulHarnessError",
    "CountingProxy",
    "EarlyHints",
    "ForwardThenDrop",
    "ManagedProcess",
    "NotBuiltYet",
    "OversizedBody",
    "ReceivedRequest",
    "Response",
    "Toxiproxy",
    "ToxiproxyError",
    "ToxiproxyServer",
    "TrickleBody",
    "TrickleHeaders",
    "TwoDatacenters",
    "allocate_ports",
    "live_processes",
    "release_ports",
    "request",
    "resolve",
    "stop_all",
    "version",
]
