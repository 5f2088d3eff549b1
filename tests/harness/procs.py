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
        self._reap()
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
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def _reap(self, timeout: float = 5.0) -> None:
        if self._proc is None:
            return
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._killpg(signal.SIGKILL)
            self._proc.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the whole process group, wait, SIGKILL after ``timeout`` seconds."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._killpg(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._killpg(signal.SIGKILL)
        self._killpg(signal.SIGKILL)  # anything left in the group
        self._reap()

    def kill(self) -> None:
        """SIGKILL the whole process group and reap it."""
        if self._proc is None:
            return
        self._killpg(signal.SIGKILL)
        self._reap()

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
