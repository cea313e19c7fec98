"""Leases with fencing tokens, kept alive while held, released on exit."""

from __future__ import annotations

import logging
import math
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
import asyncpg
import tenacity

from ..errors import (
    AgentRuntimeError,
    ConnectionLost,
    LockLost,
    LockNotHeld,
    LockTimeout,
    StaleFencingToken,
    error_from_sqlstate,
)
from ..models import LockGrant
from ._context import RuntimeContext

log = logging.getLogger(__name__)


@dataclass(eq=False)  # identity: each lease is one holding
class Lease:
    """A held lock. ``token`` is the fencing token: it strictly increases per key across holders.

    Guard a write with it where the write happens: :meth:`fenced` runs the check inside the
    transaction that writes (asyncpg); elsewhere call ``public.check_fencing_token(key, token)``
    in that transaction, or store the token with the resource and refuse a lower one
    (compare-and-set). A check in another transaction than the write guards nothing.

    The lease counts as lost, on this process's own monotonic clock, once ``ttl`` seconds have
    passed since the start of its last successful renewal (or of the acquire): the protected
    block is cancelled then, without waiting for the next renewal."""

    key: str
    token: int
    lease_id: uuid.UUID
    ttl: float
    expires_at: datetime | None
    lost: bool = False
    _context: RuntimeContext | None = field(default=None, repr=False)
    # anyio.current_time() after which this holder must not act as owner any more.
    _deadline: float = field(default=math.inf, repr=False)

    def remaining(self) -> float:
        """Seconds this holder may still act as owner by its own clock (0 once lost)."""
        if self.lost:
            return 0.0
        return max(self._deadline - anyio.current_time(), 0.0)

    def _renewed(self, started: float, expires_at: datetime | None) -> float:
        """A renewal that began at ``started`` succeeded: the new deadline on this holder's clock."""
        self.expires_at = expires_at
        self._deadline = started + self.ttl
        return self._deadline

    def _require_live(self) -> None:
        if self.lost or self.remaining() <= 0:
            self.lost = True
            raise LockLost(f"lock {self.key!r} (token {self.token}) is lost or ran out on this holder's clock")

    @asynccontextmanager
    async def fenced(self, connection: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
        """``async with lease.fenced(conn): await conn.execute(...)``: the block's statements on
        ``conn`` (an asyncpg connection) run in one transaction (a savepoint if ``conn`` is already
        in one) that begins with ``check_fencing_token(key, token)``. It raises
        :class:`StaleFencingToken` if another holder has taken over. The check's row lock lasts
        until that transaction ends, so no successor can take the lock before it commits. The
        transaction commits only if the lease is still live on this holder's clock at the end of
        the block; otherwise, or on any error or cancellation (a lost lease cancels the block), it
        is rolled back, shielded, and the connection stays usable (it is closed if the rollback
        cannot be done in time). Inside an outer transaction the lock lasts until that one ends."""
        self._require_live()
        transaction = connection.transaction()
        with anyio.CancelScope(shield=True):  # (short; begun or not, never half-way)
            await transaction.start()
        try:
            try:
                await connection.execute("select public.check_fencing_token($1, $2)", self.key, self.token)
            except asyncpg.PostgresError as exc:
                raise error_from_sqlstate(exc.sqlstate, exc.message or str(exc), getattr(exc, "hint", None)) from exc
            yield connection
            self._require_live()  # ran out while writing: roll back rather than commit late
        except BaseException:
            await _shielded_end(connection, transaction.rollback, self._grace())
            raise
        if not await _shielded_end(connection, transaction.commit, self._grace()):
            raise ConnectionLost(f"committing the fenced transaction for {self.key!r} did not finish; "
                                 "the connection was closed (the transaction was rolled back unless the "
                                 "commit had reached the database)")

    async def is_live(self) -> bool:
        """A snapshot: whether the database still held this token as the live one when asked.
        It guards nothing done afterwards; use :meth:`fenced` (or the SQL check) for writes."""
        if self._context is None:
            raise LockNotHeld(f"lease on {self.key} is not attached to a runtime")
        try:
            return await self._context.db.check_fencing_token(self.key, self.token)
        except StaleFencingToken:
            return False

    def _grace(self) -> float:
        return self._context.timing.shutdown_timeout if self._context is not None else 10.0


async def _shielded_end(connection: asyncpg.Connection, end: Callable[[], Awaitable[None]], grace: float) -> bool:
    """Commit or roll back whatever happens to the caller (a cancelled lease, shutdown). A query
    the cancellation interrupted may still be cancelling on the connection: retry briefly. If it
    cannot be done in time the connection is closed, which ends the transaction in the database
    (releasing its locks): a lost lease never leaves a transaction open. False in that case."""
    # A cancelled query still being cancelled: "another operation is in progress"; anything else ends it.
    retrying = tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception(lambda exc: isinstance(exc, asyncpg.InterfaceError)
                                          and not connection.is_closed() and "in progress" in str(exc)),
        wait=tenacity.wait_fixed(0.01), sleep=anyio.sleep, reraise=True)
    with anyio.CancelScope(shield=True):
        with anyio.move_on_after(grace):
            try:
                async for attempt in retrying:
                    with attempt:
                        await end()
                return True
            except (asyncpg.InterfaceError, asyncpg.PostgresError, OSError) as exc:
                log.warning("ending a fenced transaction failed: %s; closing its connection", exc)
    connection.terminate()
    return False


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


