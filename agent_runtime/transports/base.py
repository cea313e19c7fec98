"""The transport seam: call a SQL function with named arguments and get JSON back; listen to
wake-up events. A transport knows nothing of agents, locks or messages."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import msgspec
from anyio.abc import TaskStatus

__all__ = ["RECONNECTED", "AccessTokenProvider", "Event", "EventSink", "Transport"]


class Event(msgspec.Struct, frozen=True):
    """A wake-up hint. ``topic`` is ``channel:<name>``, ``agent:<id>``, ``presence`` or ``locks``;
    ``event`` is ``message``, ``presence`` or ``released``; ``data`` the compact payload.
    The special topic ``*`` with event ``reconnected`` says events may have been missed."""

    topic: str
    event: str
    data: dict[str, Any]


RECONNECTED = Event("*", "reconnected", {})

# Returns a fresh access token (JWT) for an agent, sync or async; called before the current expires.
AccessTokenProvider = Callable[[], str | Awaitable[str]]


class EventSink(Protocol):
    def __call__(self, event: Event) -> None: ...


class Transport(Protocol):
    """What the runtime needs from a connection to the database."""

    async def call(self, function: str, args: Mapping[str, Any]) -> Any:
        """Call ``public.<function>`` with named arguments; return its JSON result decoded.

        Raises an :class:`~agent_runtime.errors.AgentRuntimeError` subclass (never a driver's
        exception): domain errors from their SQLSTATE, connection failures as ``ConnectionLost``."""
        ...

    async def run_listener(self, sink: EventSink, *, task_status: TaskStatus[None]) -> None:
        """Deliver wake-up events to ``sink`` until cancelled, reconnecting as needed; report
        ready through ``task_status`` once listening. After a reconnect, emit ``RECONNECTED``."""
        ...

    async def aclose(self) -> None:
        """Close every connection; safe to call twice."""
        ...

    # Hooks for transports whose wake-ups are per topic (Supabase Realtime joins one channel per
    # topic). A transport that hears every topic at once (Postgres LISTEN) makes them no-ops.

    def set_identity(self, agent_id: str) -> None:
        """The agent this process runs as, given before ``run_listener``: its inbox topic
        ``agent:<id>`` is listened to, and its presence published. Raises ``ConfigurationError``
        if the credentials belong to another agent."""
        ...

    async def watch(self, topic: str) -> None:
        """Start listening to ``topic`` (``channel:<name>`` or ``agent:<id>``) as well; counted
        (each ``watch`` is matched by one ``unwatch``). Returns once events on it flow, or after
        a bounded wait (a later start is followed by ``RECONNECTED``)."""
        ...

    def unwatch(self, topic: str) -> None:
        """Undo one :meth:`watch`; never blocks."""
        ...

    async def publish_presence(self, status: str) -> None:
        """This agent's status changed (the registry already has it); tell live listeners."""
        ...
