"""Subscriptions: durable, at-least-once delivery from one channel to this agent.

Wake-ups are hints; the fetch (broadcast cursor) or claim (queue, inbox) decides what arrives.
A subscriber fetches in batches; the runtime's one safety poll wakes the subscriptions that have
not fetched for a while, so a lost notification costs latency, never a message.

One shortcut, on broadcast channels only: a wake-up may carry the new messages themselves (few and
small ones; see the migration ``messages_in_wakeups``), and a subscription may deliver them without
a fetch. It does so only when they continue exactly where it stands, so that a fetch made now would
have returned them first: its frontier (the seq of the last message it took in order, from a
fetch, an earlier wake-up, or the cursor ``subscribe_channel`` reported) is the first one's seq - 1,
no fetch is owed (its first catch-up, a plain hint, a full batch), and what it handed out is
settled (a message neither acked nor nacked is fetched again; a nack rewinds the cursor, and the
frontier is unknown until the next fetch). Wake-ups that arrive during a fetch are decided by its
answer. Anything else (a gap, a lost or repeated wake-up, a retry, a delayed or big batch) is a
plain wake-up: fetch. Such a subscriber's acks ride along with its next fetch, which comes within
``ACK_FLUSH_DELAY`` (or as soon as a batch of them is pending); that fetch also picks up what no
wake-up announces (replayed dead letters)."""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import anyio
import anyio.lowlevel
import msgspec
import tenacity

from ..errors import AgentRuntimeError, InvalidPayload
from ..models import ChannelKind, NackResult, RawMessage
from ..transports.wire import inbox_topic
from ._context import RuntimeContext
from ._db import MessageClass
from ._durations import required_ms, to_ms
from ._publish import reply

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class Message(Generic[T]):
    """A delivered message. Acknowledge it with :meth:`ack` once handled, or :meth:`nack` to have
    it redelivered (with backoff) until the channel's max attempts send it to the dead letters.
    A message neither acked nor nacked is redelivered after its visibility timeout (queues) or on
    the next fetch (broadcast, whose acks are cumulative: acking a message acks those before it)."""

    __slots__ = ("_done", "_round", "_sub", "payload", "raw")

    def __init__(self, sub: Subscription[T], raw: RawMessage, payload: T) -> None:
        self._sub = sub
        self.raw = raw
        self.payload = payload
        self._done = False
        self._round = sub._round

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
            self._sub._acked(self)

    def acked_elsewhere(self) -> None:
        """Its ack was written by another call (a reply that acks its request in one transaction):
        settled, counted as acked, no ack of its own to write."""
        if not self._done:
            self._done = True
            self._sub._context.metrics.increment("messages.acked", channel=self.channel)
            self._sub._settled(self)

    async def nack(self, *, delay: float | None = None, reason: str | None = None, dead: bool = False) -> NackResult:
        """Have it redelivered after ``delay`` seconds (default: exponential backoff by attempt),
        or send it to the dead letters at once with ``dead=True``."""
        if self._done:
            return NackResult("ignored", self.attempts)
        self._done = True
        try:
            return await self._sub._nack(self.raw, delay=delay, reason=reason, dead=dead)
        finally:
            self._sub._settled(self)

    async def reply(self, payload: Any) -> None:
        """Answer a request: sends ``payload`` to the requester's inbox with this correlation id."""
        await reply(self._sub._context, self.raw, payload)

    def __repr__(self) -> str:
        return (f"Message(channel={self.channel!r}, seq={self.raw.seq}, sender={self.sender_id!r}, "
                f"attempts={self.attempts})")


# Acks of messages taken from wake-ups wait at most this long for a fetch to carry them.
ACK_FLUSH_DELAY = 0.1
# Messages taken from wake-ups while a subscription's buffer is full are left to a fetch.
_MIN_BUFFER = 16


