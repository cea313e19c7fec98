"""A tenant's events-per-second limit as Supabase Realtime keeps it (realtime-protocol.md §9.3;
``RT: lib/realtime/rate_counter/rate_counter.ex``, ``Realtime.Tenants.events_per_second_rate``).

Events are counted between ticks (every 5 s on the server); each tick pushes the count into a
window of the last 12 ticks, the average is ``sum / ticks / tick seconds``, and the limit is
*triggered* at a tick where that average reaches the limit and released at the first tick where
it is below again. While triggered the server drops broadcasts from the database and shuts down
channels that receive a message."""

from __future__ import annotations

import asyncio
import logging
from collections import deque

log = logging.getLogger("agent_runtime.testing.realtime")


class RateCounter:
    """Counts events; :attr:`triggered` as the server's ``limit.triggered``."""

    def __init__(self, limit: float, *, tick: float = 5.0, buckets: int = 12) -> None:
        if limit <= 0 or tick <= 0 or buckets < 1:
            raise ValueError("limit and tick must be positive, buckets at least 1")
        self.limit = limit
        self.tick_seconds = tick
        self.triggered = False
        self.average = 0.0
        self.times_triggered = 0
        self._count = 0
        self._window: deque[int] = deque(maxlen=buckets)
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Tick every ``tick`` seconds from now (on the running loop)."""
        self.stop()
        self._timer = asyncio.get_running_loop().call_later(self.tick_seconds, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def add(self, n: int = 1) -> None:
        self._count += n

    def _tick(self) -> None:
        self._window.appendleft(self._count)
        self._count = 0
        self.average = sum(self._window) / len(self._window) / self.tick_seconds
        if self.triggered and self.average < self.limit:
            self.triggered = False
        elif not self.triggered and self.average >= self.limit:
            self.triggered = True
            self.times_triggered += 1
            log.error("MessagePerSecondRateLimitReached: Too many messages per second")
        self.start()
