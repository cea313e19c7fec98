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

