"""Processes the harness starts: own process group, log file, registry, stop-at-exit."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import deque
from pathlib import Path

_registry_lock = threading.Lock()
_registry: dict[int, ManagedProcess] = {}


def live_processes() -> list[ManagedProcess]:
    """Every harness process not yet closed (running, or killed by a test and not restarted)."""
    with _registry_lock:
        return list(_registry.values())


def stop_all() -> None:
    """Stop every process the harness started (session end, atexit, Ctrl-C)."""
    for proc in reversed(live_processes()):
        with contextlib.suppress(Exception):
            proc.close()


atexit.register(stop_all)


class ManagedProcess:
    """A child in its own session/process group whose stdout+stderr go to ``log_path``."""

    kind = "process"

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = Path(log_path)
        self._proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def _spawn(self, argv: list[str], *, cwd: Path | None = None) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            stamp = time.strftime("%H:%M:%S")
            log.write(f"---- {stamp} harness: starting {' '.join(argv)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
            )
        with _registry_lock:
            _registry[id(self)] = self

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def _killpg(self, sig: int) -> None:
        # Only while the leader is unreaped (alive or a zombie): its pid, and so the group id,
        # cannot have been reused by an unrelated process group.
        if self._proc is None or self._proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def _exited(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the leader to exit, without reaping it."""
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = os.waitid(os.P_PID, self._proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
            except ChildProcessError:
                return True
            if info is not None or time.monotonic() >= deadline:
                return info is not None
            time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the whole process group, wait, SIGKILL after ``timeout`` seconds."""
        if self._proc is None or self._proc.returncode is not None:
            return
        self._killpg(signal.SIGTERM)
        self._exited(timeout)
        self._killpg(signal.SIGKILL)  # the leader if it ignored SIGTERM, and any stragglers
        self._proc.wait()

    def kill(self) -> None:
        """SIGKILL the whole process group and reap it."""
        if self._proc is None or self._proc.returncode is not None:
            return
        self._killpg(signal.SIGKILL)
        self._proc.wait()

    def close(self) -> None:
        """Stop for good and leave the registry."""
        try:
            self.stop()
        finally:
            with _registry_lock:
                _registry.pop(id(self), None)

    # -- diagnostics ---------------------------------------------------------------------
    def log_tail(self, n: int = 40) -> str:
        try:
            with open(self.log_path, "rb") as f:
                lines = deque(f, maxlen=n)
        except OSError as exc:
            return f"<no log at {self.log_path}: {exc}>"
        return b"".join(lines).decode("utf-8", "replace")

    def describe(self) -> str:
        state = "running" if self.running else f"exited rc={self.returncode}"
        return f"{self.kind} {self.name} (pid {self.pid}, {state}, log {self.log_path})"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"
