"""Locks through the runtime: mutual exclusion, prompt hand-over, loss while held, fencing."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import asyncpg
import pytest

from agent_runtime import AgentRuntime
from agent_runtime.errors import LockLost, StaleFencingToken

RuntimeFactory = Callable[..., AgentRuntime]


async def test_lock_mutual_exclusion_between_agents(make_runtime: RuntimeFactory) -> None:
    """Tasks of two agents contending for one key are never inside together, and tokens only grow."""
    inside = 0
    tokens: list[int] = []
    rounds = 0

    async def worker(rt: AgentRuntime) -> None:
        nonlocal inside, rounds
        for _ in range(4):
            async with rt.lock("shared", ttl=5, wait=10) as lease:
                inside += 1
                assert inside == 1, "two holders inside the lock at once"
                tokens.append(lease.token)
                await anyio.sleep(0.03)
                inside -= 1
                rounds += 1

    async with make_runtime("a") as a, make_runtime("b") as b:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for rt in (a, b, a, b):
                    tg.start_soon(worker, rt)
    assert rounds == 16
    assert tokens == sorted(tokens) and len(set(tokens)) == 16


async def test_lock_lost_cancels_the_block(make_runtime: RuntimeFactory, conn: asyncpg.Connection) -> None:
    """Deleting the lock row under a holder cancels its block and raises LockLost from the async with."""
    async with make_runtime("holder") as rt:
        reached_end = False
        started = anyio.current_time()
        with anyio.fail_after(5), pytest.raises(LockLost):
            async with rt.lock("fragile", ttl=1) as lease:
                assert await conn.execute("delete from distributed_locks where key = 'fragile'") == "DELETE 1"
                await anyio.sleep(3)  # renewal at ttl/3 must notice and cancel this
                reached_end = True
        assert not reached_end
        assert lease.lost
        assert anyio.current_time() - started < 1.5
        # The runtime is still usable and the key can be taken again.
        async with rt.lock("fragile", ttl=1, wait=2) as again:
            assert again.token > lease.token


async def test_fenced_write_refused_for_a_stale_holder(make_runtime: RuntimeFactory, conn: asyncpg.Connection,
                                                      db_url: str) -> None:
    """After another holder takes over an expired lease, the old lease's fenced() raises
    StaleFencingToken and writes nothing, while the new holder's fenced write commits."""
    await conn.execute("create table resource (token bigint not null, writer text not null)")
    writer = await asyncpg.connect(db_url)
    try:
        async with make_runtime("a") as a, make_runtime("b") as b:
            with anyio.fail_after(5), pytest.raises(LockLost):
                async with a.lock("res", ttl=1) as old:
                    async with old.fenced(writer):
                        await writer.execute("insert into resource values ($1, 'a')", old.token)
                    # Expire it in the database (as if renewals had stalled), then b takes over.
                    await conn.execute("update distributed_locks set expires_at = now() where key = 'res'")
                    async with b.lock("res", ttl=5, wait=2) as new:
                        assert new.token > old.token
                        with pytest.raises(StaleFencingToken):
                            async with old.fenced(writer):
                                await writer.execute("insert into resource values ($1, 'a-late')", old.token)
                        async with new.fenced(writer):
                            await writer.execute("insert into resource values ($1, 'b')", new.token)
                        assert await new.is_live() and not await old.is_live()
                        assert not writer.is_in_transaction()
                        await anyio.sleep(2)  # a's renewal is refused: its block is cancelled here
            assert old.lost
            # b's block was cancelled along with a's (it is nested) and released the key.
            assert await a.locks() == []
        rows = await conn.fetch("select token, writer from resource order by token")
        assert [(r["token"], r["writer"]) for r in rows] == [(old.token, "a"), (new.token, "b")]
    finally:
        await writer.close()


async def test_fenced_rolls_back_on_error_and_inside_an_outer_transaction(make_runtime: RuntimeFactory,
                                                                         conn: asyncpg.Connection,
                                                                         db_url: str) -> None:
    """An error in the block rolls its writes back; inside an outer transaction fenced() is a savepoint."""
    await conn.execute("create table resource (n int not null)")
    writer = await asyncpg.connect(db_url)
    try:
        async with make_runtime("a") as rt, rt.lock("res", ttl=5) as lease:
            with pytest.raises(ZeroDivisionError):
                async with lease.fenced(writer):
                    await writer.execute("insert into resource values (1)")
                    _ = 1 / 0
            assert not writer.is_in_transaction()
            async with writer.transaction():
                await writer.execute("insert into resource values (2)")
                async with lease.fenced(writer):
                    await writer.execute("insert into resource values (3)")
                assert writer.is_in_transaction()
        assert sorted(r["n"] for r in await conn.fetch("select n from resource")) == [2, 3]
    finally:
        await writer.close()


