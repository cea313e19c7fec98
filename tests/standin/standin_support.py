"""Helpers for the stand-in tests: register agents over RPC, collect callback events with a
deadline."""

from __future__ import annotations

import asyncio
from typing import Any

from supabase import AsyncClient


async def register(client: AsyncClient, *agent_ids: str) -> None:
    """Register agents (the client must be allowed to act as each)."""
    for agent_id in agent_ids:
        await client.rpc("register_agent", {"p_agent_id": agent_id, "p_name": agent_id}).execute()


class Events:
    """A callback sink: ``events.cb`` records its arguments; ``await events.next()`` waits."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def cb(self, *args: Any) -> None:
        self.queue.put_nowait(args[0] if len(args) == 1 else args)

    async def next(self, within: float = 5.0) -> Any:
        return await asyncio.wait_for(self.queue.get(), within)

    async def until(self, predicate: Any, within: float = 5.0) -> Any:
        """The first event for which ``predicate(event)`` is true."""
        async with asyncio.timeout(within):
            while True:
                event = await self.queue.get()
                if predicate(event):
                    return event

    async def nothing(self, wait: float = 0.5) -> None:
        """Assert that no event arrives within ``wait`` seconds."""
        try:
            event = await asyncio.wait_for(self.queue.get(), wait)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected event {event!r}")
