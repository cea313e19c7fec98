"""Presence events fanned out from wake-ups to every listener in this process."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectSendStream

log = logging.getLogger(__name__)


class PresenceEvent(msgspec.Struct, frozen=True):
    """An agent joined, left, or changed status. ``kind == "resync"`` means events may have been
    missed (the connection was lost): list the agents again."""

    kind: Literal["join", "leave", "status", "resync"]
    agent_id: str = ""
    status: str = ""


class PresenceHub:
    def __init__(self) -> None:
        self._listeners: set[MemoryObjectSendStream[PresenceEvent]] = set()

    def publish(self, event: PresenceEvent) -> None:
        for stream in list(self._listeners):
            try:
                stream.send_nowait(event)
            except anyio.WouldBlock:
                log.warning("presence listener is not keeping up; dropped %s", event)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._listeners.discard(stream)

    @asynccontextmanager
    async def listen(self, buffer: int = 1000) -> AsyncIterator[AsyncIterator[PresenceEvent]]:
        send, receive = anyio.create_memory_object_stream[PresenceEvent](buffer if buffer else math.inf)
        self._listeners.add(send)
        try:
            async with receive:
                yield receive
        finally:
            self._listeners.discard(send)
            send.close()