# Longest a single acquire call waits in the database for the lock row (a previous holder's fencing
# transaction) when the caller waits forever: the call returns, and the loop retries.
_MAX_CALL_WAIT = 5.0


def _backoff(tries: int) -> float:
    """Seconds before try ``tries + 1``: random up to 20 ms doubling per try, at most 1 s."""
    return random.uniform(0.0, min(1.0, 0.02 * 2.0 ** min(tries - 1, 10)))


class Locks:
    """One runtime's leases: acquired (woken by release notifications through ``waiters``), kept
    renewed while held, released on exit, and at shutdown any that are still held."""

    def __init__(self, context: RuntimeContext, waiters: LockWaiters) -> None:
        self._context = context
        self._waiters = waiters
        self._held: set[Lease] = set()

    async def acquire(self, key: str, *, ttl: float, wait: float | None) -> Lease | None:
        """Take the lease, waiting up to ``wait`` seconds (None: forever, 0: one try).
        Each call waits in the database at most what is left of ``wait`` (p_wait_ms). Between tries a
        waiter sleeps until a release notification, the holder's remaining lease, or a bounded
        exponential backoff with jitter, whichever comes first."""
        # (A plain loop: most acquires succeed at the first call, and building a retry policy on
        # every one cost more client CPU than the call's own decoding.)
        started = anyio.current_time()
        deadline = None if wait is None else started + wait
        lease_id = uuid.uuid4()
        tries = 0
        while True:
            tries += 1
            released = self._waiters.event(key)  # (before the call: a release during it is not missed)
            outcome = await self._try(key, lease_id, ttl, started, deadline)
            if isinstance(outcome, Lease):
                return outcome
            now = anyio.current_time()
            if deadline is not None and now >= deadline:
                return None
            seconds = _backoff(tries)
            if outcome is not None:  # a refusal: no longer than the holder's lease has left
                seconds = min(seconds, max(outcome.ttl_ms / 1000, 0.001))
            if deadline is not None:
                seconds = min(seconds, max(deadline - now, 0.0))
            with anyio.move_on_after(seconds):
                await released.wait()

    async def _try(self, key: str, lease_id: uuid.UUID, ttl: float, started: float,
                   deadline: float | None) -> Lease | LockGrant | None:
        """One call: the lease, or the refusal (None: the connection failed)."""
        context = self._context
        call_started = anyio.current_time()
        # At most half the TTL too: the lease's time on this holder's clock runs from the call's start.
        call_wait = min(_MAX_CALL_WAIT, ttl / 2)
        if deadline is not None:
            call_wait = min(max(deadline - call_started, 0.0), call_wait)
        try:
            grant = await context.db.acquire_lock(context.agent_id, key, lease_id, int(ttl * 1000),
                                                  wait_ms=int(call_wait * 1000))
        except ConnectionLost as exc:
            log.warning("acquiring %s: %s; retrying", key, exc)
            return None
        if not grant.acquired or grant.token is None:
            return grant
        # One figure per agent, not per key (keys are many: a series each would not scale).
        context.metrics.observe("lock.wait_ms", (anyio.current_time() - started) * 1000)
        # The database's TTL started during the call, so after call_started: this is never later.
        return Lease(key, grant.token, lease_id, ttl, grant.expires_at, _context=context,
                     _deadline=call_started + ttl)

    @asynccontextmanager
    async def hold(self, key: str, *, ttl: float, wait: float | None,
                   raise_if_unavailable: bool = True) -> AsyncIterator[Lease | None]:
        lease = await self.acquire(key, ttl=ttl, wait=wait)
        if lease is None:
            if raise_if_unavailable:
                raise LockTimeout(f"lock {key!r} not acquired within {wait}s")
            yield None
            return
        self._held.add(lease)
        renewer = anyio.CancelScope()
        try:
            # The renewer runs in the runtime's task group; the body runs in a scope it may cancel,
            # whose deadline is when the lease runs out on this process's clock.
            with anyio.CancelScope(deadline=lease._deadline) as body:
                self._context.tasks.start_soon(_run_in_scope, renewer, _keep_renewed, self._context, lease, body)
                yield lease
            if body.cancelled_caught and anyio.current_time() >= lease._deadline:
                lease.lost = True
                log.error("lock %s (token %s) ran out on this holder's clock; the block was cancelled",
                          key, lease.token)
        finally:
            renewer.cancel()
            self._held.discard(lease)
            await self.release(lease)  # (refused harmlessly when the lease is gone already)
        if lease.lost:
            raise LockLost(f"lock {key!r} was lost while held (token {lease.token}); the block was cancelled")

    async def release(self, lease: Lease) -> None:
        context = self._context
        with anyio.CancelScope(shield=True), anyio.move_on_after(context.timing.shutdown_timeout):
            try:
                await context.db.release_lock(context.agent_id, lease.key, lease.lease_id)
            except AgentRuntimeError as exc:
                log.warning("releasing %s: %s (it will expire in %.1fs)", lease.key, exc, lease.ttl)

    async def release_all(self) -> None:
        """At shutdown: the leases still held (normally released by their own blocks)."""
        for lease in list(self._held):
            await self.release(lease)


