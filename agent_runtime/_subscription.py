"""Subscriptions: durable, at-least-once delivery from one channel to this agent.

Wake-ups are hints; the fetch (broadcast cursor) or claim (queue, inbox) decides what arrives.
A subscriber fetches in batches and falls back to a slow safety poll, so a lost notification
costs latency, never a message."""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
import msgspec

from ._durations import required_ms, to_ms
from .errors import AgentRuntimeError, ConnectionLost, InvalidPayload
from .models import ChannelKind, NackResult, RawMessage

if TYPE_CHECKING:
    from .runtime import AgentRuntime

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class Message(Generic[T]):
    """A delivered message. Acknowledge it with :meth:`ack` once handled, or :meth:`nack` to have
    it redelivered (with backoff) until the channel's max attempts send it to the dead letters.
    A message neither acked nor nacked is redelivered after its visibility timeout (queues) or on
    the next fetch (broadcast, whose acks are cumulative: acking a message acks those before it)."""

    __slots__ = ("_done", "_sub", "payload", "raw")

    def __init__(self, sub: Subscription[T], raw: RawMessage, payload: T) -> None:
        self._sub = sub
        self.raw = raw
        self.payload = payload
        self._done = False

    @property
    def id(self) -> int:
        return self.raw.id

    @property
    def channel(self) -> str:
        return self.raw.channel

    @property
    def sender_id(self) -> str:
        return self.raw.sender_id

    @property
    def headers(self) -> dict[str, Any]:
        return self.raw.headers

    @property
    def attempts(self) -> int:
        return self.raw.attempts

    @property
    def correlation_id(self) -> str | None:
        return self.raw.correlation_id

    async def ack(self) -> None:
        """Mark handled. Acks are batched and written before the next fetch (and on exit)."""
        if not self._done:
            self._done = True
            self._sub._pending_acks.append(self.raw)

    async def nack(self, *, delay: float | None = None, reason: str | None = None, dead: bool = False) -> NackResult:
        """Have it redelivered after ``delay`` seconds (default: exponential backoff by attempt),
        or send it to the dead letters at once with ``dead=True``."""
        if self._done:
            return NackResult("ignored", self.attempts)
        self._done = True
        return await self._sub._nack(self.raw, delay=delay, reason=reason, dead=dead)

    async def reply(self, payload: Any) -> None:
        """Answer a request: sends ``payload`` to the requester's inbox with this correlation id."""
        await self._sub._runtime._reply(self.raw, payload)

    def __repr__(self) -> str:
        return (f"Message(channel={self.channel!r}, seq={self.raw.seq}, sender={self.sender_id!r}, "
                f"attempts={self.attempts})")


