"""Read-only CLI commands never change a database: on one without the schema they exit 1 with
"not migrated: run agent-runtime migrate --url ...", and nothing was created there (no schema, no
tables, no roles). Run on a private, freshly initialised server, so that no role exists beforehand."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import anyio
import asyncpg

from agent_runtime.testing import TestDatabases

REPO = Path(__file__).resolve().parent.parent
COMMANDS = (("agents",), ("channels",), ("topology",), ("locks",), ("metrics",), ("dead-letters", "list"),
            ("cleanup",))


async def _state(url: str) -> dict[str, list[str]]:
    conn = await asyncpg.connect(url)
    try:
        return {
            "roles": [r[0] for r in await conn.fetch("select rolname from pg_roles order by 1")],
            "schemas": [r[0] for r in await conn.fetch("select nspname from pg_namespace order by 1")],
            "relations": [r[0] for r in await conn.fetch(
                "select c.oid::regclass::text from pg_class c join pg_namespace n on n.oid = c.relnamespace"
                " where n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast') order by 1")],
            "functions": [r[0] for r in await conn.fetch(
                "select p.oid::regprocedure::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
                " where n.nspname not in ('pg_catalog', 'information_schema') order by 1")],
        }
    finally:
        await conn.close()


async def _cli(home: str, *args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENT_RUNTIME_", "SUPABASE_"))}
    env.pop("DATABASE_URL", None)
    env.update(AGENT_RUNTIME_HOME=home, COLUMNS="250", PYTHONPATH=str(REPO))
    with anyio.fail_after(60):
        done = await anyio.run_process([sys.executable, "-m", "agent_runtime.cli", *args], check=False, env=env,
                                       cwd=REPO)
    return done.returncode, done.stderr.decode() + done.stdout.decode()


async def test_read_only_commands_on_an_empty_database_change_nothing(private_server: TestDatabases) -> None:
    """Each read-only command says 'not migrated: run agent-runtime migrate' and exits 1; the database
    and the server hold exactly what they held before (no schema, no roles)."""
    assert private_server.server is not None
    url = private_server.server.url("postgres")
    before = await _state(url)
    assert "anon" not in before["roles"] and "agent_runtime_private" not in before["schemas"]
    results: dict[tuple[str, ...], tuple[int, str]] = {}
    with tempfile.TemporaryDirectory(prefix="ar-readonly-home-") as home:

        async def one(command: tuple[str, ...]) -> None:
            results[command] = await _cli(home, "--url", url, *command)

        async with anyio.create_task_group() as tg:
            for command in COMMANDS:
                tg.start_soon(one, command)
    for command, (code, output) in results.items():
        assert code == 1, (command, output)
        assert "not migrated: run agent-runtime migrate --url" in output, (command, output)
        assert "Traceback" not in output, (command, output)
    assert await _state(url) == before
