"""The Supabase transport: PostgREST RPC through the official ``supabase`` client, wake-ups
through the official ``realtime`` client (private channels fed by broadcast from the database).

Calls are ``await client.rpc(fn, args).execute()``: the same SQL functions, the same named
arguments as the Postgres transport. Wake-ups come from the same triggers: they call
``realtime.send(payload, event, topic, private => true)`` with the compact payload the Postgres
transport gets through ``pg_notify`` (minus its ``t``/``e`` keys, which here are the channel's
topic and the broadcast's event).

Why broadcast from the database rather than Postgres Changes: Postgres Changes run one RLS check
per subscriber per row on a single thread and carry whole rows (payloads up to the channel's
max size) where the runtime needs a hint of a few bytes; a trigger can coalesce a batch insert
into one hint per channel; broadcast is authorised per topic by RLS on ``realtime.messages``
(an agent's inbox topic, the topics of the channels it subscribes to), so an agent's token
only ever hears about what it may read. Realtime does not guarantee delivery, so the hints are
only wake-ups: the tables are the truth, and after every (re)join the runtime catches up by RPC
(``RECONNECTED``).

Why no ephemeral (client-to-client) broadcast: a publisher would have to send on the
receivers' topics, over the socket (which needs a join, and joining another agent's inbox or a
channel one does not subscribe to is refused by the read policies, as it must be: the wake-ups
carry what only subscribers may read) or by ``http_send`` (a new HTTP connection per call in
realtime-py, slower than the database's own broadcast it would race). The broadcast from the
database is sent at commit by the trigger, so there is no earlier moment a client could use.

Requires the asyncio backend (the realtime client is asyncio-only).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import msgspec
import tenacity
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from postgrest import APIError
from realtime import AsyncRealtimeChannel, AsyncRealtimeClient, RealtimeSubscribeStates
from supabase import AsyncClient, AsyncClientOptions

from ..errors import (
    AgentRuntimeError,
    ConfigurationError,
    ConnectionLost,
    InvalidInput,
    PermissionDenied,
    error_from_sqlstate,
)
from . import wire
from .base import AccessTokenProvider, EventSink
from .tokens import token_claims

__all__ = ["SupabaseTransport", "translate_errors"]

log = logging.getLogger(__name__)

# PostgREST's own codes that have a SQLSTATE equivalent in the runtime's table.
_PGRST_SQLSTATE = {
    "PGRST202": "42883",  # no function with these argument names: the schema is not migrated
    "PGRST301": "42501",  # the JWT does not verify
    "PGRST302": "42501",  # anonymous access is disabled
    "PGRST303": "42501",  # the JWT expired
}
# Gateway answers that are not PostgREST's JSON (postgrest-py puts the HTTP status in `code`).
_UNAVAILABLE_STATUS = frozenset({"502", "503", "504", "520", "521", "522", "523", "524"})
# Join refusals that no retry will fix.
_FATAL_JOIN_REASONS = ("Unauthorized", "InvalidJWTToken", "MalformedJWT", "JwtSignatureError", "PrivateOnly")


@contextmanager
def translate_errors() -> Iterator[None]:
    """The clients' exceptions become the runtime's own, here and only here."""
    try:
        yield
    except AgentRuntimeError:
        raise
    except APIError as exc:
        code = exc.code or ""
        message = exc.message or str(exc)
        if code in _UNAVAILABLE_STATUS:
            raise ConnectionLost(f"Supabase is unavailable ({code}): {message}") from exc
        raise error_from_sqlstate(_PGRST_SQLSTATE.get(code, code), message, exc.hint) from exc
    except (httpx.TransportError, OSError) as exc:
        raise ConnectionLost(f"Supabase connection failed: {exc!r}") from exc


@dataclass(eq=False)
class _Topic:
    """One joined Realtime channel and what the listener knows about it."""

    name: str
    channel: AsyncRealtimeChannel
    joined: bool = False
    ever_joined: bool = False  # a later SUBSCRIBED is a rejoin: events may have been missed
    closed: bool = False  # removed by the server (phx_close) or by us
    retry_at: float = 0.0
    error: str | None = None


@dataclass
class _Signal:
    """From a realtime callback to the listener's own task (callbacks never do more than this)."""

    kind: str  # "event" | "state"
    topic: _Topic | None = None
    event: wire.WakeUp | None = None
    state: RealtimeSubscribeStates | None = None
    error: str | None = None


