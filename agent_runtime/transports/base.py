"""The transport seam: call a SQL function with named arguments and get JSON back; listen to the
wake-ups of the topics watched. A transport knows nothing of agents, locks or messages: topics and
events are the wire module's (:mod:`.wire`), decoded once, by the transport."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from anyio.abc import TaskStatus

from .wire import WakeUp

__all__ = ["AccessTokenProvider", "EventSink", "Transport"]

# Returns a fresh access token (JWT) for an agent, sync or async; called before the current expires.
AccessTokenProvider = Callable[[], str | Awaitable[str]]


class EventSink(Protocol):
    def __call__(self, event: WakeUp) -> None: ...


class Transport(Protocol):
    """What the runtime needs from a connection to the database."""

    async def call(self, function: str, args: Mapping[str, Any]) -> Any:
        """Call ``public.<function>`` with named arguments; return its JSON result decoded.

        Raises an :class:`~agent_runtime.errors.AgentRuntimeError` subclass (never a driver's
        exception): domain errors from their SQLSTATE, connection failures as ``ConnectionLost``."""
        ...

    async def listen(self, sink: EventSink, *, task_status: TaskStatus[None]) -> None:
        """Deliver the wake-ups of the watched topics to ``sink`` until cancelled, reconnecting as
        needed; report ready through ``task_status`` once the topics watched before are heard.
        After a reconnect, emit :data:`~.wire.RECONNECTED`. What does not decode is dropped."""
        ...

    async def watch(self, topic: str) -> None:
        """Listen to ``topic`` (:mod:`.wire`'s names) as well; counted (each ``watch`` is matched
        by one ``unwatch``). Before :meth:`listen`, it only records the topic; after, it returns
        once events on it flow, or after a bounded wait (a later start is followed by
        ``RECONNECTED``). Postgres: a LISTEN on the topic's notification channel; Supabase: a
        Realtime channel join. No other topic's wake-ups reach the sink."""
        ...

    def unwatch(self, topic: str) -> None:
        """Undo one :meth:`watch`; never blocks."""
        ...

    async def aclose(self) -> None:
        """Close every connection; safe to call twice."""
        ...
