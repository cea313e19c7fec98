"""A lost lease cannot wedge the lock (issue 11, case 3).

When LockLost cancels a block that is inside a transaction on an asyncpg connection which called
the fencing check, the transaction must still be rolled back and its connection handed back:
otherwise the connection sits idle in transaction holding the lock row, and every later acquire
waits on it. ``lease.fenced(conn)`` does that rollback shielded from the cancellation. And a waiter
is bounded by its ``wait`` in the database too, whatever the previous holder does."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import asyncpg
import pytest

from agent_runtime import AgentRuntime, Lease
from agent_runtime.errors import LockLost, LockTimeout

RuntimeFactory = Callable[..., AgentRuntime]

# Bounds in wall time (a paused or cancelled holder, the server's idle limit): in one xdist group,
# so these never run beside each other under `-n` (other tests still run beside them).
pytestmark = [pytest.mark.timeout(120), pytest.mark.xdist_group("lock-timing")]

TRIALS = 15


async def _expire(conn: asyncpg.Connection, key: str) -> None:
    """The lease runs out in the database (as if renewals had stalled); the holder's next renewal
    is refused and its block cancelled. (An update of expires_at is compatible with the fencing
    check's key-share lock.)"""
    await conn.execute("update distributed_locks set expires_at = clock_timestamp() where key = $1", key)


@asynccontextmanager
async def _fenced_transaction(how: str, lease: Lease, conn: asyncpg.Connection) -> AsyncIterator[None]:
    """lease.fenced(conn), or the user's own asyncpg transaction that calls the SQL check first."""
    if how == "fenced":
        async with lease.fenced(conn):
            yield
    else:
        async with conn.transaction():
            await conn.execute("select public.check_fencing_token($1, $2)", lease.key, lease.token)
            yield


@pytest.mark.parametrize("how", ["fenced", "raw transaction"])
async def test_lock_lost_inside_a_fencing_transaction_never_wedges_the_lock(
        how: str, make_runtime: RuntimeFactory, conn: asyncpg.Connection, db_url: str) -> None:
    """(With a raw transaction the rollback is the driver's business; should a cancelled rollback
    leave it idle in transaction, the server ends it after the lease's remaining time plus TTL/3.)"""
    await conn.execute("create table wedge_writes (trial int not null)")
    writer = await asyncpg.connect(db_url)
    slow: list[str] = []
    try:
        async with make_runtime("holder") as a, make_runtime("waiter") as b:
            for trial in range(TRIALS):
                inside = anyio.Event()
                lost = False

                async def hold(trial: int = trial, inside: anyio.Event = inside,
                               writer: asyncpg.Connection = writer) -> None:
                    nonlocal lost
                    try:
                        async with a.lock("wedge", ttl=0.9) as lease, _fenced_transaction(how, lease, writer):
                            await writer.execute("insert into wedge_writes values ($1)", trial)
                            inside.set()
                            await anyio.sleep(30)  # LockLost cancels this
                    except LockLost:
                        lost = True

                with anyio.fail_after(20):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(hold)
                        await inside.wait()
                        await _expire(conn, "wedge")
                        started = anyio.current_time()
                        async with b.lock("wedge", ttl=5, wait=2):
                            took = anyio.current_time() - started
                assert lost, f"trial {trial}: the holder's block was not cancelled"
                if took > 2.2:
                    slow.append(f"trial {trial}: {took:.2f}s")
                # The holder's transaction was rolled back and its connection is usable. (Raw: when
                # the server ended the idle transaction, which is what let the waiter in, the end of
                # that connection reaches this client a moment later, once the loop reads it; a
                # cancelled rollback's answer likewise. Bounded: a wedged connection stays as it is.)
                with anyio.move_on_after(2):
                    while writer.is_in_transaction() and not writer.is_closed():  # noqa: ASYNC110 (driver state)
                        await anyio.sleep(0.01)
                if writer.is_closed():  # (raw: ended by the server)
                    writer = await asyncpg.connect(db_url)
                assert not writer.is_in_transaction()
                assert await writer.fetchval("select 1") == 1
        assert await conn.fetchval("select count(*) from wedge_writes") == 0
        assert await conn.fetchval("select count(*) from pg_stat_activity "
                                   "where state like 'idle in transaction%' and datname = current_database()") == 0
    finally:
        await writer.close()
    assert slow == [], slow


async def test_a_waiter_is_bounded_by_its_wait_even_behind_a_wedged_transaction(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection, db_url: str) -> None:
    """A previous holder's fencing transaction left open by its own code (not fenced()) costs a
    waiter its ``wait``, never more; the server ends that idle transaction once the lease's
    remaining time plus a third of its TTL has passed, and the lock can be taken again."""
    wedged = await asyncpg.connect(db_url)
    try:
        async with make_runtime("holder") as a, make_runtime("waiter") as b:
            grant = await a._require_db().acquire_lock(a.agent_id, "wedge", uuid.uuid4(), 1000)
            checked_at = anyio.current_time()
            tx = wedged.transaction()
            await tx.start()
            await wedged.execute("select check_fencing_token($1, $2)", "wedge", grant.token)
            await _expire(conn, "wedge")
            for _ in range(2):
                started = anyio.current_time()
                with pytest.raises(LockTimeout):
                    async with b.lock("wedge", ttl=5, wait=0.5):
                        pass
                assert anyio.current_time() - started < 1.5
            async with b.lock("wedge", ttl=5, wait=5) as lease:
                assert lease.token > (grant.token or 0)
                # ~ the lease's remaining time (1 s) plus TTL/3 after the check
                assert anyio.current_time() - checked_at < 2.5
            # The server ended the wedged session.
            assert not await conn.fetchval("select exists (select 1 from pg_stat_activity where pid = $1)",
                                           wedged.get_server_pid())
    finally:
        wedged.terminate()
