"""Small helpers for the SQL-layer tests: call a function by named arguments, act as an agent's
JWT, snapshot table contents, and collect pg_notify wake-ups on a separate connection."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from agent_runtime.transports import wire

TABLES = (
    "distributed_agents",
    "agent_presence",
    "communication_channels",
    "channel_subscriptions",
    "distributed_messages",
    "message_dead_letters",
    "distributed_locks",
    "communication_metrics",
)


class Json:
    """Marks a value to be sent as jsonb (needed for an empty list or a bare scalar)."""

    def __init__(self, value: Any) -> None:
        self.value = value


def _param(value: Any) -> tuple[Any, str]:
    if isinstance(value, Json):
        return json.dumps(value.value), "::jsonb"
    if isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, dict) for v in value)):
        return json.dumps(value), "::jsonb"
    if isinstance(value, uuid.UUID):
        return value, "::uuid"
    return value, ""


async def call(conn: asyncpg.Connection, fn: str, /, **kwargs: Any) -> Any:
    """``select fn(p_a => $1, ...)``; a jsonb result comes back decoded."""
    args: list[Any] = []
    parts: list[str] = []
    for name, value in kwargs.items():
        encoded, cast = _param(value)
        args.append(encoded)
        parts.append(f"p_{name} => ${len(args)}{cast}")
    result = await conn.fetchval(f"select public.{fn}({', '.join(parts)})", *args)
    return json.loads(result) if isinstance(result, str) else result


async def register(conn: asyncpg.Connection, agent_id: str, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("name", agent_id)
    result: dict[str, Any] = await call(conn, "register_agent", agent_id=agent_id, **kwargs)
    return result


async def send(conn: asyncpg.Connection, agent_id: str, channel: str, payload: Any, **kwargs: Any) -> dict[str, Any]:
    result: dict[str, Any] = await call(
        conn, "send_message", agent_id=agent_id, channel=channel, payload=Json(payload), **kwargs
    )
    return result


async def count(conn: asyncpg.Connection, table: str, where: str = "true", *args: Any) -> int:
    value: int = await conn.fetchval(f"select count(*) from public.{table} where {where}", *args)
    return value


async def snapshot(conn: asyncpg.Connection) -> dict[str, tuple[int, str | None]]:
    """Row count and a digest of the contents of every table: equal snapshots mean nothing changed."""
    state: dict[str, tuple[int, str | None]] = {}
    for table in TABLES:
        row = await conn.fetchrow(
            f"select count(*) as n, md5(string_agg(t::text, '|' order by t::text)) as h from public.{table} t"
        )
        state[table] = (row["n"], row["h"])
    return state


async def expect_error(sqlstate: str | set[str], coro: Any, what: str = "") -> asyncpg.PostgresError:
    """Await ``coro`` and assert it raised a database error with that SQLSTATE (or one of them)."""
    with pytest.raises(asyncpg.PostgresError) as info:
        await coro
    codes = {sqlstate} if isinstance(sqlstate, str) else sqlstate
    assert info.value.sqlstate in codes, f"{what} {info.value.sqlstate}: {info.value}"
    return info.value


async def refused_unchanged(conn: asyncpg.Connection, sqlstate: str | set[str], fn: str, /, **kwargs: Any) -> None:
    """The call is refused with that SQLSTATE and no table changes."""
    before = await snapshot(conn)
    await expect_error(sqlstate, call(conn, fn, **kwargs))
    assert await snapshot(conn) == before


@asynccontextmanager
async def session_as(conn: asyncpg.Connection, role: str, claims: dict[str, Any]) -> AsyncIterator[None]:
    """A transaction whose real role is ``role`` and whose JWT claims are ``claims`` (any claims a
    session can set for itself), rolled back after."""
    tr = conn.transaction()
    await tr.start()
    try:
        await conn.execute("select set_config('request.jwt.claims', $1, true)", json.dumps(claims))
        await conn.execute(f"set local role {role}")
        yield
    finally:
        await tr.rollback()


@asynccontextmanager
async def acting_as(conn: asyncpg.Connection, agent_id: str | None, role: str = "authenticated") -> AsyncIterator[None]:
    """A transaction in which ``conn`` is a PostgREST request with that agent's JWT (rolled back after)."""
    claims: dict[str, Any] = {"role": role}
    if agent_id is not None:
        claims["agent_id"] = agent_id
    async with session_as(conn, role, claims):
        yield


