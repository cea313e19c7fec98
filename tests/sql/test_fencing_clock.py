"""Lock expiry from the clock at the moment of the grant, waits bounded by p_wait_ms, and the fencing
check's row lock (issue 11).

A successor whose acquire waited for the previous holder's fencing transaction used to be handed a
lease that had already expired (its expiry came from now(), its transaction's start, before the
wait). Here the previous holder's transaction is kept busy in the database (pg_sleep) while its lease
runs out and the successor waits."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import pytest

from tests.sql._helpers import call, connections, register

# Bounds in wall time: in the same xdist group as tests/failure/test_fencing_*.py (see there).
pytestmark = pytest.mark.xdist_group("lock-timing")


async def _setup(conn: asyncpg.Connection) -> None:
    await register(conn, "a1")
    await register(conn, "b1")


async def _acquire(conn: asyncpg.Connection, agent: str, ttl_ms: int, **kw: object) -> dict[str, object]:
    result: dict[str, object] = await call(conn, "acquire_lock", agent_id=agent, key="k", lease_id=uuid.uuid4(),
                                           ttl_ms=ttl_ms, **kw)
    return result


async def _busy_fencing_transaction(holder: asyncpg.Connection, token: int, seconds: float) -> None:
    """The holder's fencing transaction: the check, then work in the database for ``seconds``."""
    async with holder.transaction():
        await holder.execute("select public.check_fencing_token('k', $1)", token)
        await holder.execute("select pg_sleep($1)", seconds)


async def test_a_grant_after_waiting_for_a_fencing_transaction_expires_in_the_future(
        conn: asyncpg.Connection, db_url: str) -> None:
    await _setup(conn)
    for _ in range(3):
        await conn.execute("delete from distributed_locks")
        held = await _acquire(conn, "a1", ttl_ms=300)
        async with connections(db_url, 2) as (holder, successor):
            busy = asyncio.create_task(_busy_fencing_transaction(holder, int(str(held["token"])), 1.5))
            await asyncio.sleep(0.5)  # the holder's lease has run out; its transaction goes on
            started = time.monotonic()
            got = await _acquire(successor, "b1", ttl_ms=500)
            waited = time.monotonic() - started
            await busy
            assert got["acquired"] is True
            assert waited > 0.5, "the successor must wait for the fencing transaction to end"
            # Granted after the wait: the whole TTL is ahead of it (the old code: ~0.5 s in the past).
            remaining = await successor.fetchval(
                "select extract(epoch from expires_at - clock_timestamp()) from distributed_locks where key = 'k'")
            assert 0.3 < float(remaining) <= 0.5, remaining
            assert await call(successor, "check_fencing_token", key="k", token=got["token"]) is True


async def test_acquire_waits_no_longer_than_p_wait_ms(conn: asyncpg.Connection, db_url: str) -> None:
    """A wedged previous holder (its fencing transaction goes on) costs a waiter p_wait_ms, not forever."""
    await _setup(conn)
    held = await _acquire(conn, "a1", ttl_ms=200)
    async with connections(db_url, 2) as (holder, successor):
        busy = asyncio.create_task(_busy_fencing_transaction(holder, int(str(held["token"])), 3))
        await asyncio.sleep(0.4)
        started = time.monotonic()
        refused = await _acquire(successor, "b1", ttl_ms=5000, wait_ms=300)
        assert refused["acquired"] is False and refused["token"] is None
        assert 0.25 < time.monotonic() - started < 1.5
        # The lock_timeout was for that call only.
        assert await successor.fetchval("show lock_timeout") == "0"
        tried = await _acquire(successor, "b1", ttl_ms=5000, wait_ms=0)
        assert tried["acquired"] is False
        got = await _acquire(successor, "b1", ttl_ms=5000, wait_ms=10_000)
        assert got["acquired"] is True
        await busy


async def test_renewal_goes_on_during_the_holders_fencing_transaction(conn: asyncpg.Connection,
                                                                      db_url: str) -> None:
    """The check's key-share lock blocks a successor's takeover, not the holder's own renewal."""
    await _setup(conn)
    lease = uuid.uuid4()
    held = await call(conn, "acquire_lock", agent_id="a1", key="k", lease_id=lease, ttl_ms=60_000)
    async with connections(db_url, 1) as (holder,), holder.transaction():
        await holder.execute("select public.check_fencing_token('k', $1)", held["token"])
        renewed = await asyncio.wait_for(
            call(conn, "renew_lock", agent_id="a1", key="k", lease_id=lease, ttl_ms=60_000), 2)
        assert renewed["token"] == held["token"]


async def test_an_idle_fencing_transaction_is_ended_by_the_server(conn: asyncpg.Connection, db_url: str) -> None:
    """A holder that sits idle inside its fencing transaction past its lease (plus TTL/3) is
    disconnected by the server: its write is not committed and the successor gets the lock."""
    await _setup(conn)
    await conn.execute("create table fenced_resource (token bigint not null)")
    held = await _acquire(conn, "a1", ttl_ms=400)
    holder = await asyncpg.connect(db_url)
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("select public.check_fencing_token('k', $1)", held["token"])
        await holder.execute("insert into fenced_resource values ($1)", held["token"])
        # ... and the holder stalls (idle in transaction) ...
        started = time.monotonic()
        async with connections(db_url, 1) as (successor,):
            got = {"acquired": False}
            while not got["acquired"]:
                got = await _acquire(successor, "b1", ttl_ms=5000, wait_ms=2000)  # type: ignore[assignment]
                assert time.monotonic() - started < 5
        assert time.monotonic() - started < 1.2  # remaining (~0.4 s) + TTL/3 (0.13 s), and some slack
        assert await conn.fetchval("select count(*) from fenced_resource") == 0
    finally:
        holder.terminate()