async def _keep_renewed(context: RuntimeContext, lease: Lease, body: anyio.CancelScope) -> None:
    """Renew at a third of the TTL. Each success moves the body's deadline to the TTL after the
    start of that renewal (the block is cancelled when it passes, renewal or not). If the lease is
    gone, mark it lost and cancel the protected block: the holder never silently runs on."""
    # Renewed when two thirds of the TTL are left (at once after an acquire that waited long). Most
    # holds end before that: nothing more is built for them.
    await anyio.sleep(max(lease.remaining() - lease.ttl * 2 / 3, 0.0))
    db = context.db
    # A failed renewal is tried again soon while the lease may still be ours (the body's deadline
    # ends the block otherwise); a lease that is gone is not.
    retrying = tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception(lambda exc: isinstance(exc, AgentRuntimeError)
                                          and not isinstance(exc, LockNotHeld)),
        wait=tenacity.wait_fixed(min(lease.ttl / 10, 0.5)), sleep=anyio.sleep, reraise=True,
        before_sleep=lambda state: log.warning("renewing %s: %s; retrying", lease.key,
                                               state.outcome.exception() if state.outcome else None))
    try:
        while True:
            async for attempt in retrying:
                with attempt:
                    started = anyio.current_time()
                    grant = await db.renew_lock(context.agent_id, lease.key, lease.lease_id, int(lease.ttl * 1000))
            body.deadline = lease._renewed(started, grant.expires_at)
            await anyio.sleep(lease.ttl / 3)
    except LockNotHeld:
        pass
    lease.lost = True
    log.error("lost lock %s (token %s)", lease.key, lease.token)
    body.cancel()


async def _run_in_scope(scope: anyio.CancelScope, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
    with scope:
        await fn(*args)
