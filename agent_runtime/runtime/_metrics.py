"""In-process metric aggregation, flushed to the database in batches."""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass
from datetime import datetime

from ..errors import AgentRuntimeError, InvalidInput
from ._db import Database
from ._identity import CHANNEL_NAME

log = logging.getLogger(__name__)

_METRIC_NAME = re.compile(r"[a-z][a-z0-9_.]{0,127}")


@dataclass(slots=True)
class _Figure:
    count: int = 0
    sum: float = 0.0
    min: float | None = None
    max: float | None = None

    def add(self, value: float, count: int) -> None:
        self.count += count
        self.sum += value
        if self.min is None or value < self.min:
            self.min = value
        if self.max is None or value > self.max:
            self.max = value

    def merge(self, other: _Figure) -> None:
        self.count += other.count
        self.sum += other.sum
        if other.min is not None:
            self.min = other.min if self.min is None else min(self.min, other.min)
        if other.max is not None:
            self.max = other.max if self.max is None else max(self.max, other.max)


class Metrics:
    """Counters and figures (count, sum, min, max per metric and channel), kept in memory and
    written to ``communication_metrics`` by the runtime's flusher. Names: lowercase, digits, ``_`` ``.``.

    Built in: ``messages.sent``, ``messages.received``, ``messages.acked``, ``messages.nacked``,
    ``messages.dead``, ``bytes.sent``, ``bytes.received``, ``latency.end_to_end_ms``,
    ``handler.time_ms``, ``lock.wait_ms``."""

    def __init__(self) -> None:
        self._figures: dict[tuple[str, str], _Figure] = {}
        # Per channel: the figures of messages.received, bytes.received, latency.end_to_end_ms.
        self._received: dict[str, tuple[_Figure, _Figure, _Figure]] = {}

    def increment(self, metric: str, value: float = 1, *, channel: str = "") -> None:
        """Add ``value`` to a counter (count grows by one per call, sum by ``value``). Raises
        :class:`InvalidInput` for a bad name or a value that is not a finite number."""
        self._checked(metric, value, channel).add(value, 1)

    def observe(self, metric: str, value: float, *, channel: str = "") -> None:
        """Record one measurement (a latency, a size): count, sum, min and max are kept."""
        self._checked(metric, value, channel).add(value, 1)

    def _checked(self, metric: str, value: float, channel: str) -> _Figure:
        figure = self._figures.get((metric, channel))
        if figure is None:  # (a name seen before was checked then)
            if not isinstance(metric, str) or not _METRIC_NAME.fullmatch(metric):
                raise InvalidInput(f"invalid metric name {metric!r}",
                                   hint="1-128 characters: lowercase letters, digits, _ and . (starting with a letter)")
            if not isinstance(channel, str) or not (channel == "" or CHANNEL_NAME.fullmatch(channel)):
                # (checked now: one the database refuses would cost the whole batch it is flushed in)
                raise InvalidInput(f"invalid metric channel {channel!r}",
                                   hint="a channel name (letters, digits, _ . : / -, 1-128 characters) or ''")
            figure = self._figure(metric, channel)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidInput(f"metric value must be a finite number (got {value!r})")
        return figure

    def received(self, channel: str, size_bytes: int, created_at: datetime | None) -> None:
        """One message handed to the application: ``messages.received``, ``bytes.received`` and
        (from its ``created_at``) ``latency.end_to_end_ms``, as increment/observe would record them.
        (Called for every message delivered: the three figures are looked up once per channel and
        the values, known to be valid, are not checked again.)"""
        figures = self._received.get(channel)
        if figures is None:
            figures = self._received[channel] = (
                self._figure("messages.received", channel), self._figure("bytes.received", channel),
                self._figure("latency.end_to_end_ms", channel))
        count, size, latency = figures
        count.add(1, 1)
        size.add(size_bytes, 1)
        if created_at is not None:
            latency.add(max((time.time() - created_at.timestamp()) * 1000, 0.0), 1)

    def _figure(self, metric: str, channel: str) -> _Figure:
        key = (metric, channel)
        figure = self._figures.get(key)
        if figure is None:
            figure = self._figures[key] = _Figure()
        return figure

    def pending(self) -> int:
        return len(self._figures)

    async def flush(self, db: Database, agent_id: str) -> int:
        """Write what has accumulated; on failure keep it for the next flush (nothing is lost)."""
        if not self._figures:
            return 0
        batch, self._figures = self._figures, {}
        self._received.clear()  # (its figures are in the batch)
        rows = [
            {"metric": metric, "channel": channel, "count": f.count, "sum": f.sum, "min": f.min, "max": f.max}
            for (metric, channel), f in batch.items()
        ]
        try:
            return await db.record_metrics(agent_id, rows)
        except AgentRuntimeError as exc:
            if exc.retryable:  # the connection failed: keep them for the next flush
                for key, figure in batch.items():
                    self._figure(*key).merge(figure)
            else:  # refused: sending the same batch again would be refused again, forever
                log.error("metrics batch of %d figures refused and dropped: %s", len(rows), exc)
            raise
