"""The subscription registry: which open subscriptions of this runtime listen to which channel.
Registering one watches its channel's wake-up topic (Realtime joins one channel per topic; a
LISTEN transport may hear them all anyway); the wake-up dispatch and the safety poll find the
subscriptions here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from ..models import RawMessage
from ..transports import wire
from ..transports.base import Transport

__all__ = ["Listener", "Subscriptions"]


class Listener(Protocol):
    """What the registry and the wake-up dispatch need of a subscription (they never block)."""

    @property
    def channel(self) -> str: ...

    def wake(self) -> None: ...

    def offer(self, first: int, messages: list[RawMessage]) -> None: ...

    def poll_due(self, now: float, interval: float) -> bool: ...


class Subscriptions:
    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._by_channel: dict[str, set[Listener]] = {}

    async def add(self, sub: Listener) -> None:
        """Watch the channel's wake-up topic, then list the subscription (it hears wake-ups from now on)."""
        await self._transport.watch(wire.channel_topic(sub.channel))
        self._by_channel.setdefault(sub.channel, set()).add(sub)

    def discard(self, sub: Listener) -> None:
        """Unlist a subscription (if listed) and unwatch its topic once; never blocks."""
        subs = self._by_channel.get(sub.channel)
        if subs is not None and sub in subs:
            subs.discard(sub)
            self._transport.unwatch(wire.channel_topic(sub.channel))

    def on(self, channel: str) -> set[Listener]:
        """The subscriptions listening to ``channel`` (empty if none)."""
        return self._by_channel.get(channel) or set()

    def __iter__(self) -> Iterator[Listener]:
        """Every open subscription (a snapshot: safe while subscriptions open and close)."""
        for subs in list(self._by_channel.values()):
            yield from list(subs)

    def wake_all(self) -> None:
        for sub in self:
            sub.wake()