@dataclass
class _Listening:
    client: AsyncRealtimeClient
    sink: EventSink
    signals: MemoryObjectSendStream[_Signal]
    startup: frozenset[str]  # the topics watched before listening: joined before it reports ready
    topics: dict[str, _Topic] = field(default_factory=dict)
    waiters: dict[str, anyio.Event] = field(default_factory=dict)
    started: bool = False
    resync_since: float | None = None  # a rejoin happened: emit RECONNECTED once all are back
    state_changed: anyio.Event = field(default_factory=anyio.Event)


class SupabaseTransport:
    """Calls SQL functions over PostgREST and listens to private Realtime channels.

    ``key``: the project key, sent as ``apikey`` (the API gateway accepts only the project's
    keys): the service role key for a trusted agent, or the anon key with ``access_token``, an
    agent's own JWT (role ``authenticated``, an ``agent_id`` claim), sent as the bearer token to
    PostgREST and given to the socket (``set_auth``) before any channel is joined.
    ``access_token_provider``: a callable (sync or async) returning a fresh token; it is called
    before the current one expires, and the new token is given to REST and to the socket, so
    joined channels keep their authorisation. Raises only ``AgentRuntimeError`` subclasses.
    """

    def __init__(self, url: str, key: str, *, access_token: str | None = None,
                 access_token_provider: AccessTokenProvider | None = None, pool_size: int = 10,
                 timeout: float = 30.0, join_timeout: float = 10.0, refresh_margin: float = 60.0,
                 health_interval: float = 1.0) -> None:
        if not key:
            raise ConfigurationError("the Supabase transport needs a key")
        self.url = url.rstrip("/")
        self._key = key
        self._token = access_token or key
        self._claims = token_claims(self._token)
        self._provider = access_token_provider
        self._pool_size = pool_size
        self._timeout = timeout
        self._join_timeout = join_timeout
        self._refresh_margin = refresh_margin
        self._health_interval = health_interval
        self._http: httpx.AsyncClient | None = None
        self._client: AsyncClient | None = None
        claimed = self._claims.get("agent_id")
        self._agent_id: str | None = str(claimed) if claimed is not None else None
        self._watched: Counter[str] = Counter()
        self._changed = anyio.Event()  # the set of wanted topics changed
        self.malformed_wakeups = 0  # broadcasts dropped at the edge: not wake-ups
        self._refresh_lock = anyio.Lock()
        self._listening: _Listening | None = None

    # ------------------------------------------------------------------ identity and calls

    @property
    def agent_id(self) -> str | None:
        """The agent the token acts as (its ``agent_id`` claim), if it names one."""
        return self._agent_id

    async def connect(self) -> None:
        """Create the clients (no network traffic: PostgREST is HTTP, the socket opens when
        :meth:`listen` starts)."""
        if self._client is not None:
            return
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(self._timeout, connect=min(self._timeout, 10.0)),
            limits=httpx.Limits(max_connections=self._pool_size, max_keepalive_connections=self._pool_size),
            http2=self.url.startswith("https://"), follow_redirects=True)
        headers = {"Authorization": f"Bearer {self._token}"} if self._token != self._key else {}
        options = AsyncClientOptions(headers=headers, httpx_client=self._http, auto_refresh_token=False,
                                     persist_session=False)
        try:
            self._client = await AsyncClient.create(self.url, self._key, options)
        except Exception as exc:  # SupabaseException: a malformed URL or key
            await self._http.aclose()
            self._http = None
            raise ConfigurationError(f"cannot use the Supabase project at {self.url}: {exc}") from exc

    async def call(self, function: str, args: Mapping[str, Any]) -> Any:
        client = self._client
        if client is None:
            raise ConnectionLost("the transport is not connected")
        if self._provider is not None and self._expires_within(self._margin()):
            await self._refresh_token()
        try:
            # PostgREST maps JSON to the parameters by name: objects/arrays for jsonb, arrays for
            # SQL arrays; uuids, datetimes and Structs become their JSON forms here.
            params = msgspec.to_builtins(dict(args))
        except TypeError as exc:
            raise InvalidInput(f"invalid argument for {function}: {exc}") from exc
        with translate_errors():
            response = await client.rpc(function, params).execute()
        return response.data

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            listening, self._listening = self._listening, None
            if listening is not None:
                await _close_realtime(listening.client)
            http, self._http = self._http, None
            self._client = None
            if http is not None:
                await http.aclose()

    # ------------------------------------------------------------------ tokens

    def _expires_at(self) -> float | None:
        exp = self._claims.get("exp")
        return float(exp) if isinstance(exp, int | float) else None

    def _margin(self) -> float:
        exp, iat = self._expires_at(), self._claims.get("iat")
        if exp is None:
            return 0.0
        lifetime = exp - float(iat) if isinstance(iat, int | float) else exp - time.time()
        return max(min(self._refresh_margin, lifetime * 0.2), 0.0)

    def _expires_within(self, seconds: float) -> bool:
        exp = self._expires_at()
        return exp is not None and exp - time.time() <= seconds

    async def _refresh_token(self) -> None:
        """Ask the provider for a new token; give it to REST and to the socket."""
        if self._provider is None:
            return
        async with self._refresh_lock:
            if not self._expires_within(self._margin()):
                return  # someone else refreshed it meanwhile
            try:
                result = self._provider()
                token = await result if inspect.isawaitable(result) else result
            except Exception as exc:
                raise ConnectionLost(f"the access token provider failed: {exc!r}") from exc
            claims = token_claims(token)
            if self._agent_id is not None and claims.get("agent_id") not in (None, self._agent_id):
                raise ConfigurationError(f"the refreshed token is for agent {claims.get('agent_id')!r}, "
                                         f"not {self._agent_id!r}")
            self._token, self._claims = token, claims
            if self._client is not None:
                self._client.postgrest.auth(token)
            listening = self._listening
            if listening is not None:
                # Pushes `access_token` to every joined channel and stores it for rejoins.
                await listening.client.set_auth(token)
            log.debug("access token refreshed")

    async def _refresh_loop(self) -> None:
        while True:
            exp = self._expires_at()
            if exp is None:
                return
            if self._provider is None:
                delay = exp - time.time() - self._margin()
                if delay > 0:
                    await anyio.sleep(delay)
                log.warning("the Supabase access token expires in %.0fs and no access_token_provider "
                            "was given: calls and Realtime will be refused after that", exp - time.time())
                return
            await anyio.sleep(max(exp - time.time() - self._margin(), 0.0))
            retrying = tenacity.AsyncRetrying(
                retry=tenacity.retry_if_exception_type(AgentRuntimeError),
                wait=tenacity.wait_random_exponential(multiplier=0.5, max=5.0), sleep=anyio.sleep,
                before_sleep=lambda state: log.warning(
                    "refreshing the access token failed (%s); retrying",
                    state.outcome.exception() if state.outcome else None))
            async for attempt in retrying:
                with attempt:
                    await self._refresh_token()

    # ------------------------------------------------------------------ topics

    # Design: Realtime delivers a topic only to a channel joined on that topic, while the
    # runtime dispatches every event through one sink. So the runtime tells the transport which
    # topics it needs (`watch`/`unwatch`, counted, since several subscriptions may share one
    # channel): before listening, those every agent needs (its inbox, presence, locks: joined
    # before `listen` reports ready), then a channel's per subscription. A reconciler task joins
    # and leaves to match; `watch` returns once the channel is joined (bounded), so a
    # subscription's first fetch happens after its wake-ups flow. A join that comes later than
    # that (or any rejoin) is followed by RECONNECTED: the runtime catches up by RPC, so nothing
    # is lost in the gap.

    def _wanted(self) -> set[str]:
        return {t for t, n in self._watched.items() if n > 0}

    async def watch(self, topic: str) -> None:
        self._watched[topic] += 1
        listening = self._listening
        if listening is None:
            return  # joined when the listener starts
        current = listening.topics.get(topic)
        if current is not None and (current.joined or current.ever_joined):
            return  # joined, or rejoining (and RECONNECTED follows the rejoin)
        waiter = listening.waiters.setdefault(topic, anyio.Event())
        self._changed.set()
        with anyio.move_on_after(self._join_timeout):
            await waiter.wait()
            return
        # Not joined yet: its first SUBSCRIBED will be followed by RECONNECTED instead.
        if listening.waiters.get(topic) is waiter:
            del listening.waiters[topic]
        log.warning("Realtime channel %s is not joined yet; relying on catch-up and polling meanwhile", topic)

    def unwatch(self, topic: str) -> None:
        self._watched[topic] -= 1
        if self._watched[topic] <= 0:
            del self._watched[topic]
            self._changed.set()

    # ------------------------------------------------------------------ the listener

    async def listen(self, sink: EventSink, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        if self._listening is not None:
            raise AgentRuntimeError("the transport is already listening")
        client = AsyncRealtimeClient(f"{self.url}/realtime/v1", token=self._key, auto_reconnect=True,
                                     max_retries=3, initial_backoff=0.5, timeout=int(self._join_timeout))
        # The agent's own JWT goes to the socket before any channel is joined: private channels
        # are authorised with it (and rejoins keep using it).
        await client.set_auth(self._token)
        send, receive = anyio.create_memory_object_stream[_Signal](math.inf)
        listening = self._listening = _Listening(client, sink, send, frozenset(self._wanted()))
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._process_signals, listening, receive)
                tg.start_soon(self._reconcile_loop, listening, tg)
                tg.start_soon(self._supervise, listening)
                tg.start_soon(self._refresh_loop)
                for topic in self._wanted():
                    listening.waiters.setdefault(topic, anyio.Event())
                self._changed.set()
                await self._await_startup(listening)
                listening.started = True
                task_status.started()
                await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                send.close()
                receive.close()
                if self._listening is listening:
                    self._listening = None
                await _close_realtime(client)

    async def _await_startup(self, listening: _Listening) -> None:
        """Wait until the topics watched before listening are joined; a refused join (bad token,
        missing policy) fails the start rather than leaving the agent deaf."""
        deadline = anyio.current_time() + self._join_timeout * 1.5
        while True:
            fixed = [listening.topics.get(t) for t in listening.startup]
            if all(t is not None and t.joined for t in fixed):
                return
            for t in fixed:
                if t is not None and t.error and t.error.startswith(_FATAL_JOIN_REASONS):
                    raise PermissionDenied(f"Realtime refused to join {t.name}: {t.error}",
                                           hint="check the token's role and agent_id claim, and the policies "
                                                "on realtime.messages (supabase db push)")
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                errors = "; ".join(f"{t.name}: {t.error}" for t in fixed if t is not None and t.error)
                raise ConnectionLost(f"Realtime at {self.url} did not join the agent's channels in time"
                                     + (f" ({errors})" if errors else ""))
            listening.state_changed = anyio.Event()
            with anyio.move_on_after(min(remaining, 0.5)):
                await listening.state_changed.wait()

    def _new_topic(self, listening: _Listening, name: str) -> _Topic:
        channel = listening.client.channel(name, {"config": {
            "broadcast": {"ack": False, "self": False},
            "presence": {"key": "", "enabled": False},
            "private": True,
        }})
        topic = _Topic(name, channel)
        signals = listening.signals

        def post(signal: _Signal) -> None:
            with _ignore_closed():  # the listener is gone
                signals.send_nowait(signal)

        def on_broadcast(message: Any) -> None:
            got = message if isinstance(message, dict) else {}
            event = wire.from_broadcast(name, got.get("event"), got.get("payload"))
            if event is None:
                self.malformed_wakeups += 1
                return
            post(_Signal("event", topic, event=event))

        channel.on_broadcast("*", on_broadcast)
        # No Realtime Presence: its keys and metadata are whatever a client chose (any agent
        # allowed on the topic could announce another joining or leaving), so it would not be
        # believed, and tracking costs presence quota. Presence events come from the
        # agent_presence table's trigger (only an agent itself, or the janitor, changes its row).
        return topic

    async def _join(self, listening: _Listening, topic: _Topic) -> None:
        def on_state(state: RealtimeSubscribeStates, error: Exception | None) -> None:
            with _ignore_closed():
                listening.signals.send_nowait(_Signal("state", topic, state=state,
                                                      error=_reason(error) if error is not None else None))
        try:
            await topic.channel.subscribe(on_state)
        except Exception as exc:  # the socket could not connect (after the client's retries)
            log.warning("joining Realtime channel %s failed: %r", topic.name, exc)
            with _ignore_closed():
                listening.signals.send_nowait(_Signal("state", topic, state=RealtimeSubscribeStates.CLOSED,
                                                      error=f"connect failed: {exc!r}"))

    async def _reconcile_loop(self, listening: _Listening, tg: TaskGroup) -> None:
        while True:
            await self._changed.wait()
            self._changed = anyio.Event()  # replaced before reading the state: no change is lost
            wanted = self._wanted()
            now = anyio.current_time()
            reopened: dict[str, bool] = {}
            for name, topic in list(listening.topics.items()):
                if name not in wanted:
                    del listening.topics[name]
                    topic.closed = True
                    try:
                        await listening.client.remove_channel(topic.channel)
                    except Exception as exc:
                        log.debug("leaving %s: %r", name, exc)
                elif topic.closed and topic.retry_at <= now:
                    del listening.topics[name]  # closed by the server: join it afresh
                    reopened[name] = topic.ever_joined
            for name in wanted:
                if name in listening.topics:
                    continue
                topic = self._new_topic(listening, name)
                topic.ever_joined = reopened.get(name, False)  # then its join is a rejoin
                listening.topics[name] = topic
                tg.start_soon(self._join, listening, topic)

    async def _process_signals(self, listening: _Listening, receive: MemoryObjectReceiveStream[_Signal]) -> None:
        async with receive:
            async for signal in receive:
                topic = signal.topic
                if topic is not None and listening.topics.get(topic.name) is not topic:
                    continue  # a channel we left or replaced
                if signal.kind == "event" and signal.event is not None:
                    try:
                        listening.sink(signal.event)
                    except Exception:
                        log.exception("the event sink failed on %r", signal.event)
                elif signal.kind == "state" and topic is not None:
                    self._on_state(listening, topic, signal.state, signal.error)
                    listening.state_changed.set()

    def _on_state(self, listening: _Listening, topic: _Topic, state: RealtimeSubscribeStates | None,
                  error: str | None) -> None:
        now = anyio.current_time()
        if state == RealtimeSubscribeStates.SUBSCRIBED:
            rejoin = topic.ever_joined
            topic.joined, topic.ever_joined, topic.error = True, True, None
            waiter = listening.waiters.pop(topic.name, None)
            if waiter is not None:
                waiter.set()
            elif listening.started:
                rejoin = True  # joined after its watcher stopped waiting
            if rejoin:
                log.info("Realtime channel %s rejoined", topic.name)
                listening.resync_since = listening.resync_since or now
                self._maybe_resync(listening)
            return
        if state == RealtimeSubscribeStates.CLOSED:
            # Closed by the server (token expired, rate limit...) or a failed connect: join anew.
            topic.closed, topic.retry_at = True, now + 1.0
            topic.ever_joined = topic.ever_joined or topic.joined
        topic.joined = False
        topic.error = error
        log.warning("Realtime channel %s: %s%s", topic.name, state.value if state else "?",
                    f" ({error})" if error else "")

    def _maybe_resync(self, listening: _Listening, *, force_after: float = 2.0) -> None:
        """After rejoins, one RECONNECTED once every channel is back (or after a short wait for
        stragglers), so subscribers catch up by RPC from their cursors."""
        if listening.resync_since is None:
            return
        down = [t for t in listening.topics.values() if not t.joined]
        if not down or anyio.current_time() - listening.resync_since >= force_after:
            listening.resync_since = None
            listening.sink(wire.RECONNECTED)

    async def _supervise(self, listening: _Listening) -> None:
        """The client reconnects by itself a few times; after that it gives up, so reconnect
        here, and rejoin channels the server closed."""
        client = listening.client
        disconnected_since: float | None = None
        delay = self._health_interval
        while True:
            await anyio.sleep(self._health_interval)
            now = anyio.current_time()
            self._maybe_resync(listening)
            if any(t.closed and t.retry_at <= now for t in listening.topics.values()):
                self._changed.set()
            if client.is_connected:
                disconnected_since, delay = None, self._health_interval
                continue
            disconnected_since = disconnected_since or now
            if now - disconnected_since < delay:
                continue
            try:
                await client.connect()  # rejoins the errored channels once connected
            except Exception as exc:
                log.warning("Realtime reconnect failed: %r", exc)
                delay = min(delay * 2, 10.0)
                disconnected_since = anyio.current_time()


def _reason(error: Exception) -> str:
    text = str(error)
    try:
        parsed = json.loads(text)
    except ValueError:
        return text
    return str(parsed.get("reason", text)) if isinstance(parsed, dict) else text


@contextmanager
def _ignore_closed() -> Iterator[None]:
    try:
        yield
    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
        pass


async def _close_realtime(client: AsyncRealtimeClient) -> None:
    try:
        await client.remove_all_channels()  # leaves every channel, closes
    except Exception as exc:
        log.debug("closing Realtime: %r", exc)
        try:
            await client.close()
        except Exception as exc2:
            log.debug("closing Realtime socket: %r", exc2)
