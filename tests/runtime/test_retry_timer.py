"""One retry timer per subscription: nacked messages come back when due without a task, a timer
or a poll of their own (the safety poll is an hour away here)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import anyio

from agent_runtime import AgentRuntime

RuntimeFactory = Callable[..., AgentRuntime]


async def test_many_nacked_messages_share_one_retry_timer(make_runtime: RuntimeFactory) -> None:
    async with make_runtime("retrying", poll_interval=3600) as rt:
        await rt.channel("jobs", "queue")
        await rt.publish_many("jobs", [{"n": n} for n in range(100)])
        async with rt.subscribe("jobs", batch_size=100) as sub:
            tasks = len(asyncio.all_tasks())
            with anyio.fail_after(10):
                for _ in range(100):
                    msg = await sub.__anext__()
                    await msg.nack(delay=0.3)
            assert len(asyncio.all_tasks()) <= tasks  # nothing started per nack
            again: set[int] = set()
            started = anyio.current_time()
            with anyio.fail_after(10):  # (the safety poll would take an hour)
                while len(again) < 100:
                    msg = await sub.__anext__()
                    assert msg.attempts == 2
                    again.add(msg.payload["n"])
                    await msg.ack()
            assert anyio.current_time() - started < 5
        assert again == set(range(100))
