"""The runtime's periodic services, each behind its error boundary: the presence heartbeat, the
metrics flush, and the leader-elected janitor. They run in the runtime's task group until it stops."""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Awaitable, Callable

import anyio

from ..errors import AgentRuntimeError, PermissionDenied
from ..models import AgentInfo
from ._context import RuntimeContext

__all__ = ["JANITOR_LOCK", "flush_metrics", "heartbeat", "janitor", "periodically"]

log = logging.getLogger(__name__)

JANITOR_LOCK = "agent_runtime:janitor"


async def periodically(context: RuntimeContext, part: str, pause: Callable[[], float],
                       round_: Callable[[], Awaitable[None]], *, at_once: bool = False) -> None:
    """A background service's error boundary: a round that fails is logged and counted
    (``errors.<part>``), and the next round runs as planned."""
    if not at_once:
        await anyio.sleep(pause())
    while True:
        try:
            await round_()
        except AgentRuntimeError as exc:
            context.metrics.increment(f"errors.{part}")
            log.warning("%s failed: %s", part, exc)
        except Exception:
            context.metrics.increment(f"errors.{part}")
            log.exception("%s failed unexpectedly", part)
        await anyio.sleep(pause())


async def heartbeat(context: RuntimeContext, heard: Callable[[AgentInfo], None]) -> None:
    """Keep this agent online; ``heard`` gets what each heartbeat returns."""
    interval = context.timing.heartbeat_interval

    async def beat() -> None:
        heard(await context.db.heartbeat(context.agent_id))

    await periodically(context, "heartbeat", lambda: interval * random.uniform(0.8, 1.0), beat)


async def flush_metrics(context: RuntimeContext) -> None:
    async def flush() -> None:
        await context.metrics.flush(context.db, context.agent_id)  # (a failed flush keeps retryable figures)

    await periodically(context, "metrics_flush", lambda: context.timing.metrics_interval, flush)


async def janitor(context: RuntimeContext) -> None:
    """Leader-elected cleanup: whoever holds the janitor lock runs it; the lease is re-taken
    each round with the same lease id, so the leader keeps it while alive."""
    db, agent_id, interval = context.db, context.agent_id, context.timing.janitor_interval
    lease_id = uuid.uuid4()

    allowed = True

    async def clean() -> None:
        nonlocal allowed
        if not allowed:
            return
        grant = await db.acquire_lock(agent_id, JANITOR_LOCK, lease_id, int(interval * 3000))
        if grant.acquired:
            try:
                counts = await db.run_cleanup()
            except PermissionDenied:
                # An agent with its own JWT may not clean up for everyone: step aside for good
                # (and free the leadership at once, so a trusted agent's janitor takes over).
                allowed = False
                log.info("janitor: %s is not a trusted role, so it leaves cleanup to others", agent_id)
                await db.release_lock(agent_id, JANITOR_LOCK, lease_id)
                return
            if any(counts.values()):
                log.info("janitor: %s", counts)

    await periodically(context, "janitor", lambda: interval * random.uniform(0.9, 1.1), clean, at_once=True)
