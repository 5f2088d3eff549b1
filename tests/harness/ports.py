"""Free TCP/UDP ports on 127.0.0.1 that parallel agents can never be handed twice.

Ports come from a range below the kernel's ephemeral range (so an outgoing connection
cannot grab one between allocation and the agent binding it). All ports of one agent are
held bound at the same time while they are chosen, each one is checked free for both TCP
and UDP (serf uses both), a process-wide set remembers every port handed out, and a
``flock`` on a per-port file keeps other processes (pytest-xdist workers, a second
checkout) from picking the same port while it is in use here.
"""

from __future__ import annotations

import fcntl
import os
import random
import socket
import tempfile
import threading
from pathlib import Path

HOST = "127.0.0.1"
PORT_RANGE = (20000, 32000)

_lock = threading.Lock()
_handed_out: set[int] = set()
_port_locks: dict[int, int] = {}  # port -> fd holding its flock
_lock_dir = Path(tempfile.gettempdir()) / "handler-consul-ports"


def _bindable(port: int) -> list[socket.socket] | None:
    socks: list[socket.socket] = []
    try:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            s = socket.socket(socket.AF_INET, kind)
            socks.append(s)
            s.bind((HOST, port))
    except OSError:
        for s in socks:
            s.close()
        return None
    return socks


def _flock(port: int) -> int | None:
    _lock_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(_lock_dir / f"{port}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def allocate_ports(n: int) -> list[int]:
    """Return ``n`` distinct ports, free on 127.0.0.1 for TCP and UDP, never handed out before."""
    with _lock:
        held: dict[int, list[socket.socket]] = {}
        try:
            for _ in range(2000):
                if len(held) == n:
                    break
                port = random.randint(*PORT_RANGE)
                if port in _handed_out or port in held:
                    continue
                socks = _bindable(port)
                if socks is None:
                    continue
                fd = _flock(port)
                if fd is None:
                    for s in socks:
                        s.close()
                    continue
                _port_locks[port] = fd
                held[port] = socks
            else:
                raise RuntimeError(f"could not find {n} free ports in {PORT_RANGE}")
            if len(held) != n:
                raise RuntimeError(f"could not find {n} free ports in {PORT_RANGE}")
        except BaseException:
            for port in held:
                os.close(_port_locks.pop(port))
            raise
        finally:
            for socks in held.values():
                for s in socks:
                    s.close()
        ports = list(held)
        _handed_out.update(ports)
        return ports


def release_ports(ports: list[int] | tuple[int, ...]) -> None:
    """Give ports back once nothing will bind them again (the owner is closed for good)."""
    with _lock:
        for port in ports:
            fd = _port_locks.pop(port, None)
            if fd is not None:
                os.close(fd)
            _handed_out.discard(port)
