"""Tables for people at 80 columns: every row on one line, long values cut with an ellipsis (never
broken across lines), the least important columns left out first. Checked on the table helper
itself and on every table the CLI prints."""

from __future__ import annotations

import json
import random
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from rich.console import Console
from rich.text import Text

from agent_runtime import Network, to_table
from agent_runtime.local import embedded
from agent_runtime.render.tables import Column, FittedTable
from tests.test_cli import ok
from tests.test_topology_render import assert_sections_fit, build_network

ELLIPSIS = "…"


@pytest.fixture
def home() -> Iterator[Path]:
    """A private AGENT_RUNTIME_HOME for the CLI (never the user's)."""
    path = embedded.scratch_dir("ar-tables-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _render(renderable: object, width: int) -> list[str]:
    console = Console(width=width, record=True, color_system=None)
    console.print(renderable)
    return console.export_text().rstrip("\n").splitlines()


def _assert_cells_whole_or_cut(line: str, cells: list[str]) -> None:
    """Each cell's value is in the row whole, or a prefix of it followed by an ellipsis."""
    for cell in cells:
        if cell in line:
            continue
        cut = [len(p) for p in line.split("  ") if p.endswith(ELLIPSIS) and cell.startswith(p.strip()[:-1])]
        assert cut, (cell, line)


def test_fitted_table_never_wraps_at_any_width() -> None:
    """Random tables at widths from 30 to 200: one line per row, no line wider than the console, the
    essential column kept whole when it fits."""
    rnd = random.Random(14)
    for _ in range(200):
        width = rnd.randint(30, 200)
        columns = [Column("name", 0, 8)] + [Column(f"c{i}", rnd.randint(1, 5), rnd.randint(3, 10))
                                            for i in range(rnd.randint(1, 8))]
        rows = [[Text("".join(rnd.choice("abcdef-xyz") for _ in range(rnd.randint(1, 30)))) for _ in columns]
                for _ in range(rnd.randint(1, 5))]
        lines = _render(FittedTable("t", columns, rows), width)
        assert all(len(line) <= width for line in lines), (width, lines)
        assert len(lines) == len(rows) + 3, lines  # title, header, rule, one line per row
        for line, row in zip(lines[3:], rows, strict=True):
            assert line.startswith(row[0].plain) or line.split("  ")[0].endswith(ELLIPSIS)
            if len(row[0].plain) + 2 * (len(columns) - 1) + 3 * (len(columns) - 1) <= width:
                assert line.startswith(row[0].plain)  # room enough: the name is whole


async def _long_names(conn: asyncpg.Connection) -> None:
    """Agents, channels, locks and dead letters whose names are long enough to need cutting."""
    await build_network(conn)
    q = conn.fetchval
    long_id = "coordinator-e012523a-with-a-rather-long-generated-suffix"
    await q("select register_agent(p_agent_id => $1, p_name => 'coordinator with a long descriptive name', "
            "p_capabilities => '{coordinate,plan,review,summarise,translate}', "
            "p_heartbeat_ttl_ms => 3600000)", long_id)  # (online all along: see build_network)
    await q("select ensure_channel(p_agent_id => $1, p_name => 'demo.jobs.a-very-long-channel-name/with/parts', "
            "p_kind => 'queue', p_max_attempts => 1)", long_id)
    await q("select send_message(p_agent_id => $1, p_channel => 'demo.jobs.a-very-long-channel-name/with/parts', "
            "p_payload => $2::jsonb)", long_id, json.dumps({"job": 1, "text": "x" * 200}))
    claimed = json.loads(await q(
        "select claim_messages(p_agent_id => $1, p_channel => 'demo.jobs.a-very-long-channel-name/with/parts', "
        "p_limit => 1)", long_id))
    await q("select nack_message(p_agent_id => $1, p_message_id => $2, p_reason => $3, p_dead => true)", long_id,
            claimed[0]["id"], "ValueError: " + "this job failed for a reason that takes many words to say " * 2)
    await q("select acquire_lock(p_agent_id => $1, p_key => 'demo.job:13/a/long/lock/key/that/goes/on', "
            "p_lease_id => $2, p_ttl_ms => 60000)", long_id, uuid.uuid4())
    await q("select record_communication_metrics(p_agent_id => $1, p_metrics => $2::jsonb)", long_id, json.dumps(
        [{"metric": "latency.end_to_end_ms.with.a.long.name", "channel": "x", "count": 3, "sum": 12.5, "min": 1.25,
          "max": 9.5}]))


def _assert_fits(text: str, rows: int, width: int = 80) -> None:
    """One table: its title, header, rule, then exactly one line per row, none wider than ``width``."""
    lines = text.rstrip("\n").splitlines()
    assert all(len(line) <= width for line in lines), "\n".join(lines)
    assert len(lines) == rows + 3 and set(lines[2]) == {"─"}, "\n".join(lines)


async def test_every_cli_table_fits_80_columns(home: Path, db_url: str, conn: asyncpg.Connection) -> None:
    """agents, channels, locks, metrics (each --by), dead-letters and the topology table at 80 columns."""
    await _long_names(conn)
    for command in (["agents"], ["agents", "--all"], ["channels"], ["locks"], ["metrics"],
                    ["metrics", "--by", "agent"], ["metrics", "--by", "channel"], ["dead-letters", "list"]):
        listing = await ok(home, "--url", db_url, *command, columns=80)
        rows = (await ok(home, "--url", db_url, *command, "--json")).json()
        assert isinstance(rows, list) and rows
        _assert_fits(listing.stdout, len(rows))
    agents = (await ok(home, "--url", db_url, "agents", columns=80)).stdout
    assert "coordinator-e012523a-with-a-rather-long-generated-suffix" in agents  # the essential column whole
    dead = (await ok(home, "--url", db_url, "dead-letters", "list", columns=80)).stdout
    assert ELLIPSIS in dead  # the long reason is cut, not wrapped
    for command in (["topology"], ["topology", "--all"]):
        assert_sections_fit((await ok(home, "--url", db_url, *command, columns=80)).stdout.splitlines()[1:])


async def test_topology_table_fits_80_columns(db_url: str, conn: asyncpg.Connection) -> None:
    """to_table at 80 columns: each table's rows on one line each, long names cut with an ellipsis."""
    await _long_names(conn)
    async with Network(db_url) as net:
        topo = await net.topology(include_offline=True)
    lines = _render(to_table(topo), 80)
    assert_sections_fit(lines[1:])
    agent_rows = [line for line in lines if line.startswith(("coordinator-", "coder.2", "planner-1", "gone"))]
    assert len([a for a in topo.agents]) <= len(agent_rows)
    _assert_cells_whole_or_cut(next(line for line in lines if line.startswith("coordinator-")),
                               ["coordinator-e012523a-with-a-rather-long-generated-suffix"])
