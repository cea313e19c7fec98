"""Resident memory: one runtime and each idle subscription, measured in fresh interpreters, beside
a bare asyncpg connection (and LISTENs) measured the same way."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import anyio

from ._common import Bench, Figure

_PROBE = Path(__file__).with_name("_memory_probe.py")
_MB = 1024 * 1024


async def _probe(kind: str, url: str, n: int, repeats: int = 3) -> dict[str, float]:
    """Median over ``repeats`` fresh interpreters of each stage's RSS (bytes)."""
    runs = []
    for _ in range(repeats):
        result = await anyio.run_process([sys.executable, str(_PROBE), kind, url, str(n)],
                                         stderr=subprocess.PIPE)
        runs.append(json.loads(result.stdout))
    return {stage: statistics.median(run[stage] for run in runs) for stage in runs[0]}


async def memory(bench: Bench) -> list[Figure]:
    n = bench.settings.idle_subscriptions
    async with bench.fresh_db() as url:
        ours = await _probe("runtime", url, n)
        raw = await _probe("asyncpg", url, n)
    section = "memory"
    return [
        Figure(section, "RSS added by the import", round((ours["imported"] - ours["python"]) / _MB, 2), "MiB",
               round((raw["imported"] - raw["python"]) / _MB, 2), "import asyncpg", "lower"),
        Figure(section, "RSS added by a started AgentRuntime (after import)",
               round((ours["started"] - ours["imported"]) / _MB, 2), "MiB",
               round((raw["started"] - raw["imported"]) / _MB, 2), "one asyncpg connection", "lower",
               extra={"total_rss_mib": round(ours["started"] / _MB, 1),
                      "baseline_total_rss_mib": round(raw["started"] / _MB, 1)}),
        Figure(section, f"RSS per idle subscription ({n} open, each with a waiting task)",
               round((ours["subscribed"] - ours["started"]) / n / 1024, 1), "KiB",
               round((raw["subscribed"] - raw["started"]) / n / 1024, 1),
               "LISTEN + a task waiting, on one asyncpg connection", "lower"),
    ]
