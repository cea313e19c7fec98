"""Agents in separate OS processes: competing workers lose nothing; a SIGKILLed lock holder's lease
passes on after its TTL with a higher fencing token, and the dead holder's token is refused."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import anyio
import asyncpg
import pytest

from agent_runtime import AgentRuntime
from agent_runtime.errors import StaleFencingToken
from tests.agent_processes import children

pytestmark = pytest.mark.slow  # real OS processes

RuntimeFactory = Callable[..., AgentRuntime]
SCRIPT = Path(__file__).with_name("_agent_proc.py")


async def test_worker_processes_consume_a_queue_without_loss(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection, db_url: str) -> None:
    """Three worker processes share a queue of 300 messages: each handled exactly once, none lost."""
    total = 300
    await conn.execute("create table proc_handled (message_id bigint, n int, agent_id text)")
    async with make_runtime("producer") as producer:
        await producer.channel("proc-jobs", "queue")
        async with children(SCRIPT) as procs:
            workers = [await procs.start("worker", db_url, "proc-jobs") for _ in range(3)]
            with anyio.fail_after(20):
                for w in workers:
                    assert (await w.line()).startswith("ready ")
            for start in range(0, total, 30):
                await producer.publish_many("proc-jobs", [{"n": n} for n in range(start, start + 30)])
            with anyio.fail_after(30):
                while await conn.fetchval("select count(*) from proc_handled") < total:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            with anyio.fail_after(15):
                for w in workers:
                    w.process.send_signal(signal.SIGTERM)
                for w in workers:
                    assert await w.process.wait() == 0, w.stderr.read_text()[-3000:]
        rows = await conn.fetch("select n, agent_id from proc_handled")
        assert sorted(r["n"] for r in rows) == list(range(total))  # none lost, none twice
        assert len({r["agent_id"] for r in rows}) >= 2  # the work was shared
        states = await conn.fetch("select state, count(*) from distributed_messages m join communication_channels c "
                                  "on c.id = m.channel_id where c.name = 'proc-jobs' group by state")
        assert {r["state"]: r["count"] for r in states} == {"acked": total}
        offline = await conn.fetchval("select count(*) from agent_presence p join distributed_agents a "
                                      "on a.id = p.agent_id where a.name = 'proc-worker' and p.status = 'offline'")
        assert offline == 3  # each left cleanly


async def test_killed_lock_holder_is_succeeded_with_a_higher_token(
        make_runtime: RuntimeFactory, db_url: str) -> None:
    """After SIGKILL of the holder, another agent gets the lock within TTL + a renewal, with a higher token."""
    ttl = 2.0
    async with children(SCRIPT) as procs:
        holder = await procs.start("hold", db_url, "proc-lock", str(ttl))
        with anyio.fail_after(20):
            kind, token, holder_id = (await holder.line()).split()
        assert kind == "token"
        dead_token = int(token)
        async with make_runtime("successor") as rt:
            async with rt.try_lock("proc-lock", ttl=ttl) as none:
                assert none is None  # held (and renewed) by the live process
            await anyio.sleep(ttl)  # longer than the TTL: it must have been renewing
            async with rt.try_lock("proc-lock", ttl=ttl) as none:
                assert none is None
            holder.process.kill()
            assert await holder.process.wait() == -signal.SIGKILL
            killed_at = anyio.current_time()
            with anyio.fail_after(10):
                async with rt.lock("proc-lock", ttl=ttl, wait=8) as lease:
                    waited = anyio.current_time() - killed_at
                    # Not before the dead holder's lease ran out (renewed at most ttl/3 before the
                    # kill), and not much after it (the waiter sleeps until the holder's expiry).
                    assert ttl * 2 / 3 - 0.2 < waited < ttl + ttl / 3 + 0.3, waited
                    assert lease.token > dead_token
                    assert await lease.is_live()
                    with pytest.raises(StaleFencingToken):
                        await rt._require_db().check_fencing_token("proc-lock", dead_token)
                    [info] = await rt.locks()
                    assert info.owner_id == rt.agent_id != holder_id