class Subscription(Generic[T]):
    """``async with rt.subscribe("tasks") as sub: async for msg in sub: ...``"""

    def __init__(self, runtime: AgentRuntime, channel: str, kind: ChannelKind, *, payload_type: type[T] | None,
                 batch_size: int, visibility: float | None, start: str, poll_interval: float) -> None:
        self._runtime = runtime
        self.channel = channel
        self.kind = kind
        self._type = payload_type
        self._batch_size = batch_size
        self._visibility_ms = to_ms(visibility, "visibility_timeout")
        self._start = start
        self._poll_interval = poll_interval
        self._buffer: deque[RawMessage] = deque()
        self._pending_acks: list[RawMessage] = []
        self._wake = anyio.Event()
        self._fetching = anyio.Lock()  # several handler tasks may consume one subscription
        self._closed = False

    # Wake-ups (called from the runtime's event dispatch; never blocks)
    def wake(self) -> None:
        self._wake.set()

    async def __aenter__(self) -> Subscription[T]:
        await self._runtime._open_subscription(self)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop: write pending acks, hand back claimed messages not yet yielded."""
        if self._closed:
            return
        self._closed = True
        self._runtime._close_subscription(self)
        with anyio.CancelScope(shield=True), anyio.move_on_after(self._runtime.shutdown_timeout):
            try:
                await self._flush_acks()
                if self.kind != "broadcast":
                    db = self._runtime._require_db()
                    for raw in self._buffer:  # never handed out: not a failed attempt
                        await db.nack(self._runtime.agent_id, raw.id, delay_ms=0, reason="subscriber closed",
                                      release=True)
                self._buffer.clear()
            except AgentRuntimeError as exc:
                log.warning("closing subscription to %s: %s (messages will be redelivered)", self.channel, exc)

    def __aiter__(self) -> Subscription[T]:
        return self

    async def __anext__(self) -> Message[T]:
        while True:
            if self._closed or self._runtime._stopping.is_set():
                raise StopAsyncIteration
            if not self._buffer:
                await self._refill()
                continue
            raw = self._buffer.popleft()
            message = await self._decode(raw)
            if message is not None:
                return message

    async def _decode(self, raw: RawMessage) -> Message[T] | None:
        metrics = self._runtime.metrics
        metrics.increment("messages.received", channel=self.channel)
        metrics.observe("bytes.received", raw.size_bytes, channel=self.channel)
        if raw.created_at is not None:
            latency = (datetime.now(UTC) - raw.created_at).total_seconds() * 1000
            metrics.observe("latency.end_to_end_ms", max(latency, 0.0), channel=self.channel)
        if self._type is None:
            return Message(self, raw, raw.payload)
        try:
            payload = msgspec.convert(raw.payload, self._type, strict=False)
        except (msgspec.ValidationError, TypeError) as exc:
            # An undecodable payload can never succeed: dead-letter it with the reason, keep going.
            error = InvalidPayload(f"payload of message {raw.id} on {self.channel} is not a {self._type!r}: {exc}")
            log.warning("%s", error)
            await self._nack(raw, delay=0, reason=str(error), dead=True)
            return None
        return Message(self, raw, payload)

    async def _refill(self) -> None:
        """Fetch the next batch, or wait for a wake-up (or the safety poll) if there is none.
        Pending acks ride along with the fetch (one round trip, one transaction). Consumers of one
        subscription fetch one at a time and wait for news on the same event."""
        async with self._fetching:
            if self._buffer:
                return  # another consumer fetched meanwhile
            if self._wake.is_set():  # (a wake-up from now on is news the fetch below may miss)
                self._wake = anyio.Event()
            wake = self._wake
            batch: list[RawMessage] | None = None
            try:
                # Shielded (and bounded): a batch the database has claimed must reach the buffer, to
                # be handled or handed back by close(), not vanish with a call cancelled by shutdown
                # and sit in flight until its visibility timeout. Likewise acks being written.
                with anyio.CancelScope(shield=True), anyio.move_on_after(self._runtime.shutdown_timeout):
                    batch = await self._with_acks(self._fetch)
            except ConnectionLost as exc:
                log.warning("fetching from %s: %s; retrying", self.channel, exc)
                await self._runtime._sleep_unless_stopping(random.uniform(0.2, 1.0))
                return
            if batch is None:
                return  # the database did not answer in time: try again
            if batch:
                self._buffer.extend(batch)
                wake.set()  # consumers waiting for news: here it is
                return
        if not self._runtime._stopping.is_set():  # shutdown wakes every subscription
            with anyio.move_on_after(self._poll_interval):
                await wake.wait()

    async def _fetch(self, ack_ids: list[int] | None) -> list[RawMessage]:
        db = self._runtime._require_db()
        if self.kind == "broadcast":
            return await db.fetch(self._runtime.agent_id, self.channel, self._batch_size, ack_ids)
        return await db.claim(self._runtime.agent_id, self.channel, self._batch_size, self._visibility_ms, ack_ids)

    async def _flush_acks(self) -> None:
        if self._pending_acks:
            db = self._runtime._require_db()
            await self._with_acks(lambda ids: db.ack(self._runtime.agent_id, ids or []))

    async def _with_acks(self, call: Callable[[list[int] | None], Awaitable[R]]) -> R:
        """``call(ack_ids)`` writes the pending acks (None: there are none) in its transaction. If it
        fails or is cancelled they are kept for the next time."""
        pending, self._pending_acks = self._pending_acks, []
        ids = None
        if pending:
            if self.kind == "broadcast":  # cumulative: the highest seq, and retried ones
                ids = [max(pending, key=lambda m: m.seq).id] + [m.id for m in pending if m.attempts > 1]
            else:
                ids = [m.id for m in pending]
        try:
            result = await call(ids)
        except BaseException:
            self._pending_acks[:0] = pending
            raise
        if pending:
            self._runtime.metrics.increment("messages.acked", len(pending), channel=self.channel)
        return result

    async def _nack(self, raw: RawMessage, *, delay: float | None, reason: str | None, dead: bool) -> NackResult:
        # Everything acked before this message must be written first (broadcast acks are cumulative
        # and a nack rewinds the cursor to just before this message).
        await self._flush_acks()
        if delay is None:
            delay = self._runtime.retry_delay(raw.attempts)
        result = await self._runtime._require_db().nack(
            self._runtime.agent_id, raw.id, delay_ms=required_ms(delay, "delay"), reason=reason, dead=dead)
        metric = "messages.dead" if result.state == "dead" else "messages.nacked"
        self._runtime.metrics.increment(metric, channel=self.channel)
        if self.kind == "broadcast":
            # The cursor moved back: whatever was fetched after this message comes again in order.
            self._buffer.clear()
        if result.state == "retry":
            self._runtime._wake_later(self, delay)
        return result