SENTINEL_CHANNEL = "agent_runtime_test_sentinel"  # (no topic's channel: see wire.notification_channel)


class Listener:
    """LISTENs on the notification channels of ``topics`` (and nothing else) on its own
    connection and keeps every decoded payload."""

    def __init__(self, conn: asyncpg.Connection, topics: tuple[str, ...]) -> None:
        self.conn = conn
        self.topics = topics
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.events.append(json.loads(payload))
        self._changed.set()

    async def start(self) -> None:
        for topic in self.topics:
            await self.conn.add_listener(wire.notification_channel(topic), self._on_notify)
        await self.conn.add_listener(SENTINEL_CHANNEL, self._on_notify)

    async def wait_for(self, pred: Callable[[dict[str, Any]], bool], within: float = 3.0) -> dict[str, Any]:
        async with asyncio.timeout(within):
            while True:
                for event in self.events:
                    if pred(event):
                        return event
                self._changed.clear()
                await self._changed.wait()

    async def settle(self, sender: asyncpg.Connection) -> list[dict[str, Any]]:
        """Everything notified before now: a sentinel sent after it arrives after it (commit order)."""
        marker = uuid.uuid4().hex
        await sender.execute("select pg_notify($1, $2)", SENTINEL_CHANNEL, json.dumps({"sentinel": marker}))
        await self.wait_for(lambda e: e.get("sentinel") == marker)
        events = [e for e in self.events if "sentinel" not in e]
        self.events.clear()
        return events


@asynccontextmanager
async def listening(db_url: str, *topics: str) -> AsyncIterator[Listener]:
    """A listener for the wake-ups of ``topics`` (``channel:<name>``, ``agent:<id>``, ``presence``, ``locks``)."""
    conn = await asyncpg.connect(db_url)
    try:
        listener = Listener(conn, topics)
        await listener.start()
        yield listener
    finally:
        await conn.close()


@asynccontextmanager
async def connections(db_url: str, n: int) -> AsyncIterator[list[asyncpg.Connection]]:
    conns = await asyncio.gather(*(asyncpg.connect(db_url) for _ in range(n)))
    try:
        yield list(conns)
    finally:
        await asyncio.gather(*(c.close() for c in conns))


@asynccontextmanager
async def realtime_routing(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """Wake-ups sent through realtime.send too, as on Supabase (off on plain Postgres), meanwhile."""
    await conn.execute("update agent_runtime_private.wakeup_routes set realtime = true")
    try:
        yield
    finally:
        await conn.execute("update agent_runtime_private.wakeup_routes set realtime = false")


async def realtime_payloads(db_url: str, conn: asyncpg.Connection, action: Any, *,
                            routed: bool = True) -> list[dict[str, Any]]:
    """What the bootstrap's realtime.send broadcast (pg_notify on 'realtime:broadcast') during
    ``action``; ``routed``: with wake-ups routed through realtime.send as on Supabase."""
    if routed:
        async with realtime_routing(conn):
            return await realtime_payloads(db_url, conn, action, routed=False)
    listen = await asyncpg.connect(db_url)
    got: list[str] = []
    done = asyncio.Event()

    def on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        got.append(payload)
        if payload == "end":
            done.set()

    try:
        await listen.add_listener("realtime:broadcast", on_notify)
        await action()
        await conn.execute("select pg_notify('realtime:broadcast', 'end')")
        await asyncio.wait_for(done.wait(), 3)
    finally:
        await listen.close()
    return [json.loads(g) for g in got if g != "end"]

