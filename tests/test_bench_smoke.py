"""Smoke run of the benchmark (bench/, `scripts/bench`) at tiny sizes.

Checks that every figure the bench reports is produced and well-formed, never its value:
the numbers depend on the machine. wrk is not required (the bench is run with --no-wrk).
matplotlib is not required either (the optional `bench` extra): with it the plot is checked,
without it the line saying the plot was skipped; the skip path is also forced once, so it is
checked whichever venv runs this.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.consul

REPO = Path(__file__).resolve().parent.parent
OPS = ("kv_get", "kv_put")
HANDLER_INFLIGHT = (1, 16, 64, 256)
BASELINE_INFLIGHT = (1, 16, 64, 256)
POOLS = (10, 64)
# The same interpreter runs the bench, so this says whether it can draw the plot, and whether
# it can run the aiohttp contenders (raw aiohttp, python-consul2's consul.aio).
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
HAVE_AIOHTTP = importlib.util.find_spec("aiohttp") is not None
SKIP_HINT = "pip install -e '.[bench]'"


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: Any) -> bool:
    return _finite(value) and value > 0


@pytest.fixture(scope="module")
def bench_run(consul_bin: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench")
    argv = [
        sys.executable, "-m", "bench", "--all", "--no-wrk",
        "--rounds", "1", "--ops", "60", "--rejections", "300",
        "--rss-total", "400", "--rss-checkpoint", "100",
        "--consul-bin", consul_bin, "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return {
        "out": out,
        "stdout": proc.stdout,
        "stderr": proc.stderr,
        "results": json.loads((out / "results.json").read_text()),
    }


def test_every_contender_measured(bench_run: dict[str, Any]) -> None:
    cells = bench_run["results"]["comparison"]["cells"]
    expected = {
        f"{name}.{op}.c{n}" for name in ("consul2", "bare") for op in OPS for n in BASELINE_INFLIGHT
    } | {
        f"{mode}{pool}.{op}.c{n}"
        for mode in ("handler", "aio")
        for pool in POOLS
        for op in OPS
        for n in HANDLER_INFLIGHT
    }
    aiohttp_cells = {
        f"{name}.{op}.c{n}"
        for name in ("consul2aio", *(f"aiohttp{pool}" for pool in POOLS))
        for op in OPS
        for n in BASELINE_INFLIGHT
    }
    if HAVE_AIOHTTP:
        expected |= aiohttp_cells
    else:  # the optional bench extra is missing: said, and those contenders left out
        assert not aiohttp_cells & set(cells)
        assert "aiohttp not importable" in bench_run["stderr"]
    assert expected <= set(cells), sorted(expected - set(cells))
    for cid in expected:
        cell = cells[cid]
        median = cell["median"]
        assert cell["errors"] == 0, (cid, cell.get("first_error"))
        for key in ("ops_per_s", "lat_p50_us", "lat_p99_us", "cpu_us_per_op", "loop_cpu_us_per_op"):
            assert _positive(median[key]), (cid, key, median[key])
        assert median["lat_p99_us"] >= median["lat_p50_us"], cid
        for key in ("lag_p50_ms", "lag_p99_ms"):
            assert _finite(median[key]), (cid, key, median[key])
            assert median[key] >= 0, (cid, key, median[key])
        assert len(cell["rounds"]) == 1


def test_ratios_overhead_and_rejection(bench_run: dict[str, Any]) -> None:
    comparison = bench_run["results"]["comparison"]
    derived = comparison["derived"]
    for op in OPS:
        for n in BASELINE_INFLIGHT:
            for key in ("vs_consul2", "vs_bare", "bare_vs_consul2"):
                assert _positive(derived[f"{op}.c{n}.{key}"]), (op, n, key)
            for key in ("overhead_throughput_us", "overhead_latency_p50_us", "overhead_cpu_us"):
                assert _finite(derived[f"{op}.c{n}.{key}"]), (op, n, key)  # may be negative
        for n in HANDLER_INFLIGHT:  # the asyncio mode against the threads mode, same bound
            for pool in POOLS:
                assert _positive(derived[f"{op}.c{n}.aio{pool}/handler{pool}"]), (op, n, pool)
                if HAVE_AIOHTTP:
                    assert _positive(derived[f"{op}.c{n}.aio{pool}/aiohttp{pool}"]), (op, n)
    rejection = comparison["rejection"]
    assert rejection["samples"] == 300
    for key in ("p50_us", "p99_us", "control_p50_us", "control_p99_us"):
        assert _positive(rejection["median_of_rounds"][key])
    for key in ("p50_us", "p99_us"):
        assert _positive(rejection["pooled"][key])
        assert _positive(rejection["control"][key])
    assert comparison["config"]["wrk"] is False
    assert "--no-wrk" in comparison["config"]["wrk_note"]


def test_rss_stage(bench_run: dict[str, Any]) -> None:
    rss = bench_run["results"]["rss_asyncio"]  # --rss-io defaults to the asyncio mode
    assert rss["io"] == "asyncio"
    assert rss["envelopes"] == 400
    assert rss["checkpoint"] == 100
    assert rss["errors"] == 0, rss.get("first_error")
    for key in ("rss_start_mb", "rss_at_checkpoint_mb", "rss_at_end_mb", "ops_per_s"):
        assert _positive(rss[key]), key
    assert _finite(rss["growth_mb"])
    assert [p["envelopes"] for p in rss["curve"]][-1] == 400


def test_targets_printed_and_recorded(bench_run: dict[str, Any]) -> None:
    targets = {t["id"]: t for t in bench_run["results"]["targets"]}
    gated = [
        *(f"{op}.vs_consul2" for op in OPS),
        *(f"{op}.vs_bare" for op in OPS),
        *(f"{op}.loop_lag_p99" for op in OPS),
        "rejection_p99",
        "rss_growth.asyncio",
        *(f"{op}.asyncio_vs_threads" for op in OPS),
        *(f"{op}.loop_lag_p99.asyncio" for op in OPS),
        *((f"{op}.asyncio_vs_aiohttp" for op in OPS) if HAVE_AIOHTTP else ()),
    ]
    for tid in gated:
        assert targets[tid]["status"] in {"PASS", "SHORT"}, targets[tid]
        assert _finite(targets[tid]["measured"]), tid
        assert f"[{targets[tid]['status']:>7}] {targets[tid]['target']}" in bench_run["stdout"]
    for op in OPS:  # the wrk ceiling: reported when wrk ran, NOT RUN here (--no-wrk)
        assert targets[f"{op}.ceiling_fraction"]["status"] == "NOT RUN"
    headline = bench_run["results"]["headline"]
    for op in OPS:
        for key in ("handler_ops_per_s", "consul2_ops_per_s", "bare_ops_per_s", "vs_consul2"):
            assert _positive(headline[op][key]), (op, key)
        for key in ("aio_ops_per_s", "aio_vs_threads", "aio_lag_p99_ms_256"):
            assert _finite(headline[op][key]), (op, key)
    assert _positive(headline["rejection_p99_us"])
    assert _finite(headline["rss_growth_mb_asyncio"])
    assert targets["rss_growth"]["status"] == "NOT RUN"  # the threads mode's: not run here


def test_files_written(bench_run: dict[str, Any]) -> None:
    out: Path = bench_run["out"]
    markdown = (out / "RESULTS.md").read_text()
    for section in (
        "## Headline",
        "## Targets",
        "## Both I/O modes side by side",
        "## Every contender",
        "## RSS across real envelopes, asyncio mode",
        "## Machine",
    ):
        assert section in markdown
    assert "PASS" in markdown or "SHORT" in markdown


def test_plot_written_or_skip_said(bench_run: dict[str, Any]) -> None:
    plot: Path = bench_run["out"] / "throughput.png"
    if HAVE_MATPLOTLIB:
        png = plot.read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        width, height = struct.unpack(">II", png[16:24])  # IHDR, the first chunk
        assert width >= 800, (width, height)
        assert height >= 600, (width, height)  # two panels of a dozen bars each
        assert "plot skipped" not in bench_run["stderr"]
    else:
        assert not plot.exists()
        assert _skip_lines(bench_run["stderr"]), bench_run["stderr"][-2000:]


def _skip_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "plot skipped" in line and SKIP_HINT in line]


def test_render_without_matplotlib(bench_run: dict[str, Any], tmp_path: Path) -> None:
    """--render with matplotlib made unimportable: results still rendered, one skip line."""
    shutil.copy(bench_run["out"] / "results.json", tmp_path / "results.json")
    script = (
        "import sys; sys.modules['matplotlib'] = None\n"  # any import of it now fails
        "from bench.cli import main\n"
        f"raise SystemExit(main(['--render', '--out', {str(tmp_path)!r}]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert len(_skip_lines(proc.stderr)) == 1, proc.stderr
    assert "## Headline" in (tmp_path / "RESULTS.md").read_text()
    assert not (tmp_path / "throughput.png").exists()


def test_the_coordination_bench_produces_every_figure(consul_bin: str, tmp_path: Path) -> None:
    """``scripts/bench coordination`` at a tiny size: every pair is measured and rendered."""
    argv = [sys.executable, "-m", "bench", "coordination", "--rounds", "1", "--seconds", "0.2"]
    argv += ["--out", str(tmp_path), "--consul-bin", consul_bin]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "coordination.json").read_text())
    assert set(results["median_per_second"]) == {
        "kv_get cached",
        "kv_get through the pool",
        "lock round: handler.lock",
        "lock round: python-consul2 by hand",
        "64 keys: one consul.txn",
        "64 keys: 64 consul.kv_put",
    }
    assert all(_positive(v) for v in results["median_per_second"].values())
    assert all(_positive(v) for v in results["median_ratio"].values())
    rendered = (tmp_path / "COORDINATION.md").read_text()
    assert rendered.startswith("# KV coordination: side by side")
    assert "Cached kv_get target (50,000/s in one process):" in rendered


# -- the discovery stage ------------------------------------------------------------------

DISCOVERY_CELLS = ("discover.cached", "endpoint.cached", "discover.uncached", "consul2.health")


@pytest.fixture(scope="module")
def discovery_run(consul_bin: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench-discovery")
    argv = [
        sys.executable, "-m", "bench", "--discovery", "--rounds", "1",
        "--cached-ops", "300", "--uncached-ops", "40", "--changes", "6",
        "--spaced-seconds", "0.01", "--consul-bin", consul_bin, "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return {
        "out": out,
        "stdout": proc.stdout,
        "results": json.loads((out / "discovery.json").read_text()),
    }


def test_discovery_stage_measures_every_contender(discovery_run: dict[str, Any]) -> None:
    result = discovery_run["results"]
    for name in DISCOVERY_CELLS:
        for n in (1, 64):
            cell = result["cells"][f"{name}.c{n}"]
            assert cell["errors"] == 0, (name, n, cell["first_error"])
            for key in ("ops_per_s", "lat_p50_us", "lat_p99_us", "cpu_us_per_op"):
                assert _positive(cell["median"][key]), (name, n, key)
    for mode in ("spaced", "back_to_back"):
        fresh = result["visibility"][mode]
        assert fresh["changes"] == 6
        assert _positive(fresh["p50_ms"])
        assert fresh["max_ms"] >= fresh["p99_ms"] >= fresh["p50_ms"]
    target = result["target"]
    assert target["cached_ops_per_s"] == 50_000
    assert set(target["best"]) == {"discover.cached", "endpoint.cached"}
    assert all(_positive(v) for v in target["per_cpu_second"].values())
    assert isinstance(target["met"], bool)
    assert "cached envelopes >= 50,000/s" in discovery_run["stdout"]
    assert not (discovery_run["out"] / "results.json").exists()  # the comparison's own file
    markdown = (discovery_run["out"] / "DISCOVERY.md").read_text()
    assert "## Change visibility" in markdown
    assert "python-consul2 `health.service`" in markdown
