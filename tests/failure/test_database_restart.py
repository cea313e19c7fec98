"""Postgres restarted under load, on a private server started for this test only (never the session's
shared one): the runtimes survive, publishers retry on ConnectionLost, and nothing acknowledged is lost."""

from __future__ import annotations

import itertools
import shutil
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import anyio
import asyncpg

from agent_runtime import AgentRuntime
from agent_runtime.errors import ConnectionLost
from agent_runtime.local import embedded
from agent_runtime.local.migrations import migrate_url


def _runtime(url: str, name: str) -> AgentRuntime:
    return AgentRuntime(name, url=url, heartbeat_interval=0.5, janitor=False, metrics_interval=0.5,
                        poll_interval=1.0, shutdown_timeout=3.0, retry_base_delay=0.05, migrate=False, pool_size=4)


async def test_database_restart_under_load_loses_no_acknowledged_message() -> None:
    """Publishers and subscribers run while the server is stopped and started again: every message whose send
    was acknowledged reaches every broadcast subscriber (in order) and the queue's consumers; the runtimes survive."""
    scratch = embedded.scratch_dir("ar-restart-")  # reachable by the server's user when run as root
    data_dir = scratch / "pgdata"
    server = await anyio.to_thread.run_sync(embedded.ensure_running, data_dir)
    try:
        admin = await asyncpg.connect(server.url("postgres"))
        try:
            await admin.execute('create database "restart_test"')
        finally:
            await admin.close()
        url = server.url("restart_test")
        await migrate_url(url)
        await _run_restart_under_load(url, data_dir)
    finally:
        await anyio.to_thread.run_sync(embedded.stop, data_dir)
        shutil.rmtree(scratch, ignore_errors=True)


async def _run_restart_under_load(url: str, data_dir: Path) -> None:
    acked: dict[str, set[tuple[int, int]]] = {"restart-q": set(), "restart-b": set()}
    failures: Counter[int] = Counter()
    queue_got: list[tuple[int, int]] = []
    broadcast_got: dict[int, list[tuple[int, int]]] = defaultdict(list)
    stop_publishing = anyio.Event()
    restarted = anyio.Event()
    acked_after_restart = 0

    async def publisher(rt: AgentRuntime, p: int) -> None:
        nonlocal acked_after_restart
        for i in itertools.count():
            if stop_publishing.is_set():
                return
            for channel in ("restart-q", "restart-b"):
                while True:  # the publisher retries: the idempotency key makes a resend after a lost reply a no-op
                    try:
                        await rt.publish(channel, {"p": p, "n": i}, idempotency_key=f"{channel}:{i}")
                        break
                    except ConnectionLost:
                        failures[p] += 1
                        await anyio.sleep(0.05)
                acked[channel].add((p, i))
                if restarted.is_set():
                    acked_after_restart += 1
            await anyio.sleep(0.005)

    async def consume_broadcast(rt: AgentRuntime, s: int, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with rt.subscribe("restart-b") as sub:
            task_status.started()
            async for msg in sub:
                broadcast_got[s].append((msg.payload["p"], msg.payload["n"]))
                await msg.ack()

    async def record_queue(msg: Any) -> None:
        queue_got.append((msg.payload["p"], msg.payload["n"]))

    def everything_arrived() -> bool:
        return acked["restart-q"] <= set(queue_got) and all(
            acked["restart-b"] <= set(broadcast_got[s]) for s in range(2))

    async with (_runtime(url, "pub-0") as pub0, _runtime(url, "pub-1") as pub1,
                _runtime(url, "sub-0") as sub0, _runtime(url, "sub-1") as sub1):
        await pub0.channel("restart-q", "queue", visibility_timeout=1.0)  # claims lost in the crash return soon
        await pub0.channel("restart-b", "broadcast")
        async with anyio.create_task_group() as tg:
            for s, sub in enumerate((sub0, sub1)):
                sub.handle("restart-q", record_queue, kind="queue")
                await tg.start(consume_broadcast, sub, s)
            tg.start_soon(publisher, pub0, 0)
            tg.start_soon(publisher, pub1, 1)
            await anyio.sleep(0.8)
            before = sum(len(v) for v in acked.values())
            assert before > 0
            await anyio.to_thread.run_sync(embedded.stop, data_dir)  # pg_ctl stop -m fast: sessions killed
            await anyio.sleep(0.5)  # publishers keep trying meanwhile
            await anyio.to_thread.run_sync(embedded.ensure_running, data_dir)
            restarted.set()
            with anyio.fail_after(20):
                while acked_after_restart < 100:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            stop_publishing.set()
            with anyio.fail_after(30):
                while not everything_arrived():  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
    assert sum(failures.values()) > 0  # the restart did hit the publishers mid-stream
    assert acked["restart-q"] <= set(queue_got)  # zero loss on the queue
    for s in range(2):
        assert acked["restart-b"] <= set(broadcast_got[s])  # and for each broadcast subscriber
        for p in range(2):  # one consumer sees a channel in order (redeliveries repeat, never reorder)
            firsts = list(dict.fromkeys(n for q, n in broadcast_got[s] if q == p))
            assert firsts == sorted(firsts), (s, p)

