from __future__ import annotations

from collections.abc import Callable

import anyio
import asyncpg

from agent_runtime import AgentRuntime

RuntimeFactory = Callable[..., AgentRuntime]


async def test_replies_come_from_their_wakeups_and_are_acked(make_runtime: RuntimeFactory,
                                                             conn: asyncpg.Connection) -> None:
    """A reply rides along its (signed) inbox wake-up: the requester is answered without claiming
    it, and its ack is written all the same (within the ack flush delay)."""
    async with make_runtime("server") as server, make_runtime("client") as client:
        @server.on_request
        async def echo(msg):  # type: ignore[no-untyped-def]
            return msg.payload

        with anyio.fail_after(10):
            for n in range(5):
                assert await client.request(server.agent_id, n, timeout=5) == n
            control = client._requests.control if client._requests else None
            assert control is not None and control.taken_from_wakeups >= 4
            unacked = ("select count(*) from distributed_messages m join communication_channels c"
                       " on c.id = m.channel_id where c.name = $1 and m.state <> 'acked'")
            for _ in range(100):  # (the acks ride along with a claim within the flush delay)
                if not await conn.fetchval(unacked, f"agent:{client.agent_id}"):
                    break
                await anyio.sleep(0.05)
            assert await conn.fetchval(unacked, f"agent:{client.agent_id}") == 0


async def test_outer_cancellation_still_leaves_in_order(make_runtime: RuntimeFactory, conn: asyncpg.Connection) -> None:
    """Cancelled from outside (as on SIGTERM), the runtime still flushes metrics and marks itself offline."""
    with anyio.CancelScope() as scope:
        async with make_runtime("cancelled") as rt:
            rt.metrics.increment("custom.thing")
            scope.cancel()
            await anyio.sleep(10)
    assert scope.cancelled_caught
    status = await conn.fetchval("select status from agent_presence where agent_id = $1", rt.agent_id)
    assert status == "offline"
    flushed = await conn.fetchval(
        "select sum(sum) from communication_metrics where agent_id = $1 and metric = 'custom.thing'", rt.agent_id)
    assert flushed == 1
