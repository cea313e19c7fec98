"""AgentRuntime: one agent process's membership of the network, the facade and its lifecycle.

It owns one anyio task group. Background services (the wake-up listener, presence heartbeat,
metrics flusher, janitor, inbox consumer, handlers) are tasks in it; leaving the ``async with``
shuts them down in order: stop intake, let in-flight handlers finish (or hand their messages
back), release locks, flush metrics, mark the agent offline, close connections.

The work is done by parts given one :class:`~._context.RuntimeContext` (made once connected),
never the runtime: ``_dispatch`` (wake-ups, the safety poll), ``_services`` (heartbeat, metrics
flush, janitor), ``_requests`` (requests, replies, the inbox), ``_handlers``, ``_channels``,
``_publish``, ``_subscription`` and ``_locks``."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import Any, TypeVar, overload

import anyio

from ..errors import AgentRuntimeError, ConfigurationError
from ..models import AgentInfo, AgentStatus, ChannelInfo, ChannelKind, SendResult
from ..transports import wire
from ..transports.base import AccessTokenProvider, Transport
from . import _channels, _dispatch, _handlers, _identity, _locks, _requests, _run, _services
from ._context import InFlight, RetryPolicy, RuntimeContext, Tasks, Timing
from ._db import Database
from ._durations import bounded, required_ms, whole
from ._durations import seconds as _seconds
from ._handlers import Handler
from ._metrics import Metrics
from ._presence import PresenceEvents, PresenceHub
from ._publish import MAX_PAYLOAD_BYTES, inbox_channel, publish_many
from ._registry import Subscriptions
from ._subscription import Message
from ._wakeups import CarriedMessages
from .config import ConnectionSettings, resolve
from .connect import open_transport
from .network import NetworkViews

__all__ = ["MAX_PAYLOAD_BYTES", "AgentRuntime", "Handler"]

log = logging.getLogger(__name__)

# A request's timeout is also its message's TTL: at most what send_messages takes (ten years).
_MAX_REQUEST_TIMEOUT = 315_360_000.0

T = TypeVar("T")
P = TypeVar("P")


class AgentRuntime(NetworkViews):
    """Join the network as one agent.

    ``url``: ``postgresql://...`` for a Postgres database, nothing for the embedded local one
    (environment: ``AGENT_RUNTIME_URL``). ``agent_id``: give a stable id to resume the same agent
    after a restart (its subscriptions and cursors too); by default a fresh one is made from the name.

    Supabase: ``url="https://<ref>.supabase.co"`` with ``key`` (the service role key, or the anon
    key with the agent's own JWT as ``access_token``, whose ``agent_id`` claim is then this
    agent's id); ``access_token_provider`` returns a fresh JWT before the current one expires.
    """

    def __init__(
        self,
        name: str,
        *,
        agent_id: str | None = None,
        capabilities: Sequence[str] = (),
        kind: str = "agent",
        version: str = "",
        metadata: dict[str, Any] | None = None,
        url: str | None = None,
        key: str | None = None,
        access_token: str | None = None,
        access_token_provider: AccessTokenProvider | None = None,
        heartbeat_interval: float = 5.0,
        heartbeat_ttl: float | None = None,
        janitor: bool = True,
        janitor_interval: float = 10.0,
        metrics_interval: float = 5.0,
        poll_interval: float = 5.0,
        shutdown_timeout: float = 10.0,
        retry_base_delay: float = 0.5,
        retry_max_delay: float = 60.0,
        migrate: bool = True,
        pool_size: int = 10,
        request_concurrency: int = 16,
    ) -> None:
        self.name = _identity.check_agent_name(name)
        self.settings: ConnectionSettings = resolve(url, key, access_token)
        # An agent's own token names its agent: that is who this runtime is, unless told otherwise.
        self.agent_id = _identity.check_agent_id(
            agent_id or self.settings.claimed_agent_id or _identity.default_agent_id(name))
        self.capabilities = _identity.checked_capabilities(capabilities)
        self.kind = _identity.check_kind(kind)
        self.version = _identity.check_version(version)
        self.metadata = _identity.checked_metadata(metadata)
        self._access_token_provider = access_token_provider
        # Checked here, so that a bad value is refused by the constructor, not by a timer later.
        self.heartbeat_interval = bounded(heartbeat_interval, "heartbeat_interval", minimum=0.1, maximum=1200)
        self.heartbeat_ttl = (max(3 * self.heartbeat_interval, 1.0) if heartbeat_ttl is None else bounded(
            heartbeat_ttl, "heartbeat_ttl", minimum=max(1.0, self.heartbeat_interval), maximum=3600))
        self.janitor_enabled = janitor
        self.janitor_interval = bounded(janitor_interval, "janitor_interval", minimum=0.1, maximum=86400)
        self.metrics_interval = bounded(metrics_interval, "metrics_interval", minimum=0.1, maximum=86400)
        self.poll_interval = bounded(poll_interval, "poll_interval", minimum=0.1, maximum=86400)
        self.shutdown_timeout = bounded(shutdown_timeout, "shutdown_timeout", minimum=0, maximum=3600)
        self.retry_base_delay = bounded(retry_base_delay, "retry_base_delay", minimum=0, maximum=3600)
        self.retry_max_delay = bounded(retry_max_delay, "retry_max_delay", minimum=self.retry_base_delay,
                                       maximum=86400)
        self._migrate = migrate
        self._pool_size = whole(pool_size, "pool_size", minimum=1, maximum=1000)

        self.metrics = Metrics()
        self.info: AgentInfo | None = None
        self._transport: Transport | None = None
        self._context: RuntimeContext | None = None  # what the parts are given, once connected
        self._locks: _locks.Locks | None = None
        self._wake_ups: _dispatch.Dispatch | None = None
        self._tasks = Tasks()
        self._exit_stack: AsyncExitStack | None = None
        self._stopping = anyio.Event()
        self._presence = PresenceHub()
        self._lock_waiters = _locks.LockWaiters()
        self._carried = CarriedMessages()  # verifies what wake-ups carry (or fetch instead)
        self._request_handler: Handler | None = None
        self._request_concurrency = whole(request_concurrency, "request_concurrency", minimum=1, maximum=10000)
        self._requests: _requests.Requests | None = None
        self._in_flight = InFlight()

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> AgentRuntime:
        # Every step that needs undoing pushes its undoing on one exit stack; leaving the runtime
        # unwinds it in reverse with the real exception (the same when start-up fails half way).
        claimed = self.settings.claimed_agent_id
        if claimed is not None and claimed != self.agent_id:  # (Realtime would refuse its inbox anyway)
            raise ConfigurationError(f"the token is for agent {claimed!r}, not {self.agent_id!r}",
                                     hint=f"pass agent_id={claimed!r} (an agent token may only act as its own agent)")
        async with AsyncExitStack() as stack:
            self._transport = await open_transport(self.settings, migrate=self._migrate, pool_size=self._pool_size,
                                                   access_token_provider=self._access_token_provider)
            stack.push_async_callback(self._close)  # 6. close
            db = Database(self._transport)
            context = self._context = RuntimeContext(
                agent_id=self.agent_id, db=db, metrics=self.metrics,
                timing=Timing(shutdown_timeout=self.shutdown_timeout, poll_interval=self.poll_interval,
                              heartbeat_interval=self.heartbeat_interval, metrics_interval=self.metrics_interval,
                              janitor_interval=self.janitor_interval),
                retry=RetryPolicy(self.retry_base_delay, self.retry_max_delay), stopping=self._stopping,
                tasks=self._tasks, subscriptions=Subscriptions(self._transport), carried=self._carried,
                in_flight=self._in_flight)
            self._locks = _locks.Locks(context, self._lock_waiters)
            requests = self._requests = _requests.Requests(context, concurrency=self._request_concurrency,
                                                           handler=self._request_handler)
            self._wake_ups = _dispatch.Dispatch(context, self._presence, self._lock_waiters, requests.take_replies)
            for topic in wire.agent_topics(self.agent_id):  # heard from the start (Realtime joins them)
                await self._transport.watch(topic)
            self.info = await db.register_agent(
                self.agent_id, self.name, kind=self.kind, capabilities=self.capabilities, version=self.version,
                host=socket.gethostname(), pid=os.getpid(), metadata=self.metadata,
                heartbeat_ttl_ms=int(self.heartbeat_ttl * 1000))
            stack.push_async_callback(self._leave)  # 3-5. locks, metrics, offline
            stack.push_async_callback(requests.hand_back)
            tg = await stack.enter_async_context(anyio.create_task_group())
            self._tasks.open(tg)
            stack.push_async_callback(self._stop)  # 1-2. stop intake, grace period, cancel
            await tg.start(self._transport.listen, self._dispatch)
            tg.start_soon(_services.heartbeat, context, self._heard)
            tg.start_soon(_dispatch.safety_poll, context)
            tg.start_soon(_services.flush_metrics, context)
            if self.janitor_enabled:
                tg.start_soon(_services.janitor, context)
            await tg.start(requests.control_loop)
            for _ in range(self._request_concurrency):
                tg.start_soon(requests.worker)
            self._exit_stack = stack.pop_all()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        # The task group is exited at the nesting level it was entered at, with the exception
        # that ends the block. When the caller is being cancelled (SIGTERM, an outer task group)
        # the later steps still run: each is shielded and bounded.
        stack, self._exit_stack = self._exit_stack, None
        if stack is None:
            return None
        try:
            return await stack.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            if exc is not None and len(group.exceptions) == 1 and group.exceptions[0] is exc:
                return False  # only the block's own exception (the task group grouped it): as itself
            raise

    async def _stop(self) -> None:
        """Steps 1-2 of shutdown: intake stops (consumers fetch nothing more, and those waiting for
        news see it now); in-flight handlers get the grace period, then they are cancelled and
        their messages handed back (nacked) in their own shielded cleanup."""
        self._stopping.set()
        if self._context is not None:
            self._context.subscriptions.wake_all()
        tg = self._tasks.close()
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.shutdown_timeout):
            await self._in_flight.idle()
        if tg is not None:
            tg.cancel_scope.cancel()

    async def _leave(self) -> None:
        """Steps 3-5 of shutdown, shielded from cancellation and bounded in time."""
        context, locks = self._context, self._locks
        with anyio.CancelScope(shield=True):
            if context is not None and locks is not None:
                db = context.db
                with anyio.move_on_after(self.shutdown_timeout):
                    await locks.release_all()  # 3. locks (normally released by their own blocks)
                    try:
                        await self.metrics.flush(db, self.agent_id)  # 4. metrics
                    except AgentRuntimeError as exc:
                        log.warning("final metrics flush failed: %s", exc)
                    try:
                        await db.deregister_agent(self.agent_id)  # 5. offline
                    except AgentRuntimeError as exc:
                        log.warning("marking %s offline failed: %s", self.agent_id, exc)

    async def _close(self) -> None:
        self._presence.close()
        if self._transport is not None:
            with anyio.CancelScope(shield=True):
                await self._transport.aclose()

    async def run_forever(self) -> None:
        """Serve (handlers, requests, presence) until SIGINT or SIGTERM arrives, then return, so
        that the ``async with`` leaves in order and no traceback is printed. Outside the main
        thread it waits until the runtime stops or the task is cancelled."""
        await _run.wait_for_signal(self._stopping)

    @staticmethod
    def _started(part: P | None) -> P:
        """A part made when the runtime started (refused before that)."""
        if part is None:
            raise AgentRuntimeError("the runtime is not started: use 'async with AgentRuntime(...)'")
        return part

    def _require_context(self) -> RuntimeContext:
        return self._started(self._context)

    def _require_db(self) -> Database:
        return self._started(self._context).db

    def retry_delay(self, attempts: int) -> float:
        """Backoff before redelivering a message that failed ``attempts`` times (with jitter)."""
        return RetryPolicy(self.retry_base_delay, self.retry_max_delay).delay(attempts)

    def _dispatch(self, event: wire.WakeUp) -> None:
        """The transport's sink (looked up when the runtime starts listening)."""
        if self._wake_ups is not None:
            self._wake_ups(event)

    def _heard(self, info: AgentInfo) -> None:
        """What the heartbeat service heard back: this agent as the network sees it."""
        self.info = info

    # ------------------------------------------------------------------ presence

    async def set_status(self, status: AgentStatus, *, load: float | None = None) -> AgentInfo:
        """Set this agent's status (online, busy, away) and load (0..1); others see a status event."""
        db = self._require_db()
        self.info = await db.heartbeat(self.agent_id, status=status, load=load)
        return self.info

    def presence_events(self) -> PresenceEvents:
        """Join, leave and status events of other agents: ``async for ev in rt.presence_events():``
        or ``async with rt.presence_events() as events: async for ev in events:``. Listening begins
        at this call; iteration ends when the runtime stops."""
        return self._presence.listen()

    # ------------------------------------------------------------------ channels and messages

    async def channel(self, name: str, kind: ChannelKind = "broadcast", *, retention: float | None = None,
                      message_ttl: float | None = None, max_attempts: int | None = None,
                      visibility_timeout: float | None = None, max_payload_bytes: int | None = None,
                      metadata: dict[str, Any] | None = None) -> ChannelInfo:
        """Create the channel if missing (an existing one keeps its settings). Times in seconds."""
        return await _channels.ensure(self._require_context(), name, kind, retention=retention,
                                      message_ttl=message_ttl, max_attempts=max_attempts,
                                      visibility_timeout=visibility_timeout, max_payload_bytes=max_payload_bytes,
                                      metadata=metadata)

    @overload
    def subscribe(self, channel: str, *, type: None = None, kind: ChannelKind | None = None, start: str = "latest",
                  batch_size: int = 100, visibility_timeout: float | None = None) -> _channels.Subscribing[Any]: ...
    @overload
    def subscribe(self, channel: str, *, type: type[T], kind: ChannelKind | None = None, start: str = "latest",
                  batch_size: int = 100, visibility_timeout: float | None = None) -> _channels.Subscribing[T]: ...
    def subscribe(self, channel: str, *, type: type[T] | None = None, kind: ChannelKind | None = None,
                  start: str = "latest", batch_size: int = 100,
                  visibility_timeout: float | None = None) -> _channels.Subscribing[Any]:
        """Subscribe to a channel (created as ``kind`` if missing, default broadcast).

        Durable: the subscription (per agent id and channel) keeps its cursor, so an agent that
        comes back with the same id receives what it missed. ``start``: where a new broadcast
        subscription begins, ``"latest"`` or ``"earliest"``. ``type``: a msgspec Struct (or any
        type msgspec can convert to) the payloads are validated and decoded into; a payload that
        does not fit goes to the dead letters with the reason."""
        return _channels.subscribe(self._require_context(), channel, payload_type=type, kind=kind, start=start,
                                   batch_size=batch_size, visibility_timeout=visibility_timeout)

    def on(self, channel: str, *, type: type[Any] | None = None, kind: ChannelKind | None = None,
           start: str = "latest", concurrency: int = 1,
           visibility_timeout: float | None = None) -> Callable[[Handler], Handler]:
        """Decorator: run ``handler(msg)`` for each message on ``channel``; it is acked when the
        handler returns and nacked (redelivered with backoff) when it raises. ``concurrency`` > 1
        runs competing consumers (queues only: broadcast keeps per-channel order)."""
        def register(handler: Handler) -> Handler:
            self.handle(channel, handler, type=type, kind=kind, start=start, concurrency=concurrency,
                        visibility_timeout=visibility_timeout)
            return handler
        return register

    def handle(self, channel: str, handler: Handler, *, type: type[Any] | None = None,
               kind: ChannelKind | None = None, start: str = "latest", concurrency: int = 1,
               visibility_timeout: float | None = None) -> None:
        """Start a handler task on ``channel`` (see :meth:`on`)."""
        _handlers.handle(self._require_context(), channel, handler, payload_type=type, kind=kind, start=start,
                         concurrency=concurrency, visibility_timeout=visibility_timeout)

    async def publish(self, channel: str, payload: Any, *, headers: dict[str, Any] | None = None,
                      idempotency_key: str | None = None, ttl: float | None = None,
                      delay: float | None = None) -> SendResult:
        """Send one message. With an ``idempotency_key``, sending the same key again (from this
        agent) is a no-op that returns the original message's id with ``duplicate=True``."""
        results = await self.publish_many(channel, [payload], headers=headers, ttl=ttl, delay=delay,
                                          idempotency_keys=[idempotency_key] if idempotency_key else None)
        return results[0]

    async def publish_many(self, channel: str, payloads: Sequence[Any], *, headers: dict[str, Any] | None = None,
                           idempotency_keys: Sequence[str | None] | None = None, ttl: float | None = None,
                           delay: float | None = None) -> list[SendResult]:
        """Send a batch of at most 10,000 in one round trip (all or nothing), in order; a larger one
        is refused (InvalidInput) before anything is sent."""
        return await publish_many(self._require_context(), channel, payloads, headers=headers,
                                  idempotency_keys=idempotency_keys, ttl=ttl, delay=delay)

    async def send(self, agent_id: str, payload: Any, *, headers: dict[str, Any] | None = None,
                   idempotency_key: str | None = None, ttl: float | None = None) -> SendResult:
        """Send straight to another agent's inbox."""
        return await self.publish(inbox_channel(agent_id), payload, headers=headers, idempotency_key=idempotency_key,
                                  ttl=ttl)

    def inbox(self) -> AsyncIterator[Message[Any]]:
        """Direct messages to this agent (not requests, not replies). Ack them like any message.

        They are claimed only while read: unread ones wait in the table (durably, for as long as
        their TTL), and never hold up this agent's requests and replies."""
        return _requests.Inbox(self._started(self._requests))

    def on_request(self, handler: Handler) -> Handler:
        """Decorator: answer requests sent to this agent; the handler's return value is the reply
        (an exception becomes a :class:`RemoteError` at the requester). At most
        ``request_concurrency`` requests are handled at a time; more wait in the table. Until a
        handler is set, requests are refused (:class:`AgentUnavailable` at the requester)."""
        self._request_handler = handler
        if self._requests is not None:
            self._requests.handler = handler
        return handler

    async def request(self, agent_id: str, payload: Any, *, timeout: float = 30.0,  # noqa: ASYNC109 (the API)
                      headers: dict[str, Any] | None = None) -> Any:
        """Send a request to an agent's inbox and wait for its reply's payload.

        Raises :class:`RequestTimeout` after ``timeout`` seconds (the request also expires then,
        so it is not handled after the requester gave up), :class:`RemoteError` if the responder
        could not answer (its handler raised, its reply could not be sent), :class:`UnknownAgent`
        or :class:`AgentUnavailable` (offline, or no request handler) without waiting the timeout."""
        bounded(timeout, "timeout", minimum=0, maximum=_MAX_REQUEST_TIMEOUT)  # (a negative one: refused, not sent)
        return await self._started(self._requests).request(agent_id, payload, timeout=timeout, headers=headers)

    # ------------------------------------------------------------------ dead letters

    async def replay_dead_letters(self, message_ids: Sequence[int]) -> int:
        """Deliver dead letters again (fresh attempts); returns how many were replayed."""
        return await self._require_db().replay_dead_letters(self.agent_id, message_ids)

    # ------------------------------------------------------------------ locks

    def lock(self, key: str, *, ttl: float = 10.0,
             wait: float | None = None) -> AbstractAsyncContextManager[_locks.Lease]:
        """``async with rt.lock(key) as lease:`` holds a lease (renewed at ttl/3) with a fencing token.

        ``wait``: seconds to wait for it (None: as long as it takes), in the database too (a
        previous holder's fencing transaction is waited for at most that long); :class:`LockTimeout`
        when it runs out. If the lease is lost while held (renewal refused, or ``ttl`` passed on
        this process's clock since its last successful renewal began), the block is cancelled and
        :class:`LockLost` is raised from the ``async with``. Guard writes with
        ``async with lease.fenced(conn):`` (see :class:`~agent_runtime.Lease`)."""
        required_ms(ttl, "ttl")
        _seconds(wait, "wait", allow_inf=True)
        return _require_lease(self._started(self._locks).hold(key, ttl=ttl, wait=wait))

    def try_lock(self, key: str, *, ttl: float = 10.0) -> AbstractAsyncContextManager[_locks.Lease | None]:
        """Like :meth:`lock` but one attempt only: yields ``None`` if the lock is held elsewhere."""
        required_ms(ttl, "ttl")
        return self._started(self._locks).hold(key, ttl=ttl, wait=0, raise_if_unavailable=False)

    # ------------------------------------------------------------------ metrics and topology

    async def flush_metrics(self) -> None:
        await self.metrics.flush(self._require_db(), self.agent_id)


@asynccontextmanager
async def _require_lease(cm: AbstractAsyncContextManager[_locks.Lease | None]) -> AsyncIterator[_locks.Lease]:
    async with cm as lease:
        assert lease is not None  # hold() raises LockTimeout rather than yield None here
        yield lease
