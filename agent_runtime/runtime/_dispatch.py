"""Wake-ups routed to whoever listens in this runtime: subscriptions by channel (through the
registry), lock waiters by key, presence listeners; and the one safety poll that wakes the
subscriptions wake-ups have not woken for a while. Wake-ups are hints: dispatching never blocks,
and one that cannot be understood is logged and dropped, never fatal."""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio

from ..models import RawMessage
from ..transports import wire
from ._context import RuntimeContext
from ._locks import LockWaiters
from ._presence import PresenceEvent, PresenceHub

__all__ = ["SAFETY_POLLS_PER_SECOND", "Dispatch", "safety_poll"]

log = logging.getLogger(__name__)

# Takes the verified messages an inbox wake-up carries if they are replies for this agent (True).
ReplySink = Callable[[str, list[RawMessage]], bool]

# The safety poll's budget: subscriptions woken per second at most, however many there are.
SAFETY_POLLS_PER_SECOND = 50


class Dispatch:
    """The sink the transport delivers this runtime's wake-ups to."""

    def __init__(self, context: RuntimeContext, presence: PresenceHub, lock_waiters: LockWaiters,
                 replies: ReplySink | None = None) -> None:
        self._context = context
        self._presence = presence
        self._lock_waiters = lock_waiters
        self._replies = replies  # (verified replies carried by this agent's inbox wake-ups)

    def __call__(self, event: wire.WakeUp) -> None:
        try:
            self._route(event)
        except Exception:
            self._context.metrics.increment("errors.wakeup")
            log.exception("ignoring a wake-up that could not be dispatched: %r", event)

    def _route(self, event: wire.WakeUp) -> None:
        # (decoded and checked by the transport: typed events only)
        if isinstance(event, wire.MessageWakeUp):
            subs = self._context.subscriptions.on(event.channel)
            if not subs:
                return
            messages = self._context.carried.messages(event)
            if messages is not None and self._replies is not None and self._replies(event.channel, messages):
                return  # (replies handed to their requests straight from the wake-up)
            if messages is None:
                for sub in subs:
                    sub.wake()
            else:
                for sub in subs:
                    sub.offer(messages[0].seq, messages)
        elif isinstance(event, wire.PresenceChange):
            if self._context.carried.presence_believed(event):
                self._presence.publish(PresenceEvent(event.kind, event.agent_id, event.status))
        elif isinstance(event, wire.LockReleased):
            self._lock_waiters.released(event.key)
        elif isinstance(event, wire.Reconnected):
            self._context.subscriptions.wake_all()
            self._lock_waiters.wake_all()
            self._presence.publish(PresenceEvent("resync"))


async def safety_poll(context: RuntimeContext) -> None:
    """The one safety poll of this runtime (not one timer per subscription): each tick wakes the
    subscriptions that have fetched nothing for ``poll_interval``, at most SAFETY_POLLS_PER_SECOND
    of them, so that thousands of idle subscriptions cost a bounded number of transactions (each
    is then looked at less often than ``poll_interval``). Wake-ups and reconnects do the rest."""
    interval = context.timing.poll_interval
    tick = min(interval, 1.0)
    while True:
        await anyio.sleep(tick)
        budget = max(1, int(SAFETY_POLLS_PER_SECOND * tick))
        now = anyio.current_time()
        for sub in context.subscriptions:
            if sub.poll_due(now, interval):
                sub.wake()
                budget -= 1
                if not budget:
                    break
