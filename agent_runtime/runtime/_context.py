"""What the runtime's parts are given: one small context, made when the runtime has connected,
instead of the runtime itself. A part (subscriptions, locks, requests, handlers, the background
services, the wake-up dispatch) reads what it needs from here and owns the rest of its state."""

from __future__ import annotations

import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup

from ..errors import AgentRuntimeError
from ._db import Database
from ._metrics import Metrics
from ._registry import Subscriptions
from ._wakeups import CarriedMessages

__all__ = ["InFlight", "RetryPolicy", "RuntimeContext", "Tasks", "Timing"]


@dataclass(frozen=True)
class Timing:
    """The runtime's periods and bounds, in seconds (checked by the constructor)."""

    shutdown_timeout: float  # how long each shutdown step (and each shielded cleanup) may take
    poll_interval: float  # the safety poll: a subscription that fetched nothing for this long looks again
    heartbeat_interval: float
    metrics_interval: float
    janitor_interval: float


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for redeliveries and reopened subscriptions: exponential from ``base_delay``, at
    most ``max_delay``."""

    base_delay: float
    max_delay: float

    def delay(self, attempts: int) -> float:
        """Backoff before redelivering a message that failed ``attempts`` times (with jitter)."""
        delay = min(self.base_delay * 2.0 ** max(attempts - 1, 0), self.max_delay)
        return float(delay * random.uniform(0.8, 1.2))


class Tasks:
    """The runtime's task group while it runs: parts start their background tasks here."""

    def __init__(self) -> None:
        self._group: TaskGroup | None = None

    @property
    def running(self) -> bool:
        return self._group is not None

    def open(self, group: TaskGroup) -> None:
        self._group = group

    def close(self) -> TaskGroup | None:
        """No more tasks start from now on; the group, to be cancelled by its owner."""
        group, self._group = self._group, None
        return group

    def start_soon(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        if self._group is None:
            raise AgentRuntimeError("the runtime is not running")
        self._group.start_soon(fn, *args)


class InFlight:
    """Messages being handled (handlers, requests): shutdown gives them its grace period."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = anyio.Event()
        self._idle.set()

    def begin(self) -> None:
        self._count += 1
        if self._idle.is_set():
            self._idle = anyio.Event()

    def end(self) -> None:
        self._count -= 1
        if self._count == 0:
            self._idle.set()

    async def idle(self) -> None:
        """Returns once nothing is being handled."""
        await self._idle.wait()


@dataclass(frozen=True)
class RuntimeContext:
    """One runtime's shared parts, as its own parts see them."""

    agent_id: str
    db: Database
    metrics: Metrics
    timing: Timing
    retry: RetryPolicy
    stopping: anyio.Event  # set once shutdown begins: intake stops, waits for news end
    tasks: Tasks
    subscriptions: Subscriptions  # the open subscriptions, by channel (wake-ups reach them there)
    carried: CarriedMessages  # verifies the messages wake-ups carry
    in_flight: InFlight = field(default_factory=InFlight)

    async def sleep_unless_stopping(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self.stopping.wait()
