"""The test clock (issue 10): every decision reads agent_runtime_private.clock(); in the test
template it is the real clock plus an offset that only the owner of a private table can move
(TestDatabases.advance_clock), so TTLs run out without sleeping. No session can move it, and a
migrated database has no offset at all."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from agent_runtime.errors import InvalidInput
from agent_runtime.local.migrations import migrate
from agent_runtime.testing import AdvanceClock, TestDatabases
from tests.catalog import empty_database
from tests.sql._helpers import acting_as, call, expect_error, register, session_as


async def _acquire(conn: asyncpg.Connection, agent: str) -> dict[str, Any]:
    result: dict[str, Any] = await call(conn, "acquire_lock", agent_id=agent, key="k", lease_id=uuid.uuid4(),
                                        ttl_ms=60000)
    return result


_AHEAD = "select extract(epoch from agent_runtime_private.clock() - clock_timestamp())"


async def test_advancing_moves_the_decision_clock_forward_only(
        conn: asyncpg.Connection, advance_clock: AdvanceClock) -> None:
    assert abs(await conn.fetchval(_AHEAD)) < 1
    await advance_clock(90)
    await advance_clock(30)
    assert 119 < await conn.fetchval(_AHEAD) < 121
    with pytest.raises(InvalidInput):
        await advance_clock(-1)
    with pytest.raises(InvalidInput):
        await advance_clock(float("nan"))
    assert 119 < await conn.fetchval(_AHEAD) < 121


async def test_decisions_follow_it(conn: asyncpg.Connection, advance_clock: AdvanceClock) -> None:
    """A minute's lease and a minute's presence run out once the clock is a minute later."""
    await register(conn, "a1", heartbeat_ttl_ms=60000)
    await register(conn, "b1", heartbeat_ttl_ms=600000)
    held = await _acquire(conn, "a1")
    assert (await _acquire(conn, "b1"))["acquired"] is False
    await advance_clock(61)
    taken = await _acquire(conn, "b1")
    assert taken["acquired"] is True and taken["token"] > held["token"]
    assert [a["id"] for a in await call(conn, "list_agents")] == ["b1"]


async def test_no_session_can_move_or_read_it(conn: asyncpg.Connection) -> None:
    """The offset is a table only its owner may change: an agent's token, anon and service_role
    are refused (42501), whatever claims or settings they set for themselves."""
    await register(conn, "a1")
    for role in ("authenticated", "anon", "service_role"):
        async with session_as(conn, role, {"role": "service_role", "agent_id": "a1"}):
            await expect_error("42501", conn.execute(
                "update agent_runtime_private.test_clock set advanced_by = interval '1 hour'"), role)
        async with session_as(conn, role, {"role": "service_role"}):
            await expect_error("42501", conn.fetchval("select agent_runtime_private.clock()"), role)
    async with acting_as(conn, "a1"):  # (while its own calls still read the clock, as their owner)
        assert (await _acquire(conn, "a1"))["acquired"] is True
    assert await conn.fetchval("select advanced_by from agent_runtime_private.test_clock") == timedelta(0)


async def test_a_migrated_database_has_the_real_clock(test_databases: TestDatabases) -> None:
    """Only TestDatabases' template has the offset: migrations define clock() as clock_timestamp()."""
    async with empty_database(test_databases, prefix="clock") as url:
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
            assert await conn.fetchval("select to_regclass('agent_runtime_private.test_clock')") is None
            source = await conn.fetchval(
                "select prosrc from pg_proc where oid = 'agent_runtime_private.clock'::regproc")
            assert source.split() == ["begin", "return", "pg_catalog.clock_timestamp();", "end"]
            assert abs(await conn.fetchval(_AHEAD)) < 1
        finally:
            await conn.close()
