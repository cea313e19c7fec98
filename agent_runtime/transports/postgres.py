"""The Postgres transport: an asyncpg pool for calls and one dedicated LISTEN connection."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import parse_qs, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import anyio
import asyncpg
import msgspec
import tenacity
from anyio.abc import TaskStatus

from ..errors import AgentRuntimeError, ConfigurationError, ConnectionLost, InvalidInput, error_from_sqlstate
from . import wire
from .base import EventSink

__all__ = ["PostgresTransport", "translate_errors"]

log = logging.getLogger(__name__)

# How a LISTEN connection fails. (InternalClientError: a statement begun just as the server's
# "terminating connection" arrived, before the driver noticed the connection was gone.)
_LISTEN_LOST = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)
_WATCH_WAIT = 5.0  # seconds a watch waits for its LISTEN before returning anyway
_RECONNECT_PAUSE = 0.05  # seconds: the first pause before reconnecting, doubled on each failure
_decoder = msgspec.json.Decoder()
_typed_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}
T = TypeVar("T")
_encoder = msgspec.json.Encoder()


def _encode_json(value: object) -> str:
    return _encoder.encode(value).decode()


@contextmanager
def translate_errors(target: str | None = None) -> Iterator[None]:
    """Driver exceptions become the runtime's own, here and only here. ``target`` (where a
    connection was attempted, without secrets) goes into connection errors."""
    try:
        yield
    except AgentRuntimeError:
        raise
    except _DRIVER_ERRORS as exc:
        raise _translated(exc, target) from exc


# What translate_errors (and the call path, without its generator) turns into the runtime's own.
_DRIVER_ERRORS = (asyncpg.PostgresError, TimeoutError, OSError, asyncpg.InterfaceError, asyncpg.InternalClientError)


def _translated(exc: BaseException, target: str | None = None) -> AgentRuntimeError:
    if isinstance(exc, asyncpg.PostgresError):
        return error_from_sqlstate(exc.sqlstate, exc.message or str(exc), getattr(exc, "hint", None))
    if isinstance(exc, TimeoutError):
        where = f" from {target}" if target else ""
        return ConnectionLost(
            f"database connection failed: no answer{where} in time (something accepts connections there but does not "
            "answer as PostgreSQL, or the server is overloaded)",
            hint="check the host and port in the URL (--url / AGENT_RUNTIME_URL); "
                 "?connect_timeout=N in it waits N seconds")
    reason = str(exc) or type(exc).__name__
    return ConnectionLost(f"database connection failed{f' ({target})' if target else ''}: {reason}")


def describe_target(url: str) -> str:
    """``user@host:port/database`` of a postgresql:// URL (a socket folder as host), never its password."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or "localhost"])[0]
    port = query.get("port", [str(parts.port or 5432)])[0]
    user = f"{unquote(parts.username)}@" if parts.username else ""
    return f"{user}{host}:{port}{unquote(parts.path) or '/'}"


# Seconds to wait for a server's answer when connecting, unless the URL says otherwise with
# libpq's own parameter (postgresql://...?connect_timeout=N; 0: no limit, as in libpq).
CONNECT_TIMEOUT = 10.0


