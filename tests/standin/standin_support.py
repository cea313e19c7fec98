"""Helpers for the stand-in tests: register agents over RPC, collect callback events with a
deadline, and a bare websocket for frame-level tests of either protocol version."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
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


class RawSocket:
    """A bare websocket to the stand-in speaking one protocol version, for frame-level tests:
    ``send`` a frame as the client would encode it; ``recv`` the next frame (``str`` decoded
    as JSON, ``bytes`` kept as they are)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, vsn: str) -> None:
        self.ws = ws
        self.vsn = vsn
        self._ref = 0

    def next_ref(self) -> str:
        self._ref += 1
        return str(self._ref)

    async def send(self, topic: str, event: str, payload: Any, *, ref: str | None = None,
                   join_ref: str | None = None) -> None:
        if self.vsn.startswith("2."):
            await self.ws.send_str(json.dumps([join_ref, ref, topic, event, payload]))
        else:
            await self.ws.send_str(json.dumps({"event": event, "payload": payload, "topic": topic, "ref": ref,
                                               "join_ref": join_ref}))

    async def recv(self, within: float = 5.0) -> Any:
        msg = await self.ws.receive(timeout=within)
        if msg.type is aiohttp.WSMsgType.BINARY:
            return bytes(msg.data)
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        return json.loads(msg.data)

    async def nothing(self, wait: float = 0.3) -> None:
        """Assert that no frame arrives within ``wait`` seconds."""
        try:
            frame = await self.recv(wait)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame {frame!r}")

    async def join(self, sub_topic: str, token: str, *, private: bool = True) -> tuple[str, Any]:
        """``phx_join`` and its reply; returns (join_ref, reply frame)."""
        ref = self.next_ref()
        config = {"broadcast": {"self": False, "ack": False}, "presence": {"key": "", "enabled": False},
                  "postgres_changes": [], "private": private}
        await self.send(f"realtime:{sub_topic}", "phx_join", {"config": config, "access_token": token}, ref=ref,
                        join_ref=ref)
        return ref, await self.recv()


@contextlib.asynccontextmanager
async def raw_socket(url: str, apikey: str, vsn: str | None) -> AsyncIterator[RawSocket]:
    """A websocket to ``<url>/realtime/v1/websocket`` with ``vsn`` (None: no vsn parameter)."""
    params = {"apikey": apikey, **({"vsn": vsn} if vsn is not None else {})}
    async with aiohttp.ClientSession() as session, session.ws_connect(
        url.replace("http://", "ws://") + "/realtime/v1/websocket", params=params
    ) as ws:
        yield RawSocket(ws, vsn or "1.0.0")
