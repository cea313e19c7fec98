"""Agents killed (SIGKILL) or frozen (SIGSTOP) at the worst moment: a subscriber holding a claimed
batch and unacked broadcast messages, a lock holder in the middle of its fenced writes."""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Callable

import anyio
import asyncpg
import pytest

from agent_runtime import AgentRuntime
from agent_runtime.testing import AdvanceClock
from tests.failure._failure_support import Spawn, expect

TOTAL = 80
RuntimeFactory = Callable[..., AgentRuntime]
BATCH = 10  # what a handler claims or fetches at once (rt.handle with concurrency 1)


async def _received(conn: asyncpg.Connection, agent_id: str | None, channel: str) -> list[int]:
    rows = await conn.fetch("select n from failure_received where ($1::text is null or agent_id = $1) "
                            "and channel = $2", agent_id, channel)
    return [r["n"] for r in rows]


async def _victim_state(conn: asyncpg.Connection, agent: str) -> dict[str, int]:
    """What the agent holds: queue messages claimed and handled but not acked, claimed and not yet
    handled, and broadcast messages handled beyond its acknowledged cursor."""
    row = await conn.fetchrow(
        """
        select
          (select count(*) from distributed_messages m join communication_channels c on c.id = m.channel_id
           where c.name = 'kill-q' and m.state = 'inflight' and m.claimed_by = $1
             and exists (select 1 from failure_received r where r.agent_id = $1 and r.message_id = m.id))
            as q_handled_unacked,
          (select count(*) from distributed_messages m join communication_channels c on c.id = m.channel_id
           where c.name = 'kill-q' and m.state = 'inflight' and m.claimed_by = $1
             and not exists (select 1 from failure_received r where r.agent_id = $1 and r.message_id = m.id))
            as q_claimed_unread,
          (select count(distinct n) from failure_received where agent_id = $1 and channel = 'kill-b')
          - coalesce((select s.cursor_seq from channel_subscriptions s join communication_channels c
                      on c.id = s.channel_id where c.name = 'kill-b' and s.agent_id = $1), 0)
            as b_handled_unacked
        """, agent)
    return dict(row)


async def _all_delivered(conn: asyncpg.Connection, agents: tuple[str, ...]) -> bool:
    if len(set(await _received(conn, None, "kill-q"))) < TOTAL:
        return False
    if await conn.fetchval("select count(*) from distributed_messages m join communication_channels c "
                           "on c.id = m.channel_id where c.name = 'kill-q' and m.state <> 'acked'"):
        return False
    for agent in agents:
        if len(set(await _received(conn, agent, "kill-b"))) < TOTAL:
            return False
        cursor = await conn.fetchval("select s.cursor_seq from channel_subscriptions s join communication_channels c "
                                     "on c.id = s.channel_id where c.name = 'kill-b' and s.agent_id = $1", agent)
        if cursor != TOTAL:
            return False
    return True


async def test_subscriber_killed_mid_batch_loses_nothing(
        spawn: Spawn, make_runtime: RuntimeFactory, conn: asyncpg.Connection, db_url: str) -> None:
    """A consumer SIGKILLed holding a claimed queue batch and unacked broadcast messages loses none of them: each
    reaches the survivor or the same agent id restarted; duplicates are only what it had handled, at most a batch."""
    await conn.execute("create table failure_received (agent_id text, channel text, n int, message_id bigint, "
                       "attempts int)")
    async with make_runtime("producer") as producer:
        await producer.channel("kill-q", "queue", visibility_timeout=2.0)
        await producer.channel("kill-b", "broadcast")
        for channel in ("kill-q", "kill-b"):
            await producer.publish_many(channel, [{"n": n} for n in range(TOTAL)])
    victim_id, survivor_id = "victim-1", "survivor-1"
    victim = await spawn("consume", db_url, victim_id, "kill-q", "kill-b", "0.03")
    survivor = await spawn("consume", db_url, survivor_id, "kill-q", "kill-b", "0.03")
    with anyio.fail_after(20):
        await expect(victim, "ready")
        await expect(survivor, "ready")
        # Kill it mid-batch: some of its claimed queue messages handled (not yet acked) and some
        # not yet handed to its handler; broadcast messages handled past its acked cursor.
        while True:
            state = await _victim_state(conn, victim_id)
            if all(state.values()):
                break
            await anyio.sleep(0.005)
    victim.process.kill()
    assert await victim.process.wait() == -signal.SIGKILL
    state = await _victim_state(conn, victim_id)  # frozen now: what the dead agent left behind
    assert state["q_handled_unacked"] + state["q_claimed_unread"] >= 1, state
    assert state["b_handled_unacked"] >= 1, state
    handled_before_kill = {ch: set(await _received(conn, victim_id, ch)) for ch in ("kill-q", "kill-b")}

    restarted = await spawn("consume", db_url, victim_id, "kill-q", "kill-b", "0.03")
    with anyio.fail_after(30):
        await expect(restarted, "ready")
        while not await _all_delivered(conn, (victim_id, survivor_id)):  # noqa: ASYNC110
            await anyio.sleep(0.05)
    with anyio.fail_after(15):
        for child in (survivor, restarted):
            child.process.send_signal(signal.SIGTERM)
        for child in (survivor, restarted):
            assert await child.process.wait() == 0, child.log()

    queue = Counter(await _received(conn, None, "kill-q"))
    assert set(queue) == set(range(TOTAL))  # none lost
    queue_dups = {n: c - 1 for n, c in queue.items() if c > 1}
    assert sum(queue_dups.values()) <= BATCH, queue_dups
    assert set(queue_dups) <= handled_before_kill["kill-q"], queue_dups  # only what the dead agent had handled
    for agent in (victim_id, survivor_id):
        seen = Counter(await _received(conn, agent, "kill-b"))
        assert set(seen) == set(range(TOTAL)), agent  # each agent id got every broadcast message
        dups = {n: c - 1 for n, c in seen.items() if c > 1}
        if agent == survivor_id:
            assert not dups
        else:
            assert sum(dups.values()) <= BATCH, dups
            assert set(dups) <= handled_before_kill["kill-b"], dups