async def test_lease_runs_out_on_the_holders_clock_without_waiting_for_renewal(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection) -> None:
    """A renewal stuck in the database does not keep the holder going: the block is cancelled
    once ttl has passed since the last successful renewal began, and fenced() refuses meanwhile."""
    async with make_runtime("holder") as rt:
        started = anyio.current_time()
        with anyio.fail_after(6), pytest.raises(LockLost):
            async with rt.lock("stuck", ttl=1) as lease:
                async with conn.transaction():
                    # Holds the lock row: the renewals at ttl/3 wait for it.
                    await conn.execute("select 1 from distributed_locks where key = 'stuck' for update")
                    await anyio.sleep(5)
        elapsed = anyio.current_time() - started
        assert lease.lost and lease.remaining() == 0
        assert 0.8 < elapsed < 1.4, elapsed
        with pytest.raises(LockLost):
            async with lease.fenced(conn):
                pass


async def test_a_renewal_whose_connection_is_terminated_is_retried_and_the_lease_kept(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection, db_url: str) -> None:
    """The renewal's backend is terminated while it waits for the lock row: it is retried (soon,
    while the lease may still be ours), the lease is kept and the block goes on."""
    # Room for a loaded machine: the renewal at ttl/3 is found waiting and killed well before ttl,
    # and its retry (0.5 s later) still has seconds left on the lease.
    ttl = 10.0
    async with make_runtime("holder") as rt:
        async with rt.lock("shaky", ttl=ttl) as lease:
            acquired = anyio.current_time()
            # (Watched from a second connection: inside the row-locking transaction, pg_stat_activity
            # would be read from one snapshot taken at its first use.)
            watcher = await asyncpg.connect(db_url)
            try:
                async with conn.transaction():
                    await conn.execute("select 1 from distributed_locks where key = 'shaky' for update")
                    with anyio.fail_after(ttl * 0.6):  # the renewal at ttl/3 waits for the row: its connection dies
                        while not await watcher.fetchval(  # noqa: ASYNC110
                                "select count(*) filter (where pg_terminate_backend(pid)) from pg_stat_activity "
                                "where datname = current_database() and pid not in (pg_backend_pid(), $1) "
                                "and wait_event_type = 'Lock'", conn.get_server_pid()):
                            await anyio.sleep(0.02)
            finally:
                await watcher.close()
            # past the first lease's end on the holder's clock: only a retried renewal keeps it
            await anyio.sleep(acquired + ttl + 0.5 - anyio.current_time())
            assert await lease.is_live()
        assert not lease.lost


async def test_lock_wait_metric_is_one_figure_per_agent(make_runtime: RuntimeFactory) -> None:
    """lock.wait_ms is recorded without the key as its channel (keys are many)."""
    async with make_runtime("a") as rt:
        for key in ("k1", "k2", "k3"):
            async with rt.lock(key, ttl=2):
                pass
        await rt.flush_metrics()
        figures = [m for m in await rt.read_metrics(agent_id=rt.agent_id, metric="lock.wait_ms")]
        assert [(m.channel, m.count) for m in figures] == [("", 3)]


async def test_the_runtime_releases_without_waiting_for_the_flush_and_acquires_durably(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection) -> None:
    """The runtime's release commits with synchronous_commit off (a lost release only leaves the
    lease to its TTL), its acquire with the database's own (on here): the acquire issues the
    fencing token, which must never be issued again after a crash. A trigger of this test records
    the setting each write of a lock row commits under."""
    await conn.execute(f'alter database "{await conn.fetchval("select current_database()")}"'
                       " set synchronous_commit = on")  # (the test server's default is off)
    await conn.execute("""
        create table lock_row_writes (op text not null, setting text not null);
        create function record_lock_row_write() returns trigger language plpgsql as $$
        begin
          insert into public.lock_row_writes values (tg_op, pg_catalog.current_setting('synchronous_commit'));
          return null;
        end $$;
        create trigger record_lock_row_write after insert or update or delete on distributed_locks
          for each row execute function record_lock_row_write();""")
    async with make_runtime("releaser") as rt:
        await conn.execute("truncate lock_row_writes")
        async with rt.lock("flushless", ttl=5):
            pass
        async with rt.lock("flushless", ttl=5):
            pass
    writes = [tuple(r) for r in await conn.fetch("select op, setting from lock_row_writes")]
    assert writes == [("INSERT", "on"), ("DELETE", "off"), ("INSERT", "on"), ("DELETE", "off")]
