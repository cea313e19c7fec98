"""The benchmark run: a private embedded Postgres in a temporary folder, a migrated template
database cloned fresh for each section, every figure beside its raw-asyncpg baseline measured in
the same run. Prints the JSON document on stdout and a table on stderr."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from rich.console import Console
from rich.table import Table

from agent_runtime.local import embedded

from . import locks, memory, messaging, peers, presence, supabase
from ._common import Bench, Figure, Settings

Section = Callable[[Bench], Awaitable[list[Figure]]]

SECTIONS: dict[str, Section] = {
    "latency1": lambda b: messaging.latency(b, 1),
    "latency10": lambda b: messaging.latency(b, 10),
    "fanout": messaging.fanout,
    "throughput": messaging.throughput,
    "queue": messaging.queue,
    "locks": locks.locks,
    "heartbeats": presence.heartbeats,
    "supabase_limit": supabase.rate_limited,
    "topology": presence.topology,
    "memory": memory.memory,
    **peers.SECTIONS,
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short run (smaller samples), for a smoke test")
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write the JSON document to FILE")
    parser.add_argument("--only", metavar="SECTIONS",
                        help=f"comma-separated subset of: {', '.join([*SECTIONS, 'supabase'])}")
    return parser.parse_args(argv)


def _machine() -> dict[str, Any]:
    cpu = ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": cpu or platform.processor(), "cores": os.cpu_count(),
            "python": platform.python_version(), "asyncpg": asyncpg.__version__,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


async def _run(bench: Bench, names: list[str], console: Console) -> tuple[list[Figure], dict[str, Any],
                                                                            dict[str, float], str]:
    await bench.prepare()
    conn = await asyncpg.connect(bench.server.url("postgres"))
    try:
        version = str(await conn.fetchval("show server_version"))
    finally:
        await conn.close()
    figures: list[Figure] = []
    timings: dict[str, float] = {}
    slot: dict[str, Any] = {"available": False, "reason": "not run"}
    for name in names:
        console.print(f"[dim]running {name}...[/dim]")
        started = time.perf_counter()
        if name == "supabase":
            found, slot = await supabase.supabase(bench)
            figures += found
        else:
            figures += await SECTIONS[name](bench)
        timings[name] = round(time.perf_counter() - started, 1)
    return figures, slot, timings, version


def _ratio(f: Figure) -> str:
    r = f.ratio
    if r is None:
        return ""
    return f"{r:.2f}x" if f.better == "lower" else f"{r * 100:.0f}%"


def _target(f: Figure) -> str:
    parts = []
    if f.target is not None:
        parts.append(f"<= {f.target:g}x" if f.better == "lower" else f">= {f.target * 100:.0f}%")
    if f.limit is not None:
        parts.append(f"{'<' if f.better == 'lower' else '>'} {f.limit:g} {f.unit}")
    return ", ".join(parts)


def _peers(f: Figure) -> str:
    return ", ".join(f"{name} {value:,.3g}" for name, value in f.peers.items())


def table(figures: list[Figure], slot: dict[str, Any]) -> Table:
    out = Table(title="agent_runtime vs raw asyncpg on the same database, same run", show_lines=False)
    for column, justify in [("figure", "left"), ("agent_runtime", "right"), ("baseline", "right"),
                            ("ratio", "right"), ("target", "left"), ("met", "center"), ("peers", "left"),
                            ("baseline is", "left")]:
        out.add_column(column, justify=justify)  # type: ignore[arg-type]
    section = ""
    for f in figures:
        if f.section != section:
            section = f.section
            out.add_row(f"[bold]{section}[/bold]")
        met = {True: "[green]yes[/green]", False: "[red]no[/red]", None: ""}[f.met]
        out.add_row(f"  {f.name}", f"{f.value:,.3g} {f.unit}" if f.value is not None else "-",
                    f"{f.baseline:,.3g} {f.unit}" if f.baseline is not None else "-",
                    _ratio(f), _target(f), met, _peers(f), f"[dim]{f.baseline_what}[/dim]")
    if not slot.get("available"):
        out.add_row("[bold]supabase transport[/bold]", "-", "-", "", "", "", "",
                    f"[dim]{slot.get('reason', '')}[/dim]")
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    console = Console(stderr=True)
    if not console.is_terminal:
        console.width = 160
    settings = Settings.quick() if args.quick else Settings()
    names = [*SECTIONS, "supabase"] if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS and n != "supabase"]
    if unknown:
        console.print(f"unknown section(s): {', '.join(unknown)}")
        return 2
    tmp = embedded.scratch_dir("ar-bench-")
    data_dir = tmp / "pgdata"
    started = time.perf_counter()
    machine = _machine()
    console.print(f"[dim]starting a private PostgreSQL in {data_dir}...[/dim]")
    server = embedded.ensure_running(data_dir)
    try:
        figures, slot, timings, version = asyncio.run(_run(Bench(server, settings), names, console))
    finally:
        embedded.stop(data_dir)
        shutil.rmtree(tmp, ignore_errors=True)
    document = {
        "command": " ".join(["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])]),
        "quick": args.quick,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**machine, "postgres": version,
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "settings": vars(settings),
        "seconds": {**timings, "total": round(time.perf_counter() - started, 1)},
        "figures": [f.to_json() for f in figures],
        "supabase": slot,
    }
    text = json.dumps(document, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    console.print(table(figures, slot))
    console.print(f"[dim]{document['machine']['cores']} cores, {document['machine']['cpu']}, "
                  f"PostgreSQL {version}; {document['seconds']['total']}s[/dim]")
    return 0
