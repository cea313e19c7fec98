"""The runtime's one safety poll: a message whose wake-up was lost still arrives, and however many
subscriptions there are, the poll wakes a bounded number of them per second."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import asyncpg
import pytest

from agent_runtime import AgentRuntime
from agent_runtime.runtime import _dispatch

RuntimeFactory = Callable[..., AgentRuntime]


async def test_a_message_without_wake_up_arrives_by_the_safety_poll(make_runtime: RuntimeFactory,
                                                                   conn: asyncpg.Connection) -> None:
    """Sent with the wake-up trigger silenced: the subscriber still gets it within about poll_interval."""
    async with make_runtime("quiet", poll_interval=0.3) as rt:
        async with rt.subscribe("news", start="latest") as sub:
            await conn.execute("set session_replication_role = replica")  # no triggers: no wake-up
            await conn.execute("select public.send_messages($1, 'news', $2::jsonb)", rt.agent_id,
                               json.dumps([{"payload": {"n": 1}}]))
            with anyio.fail_after(3):
                msg = await sub.__anext__()
            assert msg.payload == {"n": 1}


@pytest.mark.slow
async def test_safety_poll_wakes_a_bounded_number_of_subscriptions(make_runtime: RuntimeFactory,
                                                                   monkeypatch: Any) -> None:
    """200 idle subscriptions, poll_interval 0.2 s, a budget of 20 per second: about 20 fetches a second, not 1,000."""
    monkeypatch.setattr(_dispatch, "SAFETY_POLLS_PER_SECOND", 20)
    async with make_runtime("many", poll_interval=0.2, pool_size=10) as rt:
        fetches = 0
        db = rt._require_db()
        fetch = db.fetch

        async def counting_fetch(*args: Any, **kwargs: Any) -> Any:
            nonlocal fetches
            fetches += 1
            return await fetch(*args, **kwargs)

        async with AsyncExitStack() as stack, anyio.create_task_group() as tg:
            for i in range(200):
                sub = await stack.enter_async_context(rt.subscribe(f"idle-{i}"))

                async def consume(sub: Any = sub) -> None:
                    async for msg in sub:
                        await msg.ack()

                tg.start_soon(consume)
            await anyio.sleep(0.5)
            monkeypatch.setattr(db, "fetch", counting_fetch)
            await anyio.sleep(2.0)
            tg.cancel_scope.cancel()
        assert 10 <= fetches <= 80, fetches
