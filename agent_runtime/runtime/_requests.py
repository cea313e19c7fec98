"""This agent's inbox: requests and replies, routed before any buffer the application reads.

The control subscription claims requests and replies only (never plain messages): a reply
completes its pending ``request()`` at once; a request queues for one of ``concurrency`` workers.
A claim takes no more messages than there are free workers, and while none is free, replies
only: requests beyond the capacity wait in the table, not in memory. Plain direct messages are
claimed only while ``rt.inbox()`` is read, so unread ones wait durably and never hold up a reply.
Nothing here waits on the application."""

from __future__ import annotations

import logging
import math
import uuid
from typing import Any

import anyio
import anyio.abc
import tenacity

from ..errors import (
    AgentRuntimeError,
    AgentUnavailable,
    InvalidInput,
    NotFound,
    NotMigrated,
    PermissionDenied,
    RemoteError,
    RequestTimeout,
)
from ..models import RawMessage
from ._context import RuntimeContext
from ._db import MessageClass
from ._durations import required_ms
from ._handlers import Handler, nack_quietly
from ._publish import checked_headers, checked_payload, count_sent, inbox_channel, send
from ._subscription import Message, Subscription

__all__ = ["Inbox", "Requests"]

log = logging.getLogger(__name__)

# The control subscription claims requests and replies; plain messages only for rt.inbox().
_CONTROL: tuple[MessageClass, ...] = ("request", "reply")
_REPLIES_ONLY: tuple[MessageClass, ...] = ("reply",)
# A request still unanswered after this long makes the requester look whether the agent is online.
_PRESENCE_CHECK_AFTER = 0.5


