"""Crash tests' crash: a backend killed -9, after which the postmaster ends every session, resets
shared memory (WAL not yet written is gone) and replays the WAL. The durable server and its
databases are fixtures of the folder's conftest (``durable_server``, ``crash_url``)."""

from __future__ import annotations

import os
import signal

import anyio
import asyncpg

__all__ = ["crash", "unflushed"]


async def crash(url: str) -> None:
    """Kill a backend -9 and wait until the server accepts connections again (after replaying its WAL)."""
    victim = await asyncpg.connect(url)
    os.kill(await victim.fetchval("select pg_backend_pid()"), signal.SIGKILL)
    with anyio.fail_after(60):
        while True:
            await anyio.sleep(0.2)
            try:
                probe = await asyncpg.connect(url)
            except (OSError, asyncpg.PostgresError):
                continue
            await probe.close()
            break
    victim.terminate()


async def unflushed(conn: asyncpg.Connection) -> bool:
    """WAL inserted but not yet flushed (a read-only transaction flushes nothing)."""
    return bool(await conn.fetchval("select pg_current_wal_flush_lsn() < pg_current_wal_insert_lsn()"))
