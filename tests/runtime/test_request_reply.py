"""Request/reply's short paths: a reply handed to its request straight from its (signed) wake-up
is still received, counted and acked."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import asyncpg

from agent_runtime import AgentRuntime

RuntimeFactory = Callable[..., AgentRuntime]

_OPEN = ("select count(*) from distributed_messages m join communication_channels c on c.id = m.channel_id"
         " where c.name = $1 and m.state <> 'acked'")


async def test_a_reply_taken_from_its_wakeup_is_acked_within_the_flush_delay(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection) -> None:
    """One request and nothing after it: its reply, taken from the wake-up without a claim, is
    acked soon after the ack flush delay (0.1 s) by a claim of its own, not left to the safety
    poll (30 s here), and it is counted as received, once."""
    async with make_runtime("answers") as server, make_runtime("asks", poll_interval=30.0) as client:
        @server.on_request
        async def echo(msg: Any) -> Any:
            return msg.payload

        # (the requester's first claim, its catch-up at start, long done: a claim in flight when
        # the reply commits would claim it too, and deliver it a second time, to be dropped)
        await anyio.sleep(1.0)
        with anyio.fail_after(10):
            assert await client.request(server.agent_id, {"n": 1}, timeout=5) == {"n": 1}
        control = client._requests.control if client._requests else None
        assert control is not None and control.taken_from_wakeups == 1
        inbox = f"agent:{client.agent_id}"
        with anyio.fail_after(3):
            for _ in range(1000):  # (polling the table)
                if not await conn.fetchval(_OPEN, inbox):
                    break
                await anyio.sleep(0.02)
        counted = ("select coalesce(sum(count), 0) from communication_metrics"
                   " where agent_id = $1 and channel = $2 and metric = $3")
        with anyio.fail_after(5):  # (metrics are flushed every 0.5 s here)
            for _ in range(1000):
                if (await conn.fetchval(counted, client.agent_id, inbox, "messages.received")
                        and await conn.fetchval(counted, client.agent_id, inbox, "messages.acked")):
                    break
                await anyio.sleep(0.05)
        assert await conn.fetchval(counted, client.agent_id, inbox, "messages.received") == 1



async def test_freed_workers_claim_the_waiting_requests_at_once(make_runtime: RuntimeFactory) -> None:
    """request_concurrency=2 and 30 requests at once, the safety poll at 30 s: every request is
    claimed as soon as a worker is free, never left for the poll. (A claim asked for one request
    while one worker was free and came back with one; a second worker freed meanwhile raised the
    limit, and the claim, compared with the new limit, looked short: nothing more was claimed
    until the poll. Before the reply acked its request, the ack's flush claim hid this.)"""
    async with make_runtime("worker", request_concurrency=2, poll_interval=30.0) as worker, \
            make_runtime("client") as client:
        @worker.on_request
        async def slow(msg: Any) -> Any:
            await anyio.sleep(0.05)
            return msg.payload

        results: list[Any] = []

        async def ask(i: int) -> None:
            results.append(await client.request(worker.agent_id, i, timeout=20))

        with anyio.fail_after(8):  # (0.75 s of handling; the poll would take 30 s)
            async with anyio.create_task_group() as tg:
                for i in range(30):
                    tg.start_soon(ask, i)
        assert sorted(results) == list(range(30))


async def test_requests_are_answered_on_a_database_without_reply_to_request(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection) -> None:
    """A database migrated before reply_to_request (a runtime started with migrate=False): the
    reply is sent alone, as before, and the request acked by the next claim, not dropped."""
    await conn.execute("drop function public.reply_to_request(text, bigint, text, jsonb)")
    async with make_runtime("answers", poll_interval=0.5) as server, make_runtime("asks") as client:
        @server.on_request
        async def echo(msg: Any) -> Any:
            return msg.payload

        with anyio.fail_after(10):
            assert await client.request(server.agent_id, {"n": 1}, timeout=5) == {"n": 1}
            inbox = f"agent:{server.agent_id}"
            for _ in range(1000):  # (the ack rides along with the next claim: the safety poll's)
                if not await conn.fetchval(_OPEN, inbox):
                    break
                await anyio.sleep(0.05)
        assert await conn.fetchval(_OPEN, inbox) == 0


async def test_requests_are_answered_on_a_database_without_claim_inbox(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection) -> None:
    """A database migrated before claim_inbox: the inbox is claimed through claim_messages, as before."""
    await conn.execute("drop function public.claim_inbox(text, integer, bigint, bigint[], text[], boolean)")
    async with make_runtime("answers") as server, make_runtime("asks") as client:
        @server.on_request
        async def echo(msg: Any) -> Any:
            return msg.payload

        with anyio.fail_after(10):
            for n in range(3):
                assert await client.request(server.agent_id, {"n": n}, timeout=5) == {"n": n}


async def test_the_inbox_is_claimed_through_claim_inbox(make_runtime: RuntimeFactory, conn: asyncpg.Connection) -> None:
    """Both the requests and the replies of an agent's inbox are claimed with claim_inbox (the claim
    that need not wait for its WAL flush), counted by the server's function statistics."""
    await conn.execute("set track_functions = 'pl'")
    name = await conn.fetchval("select current_database()")
    await conn.execute(f'alter database "{name}" set track_functions = \'pl\'')
    async with make_runtime("answers") as server, make_runtime("asks") as client:
        @server.on_request
        async def echo(msg: Any) -> Any:
            return msg.payload

        with anyio.fail_after(10):
            for n in range(3):
                assert await client.request(server.agent_id, {"n": n}, timeout=5) == {"n": n}
    # (the runtimes' sessions have ended: their statistics are flushed)
    calls = ("select coalesce(sum(calls), 0) from pg_stat_user_functions where schemaname = 'public'"
             " and funcname = 'claim_inbox'")
    with anyio.fail_after(5):
        for _ in range(100):
            await conn.execute("select pg_stat_clear_snapshot()")
            if await conn.fetchval(calls) >= 3:
                break
            await anyio.sleep(0.1)
    assert await conn.fetchval(calls) >= 3