async def _fenced_write(conn: asyncpg.Connection, key: str, token: int, writer: str, *,
                        check_first: bool = True) -> None:
    """A write guarded by check_fencing_token in the same transaction (before or after the write)."""
    async with conn.transaction():
        if check_first:
            await conn.execute("select check_fencing_token($1, $2)", key, token)
        await conn.execute("insert into failure_fenced (token, writer) values ($1, $2)", token, writer)
        if not check_first:
            await conn.execute("select check_fencing_token($1, $2)", key, token)


async def _fenced_rows(conn: asyncpg.Connection) -> list[tuple[int, str]]:
    return [(r["token"], r["writer"]) for r in await conn.fetch("select token, writer from failure_fenced order by id")]


async def test_killed_holders_token_is_refused_inside_the_writing_transaction(
        spawn: Spawn, make_runtime: RuntimeFactory, conn: asyncpg.Connection, db_url: str,
        advance_clock: AdvanceClock) -> None:
    """After SIGKILL of a holder doing fenced writes, a write checked with its token in the same transaction is
    refused (AR422) and rolled back, once its lease ran out and after a successor took over; the successor's lands."""
    ttl = 1.0
    await conn.execute("create table failure_fenced (id bigserial primary key, token bigint, writer text)")
    holder = await spawn("fenced", db_url, "fence-k", str(ttl), "0")
    with anyio.fail_after(20):
        _, token, holder_id = await expect(holder, "token")
        await expect(holder, "wrote 3")
    dead = int(token)
    holder.process.kill()
    assert await holder.process.wait() == -signal.SIGKILL
    before = await _fenced_rows(conn)
    assert before and {t for t, _ in before} == {dead}

    async def refused(token: int) -> None:
        for check_first in (True, False):
            with pytest.raises(asyncpg.PostgresError) as info:
                await _fenced_write(conn, "fence-k", token, holder_id, check_first=check_first)
            assert info.value.sqlstate == "AR422"
        assert await _fenced_rows(conn) == before  # the write was rolled back with the failed check

    # Renewed at most ttl/3 before the kill: expired once the database clock is past the TTL (the
    # holder is dead, so no clock of its own is involved); nobody took it.
    await advance_clock(ttl + 0.3)
    await refused(dead)
    async with make_runtime("successor") as rt, rt.lock("fence-k", ttl=5, wait=5) as lease:
        assert lease.token > dead
        await refused(dead)
        await _fenced_write(conn, "fence-k", lease.token, rt.agent_id)
    assert await _fenced_rows(conn) == [*before, (lease.token, rt.agent_id)]


async def test_frozen_holders_write_never_lands_after_its_successors(
        spawn: Spawn, make_runtime: RuntimeFactory, conn: asyncpg.Connection, db_url: str) -> None:
    """A holder frozen (SIGSTOP) between its fencing check and its write until long past its TTL: its write
    commits before the successor's first fenced write or not at all, so tokens never go backwards in the table."""
    ttl = 1.0
    await conn.execute("create table failure_fenced (id bigserial primary key, token bigint, writer text)")
    holder = await spawn("fenced", db_url, "pause-k", str(ttl), "0.5")
    with anyio.fail_after(20):
        _, token, _ = await expect(holder, "token")
        await expect(holder, "wrote 1")
        await expect(holder, "checked 2")  # it now sleeps 0.5 s inside the transaction: freeze it there
    holder.process.send_signal(signal.SIGSTOP)
    taken = anyio.Event()
    successor_token = 0
    try:
        async with make_runtime("successor") as rt:
            writer = await asyncpg.connect(db_url)
            try:
                async def take_over() -> None:
                    nonlocal successor_token
                    async with rt.lock("pause-k", ttl=5, wait=15) as lease:
                        successor_token = lease.token
                        await _fenced_write(writer, "pause-k", lease.token, rt.agent_id)
                        taken.set()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(take_over)
                    await anyio.sleep(ttl + 1.0)  # the frozen holder's lease has expired by now
                    holder.process.send_signal(signal.SIGCONT)
                    with anyio.fail_after(10):
                        await taken.wait()
            finally:
                await writer.close()
    finally:
        holder.process.send_signal(signal.SIGCONT)
    with anyio.fail_after(10):
        await expect(holder, "lost")  # the resumed holder learns it lost the lease
    tokens = [t for t, _ in await _fenced_rows(conn)]
    assert tokens == sorted(tokens), tokens  # in commit order, never back to an older holder's token
    assert tokens[0] == int(token) and tokens[-1] == successor_token > int(token)
