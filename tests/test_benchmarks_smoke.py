"""The benchmark suite still runs (one quick pass over four sections, sharing one private server)
and reports every figure beside its baseline. Figures are printed, never asserted: this is not a
timed test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Both tests read the one run, a session fixture (a module one would run again whenever xdist
# interleaves another module's test between them), in one xdist group: it runs once.
pytestmark = pytest.mark.xdist_group("benchmarks-smoke")


@pytest.fixture(scope="session")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    argv = [sys.executable, "-m", "benchmarks", "--quick", "--only", "latency1,locks,reqreply,queue1",
            "--json", str(out)]
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert run.returncode == 0, run.stderr[-3000:]
    document: dict[str, Any] = json.loads(out.read_text())
    assert json.loads(run.stdout) == document  # the same document on stdout
    return run, document


@pytest.mark.timeout(180)
def test_quick_benchmarks_report_figures_beside_baselines(
        bench_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]]) -> None:
    run, document = bench_run
    figures = [f for f in document["figures"] if f["section"] in {"latency 1->1", "locks"}]
    assert {f["section"] for f in figures} == {"latency 1->1", "locks"}
    for figure in figures:
        assert figure["value"] is not None and figure["value"] > 0, figure
        assert figure["baseline"] is not None and figure["baseline"] > 0, figure
        assert figure["ratio"] == pytest.approx(figure["value"] / figure["baseline"], rel=1e-2, abs=1e-3)  # (rounded)
    assert "agent_runtime vs raw asyncpg" in run.stderr  # the readable table


@pytest.mark.timeout(180)
def test_peer_sections_report_figures(bench_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]]) -> None:
    """Request/reply and the one-at-a-time queue run beside their raw floors; CPU per 10k is reported
    for client and server. Peers (NATS, procrastinate) appear only where they are installed."""
    _, document = bench_run
    figures = {f["name"]: f for f in document["figures"]}
    assert figures["round trip p50"]["value"] > 0 and figures["round trip p50"]["baseline"] > 0
    cpu = figures["CPU s per 10k delivered (client+server)"]
    assert cpu["extra"]["client"] > 0 and cpu["extra"]["server"] > 0, cpu
    assert cpu["value"] == pytest.approx(cpu["extra"]["client"] + cpu["extra"]["server"], abs=0.01)


@pytest.mark.timeout(180)
def test_the_readme_table_is_rendered_from_a_run(
        bench_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]], tmp_path: Path) -> None:
    """`python -m benchmarks.markdown RUN.json RUN2.json`: one row per figure of the first run, with
    its ratio, and the spread of that ratio over both runs (here the same run twice, and one moved)."""
    _, document = bench_run
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps(document))
    moved = json.loads(json.dumps(document))
    latency = next(f for f in moved["figures"] if f["name"].startswith("publish->deliver p50"))
    latency["ratio"] = latency["ratio"] * 2
    second.write_text(json.dumps(moved))
    run = subprocess.run([sys.executable, "-m", "benchmarks.markdown", str(first), str(second)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True)
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == len(document["figures"])
    original = next(f for f in document["figures"] if f["name"] == latency["name"])
    row = next(r for r in rows if latency["name"] in r)
    assert f"{original['ratio']:.2f}x to {original['ratio'] * 2:.2f}x" in row
