"""Resilience: dropped connections are caught up without loss; shutdown hands back in-flight work."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg

from agent_runtime import AgentRuntime

RuntimeFactory = Callable[..., AgentRuntime]


async def _send(conn: asyncpg.Connection, sender: str, channel: str, numbers: range) -> None:
    """Publish straight through SQL (from the test's own connection, which stays up)."""
    payload = [{"payload": {"n": n}} for n in numbers]
    await conn.execute("select send_messages($1, $2, $3::jsonb)", sender, channel, json.dumps(payload))


async def _listeners(conn: asyncpg.Connection) -> list[int]:
    rows = await conn.fetch("select pid from pg_stat_activity where datname = current_database() "
                            "and pid <> pg_backend_pid() and query ilike 'LISTEN%'")
    return [r["pid"] for r in rows]


@asynccontextmanager
async def _database_down(conn: asyncpg.Connection, db_url: str) -> AsyncIterator[None]:
    """Every other backend of the test database is terminated and no new connection is let in
    until the block ends (so whatever the block publishes is sent while the runtime is away)."""
    db = await conn.fetchval("select current_database()")
    parts = urlsplit(db_url)
    admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
    await admin.execute(f'alter database "{db}" allow_connections false')
    try:
        await conn.execute("select pg_terminate_backend(pid) from pg_stat_activity "
                           "where datname = current_database() and pid <> pg_backend_pid()")
        with anyio.fail_after(5):
            while await conn.fetchval("select count(*) from pg_stat_activity "  # noqa: ASYNC110
                                      "where datname = current_database() and pid <> pg_backend_pid()"):
                await anyio.sleep(0.02)
        yield
    finally:
        await admin.execute(f'alter database "{db}" allow_connections true')
        await admin.close()


async def test_subscribers_catch_up_after_the_connections_are_killed(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection, db_url: str) -> None:
    """With every connection killed and messages sent meanwhile, subscriber and queue handler miss nothing."""
    total = 30
    got: list[int] = []
    handled: list[int] = []
    reached = {n: anyio.Event() for n in (10, 20, total)}
    resynced = anyio.Event()

    def check() -> None:
        for n, event in reached.items():
            if len(got) >= n and len(handled) >= n:
                event.set()

    # No safety poll to fall back on: only wake-ups and the catch-up after a reconnect deliver.
    async with make_runtime("pub") as pub, make_runtime("sub", poll_interval=60) as sub:
        await pub.channel("events")
        await pub.channel("tasks", "queue")

        @sub.on("tasks", kind="queue")
        async def handle(msg: Any) -> None:
            handled.append(msg.payload["n"])
            check()

        async def consume(task_status: anyio.abc.TaskStatus[None]) -> None:
            async with sub.subscribe("events") as s:
                task_status.started()
                async for msg in s:
                    got.append(msg.payload["n"])
                    await msg.ack()
                    check()

        async def watch_presence(task_status: anyio.abc.TaskStatus[None]) -> None:
            async with sub.presence_events() as events:
                task_status.started()
                async for ev in events:
                    if ev.kind == "resync":
                        resynced.set()

        async with anyio.create_task_group() as tg:
            await tg.start(consume)
            await tg.start(watch_presence)
            await anyio.sleep(0.1)  # the queue handler subscribes
            for channel in ("events", "tasks"):
                await pub.publish_many(channel, [{"n": n} for n in range(10)])
            with anyio.fail_after(5):
                await reached[10].wait()
            assert await _listeners(conn)

            async with _database_down(conn, db_url):
                for channel in ("events", "tasks"):
                    await _send(conn, pub.agent_id, channel, range(10, 20))
                await anyio.sleep(0.3)

            with anyio.fail_after(15):
                await resynced.wait()  # the listener came back
                # What was sent while away arrives through the catch-up alone (no new wake-up).
                await reached[20].wait()
                for channel in ("events", "tasks"):  # the pool reconnects too
                    await pub.publish_many(channel, [{"n": n} for n in range(20, total)])
                await reached[total].wait()
            tg.cancel_scope.cancel()
    assert got == list(range(total))
    assert sorted(handled) == list(range(total))


async def _states(conn: asyncpg.Connection, channel: str) -> dict[tuple[str, str | None], int]:
    rows = await conn.fetch("select m.state, m.claimed_by, count(*) as n from distributed_messages m "
                            "join communication_channels c on c.id = m.channel_id where c.name = $1 "
                            "group by 1, 2", channel)
    return {(r["state"], r["claimed_by"]): r["n"] for r in rows}


async def test_shutdown_under_load_leaves_nothing_inflight(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection) -> None:
    """Leaving while handlers run: in-flight messages finish and are acked, claimed ones are handed back."""
    started = anyio.Event()
    handled: list[int] = []
    async with make_runtime("pub") as pub:
        await pub.channel("load", "queue")  # default visibility timeout: 30s
        await pub.publish_many("load", [{"n": n} for n in range(60)])
        async with make_runtime("worker", shutdown_timeout=3) as rt:
            agent = rt.agent_id

            async def slow(msg: Any) -> None:
                started.set()
                await anyio.sleep(0.2)
                handled.append(msg.payload["n"])

            rt.handle("load", slow, kind="queue", concurrency=3)
            with anyio.fail_after(5):
                await started.wait()
            await anyio.sleep(0.1)
            exit_started = anyio.current_time()
        assert anyio.current_time() - exit_started < 2  # handlers finish within the grace period
        states = await _states(conn, "load")
        assert not [k for k in states if k[0] == "inflight"], states
        assert states.get(("acked", agent), 0) == len(handled) > 0  # everything handled was acked
        assert states.get(("ready", None), 0) == 60 - len(handled)  # the rest is handed back at once
        # ...and is claimable by the next worker right away, not after a visibility timeout.
        async with make_runtime("next") as nxt:
            rest = anyio.Event()
            count = 0

            async def fast(msg: Any) -> None:
                nonlocal count
                count += 1
                if count == 60 - len(handled):
                    rest.set()

            nxt.handle("load", fast, kind="queue")
            with anyio.fail_after(5):
                await rest.wait()


async def test_shutdown_cancels_handlers_past_the_grace_period_and_nacks(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection) -> None:
    """A handler still running when the grace period ends is cancelled and its message handed back."""
    running = 0
    two_running = anyio.Event()
    async with make_runtime("pub") as pub:
        await pub.channel("stuck", "queue")
        await pub.publish_many("stuck", [{"n": n} for n in range(10)])
        async with make_runtime("worker", shutdown_timeout=0.5) as rt:
            agent = rt.agent_id

            async def forever(msg: Any) -> None:
                nonlocal running
                running += 1
                if running == 2:
                    two_running.set()
                await anyio.sleep(30)

            rt.handle("stuck", forever, kind="queue", concurrency=2)
            with anyio.fail_after(5):
                await two_running.wait()
            exit_started = anyio.current_time()
        assert anyio.current_time() - exit_started < 2.5
        states = await _states(conn, "stuck")
        assert states == {("ready", None): 10}, (agent, states)
        reasons = await conn.fetch("select last_error, count(*) as n from distributed_messages m "
                                   "join communication_channels c on c.id = m.channel_id "
                                   "where c.name = 'stuck' and attempts > 0 group by 1")
        # the two running handlers were cancelled; what sat in their batches was handed back unread
        assert {r["last_error"]: r["n"] for r in reasons}.get("handler cancelled (shutdown)") == 2


async def test_leaving_while_messages_keep_arriving_leaves_nothing_inflight(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection) -> None:
    """Workers that leave while a producer keeps publishing leave no message claimed behind them."""
    leftovers: dict[str, int] = {}
    async with make_runtime("pub") as pub:
        await pub.channel("stream", "queue")
        for i in range(8):
            async with make_runtime(f"w{i}") as rt:
                async def handle(msg: Any) -> None:
                    pass

                rt.handle("stream", handle, kind="queue", concurrency=4)

                async def feed() -> None:
                    while True:
                        await pub.publish_many("stream", [{"n": n} for n in range(5)])

                async with anyio.create_task_group() as tg:
                    tg.start_soon(feed)
                    await anyio.sleep(0.05 + 0.01 * i)
                    tg.cancel_scope.cancel()
            # claims in progress at the moment of leaving are handed back too, not left to time out
            leftovers[rt.agent_id] = await conn.fetchval(
                "select count(*) from distributed_messages where state = 'inflight' and claimed_by = $1",
                rt.agent_id)
    assert not any(leftovers.values()), leftovers


async def test_handing_back_unread_messages_does_not_use_up_their_attempts(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection) -> None:
    """Messages claimed in a batch but never handed to the handler go back to 'ready' with no attempt used."""
    async with make_runtime("pub") as pub:
        await pub.channel("once", "queue", max_attempts=1)
        await pub.publish_many("once", [{"n": n} for n in range(10)])
        first = anyio.Event()
        async with make_runtime("worker") as rt:
            agent = rt.agent_id

            async def slow(msg: Any) -> None:
                first.set()
                await anyio.sleep(0.3)

            rt.handle("once", slow, kind="queue")  # claims a batch of 10, handles one at a time
            with anyio.fail_after(5):
                await first.wait()
        states = await _states(conn, "once")
        assert states == {("acked", agent): 1, ("ready", None): 9}, states
        assert await conn.fetchval("select max(attempts) from distributed_messages where state = 'ready'") == 0
        assert await pub.dead_letters("once") == []


async def test_requests_claimed_but_not_started_are_handed_back_at_shutdown(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection) -> None:
    """Leaving with requests waiting for a worker: they go back to the table without using up an attempt."""
    async with make_runtime("client") as client:
        async with make_runtime("slow", request_concurrency=1, shutdown_timeout=0.2) as slow:
            started = anyio.Event()

            @slow.on_request
            async def hold(msg: Any) -> Any:
                started.set()
                await anyio.sleep_forever()

            async with anyio.create_task_group() as tg:
                for i in range(3):
                    tg.start_soon(_ask_ignoring_errors, client, slow.agent_id, i)
                with anyio.fail_after(5):
                    await started.wait()
                await anyio.sleep(0.3)  # the other two are claimed and queued (or wait in the table)
                tg.cancel_scope.cancel()
        rows = await conn.fetch("select m.state, m.attempts from distributed_messages m join communication_channels c "
                                "on c.id = m.channel_id where c.name = $1 and m.reply_to is not null",
                                f"agent:{slow.agent_id}")
        assert len(rows) == 3
        assert sorted((r["state"], r["attempts"]) for r in rows) == [("ready", 0), ("ready", 0), ("ready", 1)]


async def _ask_ignoring_errors(client: AgentRuntime, agent_id: str, i: int) -> None:
    with anyio.move_on_after(10):
        await client.request(agent_id, {"i": i}, timeout=30)