class Requests:
    """Requests this agent sends (and the replies it waits for), requests it answers (with
    ``handler``, under a capacity of ``concurrency``), and its plain inbox."""

    def __init__(self, context: RuntimeContext, *, concurrency: int, handler: Handler | None) -> None:
        self._context = context
        self.handler = handler  # (None: requests are refused with AgentUnavailable)
        self._concurrency = concurrency
        self._pending_replies: dict[str, tuple[anyio.Event, list[RawMessage]]] = {}
        # Claimed requests wait here for one of the workers (bounded by the claims: see the module doc).
        self._requests_send, self._requests_receive = anyio.create_memory_object_stream[Message[Any]](math.inf)
        self._requests_pending = 0
        self.control: Subscription[Any] | None = None  # requests and replies, while the runtime runs
        self._inbox_sub: Subscription[Any] | None = None  # plain messages, opened by the first rt.inbox() read
        self._inbox_lock = anyio.Lock()

    # ------------------------------------------------------------------ answering

    async def control_loop(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Claims this agent's requests and replies, never its plain messages (those wait in the
        table for ``rt.inbox()``): replies complete pending requests at once, requests queue for
        the request workers. Nothing here waits on the application.

        The inbox's error boundary: once started, a control subscription that fails (a conflict
        or a refusal its own retries do not cover) is logged, counted (``errors.inbox``) and
        reopened with backoff; the runtime goes on. Failing to open it at start fails the start."""
        context = self._context
        sub: Subscription[Any] | None = await self._open_control()
        task_status.started()
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(AgentRuntimeError),
            wait=tenacity.wait_random_exponential(multiplier=context.retry.base_delay, max=context.retry.max_delay),
            sleep=anyio.sleep, before_sleep=self._reopening)
        async for attempt in retrying:
            with attempt:
                if sub is None:
                    sub = await self._open_control()
                try:
                    await self._route(sub)
                finally:
                    await sub.close()  # (shielded and bounded; claimed but unread messages go back)
                    sub = None

    async def _open_control(self) -> Subscription[Any]:
        context = self._context
        sub = Subscription[Any](context, inbox_channel(context.agent_id), "direct", payload_type=None,
                                batch_size=max(16, self._concurrency), visibility=None, start="earliest")
        self._limit_intake(sub)
        await sub.__aenter__()
        self.control = sub
        return sub

    def _limit_intake(self, sub: Subscription[Any]) -> bool:
        """Claim no more requests than there are free workers (the rest wait in the table): while
        some are free, a claim takes at most that many messages (a full claim is followed by
        another at once, so replies are not held back); while none is, replies only. True if
        requests may be claimed again after a time they could not."""
        free = self._concurrency - self._requests_pending
        was_busy = sub.classes == _REPLIES_ONLY
        sub.classes = _CONTROL if free > 0 else _REPLIES_ONLY
        sub.claim_limit = free if free > 0 else None
        return was_busy and free > 0

    def _reopening(self, state: tenacity.RetryCallState) -> None:
        self._context.metrics.increment("errors.inbox")
        log.warning("the inbox of %s failed: %s; reopening", self._context.agent_id,
                    state.outcome.exception() if state.outcome else None)

    async def _route(self, sub: Subscription[Any]) -> None:
        """Until the runtime stops: replies to their waiting requests, requests to the workers."""
        context = self._context
        async for msg in sub:
            if msg.raw.reply_to is not None:
                context.in_flight.begin()
                self._requests_pending += 1
                self._limit_intake(sub)
                self._requests_send.send_nowait(msg)
            else:
                waiter = self._pending_replies.get(msg.correlation_id or "")
                if waiter is not None:
                    waiter[1].append(msg.raw)
                    waiter[0].set()
                await msg.ack()  # a late reply to a request that gave up is dropped

    def take_replies(self, channel: str, messages: list[RawMessage]) -> bool:
        """Verified replies carried by this agent's inbox wake-up (the Dispatch calls this): each
        goes straight to its waiting request, from the wake-up's callback (no hop through the
        control subscription and its task), and is acked with the inbox's next claim; a reply
        nobody waits for any more is dropped (and acked). False if they are not all replies to
        this inbox or the control subscription is not open: then it takes them as before."""
        sub = self.control
        if sub is None or channel != sub.channel \
                or not all(m.correlation_id is not None and m.reply_to is None for m in messages) \
                or not sub.taken_elsewhere(messages):
            return False
        for raw in messages:
            waiter = self._pending_replies.get(raw.correlation_id or "")
            if waiter is not None:
                waiter[1].append(raw)
                waiter[0].set()
        return True

    async def worker(self) -> None:
        """One of ``concurrency`` request workers."""
        async for msg in self._requests_receive:
            try:
                await self._answer(msg)
            finally:
                self._context.in_flight.end()
                self._requests_pending -= 1
                sub = self.control
                if sub is not None and self._limit_intake(sub):
                    sub.wake()

    async def hand_back(self) -> None:
        """At shutdown: requests claimed but never started go back to the table at once (and so
        do plain messages claimed for rt.inbox() but never read)."""
        context = self._context
        if self._inbox_sub is not None:
            await self._inbox_sub.close()
        self._requests_send.close()
        with anyio.CancelScope(shield=True), anyio.move_on_after(context.timing.shutdown_timeout):
            async for msg in self._requests_receive:
                try:  # never handed to a handler: not a failed attempt
                    await context.db.nack(context.agent_id, msg.id, delay_ms=0, reason="agent shutting down",
                                          release=True)
                except AgentRuntimeError as exc:
                    log.warning("handing back request %s: %s", msg.id, exc)
                finally:
                    context.in_flight.end()

    async def _answer(self, msg: Message[Any]) -> None:
        """Run the request handler and reply. The error boundary of one request: whatever fails
        (the handler, the reply, the database) is logged, counted and answered or retried here."""
        context = self._context
        try:
            try:
                kind, payload = await self._outcome(msg)
                acked = await self._send_reply(msg.raw, payload, kind)
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True), anyio.move_on_after(context.timing.shutdown_timeout):
                    await nack_quietly(context, msg, delay=0, reason="request handler cancelled (shutdown)")
                raise
            if acked:
                msg.acked_elsewhere()  # (in the reply's own transaction)
            else:
                await msg.ack()
        except Exception as exc:  # the reply could not be sent (the database is away...)
            context.metrics.increment("errors.request", channel=msg.channel)
            log.warning("answering request %s failed: %s; it will be redelivered", msg.id, exc)
            await nack_quietly(context, msg, reason=f"{type(exc).__name__}: {exc}")

    async def _outcome(self, msg: Message[Any]) -> tuple[str, Any]:
        """The reply to a request: ``("reply", payload)`` or ``("error", {"error", "type"})``."""
        metrics = self._context.metrics
        raw = msg.raw
        if raw.reply_to != inbox_channel(raw.sender_id) or not raw.correlation_id:
            return _error(PermissionDenied(f"a request's reply_to must be the requester's own inbox "
                                           f"({inbox_channel(raw.sender_id)}), not {raw.reply_to!r}"))
        handler = self.handler
        if handler is None:
            return _error(AgentUnavailable(f"agent {self._context.agent_id} has no request handler"))
        started = anyio.current_time()
        try:
            result = await handler(msg)
        except Exception as exc:
            metrics.increment("errors.request_handler", channel=msg.channel)
            log.exception("request handler failed on %r", msg)
            return "error", {"error": f"{type(exc).__name__}: {exc}", "type": type(exc).__name__}
        finally:
            metrics.observe("handler.time_ms", (anyio.current_time() - started) * 1000, channel=msg.channel)
        try:
            return "reply", checked_payload(result)
        except InvalidInput as exc:
            metrics.increment("errors.reply", channel=msg.channel)
            log.warning("the reply to request %s cannot be sent: %s", msg.id, exc)
            return _error(exc)

    async def _send_reply(self, request: RawMessage, payload: Any, kind: str) -> bool:
        """Send to the requester's inbox, acking the request in the same transaction: True if it
        was acked so (False: no reply was sent, or this agent no longer held the request's claim;
        the caller acks it as any message). A reply the database refuses (too large for that
        inbox) becomes an error reply; a requester that is gone gets nothing."""
        context = self._context
        destination = inbox_channel(request.sender_id)
        message = {"payload": payload, "headers": {"ar": kind}, "correlation_id": request.correlation_id}
        try:
            try:
                return await self._reply_and_ack(request, destination, message)
            except (InvalidInput, PermissionDenied) as exc:
                if kind == "error":
                    raise
                context.metrics.increment("errors.reply", channel=destination)
                log.warning("the reply to request %s was refused: %s", request.id, exc)
                kind, payload = _error(exc)
                return await self._reply_and_ack(request, destination,
                                                 {**message, "payload": payload, "headers": {"ar": kind}})
        except (NotFound, InvalidInput, PermissionDenied) as exc:
            log.warning("no reply to request %s from %s: %s", request.id, request.sender_id, exc)
            return False

    async def _reply_and_ack(self, request: RawMessage, destination: str, message: dict[str, Any]) -> bool:
        """One round trip, one commit: the reply sent, the request acked (if still held). On a
        database migrated before reply_to_request (the runtime started with migrate=False): the
        reply alone, as before it (False: the caller acks the request)."""
        context = self._context
        try:
            acked, results = await context.db.reply_to_request(context.agent_id, request.id, destination, [message])
        except NotMigrated:
            await send(context, destination, [message])
            return False
        count_sent(context, destination, results)
        return acked

    # ------------------------------------------------------------------ asking

    async def request(self, agent_id: str, payload: Any, *, timeout: float,  # noqa: ASYNC109 (the API)
                      headers: dict[str, Any] | None) -> Any:
        """See ``AgentRuntime.request``."""
        context = self._context
        timeout_ms = required_ms(timeout, "timeout")
        target = inbox_channel(agent_id)
        message = {"payload": checked_payload(payload),
                   "headers": {**(checked_headers(headers) or {}), "ar": "request"},
                   "correlation_id": str(uuid.uuid4()), "reply_to": inbox_channel(context.agent_id),
                   "ttl_ms": max(timeout_ms, 1)}
        done = anyio.Event()  # a reply arrived, or the agent is found offline
        replies: list[RawMessage] = []
        offline: list[bool] = []
        self._pending_replies[message["correlation_id"]] = (done, replies)
        try:
            await send(context, target, [message])
            with anyio.move_on_after(timeout):
                # A prompt reply costs no task and no timer of its own: the presence watch starts
                # only once the reply is late.
                with anyio.move_on_after(_PRESENCE_CHECK_AFTER):
                    await done.wait()
                if not done.is_set():
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._watch_presence, target.removeprefix("agent:"), done, offline)
                        await done.wait()
                        tg.cancel_scope.cancel()
        finally:
            del self._pending_replies[message["correlation_id"]]
        if not replies and offline:
            raise AgentUnavailable(f"agent {agent_id} is offline")
        if not replies:
            raise RequestTimeout(f"no reply from {agent_id} within {timeout}s")
        reply = replies[0]
        if reply.headers.get("ar") == "error":
            body = reply.payload if isinstance(reply.payload, dict) else {"error": reply.payload}
            error, remote_type = body.get("error"), body.get("type")
            if remote_type == AgentUnavailable.__name__:
                raise AgentUnavailable(str(error))
            raise RemoteError(f"{agent_id} failed: {error}",
                              remote_type=None if remote_type is None else str(remote_type))
        return reply.payload

    async def _watch_presence(self, agent_id: str, done: anyio.Event, offline: list[bool]) -> None:
        """While no reply has come, look now and then whether the agent is online at all
        (started once the reply is ``_PRESENCE_CHECK_AFTER`` late: a prompt one costs no look-up)."""
        context = self._context
        while not done.is_set():
            try:
                agents = await context.db.list_agents(None, online_only=True)
            except AgentRuntimeError as exc:
                log.debug("presence check for a request failed: %s", exc)
            else:
                if not any(a.id == agent_id for a in agents):
                    offline.append(True)
                    done.set()
                    return
            await anyio.sleep(max(context.timing.heartbeat_interval, _PRESENCE_CHECK_AFTER))

    # ------------------------------------------------------------------ the plain inbox

    async def plain_inbox(self) -> Subscription[Any]:
        """The plain-message subscription, opened on the first read (shared by every reader)."""
        async with self._inbox_lock:
            if self._inbox_sub is None:
                context = self._context
                if not context.tasks.running:
                    raise AgentRuntimeError("the runtime is not running")
                sub = Subscription[Any](context, inbox_channel(context.agent_id), "direct", payload_type=None,
                                        batch_size=10, visibility=None, start="earliest", classes=("plain",))
                await sub.__aenter__()
                self._inbox_sub = sub
            return self._inbox_sub


class Inbox:
    """``async for msg in rt.inbox()``: opens the runtime's plain-message subscription on the
    first read (shared by every reader, closed with the runtime)."""

    def __init__(self, requests: Requests) -> None:
        self._requests = requests
        self._sub: Subscription[Any] | None = None

    def __aiter__(self) -> Inbox:
        return self

    async def __anext__(self) -> Message[Any]:
        if self._sub is None:
            self._sub = await self._requests.plain_inbox()
        return await self._sub.__anext__()


def _error(exc: AgentRuntimeError) -> tuple[str, dict[str, str]]:
    return "error", {"error": str(exc), "type": type(exc).__name__}
