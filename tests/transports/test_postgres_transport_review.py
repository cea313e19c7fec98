"""The Postgres transport's own stack of idle connections (issue 13) under failure: calls
cancelled mid-flight (waiting in the database, or waiting for the pool) leave no connection in a
transaction or with a pending result on the stack, no count of waiters behind and no connection
beyond the pool's max_size; close() while calls run (some waiting for the pool) ends every one of
them, promptly, with ConnectionLost, and the backends of the connections are gone."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import pytest

from agent_runtime.errors import AgentRuntimeError, ConnectionLost
from agent_runtime.transports.postgres import PostgresTransport

pytestmark = pytest.mark.timeout(60)

MAX_SIZE = 2
_BACKENDS = ("select count(*) from pg_stat_activity where datname = current_database()"
             " and pid <> pg_backend_pid() and backend_type = 'client backend'")


@pytest.fixture
async def transport(db_url: str) -> AsyncIterator[PostgresTransport]:
    transport = PostgresTransport(db_url, max_size=MAX_SIZE)
    await transport.connect()
    try:
        yield transport
    finally:
        await transport.aclose()


async def _held(transport: PostgresTransport) -> None:
    """b1 holds lock k for a minute; a2 exists (and waits for it in the tests)."""
    for agent in ("a2", "b1"):
        await transport.call("register_agent", {"p_agent_id": agent, "p_name": agent})
    await transport.call("acquire_lock", {"p_agent_id": "b1", "p_key": "k", "p_lease_id": uuid.uuid4(),
                                          "p_ttl_ms": 60000})


def _waiting_acquire(wait_ms: int = 20000) -> dict[str, Any]:
    return {"p_agent_id": "a2", "p_key": "k", "p_lease_id": uuid.uuid4(), "p_ttl_ms": 60000, "p_wait_ms": wait_ms}


def _clean(transport: PostgresTransport) -> None:
    assert transport._acquiring == 0
    assert len(transport._idle) <= MAX_SIZE
    for con in transport._idle:
        assert not con.is_closed() and not con.is_in_transaction()


async def test_calls_cancelled_while_the_database_works_leave_nothing_behind(
        transport: PostgresTransport, conn: asyncpg.Connection) -> None:
    await _held(transport)
    for _ in range(30):
        with anyio.move_on_after(0.02):
            await transport.call("acquire_lock", _waiting_acquire())
            pytest.fail("the acquire should still be waiting")
    _clean(transport)
    # Every connection answers its next call with that call's own result (no pending one).
    for _ in range(2 * MAX_SIZE):
        agents = await transport.call("list_agents", {"p_online_only": False})
        assert sorted(a["id"] for a in agents) == ["a2", "b1"]
    _clean(transport)
    [holder] = await transport.call("list_locks", {})
    assert holder["owner_id"] == "b1"  # (no cancelled acquire went on to take it)
    assert await conn.fetchval(_BACKENDS) <= MAX_SIZE
    with anyio.fail_after(5):  # and no cancelled acquire still runs in the database
        while True:
            if not await conn.fetchval(_BACKENDS + " and query like '%acquire_lock%' and state = 'active'"):
                break
            await anyio.sleep(0.05)


async def test_calls_cancelled_while_waiting_for_the_pool_leave_nothing_behind(
        transport: PostgresTransport) -> None:
    await _held(transport)
    async with anyio.create_task_group() as busy:
        for _ in range(MAX_SIZE):  # every connection of the pool busy in the database
            busy.start_soon(transport.call, "acquire_lock", _waiting_acquire())
        await anyio.sleep(0.3)
        for _ in range(20):
            with anyio.move_on_after(0.02):
                await transport.call("list_agents", {})
                pytest.fail("a call got a connection while all were busy")
        assert transport._acquiring == 0
        busy.cancel_scope.cancel()
    _clean(transport)
    with anyio.fail_after(10):  # (the cancelled acquires' connections come back, reset)
        for _ in range(2 * MAX_SIZE):
            assert len(await transport.call("list_agents", {"p_online_only": False})) == 2
    _clean(transport)
    assert len(transport._idle) >= 1  # (kept on the stack again: no waiter counted forever)


async def test_close_while_calls_run_and_wait_ends_them_all(
        transport: PostgresTransport, conn: asyncpg.Connection) -> None:
    await _held(transport)
    outcomes: list[BaseException | None] = []

    async def call() -> None:
        try:
            await transport.call("acquire_lock", _waiting_acquire())
        except AgentRuntimeError as exc:
            outcomes.append(exc)
        else:
            outcomes.append(None)

    with anyio.fail_after(15):
        async with anyio.create_task_group() as tg:
            for _ in range(MAX_SIZE + 3):  # two in the database, three waiting for the pool
                tg.start_soon(call)
            await anyio.sleep(0.3)
            assert transport._acquiring == 3
            await transport.aclose()
    assert len(outcomes) == MAX_SIZE + 3
    assert all(isinstance(o, ConnectionLost) for o in outcomes), outcomes
    with pytest.raises(ConnectionLost):
        await transport.call("list_agents", {})
    assert transport._idle == []
