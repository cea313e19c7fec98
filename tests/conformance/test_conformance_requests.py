"""Requests, replies and the inbox: what an agent's direct messages may and may not hold up."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import anyio
import asyncpg
import pytest

from agent_runtime import AgentRuntime
from agent_runtime.errors import AgentUnavailable

RuntimeFactory = Callable[..., AgentRuntime]


async def test_unread_inbox_never_blocks_requests_and_loses_nothing(make_runtime: RuntimeFactory) -> None:
    """1,000 unread direct messages: a request is still answered within a second, then all 1,000 are read."""
    async with make_runtime("busy") as busy, make_runtime("sender") as sender:
        @busy.on_request
        async def echo(msg: Any) -> Any:
            return msg.payload

        await sender.publish_many(f"agent:{busy.agent_id}", [{"n": i} for i in range(1000)])
        await anyio.sleep(0.3)  # the wake-ups have arrived and been dealt with
        with anyio.fail_after(1):
            assert await sender.request(busy.agent_id, {"ping": 1}, timeout=5) == {"ping": 1}
        got: list[int] = []
        with anyio.fail_after(20):
            async for msg in busy.inbox():
                got.append(msg.payload["n"])
                await msg.ack()
                if len(got) == 1000:
                    break
        assert sorted(got) == list(range(1000))


async def test_busy_request_handlers_do_not_hold_up_replies(make_runtime: RuntimeFactory) -> None:
    """With every request worker busy, the agent still gets the replies to its own requests."""
    async with make_runtime("relay", request_concurrency=1) as relay, make_runtime("leaf") as leaf, \
            make_runtime("client") as client:
        @leaf.on_request
        async def leaf_answer(msg: Any) -> Any:
            return {"leaf": msg.payload["x"]}

        @relay.on_request
        async def relay_answer(msg: Any) -> Any:  # holds relay's only worker while it asks leaf
            return await relay.request(leaf.agent_id, msg.payload, timeout=5)

        with anyio.fail_after(5):
            assert await client.request(relay.agent_id, {"x": 7}, timeout=5) == {"leaf": 7}


async def test_requests_beyond_capacity_wait_in_the_table_and_are_all_answered(make_runtime: RuntimeFactory) -> None:
    """More requests than workers: at most request_concurrency run at once, and every one is answered."""
    async with make_runtime("worker", request_concurrency=2) as worker, make_runtime("client") as client:
        running = 0
        most = 0

        @worker.on_request
        async def slow(msg: Any) -> Any:
            nonlocal running, most
            running += 1
            most = max(most, running)
            await anyio.sleep(0.05)
            running -= 1
            return msg.payload

        results: list[Any] = []

        async def ask(i: int) -> None:
            results.append(await client.request(worker.agent_id, i, timeout=10))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for i in range(12):
                    tg.start_soon(ask, i)
        assert sorted(results) == list(range(12))
        assert most <= 2


async def test_an_agent_claims_no_more_requests_than_it_has_free_workers(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection) -> None:
    """request_concurrency=1 and 5 requests sent in one go: at any moment at most one of them is
    claimed by the agent (the others wait in the table, not in its memory), and all 5 are answered."""
    async with make_runtime("worker", request_concurrency=1) as worker, make_runtime("client") as client:
        @worker.on_request
        async def slow(msg: Any) -> Any:
            await anyio.sleep(0.2)
            return msg.payload

        ids = [str(uuid.uuid4()) for _ in range(5)]
        await conn.execute("select public.send_messages($1, $2, $3::jsonb)", client.agent_id,
                           f"agent:{worker.agent_id}", json.dumps(
                               [{"payload": i, "headers": {"ar": "request"}, "correlation_id": c,
                                 "reply_to": f"agent:{client.agent_id}"} for i, c in enumerate(ids)]))
        most = 0
        with anyio.fail_after(15):
            while True:
                claimed, answered = await conn.fetchrow(
                    "select count(*) filter (where m.state = 'inflight' and m.claimed_by = $1 and c.name = $2 "
                    "                        and m.reply_to is not null), "
                    "       count(*) filter (where c.name = $3 and m.correlation_id = any ($4::uuid[])) "
                    "from distributed_messages m join communication_channels c on c.id = m.channel_id",
                    worker.agent_id, f"agent:{worker.agent_id}", f"agent:{client.agent_id}", ids)
                most = max(most, claimed)
                if answered == 5:
                    break
                await anyio.sleep(0.01)
        assert most == 1


async def test_request_to_an_agent_without_handler_or_offline_fails_fast(make_runtime: RuntimeFactory) -> None:
    """No request handler, or an agent that is offline: a typed error at once, not the whole timeout."""
    async with make_runtime("client") as client:
        async with make_runtime("deaf") as deaf:
            with anyio.fail_after(2), pytest.raises(AgentUnavailable, match="no request handler"):
                await client.request(deaf.agent_id, {"x": 1}, timeout=30)
        with anyio.fail_after(3), pytest.raises(AgentUnavailable, match="offline"):
            await client.request(deaf.agent_id, {"x": 1}, timeout=30)


async def test_a_request_is_acked_with_its_reply(make_runtime: RuntimeFactory, conn: asyncpg.Connection) -> None:
    """The responder's reply and the ack of the request are one transaction: once the requester
    has the reply, the request is acked already (no ack left to ride along with a later claim)."""
    async with make_runtime("answers") as server, make_runtime("asks") as client:
        @server.on_request
        async def echo(msg: Any) -> Any:
            return msg.payload

        open_requests = ("select count(*) from distributed_messages m join communication_channels c"
                         " on c.id = m.channel_id where c.name = $1 and m.reply_to is not null"
                         " and m.state <> 'acked'")
        with anyio.fail_after(10):
            for n in range(3):
                assert await client.request(server.agent_id, {"n": n}, timeout=5) == {"n": n}
                assert await conn.fetchval(open_requests, f"agent:{server.agent_id}") == 0
