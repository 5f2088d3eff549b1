"""Find (or build) the consul and toxiproxy-server binaries through scripts/*-bin."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = {
    "consul": REPO_ROOT / "scripts" / "consul-bin",
    "toxiproxy": REPO_ROOT / "scripts" / "toxiproxy-bin",
}
VERSION_ARGS = {"consul": ["version"], "toxiproxy": ["-version"]}
BUILD_TIMEOUT = 60 * 60  # a cold Consul build is ~5-10 min; never wait forever
NOT_BUILT = 3  # exit status of `scripts/*-bin --no-build` when a build would be needed


class BinaryUnavailable(RuntimeError):
    """No binary could be had; the message says why (the script's stderr tail)."""


class NotBuiltYet(BinaryUnavailable):
    pass


def resolve(kind: str, *, build: bool = True) -> str:
    """Path of the ``kind`` binary ("consul" or "toxiproxy"); builds it unless ``build=False``."""
    script = SCRIPTS[kind]
    argv = [str(script)] if build else [str(script), "--no-build"]
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BinaryUnavailable(f"{script.name}: {exc}") from exc
    path = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode == NOT_BUILT and not build:
        raise NotBuiltYet(f"{kind} is not built yet")
    if proc.returncode != 0 or not path:
        tail = "\n".join(proc.stderr.strip().splitlines()[-30:])
        raise BinaryUnavailable(
            f"{script.relative_to(REPO_ROOT)} exited {proc.returncode}; no {kind} binary:\n{tail}"
        )
    if not Path(path).is_file():
        raise BinaryUnavailable(f"{script.name} printed {path!r}, which is not a file")
    return path


def version(kind: str, path: str) -> str:
    """First line of ``consul version`` / ``toxiproxy-server -version``."""
    try:
        proc = subprocess.run(
            [path, *VERSION_ARGS[kind]], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"<version unknown: {exc}>"
    out = (proc.stdout or proc.stderr).strip().splitlines()
    return out[0] if out else f"<version unknown: exit {proc.returncode}>"