class Subscription(Generic[T]):
    """``async with rt.subscribe("tasks") as sub: async for msg in sub: ...``"""

    def __init__(self, context: RuntimeContext, channel: str, kind: ChannelKind, *, payload_type: type[T] | None,
                 batch_size: int, visibility: float | None, start: str,
                 classes: Sequence[MessageClass] | None = None) -> None:
        self._context = context
        self.channel = channel
        self.kind = kind
        # Queues and inboxes: claim only these classes of message (None: all); may change while open.
        self.classes: tuple[MessageClass, ...] | None = None if classes is None else tuple(classes)
        # Queues and inboxes: claim at most this many at a time (None: batch_size); may change while open.
        self.claim_limit: int | None = None
        self._asked = batch_size  # how many the last fetch or claim asked for
        self._type = payload_type
        self._batch_size = batch_size
        self._visibility_ms = to_ms(visibility, "visibility_timeout")
        self._start = start
        self._last_fetch = anyio.current_time()  # when a fetch last answered (the runtime's safety poll reads it)
        self._buffer: deque[RawMessage] = deque()
        self._pending_acks: list[RawMessage] = []
        self._acks_since = 0.0  # when the oldest pending ack was made
        self._wake = anyio.Event()
        self._retry_at: float | None = None  # the one retry timer: when the earliest nacked message is due
        self._waiting: set[anyio.CancelScope] = set()  # consumers' waits for news (their deadlines)
        self._fetching = anyio.Lock()  # several handler tasks may consume one subscription
        self._closed = False
        self._pausing: anyio.CancelScope | None = None  # a backoff between retried fetches
        # Broadcast bookkeeping for messages taken straight from wake-ups (see the module doc).
        self._news = True  # a fetch is owed: the database may have what no wake-up brought
        self._frontier: int | None = None  # seq of the last message taken in order; None: unknown
        self._round = 0  # counts fetches: messages handed out before the last one are its business
        self._unsettled = 0  # handed out in this round, neither acked nor nacked
        self._in_fetch = False
        # Carried messages that arrived during a fetch, or while a handed-out message was unsettled.
        self._offered: list[tuple[int, list[RawMessage]]] = []
        self.taken_from_wakeups = 0  # messages delivered without a fetch (diagnostics, tests)
        self._received = context.metrics.received

    # Wake-ups (called from the runtime's event dispatch; never block)
    def poll_due(self, now: float, interval: float) -> bool:
        """For the runtime's safety poll: nothing fetched for ``interval`` seconds, and no fetch owed yet."""
        return not self._news and not self._closed and now - self._last_fetch >= interval

    def wake(self) -> None:
        """News: fetch (or claim)."""
        self._news = True
        self._wake.set()

    def offer(self, first: int, messages: list[RawMessage]) -> None:
        """A broadcast wake-up carrying its messages (seqs ``first``, ``first + 1``...): taken if
        they continue exactly where this subscription stands, otherwise a plain wake-up. An inbox
        wake-up carries replies only: a subscription that claims replies takes them (the requester
        is answered without a claim; the ack of a reply never claimed is written all the same), and
        anything else is a plain wake-up. A reply that is also claimed meanwhile comes twice: a
        reply nobody waits for any more is dropped (and acked) by the runtime."""
        if self.kind == "direct" and not self._closed and (self.classes is None or "reply" in self.classes) \
                and all(m.correlation_id is not None and m.reply_to is None for m in messages) \
                and len(self._buffer) + len(messages) <= max(self._batch_size, _MIN_BUFFER):
            self._buffer.extend(messages)
            self.taken_from_wakeups += len(messages)
            self._wake.set()  # (messages in the buffer: no claim owed)
        elif self.kind != "broadcast":
            self.wake()
        elif self._in_fetch or (self._unsettled and not self._buffer):
            # Decided once the fetch has answered, or once what was handed out is settled (if it
            # is not, the next fetch delivers it again, and these after it).
            self._offered.append((first, messages))
            if len(self._offered) > _MIN_BUFFER:
                self._offered.clear()
                self.wake()
        else:
            self._take_or_wake(first, messages)

    def taken_elsewhere(self, messages: Sequence[RawMessage]) -> bool:
        """Messages of this queue or inbox that its owner took straight from a verified wake-up
        (replies, handed to their waiting requests without a hop through this buffer): received
        and acked, their acks riding along with the next claim as any ack does. False if this
        subscription cannot take them (closed, or broadcast: the caller leaves them to offer())."""
        if self._closed or self.kind == "broadcast":
            return False
        for raw in messages:
            self._received(self.channel, raw.size_bytes, raw.created_at)
        if not self._pending_acks:  # (a consumer waiting for news learns when their flush is due)
            self._acks_since = anyio.current_time()
            self._wake.set()
        self._pending_acks.extend(messages)
        self.taken_from_wakeups += len(messages)
        return True

    def _take_or_wake(self, first: int, messages: list[RawMessage]) -> None:
        if self._take(first, messages):
            self._wake.set()  # (messages in the buffer: no fetch owed)
        else:
            self.wake()

    def _take(self, first: int, messages: list[RawMessage]) -> bool:
        """Take what continues the frontier; False if a fetch is needed instead (one is owed
        already, or the pending acks are due to be written)."""
        frontier = self._frontier
        if self._closed or frontier is None or not messages or self._news or self._acks_due():
            return False
        last = first + len(messages) - 1
        if last <= frontier:
            return True  # already here (fetched first)
        if first > frontier + 1:
            return False  # a gap: something in between was missed
        fresh = messages[frontier + 1 - first:]
        if len(self._buffer) + len(fresh) > max(self._batch_size, _MIN_BUFFER):
            return False  # a slow consumer: its next fetch brings them
        self._buffer.extend(fresh)
        self._frontier = last
        self.taken_from_wakeups += len(fresh)
        return True

    def _take_offered(self) -> None:
        offered, self._offered = self._offered, []
        for first, messages in offered:
            self._take_or_wake(first, messages)

    def _acked(self, message: Message[T]) -> None:
        """``message`` was acked: its ack waits for the next fetch (or close)."""
        if not self._pending_acks:
            self._acks_since = anyio.current_time()
        self._pending_acks.append(message.raw)
        self._settled(message)

    def _settled(self, message: Message[T]) -> None:
        """``message`` was acked or nacked (its nack written)."""
        if message._round == self._round:
            self._unsettled -= 1
            if not self._unsettled and self._offered and not self._in_fetch:
                self._take_offered()

    def _acks_due(self) -> bool:
        """Pending acks wait for a fetch at most ACK_FLUSH_DELAY, and at most a batch of them."""
        return bool(self._pending_acks) and (
            len(self._pending_acks) >= self._batch_size
            or anyio.current_time() - self._acks_since >= ACK_FLUSH_DELAY)

    def _fetch_needed(self) -> bool:
        """Fetch or claim only with a reason: news (a wake-up, a full batch, a retry due, the safety
        poll), or acks due. A queue or inbox whose last claim came back short has nothing more to
        claim until a wake-up says so: an empty claim after every delivery only cost a commit. A
        broadcast subscriber also fetches while its frontier is unknown or what it handed out is
        unsettled. Pending acks are carried by a fetch within ACK_FLUSH_DELAY (or at once when a
        batch is pending)."""
        return (self._news or self._acks_due()
                or (self.kind == "broadcast" and (self._frontier is None or self._unsettled > 0)))

    async def __aenter__(self) -> Subscription[T]:
        context = self._context
        if self.kind != "queue":  # (once; until then wake-ups are plain hints; inboxes: carried replies)
            await context.carried.load_key(context.db)
        state = await context.db.subscribe(context.agent_id, self.channel, self._start)
        if self.kind == "broadcast" and isinstance(state.get("cursor"), int):
            self._frontier = state["cursor"]  # where wake-ups carrying messages may continue from
        await context.subscriptions.add(self)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop: write pending acks, hand back claimed messages not yet yielded."""
        if self._closed:
            return
        self._closed = True
        self._context.subscriptions.discard(self)
        self._wake.set()  # consumers waiting for news (in other tasks) see it closed now
        if self._pausing is not None:
            self._pausing.cancel()
        with anyio.CancelScope(shield=True), anyio.move_on_after(self._context.timing.shutdown_timeout):
            try:
                await self._flush_acks()
                if self.kind != "broadcast":
                    db = self._context.db
                    for raw in self._buffer:  # never handed out: not a failed attempt
                        await db.nack(self._context.agent_id, raw.id, delay_ms=0, reason="subscriber closed",
                                      release=True)
                self._buffer.clear()
            except AgentRuntimeError as exc:
                log.warning("closing subscription to %s: %s (messages will be redelivered)", self.channel, exc)

    def __aiter__(self) -> Subscription[T]:
        return self

    async def __anext__(self) -> Message[T]:
        # The per-message path: a message already buffered is handed out without suspending.
        buffer = self._buffer
        stopping = self._context.stopping
        while True:
            if self._closed or stopping.is_set():
                raise StopAsyncIteration
            if not buffer:
                await self._refill()
                continue
            raw = buffer.popleft()
            self._received(self.channel, raw.size_bytes, raw.created_at)
            if self._type is None:
                payload = raw.payload
            else:
                try:
                    payload = msgspec.convert(raw.payload, self._type, strict=False)
                except Exception as exc:  # (a type's own checks, its __post_init__, may raise anything)
                    # An undecodable payload can never succeed: dead-letter it with the reason, keep going.
                    error = InvalidPayload(
                        f"payload of message {raw.id} on {self.channel} is not a {self._type!r}: {exc}")
                    log.warning("%s", error)
                    try:
                        await self._nack(raw, delay=0, reason=str(error), dead=True)
                    except AgentRuntimeError as exc:  # (not the consumer's failure: it comes again)
                        self._context.metrics.increment("errors.nack", channel=self.channel)
                        log.warning("dead-lettering message %s failed (%s): it will be redelivered", raw.id, exc)
                    continue
            self._unsettled += 1  # until acked or nacked
            return Message(self, raw, payload)

    async def _refill(self) -> None:
        """Fetch the next batch, or wait for a wake-up (or the safety poll) if there is none.
        Pending acks ride along with the fetch (one round trip, one transaction). Consumers of one
        subscription fetch one at a time and wait for news on the same event."""
        # (The lock taken without the yield to the event loop anyio's acquire makes: a
        # cancellation is still seen here, and the fetch below suspends anyway.)
        await anyio.lowlevel.checkpoint_if_cancelled()
        fetching = self._fetching
        try:
            fetching.acquire_nowait()
        except anyio.WouldBlock:
            await fetching.acquire()
        try:
            if self._buffer:
                return  # another consumer fetched meanwhile
            if self._wake.is_set():  # (a wake-up from now on is news the fetch below may miss)
                self._wake = anyio.Event()
            wake = self._wake
            timeout = math.inf  # news comes from wake-ups, and from the runtime's one safety poll
            if self._retry_at is not None:
                timeout = min(timeout, max(self._retry_at - anyio.current_time(), 0.0))
            if not self._fetch_needed():
                if self._pending_acks:  # (then the fetch that writes them)
                    timeout = min(self._acks_since + ACK_FLUSH_DELAY - anyio.current_time(), timeout)
            else:
                batch = await self._fetch_retrying()
                if batch is None:
                    self._news = True
                    return  # the database did not answer in time (or this is closing): try again
                if self._buffer:
                    wake.set()  # consumers waiting for news: here it is
                    return
        finally:
            fetching.release()
        if not self._context.stopping.is_set():  # shutdown wakes every subscription
            with anyio.move_on_after(timeout) as waited:
                self._waiting.add(waited)
                try:
                    await wake.wait()
                finally:
                    self._waiting.discard(waited)
            if waited.cancelled_caught:
                self._news = True  # a retry or the acks' flush is due
            if self._retry_at is not None and self._retry_at <= anyio.current_time():
                self._retry_at = None
                self._news = True

    async def _fetch_retrying(self) -> list[RawMessage] | None:
        """One fetch (or claim), with what the database may fail retryably (a lost connection, a
        deadlock or serialization failure: ``Conflict``) retried here with backoff, counted
        (``errors.subscription``) and logged, so that it never reaches the consumer's loop; what
        it refuses (no such channel, not allowed...) raises. None: no answer in time, or the
        subscription closed (or the runtime began to stop) while retrying."""
        try:  # the usual case, outside the retry machinery (it costs about 15 us a call)
            return await self._fetch_once()
        except AgentRuntimeError as exc:
            if not exc.retryable:
                raise
            failure: AgentRuntimeError | None = exc
        context = self._context
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(lambda exc: isinstance(exc, AgentRuntimeError) and exc.retryable),
            wait=tenacity.wait_random_exponential(multiplier=context.retry.base_delay, max=context.retry.max_delay),
            stop=lambda _: self._closed or context.stopping.is_set(),
            sleep=self._pause, before_sleep=self._retrying, reraise=True)
        try:
            async for attempt in retrying:
                with attempt:
                    if failure is not None:  # the first attempt's: tenacity backs off before the next
                        first, failure = failure, None
                        raise first
                    return await self._fetch_once()
        except AgentRuntimeError as exc:
            if exc.retryable and (self._closed or context.stopping.is_set()):
                return None
            raise
        raise AssertionError("unreachable: tenacity returns the answer or re-raises the last failure")

    async def _pause(self, seconds: float) -> None:
        """The backoff before a retried fetch, cut short by close() or the runtime stopping."""
        with anyio.move_on_after(seconds) as self._pausing:
            await self._context.stopping.wait()
        self._pausing = None

    def _retrying(self, state: tenacity.RetryCallState) -> None:
        self._context.metrics.increment("errors.subscription", channel=self.channel)
        log.warning("fetching from %s: %s; retrying", self.channel,
                    state.outcome.exception() if state.outcome else None)

    async def _fetch_once(self) -> list[RawMessage] | None:
        """Fetch (or claim) with the pending acks, and take the answer (None: none in time)."""
        self._news = False
        batch: list[RawMessage] | None = None
        self._in_fetch = True
        try:
            # Shielded (and bounded): a batch the database has claimed must reach the buffer, to
            # be handled or handed back by close(), not vanish with a call cancelled by shutdown
            # and sit in flight until its visibility timeout. Likewise acks being written.
            with anyio.move_on_after(self._context.timing.shutdown_timeout, shield=True):
                batch = await self._with_acks(self._fetch)
        except BaseException:
            self._news = True
            self._after_fetch(None)
            raise
        self._after_fetch(batch)
        return batch

    def _after_fetch(self, batch: list[RawMessage] | None) -> None:
        """A fetch (or claim) answered, or failed: take its batch, then the wake-ups that came meanwhile."""
        self._in_fetch = False
        self._last_fetch = anyio.current_time()
        if batch is None:
            if self._offered:
                self._offered.clear()
                self.wake()
            return
        # What was handed out before is settled by this fetch: acked (cumulatively), or fetched again.
        self._round += 1
        self._unsettled = 0
        if batch:
            self._buffer.extend(batch)
            if len(batch) >= self._asked:  # (what that claim asked for: the limit may have grown since)
                self._news = True  # there may be more
            if self.kind == "broadcast":
                # The highest seq, not the last message's: replayed dead letters come first, and
                # have lower seqs than the cursor.
                top = max(m.seq for m in batch)
                self._frontier = top if self._frontier is None else max(self._frontier, top)
        self._take_offered()

    async def _fetch(self, ack_ids: list[int] | None) -> list[RawMessage]:
        db = self._context.db
        if self.kind == "broadcast":
            return await db.fetch(self._context.agent_id, self.channel, self._batch_size, ack_ids)
        self._asked = self._claim_size()
        if self.kind == "direct" and self.channel == inbox_topic(self._context.agent_id):
            # (this agent's own inbox: a claim that need not wait for its WAL flush, see claim_inbox)
            return await db.claim_inbox(self._context.agent_id, self._asked, self._visibility_ms, ack_ids,
                                        self.classes)
        return await db.claim(self._context.agent_id, self.channel, self._asked, self._visibility_ms, ack_ids,
                              self.classes)

    def _claim_size(self) -> int:
        if self.kind == "broadcast" or self.claim_limit is None:
            return self._batch_size
        return max(1, min(self.claim_limit, self._batch_size))

    async def _flush_acks(self) -> None:
        if self._pending_acks:
            db = self._context.db
            await self._with_acks(lambda ids: db.ack(self._context.agent_id, ids or [], self.channel))

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
            self._context.metrics.increment("messages.acked", len(pending), channel=self.channel)
        return result

    async def _nack(self, raw: RawMessage, *, delay: float | None, reason: str | None, dead: bool) -> NackResult:
        # Everything acked before this message must be written first (broadcast acks are cumulative
        # and a nack rewinds the cursor to just before this message).
        if delay is None:
            delay = self._context.retry.delay(raw.attempts)
        delay_ms = required_ms(delay, "delay")
        try:
            await self._flush_acks()
            result = await self._context.db.nack(
                self._context.agent_id, raw.id, delay_ms=delay_ms, reason=reason, dead=dead)
        except AgentRuntimeError:
            if self.kind == "broadcast":
                # Not written: nothing after this message may be acked (acks are cumulative), so
                # everything from the cursor on comes again from a fetch. Queues: the claim times out.
                self._buffer.clear()
                self._frontier = None
                self.wake()
            raise
        metric = "messages.dead" if result.state == "dead" else "messages.nacked"
        self._context.metrics.increment(metric, channel=self.channel)
        if self.kind == "broadcast":
            # The cursor moved back: whatever was fetched after this message comes again in order,
            # from a fetch (where the cursor now stands is the database's business).
            self._buffer.clear()
            self._frontier = None
            self.wake()
            if result.state == "retry" and delay > 0:
                self._retry_in(delay)
        elif result.state == "retry":
            self._retry_in(delay)
        return result

    def _retry_in(self, delay: float) -> None:
        """Look again when a nacked message is due: one timer per subscription (the deadline its
        consumers wait for news with), however many messages were nacked."""
        due = anyio.current_time() + delay
        if self._retry_at is None or due < self._retry_at:
            self._retry_at = due
            for scope in self._waiting:  # consumers waiting for news wait no longer than that
                scope.deadline = min(scope.deadline, due)
