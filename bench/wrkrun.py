"""Consul's own ceiling: wrk (a native load generator) against the same agent."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

CONNECTIONS = 16
THREADS = 2

_PUT_LUA = """\
wrk.method = "PUT"
wrk.body = "{value}"
wrk.headers["Content-Type"] = "application/octet-stream"
"""


def available() -> bool:
    return shutil.which("wrk") is not None


def _seconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"unparsable wrk latency {text!r}")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def parse(output: str) -> dict[str, Any]:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if rps is None:
        raise ValueError(f"no Requests/sec in wrk output:\n{output}")
    pct = dict(re.findall(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)\s*$", output, re.MULTILINE))
    requests = re.search(r"(\d+) requests in", output)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sock = re.search(r"Socket errors:.*", output)
    return {
        "ops_per_s": float(rps.group(1)),
        "ops": int(requests.group(1)) if requests else 0,
        "lat_p50_us": _seconds(pct["50"]) * 1e6 if "50" in pct else None,
        "lat_p99_us": _seconds(pct["99"]) * 1e6 if "99" in pct else None,
        "errors": int(bad.group(1)) if bad else 0,
        "socket_errors": sock.group(0) if sock else None,
    }


def run(url: str, *, method: str, seconds: float, value: str) -> dict[str, Any]:
    """One wrk run; returns ops/s and latency percentiles (µs)."""
    argv = [
        "wrk",
        f"-t{THREADS}",
        f"-c{CONNECTIONS}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "--timeout",
        "5s",
    ]
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        if method == "PUT":
            script = Path(tmp) / "put.lua"
            script.write_text(_PUT_LUA.format(value=value))
            argv += ["-s", str(script)]
        argv.append(url)
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + 30, check=False
        )
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited {proc.returncode}: {proc.stderr.strip()}")
    return parse(proc.stdout)
