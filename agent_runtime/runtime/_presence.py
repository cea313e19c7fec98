"""Presence events fanned out from wake-ups to every listener in this process."""

from __future__ import annotations

import logging
import weakref
from collections import deque
from types import TracebackType
from typing import Literal

import anyio
import msgspec

log = logging.getLogger(__name__)

__all__ = ["PresenceEvent", "PresenceEvents", "PresenceHub"]


class PresenceEvent(msgspec.Struct, frozen=True):
    """An agent joined, left, or changed status. ``kind == "resync"`` means events may have been
    missed (the connection was lost, or this listener fell behind): list the agents again."""

    kind: Literal["join", "leave", "status", "resync"]
    agent_id: str = ""
    status: str = ""


class PresenceEvents:
    """``async for event in rt.presence_events(): ...``, or ``async with rt.presence_events() as
    events: async for event in events: ...`` (which stops listening when the block ends).

    Listening starts when the object is made. A listener that falls ``buffer`` events behind loses
    the oldest and gets a ``resync`` event in their place; iteration ends when the runtime stops."""

    def __init__(self, hub: PresenceHub, buffer: int) -> None:
        self._hub = hub
        self._queue: deque[PresenceEvent] = deque()
        self._buffer = buffer
        self._ready = anyio.Event()
        self._closed = False
        self._behind = False
        hub._listeners.add(self)

    def _push(self, event: PresenceEvent) -> None:
        if len(self._queue) >= self._buffer:
            if not self._behind:
                log.warning("a presence listener is not keeping up; dropping its oldest events")
            self._behind = True
            self._queue.popleft()
        self._queue.append(event)
        self._ready.set()

    def close(self) -> None:
        """Stop listening; a pending iteration ends."""
        self._closed = True
        self._hub._listeners.discard(self)
        self._ready.set()

    def __aiter__(self) -> PresenceEvents:
        return self

    async def __anext__(self) -> PresenceEvent:
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            self._ready = anyio.Event()
            await self._ready.wait()
        if self._behind:
            self._behind = False
            return PresenceEvent("resync")
        return self._queue.popleft()

    async def __aenter__(self) -> PresenceEvents:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()


class PresenceHub:
    def __init__(self) -> None:
        # Weak: a plain `async for` abandoned with `break` stops receiving once it is dropped.
        self._listeners: weakref.WeakSet[PresenceEvents] = weakref.WeakSet()

    def publish(self, event: PresenceEvent) -> None:
        for listener in list(self._listeners):
            listener._push(event)

    def listen(self, buffer: int = 1000) -> PresenceEvents:
        return PresenceEvents(self, max(buffer, 1))

    def close(self) -> None:
        """The runtime is stopping: every listener's iteration ends."""
        for listener in list(self._listeners):
            listener.close()
