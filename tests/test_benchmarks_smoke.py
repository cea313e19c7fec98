"""The benchmark suite still runs (a quick pass over two sections) and reports every figure beside
its baseline. Figures are printed, never asserted: this is not a timed test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(180)
def test_quick_benchmarks_report_figures_beside_baselines(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = [sys.executable, "-m", "benchmarks", "--quick", "--only", "latency1,locks", "--json", str(out)]
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert run.returncode == 0, run.stderr[-3000:]
    document = json.loads(out.read_text())
    assert json.loads(run.stdout) == document  # the same document on stdout
    figures = document["figures"]
    assert {f["section"] for f in figures} == {"latency 1->1", "locks"}
    for figure in figures:
        assert figure["value"] is not None and figure["value"] > 0, figure
        assert figure["baseline"] is not None and figure["baseline"] > 0, figure
        assert figure["ratio"] == pytest.approx(figure["value"] / figure["baseline"], rel=1e-2, abs=1e-3)  # (rounded)
    assert "agent_runtime vs raw asyncpg" in run.stderr  # the readable table


@pytest.mark.timeout(180)
def test_peer_sections_report_figures(tmp_path: Path) -> None:
    """Request/reply and the one-at-a-time queue run beside their raw floors; CPU per 10k is reported
    for client and server. Peers (NATS, procrastinate) appear only where they are installed."""
    out = tmp_path / "bench.json"
    argv = [sys.executable, "-m", "benchmarks", "--quick", "--only", "reqreply,queue1", "--json", str(out)]
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert run.returncode == 0, run.stderr[-3000:]
    figures = {f["name"]: f for f in json.loads(out.read_text())["figures"]}
    assert figures["round trip p50"]["value"] > 0 and figures["round trip p50"]["baseline"] > 0
    cpu = figures["CPU s per 10k delivered (client+server)"]
    assert cpu["extra"]["client"] > 0 and cpu["extra"]["server"] > 0, cpu
    assert cpu["value"] == pytest.approx(cpu["extra"]["client"] + cpu["extra"]["server"], abs=0.01)
