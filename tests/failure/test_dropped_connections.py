"""Connections dropped again and again while messages flow: the LISTEN connection alone (wake-ups
lost, no safety poll to fall back on), then every connection of every runtime (calls failing
mid-flight). tests/runtime/test_resilience.py covers a single outage; these repeat it in a loop."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import anyio
import asyncpg
import pytest

from agent_runtime import AgentRuntime
from agent_runtime.errors import ConnectionLost

RuntimeFactory = Callable[..., AgentRuntime]

_LISTENERS = ("select pid from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid() "
              "and (query ilike 'LISTEN%' or query = 'select 1')")  # the LISTEN connection's health check
_OTHERS = "select pid from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()"


async def _terminate(conn: asyncpg.Connection, which: str) -> int:
    pids = [r["pid"] for r in await conn.fetch(which)]
    await conn.execute("select pg_terminate_backend(pid) from unnest($1::int[]) pid", pids)
    return len(pids)


async def _publish(rt: AgentRuntime, channel: str, numbers: range) -> None:
    """Publish with the retry a caller owes ConnectionLost (idempotency keys make a resend a no-op)."""
    while True:
        try:
            await rt.publish_many(channel, [{"n": n} for n in numbers],
                                  idempotency_keys=[f"{channel}:{n}" for n in numbers])
            return
        except ConnectionLost:
            await anyio.sleep(0.02)


class _Received:
    def __init__(self) -> None:
        self.broadcast: list[int] = []
        self.queue: list[int] = []
        self.changed = anyio.Event()

    def add(self, into: list[int], n: int) -> None:
        into.append(n)
        self.changed.set()
        self.changed = anyio.Event()

    async def wait_for(self, total: int) -> None:
        while not (set(self.broadcast) >= set(range(total)) and set(self.queue) >= set(range(total))):
            await self.changed.wait()


async def _consume(sub: AgentRuntime, got: _Received, *, task_status: anyio.abc.TaskStatus[None]) -> None:
    async def handle(msg: Any) -> None:
        got.add(got.queue, msg.payload["n"])

    sub.handle("drops-q", handle, kind="queue")
    async with sub.subscribe("drops-b") as s:
        task_status.started()
        async for msg in s:
            got.add(got.broadcast, msg.payload["n"])
            await msg.ack()


async def test_listen_connection_terminated_repeatedly_while_publishing(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection) -> None:
    """The LISTEN connections killed a dozen times, at random moments (also while reconnecting), as messages are
    published: with no safety poll, subscribers still get everything exactly once in order; no connection leaks."""
    rounds, per_round = 12, 5
    total = (rounds + 1) * per_round
    got = _Received()
    rng = random.Random(7)
    async with make_runtime("pub") as pub, make_runtime("sub", poll_interval=60) as sub:
        await pub.channel("drops-b")
        await pub.channel("drops-q", "queue")
        async with anyio.create_task_group() as tg:
            await tg.start(_consume, sub, got)
            await anyio.sleep(0.1)  # the queue handler subscribes
            killed = 0
            for r in range(rounds):
                numbers = range(r * per_round, (r + 1) * per_round)
                await pub.publish_many("drops-b", [{"n": n} for n in numbers])  # the pool is untouched
                await pub.publish_many("drops-q", [{"n": n} for n in numbers])
                killed += await _terminate(conn, _LISTENERS)
                await anyio.sleep(rng.choice((0.01, 0.03, 0.06, 0.1, 0.25)))
            assert killed >= rounds  # there was a listener to kill each round
            last = range(rounds * per_round, total)
            await pub.publish_many("drops-b", [{"n": n} for n in last])
            await pub.publish_many("drops-q", [{"n": n} for n in last])
            with anyio.fail_after(15):
                await got.wait_for(total)
                # One LISTEN connection per runtime again, nothing left over from the reconnects.
                while len(await conn.fetch(_LISTENERS)) != 2:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            backends = len(await conn.fetch(_OTHERS))
            tg.cancel_scope.cancel()
    assert got.broadcast == list(range(total))  # no loss, no duplicate, in order
    assert sorted(got.queue) == list(range(total))
    assert backends <= 2 * (4 + 1)  # each runtime: its pool (at most 4) and one LISTEN connection


async def test_every_connection_terminated_repeatedly_while_publishing(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection) -> None:
    """Every connection of both runtimes killed again and again, calls failing mid-flight: the publisher retries,
    the subscriber survives, and each broadcast and queue message arrives (at least once, broadcast in order)."""
    rounds, per_round = 10, 5
    total = rounds * per_round
    got = _Received()
    async with make_runtime("pub") as pub, make_runtime("sub", poll_interval=1.0) as sub:
        await pub.channel("drops-b")
        await pub.channel("drops-q", "queue", visibility_timeout=1.0)  # a claim whose reply was lost returns soon
        async with anyio.create_task_group() as tg:
            await tg.start(_consume, sub, got)
            await anyio.sleep(0.1)

            async def kill_loop(*, task_status: anyio.abc.TaskStatus[anyio.CancelScope]) -> None:
                rng = random.Random(11)
                with anyio.CancelScope() as scope:
                    task_status.started(scope)
                    while True:
                        await _terminate(conn, _OTHERS)
                        await anyio.sleep(rng.uniform(0.02, 0.15))

            killing = await tg.start(kill_loop)
            for r in range(rounds):
                numbers = range(r * per_round, (r + 1) * per_round)
                await _publish(pub, "drops-b", numbers)
                await _publish(pub, "drops-q", numbers)
                await anyio.sleep(0.05)
            await anyio.sleep(0.3)
            killing.cancel()  # stop killing; the runtimes reconnect and catch up
            with anyio.fail_after(20):
                await got.wait_for(total)
            tg.cancel_scope.cancel()
    assert set(got.broadcast) == set(got.queue) == set(range(total))
    firsts = list(dict.fromkeys(got.broadcast))
    assert firsts == sorted(firsts)  # redeliveries repeat, never reorder


async def test_realtime_websockets_dropped_while_publishing(db_url: str) -> None:
    """Supabase transport: the stand-in drops every Realtime websocket mid-stream; subscribers catch up, none lost."""
    testing = pytest.importorskip("agent_runtime.testing",
                                  reason="the Supabase stand-in (agent_runtime.testing) is not built yet")
    total = 40
    got: list[int] = []
    async with testing.SupabaseStandIn(db_url) as standin:
        options: dict[str, Any] = {"url": standin.url, "key": standin.service_role_key, "heartbeat_interval": 0.5,
                                   "janitor": False, "poll_interval": 60, "shutdown_timeout": 3.0, "migrate": False}
        async with AgentRuntime("pub", **options) as pub, AgentRuntime("sub", **options) as sub:
            await pub.channel("ws-b")
            arrived = anyio.Event()

            async def consume(task_status: anyio.abc.TaskStatus[None]) -> None:
                async with sub.subscribe("ws-b") as s:
                    task_status.started()
                    async for msg in s:
                        got.append(msg.payload["n"])
                        await msg.ack()
                        if len(got) == total:
                            arrived.set()

            async with anyio.create_task_group() as tg:
                await tg.start(consume)
                for n in range(total):
                    await pub.publish("ws-b", {"n": n})
                    if n % 10 == 5:
                        await standin.drop_websockets()
                with anyio.fail_after(20):
                    await arrived.wait()
                tg.cancel_scope.cancel()
    assert got == list(range(total))
