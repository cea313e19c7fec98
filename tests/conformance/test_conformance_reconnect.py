"""A dropped wake-up connection loses nothing: after it comes back, subscribers catch up."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import asyncpg

from agent_runtime import AgentRuntime
from tests.conformance._backend import Backend

RuntimeFactory = Callable[..., AgentRuntime]


async def _send(conn: asyncpg.Connection, sender: str, channel: str, numbers: range) -> None:
    """Publish straight through SQL, from the test's own connection (not the runtime's)."""
    payload = [{"payload": {"n": n}} for n in numbers]
    await conn.execute("select send_messages($1, $2, $3::jsonb)", sender, channel, json.dumps(payload))


async def test_catch_up_after_the_wake_up_connection_drops(
        make_runtime: RuntimeFactory, backend: Backend, conn: asyncpg.Connection) -> None:
    """Connections cut (Postgres backends terminated / Realtime websockets dropped) while messages
    are sent: broadcast subscriber, queue handler and inbox miss nothing, with no safety poll."""
    total = 30
    got: list[int] = []
    handled: list[int] = []
    inbox: list[int] = []
    resynced = anyio.Event()

    def reached(n: int) -> bool:
        return len(got) >= n and len(handled) >= n and len(inbox) >= n // 10

    async with make_runtime("pub") as pub, make_runtime("sub", poll_interval=60) as sub:
        await pub.channel("events")
        await pub.channel("tasks", "queue")

        @sub.on("tasks", kind="queue")
        async def handle(msg: Any) -> None:
            handled.append(msg.payload["n"])

        async def consume(task_status: anyio.abc.TaskStatus[None]) -> None:
            async with sub.subscribe("events") as s:
                task_status.started()
                async for msg in s:
                    got.append(msg.payload["n"])
                    await msg.ack()

        async def read_inbox() -> None:
            async for msg in sub.inbox():
                inbox.append(msg.payload["n"])
                await msg.ack()

        async def watch_presence(task_status: anyio.abc.TaskStatus[None]) -> None:
            async with sub.presence_events() as events:
                task_status.started()
                async for ev in events:
                    if ev.kind == "resync":
                        resynced.set()

        async def until(n: int) -> None:
            while not reached(n):  # noqa: ASYNC110 (several consumers to wait for)
                await anyio.sleep(0.02)

        async with anyio.create_task_group() as tg:
            await tg.start(consume)
            await tg.start(watch_presence)
            tg.start_soon(read_inbox)
            await anyio.sleep(0.3)  # the queue handler subscribes
            for channel in ("events", "tasks"):
                await pub.publish_many(channel, [{"n": n} for n in range(10)])
            await pub.send(sub.agent_id, {"n": 0})
            with anyio.fail_after(5):
                await until(10)

            await backend.drop_connections(conn)
            # Sent while the wake-up connection is down or coming back: only catch-up delivers it.
            for channel in ("events", "tasks"):
                await _send(conn, pub.agent_id, channel, range(10, 20))
            await _send(conn, pub.agent_id, f"agent:{sub.agent_id}", range(1, 2))

            with anyio.fail_after(15):
                await resynced.wait()  # the listener came back and said so
                await until(20)
                for channel in ("events", "tasks"):  # and calls work again
                    await pub.publish_many(channel, [{"n": n} for n in range(20, total)])
                await pub.send(sub.agent_id, {"n": 2})
                await until(total)
            tg.cancel_scope.cancel()
    assert got == list(range(total))
    assert sorted(handled) == list(range(total))
    assert inbox == [0, 1, 2]
