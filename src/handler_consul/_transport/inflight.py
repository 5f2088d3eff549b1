"""Ending a request a worker thread is waiting on, from another thread.

A blocking query holds its thread for its whole wait. When its caller gives up, or the
runtime shuts down, the socket is shut down so the worker's read fails at once: the thread is
free now instead of at the end of the wait.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading

__all__ = ["InFlight", "shut_down"]


def shut_down(conn: http.client.HTTPConnection) -> None:
    """End a request's wait for its answer: its read fails at once."""
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class InFlight:
    """One caller's handle on the request a worker is waiting on, so the caller can end it.

    A blocking query holds its thread for its whole wait; when the caller gives up (its task
    is cancelled), :meth:`abort` shuts the socket down so the worker returns now. Any
    request of the same call that has not been sent yet is refused.
    """

    __slots__ = ("_conn", "_lock", "aborted")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: http.client.HTTPConnection | None = None
        self.aborted = False

    def attach(self, conn: http.client.HTTPConnection) -> bool:
        """Called by the worker once ``conn`` awaits its answer; False if already aborted."""
        with self._lock:
            if self.aborted:
                return False
            self._conn = conn
            return True

    def detach(self) -> None:
        with self._lock:
            self._conn = None

    def abort(self) -> None:
        """From any thread: end the request being waited on, and any later one."""
        with self._lock:
            self.aborted = True
            conn, self._conn = self._conn, None
        if conn is not None:
            shut_down(conn)
