"""Leases with fencing tokens, kept alive while held, released on exit."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import anyio
import tenacity

from .errors import AgentRuntimeError, ConnectionLost, LockLost, LockNotHeld, LockTimeout
from .models import LockGrant

if TYPE_CHECKING:
    from .runtime import AgentRuntime

log = logging.getLogger(__name__)


@dataclass(eq=False)  # identity: each lease is one holding
class Lease:
    """A held lock. ``token`` is the fencing token: it strictly increases per key across holders,
    so a resource that remembers the highest token it has seen can refuse a stale holder's write
    (or call :meth:`check` in the transaction that writes)."""

    key: str
    token: int
    lease_id: uuid.UUID
    ttl: float
    expires_at: datetime | None
    lost: bool = False
    _runtime: AgentRuntime | None = field(default=None, repr=False)

    async def check(self) -> None:
        """Raise :class:`StaleFencingToken` unless this lease is still the live holder."""
        if self._runtime is None:
            raise LockNotHeld(f"lease on {self.key} is not attached to a runtime")
        await self._runtime._require_db().check_fencing_token(self.key, self.token)


class LockWaiters:
    """Release notifications wake the waiters of a key (hints: waiters also retry on a timer)."""

    def __init__(self) -> None:
        self._events: dict[str, anyio.Event] = {}

    def event(self, key: str) -> anyio.Event:
        event = self._events.get(key)
        if event is None or event.is_set():
            event = self._events[key] = anyio.Event()
        return event

    def released(self, key: str) -> None:
        event = self._events.pop(key, None)
        if event is not None:
            event.set()

    def wake_all(self) -> None:
        for key in list(self._events):
            self.released(key)


async def acquire(runtime: AgentRuntime, key: str, *, ttl: float, wait: float | None) -> Lease | None:
    """Take the lease, waiting up to ``wait`` seconds (None: forever, 0: one try).
    Between tries a waiter sleeps until a release notification, the holder's remaining lease, or a
    bounded exponential backoff with jitter, whichever comes first."""
    db = runtime._require_db()
    lease_id = uuid.uuid4()
    started = time.monotonic()
    deadline = None if wait is None else started + wait
    backoff = tenacity.wait_random_exponential(multiplier=0.02, max=1.0)
    attempt = 0
    while True:
        released = runtime._lock_waiters.event(key)
        grant: LockGrant | None = None
        try:
            grant = await db.acquire_lock(runtime.agent_id, key, lease_id, int(ttl * 1000))
        except ConnectionLost as exc:
            log.warning("acquiring %s: %s; retrying", key, exc)
        if grant is not None and grant.acquired and grant.token is not None:
            runtime.metrics.observe("lock.wait_ms", (time.monotonic() - started) * 1000, channel=key)
            return Lease(key, grant.token, lease_id, ttl, grant.expires_at, _runtime=runtime)
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return None
        attempt += 1
        pause = backoff(_state(attempt))
        if grant is not None:
            pause = min(pause, max(grant.ttl_ms / 1000, 0.001))
        if deadline is not None:
            pause = min(pause, deadline - now)
        with anyio.move_on_after(pause):
            await released.wait()


def _state(attempt: int) -> tenacity.RetryCallState:
    state = tenacity.RetryCallState(retry_object=tenacity.AsyncRetrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    return state


async def _keep_renewed(runtime: AgentRuntime, lease: Lease, body: anyio.CancelScope) -> None:
    """Renew at a third of the TTL. If the lease is gone, or cannot be renewed before it would
    expire, mark it lost and cancel the protected block: the holder never silently runs on."""
    db = runtime._require_db()
    interval = lease.ttl / 3
    last_ok = time.monotonic()
    while True:
        await anyio.sleep(interval)
        try:
            grant = await db.renew_lock(runtime.agent_id, lease.key, lease.lease_id, int(lease.ttl * 1000))
            lease.expires_at = grant.expires_at
            last_ok = time.monotonic()
            interval = lease.ttl / 3
        except LockNotHeld:
            break
        except AgentRuntimeError as exc:
            # Keep trying while the lease may still be ours; stop short of its expiry.
            if time.monotonic() - last_ok > lease.ttl * 0.8:
                break
            log.warning("renewing %s: %s; retrying", lease.key, exc)
            interval = min(lease.ttl / 10, 0.5)
    lease.lost = True
    log.error("lost lock %s (token %s)", lease.key, lease.token)
    body.cancel()


@asynccontextmanager
async def hold(runtime: AgentRuntime, key: str, *, ttl: float, wait: float | None,
               raise_if_unavailable: bool = True) -> AsyncIterator[Lease | None]:
    lease = await acquire(runtime, key, ttl=ttl, wait=wait)
    if lease is None:
        if raise_if_unavailable:
            raise LockTimeout(f"lock {key!r} not acquired within {wait}s")
        yield None
        return
    runtime._held.add(lease)
    renewer = anyio.CancelScope()
    try:
        # The renewer runs in the runtime's task group; the body runs in a scope it may cancel.
        with anyio.CancelScope() as body:
            runtime._start_task(_run_in_scope, renewer, _keep_renewed, runtime, lease, body)
            yield lease
    finally:
        renewer.cancel()
        runtime._held.discard(lease)
        if not lease.lost:
            await release(runtime, lease)
    if lease.lost:
        raise LockLost(f"lock {key!r} was lost while held (token {lease.token}); the block was cancelled")


async def _run_in_scope(scope: anyio.CancelScope, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
    with scope:
        await fn(*args)


async def release(runtime: AgentRuntime, lease: Lease) -> None:
    with anyio.CancelScope(shield=True), anyio.move_on_after(runtime.shutdown_timeout):
        try:
            await runtime._require_db().release_lock(runtime.agent_id, lease.key, lease.lease_id)
        except AgentRuntimeError as exc:
            log.warning("releasing %s: %s (it will expire in %.1fs)", lease.key, exc, lease.ttl)