def split_connect_timeout(url: str) -> tuple[str, float | None]:
    """The URL without ``connect_timeout`` (asyncpg would send it to the server as a setting), and
    the timeout in seconds it gives (None: no limit). Raises ConfigurationError for a bad value."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    given = [value for name, value in pairs if name == "connect_timeout"]
    if not given:
        return url, CONNECT_TIMEOUT
    try:
        seconds = float(given[-1])
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigurationError(f"connect_timeout must be a number of seconds (got {given[-1]!r})",
                                 hint="postgresql://...?connect_timeout=5 (0: no limit)")
    rest = urlencode([(name, value) for name, value in pairs if name != "connect_timeout"])
    return urlunsplit(parts._replace(query=rest)), seconds or None


class PostgresTransport:
    """Calls ``select public.fn(p_a => $1, ...)``; listens with one ``LISTEN`` per watched topic
    (on its own notification channel: :func:`.wire.notification_channel`), on one connection."""

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10,
                 reconnect_max_delay: float = 5.0, health_interval: float = 2.0) -> None:
        self.url = url
        self._connect_url, self._connect_timeout = split_connect_timeout(url)
        self._min_size = min_size
        self._max_size = max_size
        self._reconnect_max_delay = reconnect_max_delay
        self._health_interval = health_interval
        self._pool: asyncpg.Pool | None = None
        self._closing_pool: asyncpg.Pool | None = None  # during aclose(): where calls still running release to
        self._idle: list[asyncpg.Connection] = []  # connections that answered their last call (see _acquire)
        self._acquiring = 0  # calls waiting for a connection from the pool
        self._sql: dict[tuple[str, tuple[str, ...]], str] = {}
        self._closed = False
        self.malformed_wakeups = 0  # notifications dropped at the edge: not wake-ups
        # Watched topics (each watch counted) and the notification channel of each: the LISTEN
        # connection hears these and nothing else.
        self._topics: Counter[str] = Counter()
        self._channels: dict[str, str] = {}  # notification channel -> topic
        self._listener: asyncpg.Connection | None = None  # the LISTEN connection, once it listens
        self._listened: set[str] = set()  # channels LISTENed on it
        self._listener_lock = anyio.Lock()  # one statement at a time on that connection
        self._sink: EventSink = _nowhere

    async def connect(self) -> None:
        with translate_errors(describe_target(self.url)):
            self._pool = await asyncpg.create_pool(
                self._connect_url, min_size=self._min_size, max_size=self._max_size,
                # Hung connections must fail, not hang a runtime forever.
                command_timeout=60, timeout=self._connect_timeout,
                # The pool's connections carry no session state (they only run function calls, in
                # autocommit), so asyncpg's reset query on every release (RESET ALL, UNLISTEN *...)
                # would be one more round trip per call for nothing. An open transaction is still
                # rolled back by the pool.
                reset=_keep_session,
                init=_set_json_codecs,
            )

    def _statement(self, function: str, names: tuple[str, ...]) -> str:
        # No casts: the server types each parameter from the function's signature, and the json
        # codecs of every pool connection (_set_json_codecs) encode the json and jsonb ones.
        key = (function, names)
        sql = self._sql.get(key)
        if sql is None:
            params = ", ".join(f"{n} => ${i}" for i, n in enumerate(names, 1))
            sql = f"select public.{function}({params})::text"
            self._sql[key] = sql
        return sql

    async def call(self, function: str, args: Mapping[str, Any]) -> Any:
        raw = await self._call_text(function, args)
        return None if raw is None else _decoder.decode(raw)

    async def call_as(self, function: str, args: Mapping[str, Any], kind: type[T]) -> T:
        """:meth:`call`, its JSON result decoded straight into ``kind`` (msgspec's rules, as
        ``msgspec.convert(call(...), kind, strict=False)`` would give, without the builtins in
        between). Raises ``msgspec.ValidationError`` if the result does not fit ``kind``."""
        raw = await self._call_text(function, args)
        return _typed_decoder(kind).decode("null" if raw is None else raw)

    async def _call_text(self, function: str, args: Mapping[str, Any]) -> str | None:
        # The hot path of every call: no generator-based context managers, and a connection from
        # the transport's own stack of idle ones before the pool's (see _acquire).
        con = await self._acquire()
        ok = False
        try:
            raw: str | None = await con.fetchval(self._statement(function, tuple(args)), *args.values())
            ok = True
        except AgentRuntimeError:
            raise
        except asyncpg.DataError as exc:
            # The driver could not encode a value (no JSON form, a lone surrogate, the wrong
            # Python type for the parameter's SQL type): it says so with the codec's error as the
            # cause. A data error from the server has none, and is translated as such.
            if exc.__cause__ is None:
                raise _translated(exc) from exc
            raise InvalidInput(f"invalid argument for {function}: {exc.__cause__}") from exc
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"invalid argument for {function}: {exc}") from exc
        except _DRIVER_ERRORS as exc:
            raise _translated(exc) from exc
        finally:
            await self._release(con, ok)
        return raw

    async def _acquire(self) -> asyncpg.Connection:
        """A connection for one call: the most recently used idle one, else one from the pool.
        Connections that answered a call are kept on the transport's own stack instead of going
        back to the pool (asyncpg's acquire and release cost about 15 us a call); any failure
        sends the connection back through the pool, which resets or replaces it. The pool's
        ``max_size`` still bounds them all."""
        pool = self._pool
        if pool is None:
            raise ConnectionLost("the transport is not connected")
        idle = self._idle
        while idle:
            kept: asyncpg.Connection = idle.pop()
            if _usable(kept):
                return kept
            with translate_errors():  # (lost while idle: the pool replaces it, as it would its own)
                await pool.release(kept)
        self._acquiring += 1
        try:
            con: asyncpg.Connection = await pool.acquire()
        except asyncpg.PostgresError as exc:
            # An error while (re)connecting is the connection failing, whatever the server's
            # reason (not accepting connections, starting up...): retryable.
            raise ConnectionLost(f"database connection failed: {exc}") from exc
        except _DRIVER_ERRORS as exc:
            raise _translated(exc) from exc
        finally:
            self._acquiring -= 1
        return con

    async def _release(self, con: asyncpg.Connection, ok: bool) -> None:
        # (Back to the pool while a call waits for one there: a connection kept here would leave
        # it waiting for the pool's max_size connections to come back, and they never might.)
        if ok and not self._acquiring and self._pool is not None and _usable(con) and not con.is_in_transaction():
            self._idle.append(con)
            return
        pool = self._pool or self._closing_pool
        if pool is None:
            # (closed meanwhile: its pool's terminate() may have taken the connection back already,
            # then terminate() here would raise InterfaceError over the call's own outcome)
            if _usable(con):
                con.terminate()
            return
        with translate_errors():
            await pool.release(con)

    async def listen(self, sink: EventSink, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._sink = sink
        started = False
        while True:
            conn = await self._listen_connection(started)
            lost = anyio.Event()
            try:
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                async with self._listener_lock:
                    self._listened = set()
                    await self._sync_channels(conn)
                    self._listener = conn
                if started:
                    sink(wire.RECONNECTED)  # anything sent while we were away must be caught up
                else:
                    started = True
                    task_status.started()
                await self._watch(conn, lost)
            except _LISTEN_LOST as exc:
                log.warning("LISTEN connection lost: %s", exc)
            finally:
                self._listener = None
                conn.terminate()
            await anyio.sleep(_RECONNECT_PAUSE)

    def _on_notify(self, _c: object, _pid: int, channel: str, payload: str) -> None:
        topic = self._channels.get(channel)
        if topic is None:
            return  # a topic no longer watched (its UNLISTEN is on the way)
        event = wire.from_notification(payload)
        if event is None or event.topic != topic:  # (a wake-up on the wrong topic's channel is forged)
            self.malformed_wakeups += 1
        else:
            self._sink(event)

    async def _sync_channels(self, conn: asyncpg.Connection) -> None:
        """LISTEN to the channels of the watched topics, UNLISTEN the others; under the lock. The
        watched set may change during each round trip: recomputed each time."""
        # (One pass over each difference per round, not a scan per channel: a reconnect of a
        # runtime with 10,000 subscriptions LISTENs 10,000 channels.)
        while True:
            missing = [c for c in self._channels if c not in self._listened]
            stale = [c for c in self._listened if c not in self._channels]
            if not missing and not stale:
                return
            for channel in missing:
                if channel in self._channels:
                    await conn.add_listener(channel, self._on_notify)
                    self._listened.add(channel)
            for channel in stale:
                if channel not in self._channels:
                    await conn.remove_listener(channel, self._on_notify)
                    self._listened.discard(channel)

    async def _listen_connection(self, started: bool) -> asyncpg.Connection:
        """A connection for LISTEN, retried with exponential backoff. Before the first one only a
        retryable failure is retried (a bad URL fails the start); once running, any refusal while
        reconnecting (the database restarting, not yet accepting connections...) is, since the
        listener must not take the runtime down."""
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(
                lambda exc: started or (isinstance(exc, AgentRuntimeError) and exc.retryable)),
            wait=tenacity.wait_exponential(multiplier=_RECONNECT_PAUSE, max=self._reconnect_max_delay),
            sleep=anyio.sleep, reraise=True,
            before_sleep=lambda state: log.warning(
                "LISTEN connection failed (%s); retrying in %.2fs",
                state.outcome.exception() if state.outcome else None,
                state.next_action.sleep if state.next_action else 0.0))
        async for attempt in retrying:
            with attempt, translate_errors():
                conn: asyncpg.Connection = await asyncpg.connect(self._connect_url, timeout=self._connect_timeout)
                return conn
        raise AssertionError("unreachable: tenacity re-raises the last failure")

    async def _watch(self, conn: asyncpg.Connection, lost: anyio.Event) -> None:
        """Return when the connection is gone. A periodic query notices a half-dead socket that
        the termination callback alone would miss; the channels of topics no longer watched are
        UNLISTENed then (until then their notifications are dropped unread)."""
        while not lost.is_set():
            with anyio.move_on_after(self._health_interval):
                await lost.wait()
                return
            with anyio.fail_after(self._health_interval * 2):
                async with self._listener_lock:
                    await self._sync_channels(conn)
                    await conn.fetchval("select 1")

    async def watch(self, topic: str) -> None:
        self._topics[topic] += 1
        if self._topics[topic] > 1:
            return
        self._channels[wire.notification_channel(topic)] = topic
        conn = self._listener
        if conn is None:
            return  # not listening yet, or reconnecting: listen() LISTENs to every watched topic
        try:
            with anyio.move_on_after(_WATCH_WAIT):
                async with self._listener_lock:
                    if conn is self._listener:
                        await self._sync_channels(conn)
        except _LISTEN_LOST as exc:
            # The connection is going: the reconnect LISTENs to it, then says RECONNECTED.
            log.warning("LISTEN for %s failed: %s", topic, exc)

    def unwatch(self, topic: str) -> None:
        count = self._topics.get(topic, 0) - 1
        if count > 0:
            self._topics[topic] = count
        elif self._topics.pop(topic, None) is not None:  # (an unmatched unwatch changes nothing)
            self._channels.pop(wire.notification_channel(topic), None)

    async def aclose(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            self._closing_pool = pool
            with anyio.move_on_after(5, shield=True):
                idle, self._idle = self._idle, []
                for con in idle:
                    await pool.release(con)
                await pool.close()
            pool.terminate()
            self._closing_pool = None


def _usable(con: asyncpg.Connection) -> bool:
    """Open and still the caller's: a pooled connection that is lost is handed back to its pool by
    asyncpg itself (then every method of it raises InterfaceError)."""
    try:
        return not con.is_closed()
    except asyncpg.InterfaceError:
        return False


def _typed_decoder(kind: type[T]) -> msgspec.json.Decoder[T]:
    decoder = _typed_decoders.get(kind)
    if decoder is None:
        decoder = _typed_decoders[kind] = msgspec.json.Decoder(kind, strict=False)
    return decoder


def _nowhere(event: wire.WakeUp) -> None:  # (before listen() has a sink)
    return None


async def _keep_session(_con: asyncpg.Connection) -> None:
    return None


async def _set_json_codecs(con: asyncpg.Connection) -> None:
    """json and jsonb arguments are encoded by msgspec, whatever the parameter is called."""
    for type_name in ("json", "jsonb"):
        await con.set_type_codec(type_name, schema="pg_catalog", encoder=_encode_json, decoder=_decoder.decode,
                                 format="text")
