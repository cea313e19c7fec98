"""Messages: publish->deliver latency on a broadcast channel, batched broadcast throughput, and
queue claim+ack throughput, each beside the same work done with raw asyncpg."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from typing import Any

import anyio
import asyncpg
import msgspec
from anyio.abc import TaskStatus

from agent_runtime import AgentRuntime, Message

from ._common import Bench, Figure, ms, percentile, runtime
from ._cpu import CpuMeter, CpuUse, postmaster_pid

TEXT = "a payload of about a hundred bytes, like a small task description or a status line"
_encode = msgspec.json.encode


class _Arrivals:
    """Counts deliveries of the current message; ``complete`` is set when all receivers have it."""

    def __init__(self, receivers: int) -> None:
        self.receivers = receivers
        self.count = 0
        self.complete = anyio.Event()

    def reset(self) -> None:
        self.count = 0
        self.complete = anyio.Event()

    def hit(self) -> None:
        self.count += 1
        if self.count >= self.receivers:
            self.complete.set()


# ---------------------------------------------------------------------------------------------- latency

class _RuntimeLatency:
    """One publisher runtime, ``subscribers`` subscriber runtimes on a broadcast channel. A sample:
    seconds from the start of publish() to the message coming out of each subscriber's loop."""

    def __init__(self, url: str, subscribers: int, options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.options = options or {}
        self.channel = f"bench.latency.{subscribers}"
        self.subscribers = subscribers
        self.latencies: list[float] = []
        self._arrivals = _Arrivals(subscribers)
        self._sent_at = 0.0
        self._record = False
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> _RuntimeLatency:
        stack = self._stack
        await stack.__aenter__()
        self._pub = await stack.enter_async_context(runtime(self.url, "bench-publisher", **self.options))
        await self._pub.channel(self.channel, "broadcast")
        subs = [await stack.enter_async_context(runtime(self.url, f"bench-subscriber-{i}", **self.options))
                for i in range(self.subscribers)]
        tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tg.cancel_scope.cancel)
        for rt in subs:
            await tg.start(self._consume, rt)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._stack.__aexit__(*exc_info)

    async def _consume(self, rt: AgentRuntime, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with rt.subscribe(self.channel, kind="broadcast") as sub:
            task_status.started()
            async for msg in sub:
                now = time.perf_counter()
                if self._record:
                    self.latencies.append(now - self._sent_at)
                await msg.ack()
                self._arrivals.hit()

    async def sample(self, n: int, record: bool) -> None:
        self._arrivals.reset()
        self._record = record
        self._sent_at = time.perf_counter()
        await self._pub.publish(self.channel, {"n": n, "text": TEXT})
        with anyio.fail_after(30):
            await self._arrivals.complete.wait()


class _RawLatency:
    """The floor: INSERT + pg_notify in one statement (one transaction, one round trip), and
    ``subscribers`` LISTEN connections timing the notification's arrival."""

    def __init__(self, url: str, subscribers: int) -> None:
        self.url = url
        self.subscribers = subscribers
        self.latencies: list[float] = []
        self._arrivals = _Arrivals(subscribers)
        self._sent_at = 0.0
        self._record = False
        self._conns: list[asyncpg.Connection] = []

    async def __aenter__(self) -> _RawLatency:
        pub = await asyncpg.connect(self.url)
        self._conns.append(pub)
        await pub.execute("create table if not exists bench_events (id bigserial primary key,"
                          " payload jsonb not null, created_at timestamptz not null default now())")
        for _ in range(self.subscribers):
            conn = await asyncpg.connect(self.url)
            self._conns.append(conn)
            await conn.add_listener("bench_events", self._on_notify)
        self._insert = await pub.prepare("with i as (insert into bench_events (payload) values ($1::jsonb)"
                                         " returning id) select pg_notify('bench_events', $2) from i")
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        for conn in self._conns:
            await conn.close()

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, _payload: str) -> None:
        now = time.perf_counter()
        if self._record:
            self.latencies.append(now - self._sent_at)
        self._arrivals.hit()

    async def sample(self, n: int, record: bool) -> None:
        self._arrivals.reset()
        self._record = record
        self._sent_at = time.perf_counter()
        await self._insert.fetch(_encode({"n": n, "text": TEXT}).decode(), str(n))
        with anyio.fail_after(30):
            await self._arrivals.complete.wait()


async def latency(bench: Bench, subscribers: int) -> list[Figure]:
    from .peers import nats_latency

    async with bench.fresh_db() as url:
        figures = await latency_on(url, url, bench.settings.latency_samples, bench.settings.latency_gap,
                                   subscribers, f"latency 1->{subscribers}", target=1.5)  # (issue 13's)
    figures[0].peers.update(await nats_latency(subscribers, bench.settings.latency_samples))
    return figures


async def latency_on(db_url: str, runtime_url: str, samples: int, gap: float, subscribers: int, section: str,
                     *, target: float = 2.0, **options: Any) -> list[Figure]:
    """Runtimes connect to ``runtime_url`` (with ``options``), the floor to ``db_url``, the same
    database. Samples alternate between the two, so both see the same disk and CPU weather."""
    warmup = 20
    async with _RawLatency(db_url, subscribers) as raw, _RuntimeLatency(runtime_url, subscribers, options) as ours:
        for n in range(warmup + samples):
            for side in (raw, ours):
                await side.sample(n, record=n >= warmup)
                await anyio.sleep(gap)
    base = "INSERT+pg_notify -> LISTEN, raw asyncpg"
    return [
        Figure(section, f"publish->deliver p50, 1->{subscribers} broadcast", ms(percentile(ours.latencies, 50)),
               "ms", ms(percentile(raw.latencies, 50)), base, "lower", target=target,
               extra={"samples": len(ours.latencies), "baseline_samples": len(raw.latencies)}),
        Figure(section, f"publish->deliver p99, 1->{subscribers} broadcast", ms(percentile(ours.latencies, 99)),
               "ms", ms(percentile(raw.latencies, 99)), base, "lower"),
    ]


# ---------------------------------------------------------------------------------------------- fan-out

FANOUT_CHANNELS = 10
_FANOUT_WARMUP = 2 * FANOUT_CHANNELS  # messages first, not measured (plans, first fetches)


class _RuntimeFanout:
    """One publisher, FANOUT_CHANNELS broadcast channels with one subscriber runtime each; each
    message goes to the next channel in turn: a wake-up concerns one runtime of the ten."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[float] = []
        self._arrived = _Arrivals(1)
        self._sent_at = 0.0
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> _RuntimeFanout:
        stack = self._stack
        await stack.__aenter__()
        self._pub = await stack.enter_async_context(runtime(self.url, "bench-fanout-publisher"))
        for i in range(FANOUT_CHANNELS):
            await self._pub.channel(f"bench.fanout.{i}", "broadcast")
        subs = [await stack.enter_async_context(runtime(self.url, f"bench-fanout-{i}"))
                for i in range(FANOUT_CHANNELS)]
        tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tg.cancel_scope.cancel)
        for i, rt in enumerate(subs):
            await tg.start(self._consume, rt, f"bench.fanout.{i}")
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._stack.__aexit__(*exc_info)

    async def _consume(self, rt: AgentRuntime, channel: str, *,
                       task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with rt.subscribe(channel, kind="broadcast") as sub:
            task_status.started()
            async for msg in sub:
                self.latencies.append(time.perf_counter() - self._sent_at)
                await msg.ack()
                self._arrived.hit()

    async def sample(self, n: int) -> None:
        self._arrived.reset()
        self._sent_at = time.perf_counter()
        await self._pub.publish(f"bench.fanout.{n % FANOUT_CHANNELS}", {"n": n, "text": TEXT})
        with anyio.fail_after(30):
            await self._arrived.complete.wait()


class _RawFanout:
    """The floor: INSERT + pg_notify on the message's channel, FANOUT_CHANNELS LISTEN connections,
    each on its own channel."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[float] = []
        self._arrived = _Arrivals(1)
        self._sent_at = 0.0
        self._conns: list[asyncpg.Connection] = []

    async def __aenter__(self) -> _RawFanout:
        pub = await asyncpg.connect(self.url)
        self._conns.append(pub)
        await pub.execute("create table if not exists bench_fanout (id bigserial primary key,"
                          " payload jsonb not null, created_at timestamptz not null default now())")
        for i in range(FANOUT_CHANNELS):
            conn = await asyncpg.connect(self.url)
            self._conns.append(conn)
            await conn.add_listener(f"bench_fanout_{i}", self._on_notify)
        self._insert = await pub.prepare("with i as (insert into bench_fanout (payload) values ($1::jsonb)"
                                         " returning id) select pg_notify($2, id::text) from i")
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        for conn in self._conns:
            await conn.close()

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, _payload: str) -> None:
        self.latencies.append(time.perf_counter() - self._sent_at)
        self._arrived.hit()

    async def sample(self, n: int) -> None:
        self._arrived.reset()
        self._sent_at = time.perf_counter()
        await self._insert.fetch(_encode({"n": n, "text": TEXT}).decode(), f"bench_fanout_{n % FANOUT_CHANNELS}")
        with anyio.fail_after(30):
            await self._arrived.complete.wait()


async def _fanout_phase(side: _RawFanout | _RuntimeFanout, messages: int, meter: CpuMeter) -> CpuUse:
    """Messages back to back (each after the last one arrived): the CPU metered is the messages',
    not the runtimes' idle timers over a longer run."""
    for n in range(-_FANOUT_WARMUP, 0):
        await side.sample(n)
    side.latencies.clear()
    started = meter.start()
    for n in range(messages):
        await side.sample(n)
    return meter.stop(started)


async def fanout(bench: Bench) -> list[Figure]:
    """Wake-ups that concern one runtime of ten (each runtime LISTENs to its own topics only).
    One side at a time (the other not connected), so that each one's CPU can be metered."""
    meter = CpuMeter(postmaster_pid(bench.server.data_dir))
    messages = bench.settings.latency_samples
    async with bench.fresh_db() as url:
        async with _RawFanout(url) as raw:
            raw_use = await _fanout_phase(raw, messages, meter)
        async with _RuntimeFanout(url) as ours:
            ours_use = await _fanout_phase(ours, messages, meter)
    section = f"fan-out 1->1 of {FANOUT_CHANNELS}"
    base = f"INSERT+pg_notify -> LISTEN, {FANOUT_CHANNELS} connections each on its own channel, raw asyncpg"
    ours_cpu, raw_cpu = ours_use.per(messages), raw_use.per(messages)
    return [
        Figure(section, f"publish->deliver p50, {FANOUT_CHANNELS} channels, one subscriber runtime each",
               ms(percentile(ours.latencies, 50)), "ms", ms(percentile(raw.latencies, 50)), base, "lower",
               target=1.5),
        Figure(section, "client CPU s per 10k messages (this process)", ours_cpu.client, "s", raw_cpu.client,
               base, "lower"),
        Figure(section, "CPU s per 10k messages (client+server)", ours_cpu.total, "s", raw_cpu.total, base, "lower",
               target=1.5),
    ]


# ---------------------------------------------------------------------------------------------- throughput

async def _runtime_throughput(url: str, publishers: int, subscribers: int, per_publisher: int,
                              batch: int, options: dict[str, Any] | None = None) -> tuple[float, float]:
    """(delivered messages/s summed over subscribers, published messages/s)."""
    channel = "bench.throughput"
    total = publishers * per_publisher
    opts = options or {}
    async with AsyncExitStack() as stack:
        pubs = [await stack.enter_async_context(runtime(url, f"bench-producer-{i}", **opts))
                for i in range(publishers)]
        subs = [await stack.enter_async_context(runtime(url, f"bench-consumer-{i}", **opts))
                for i in range(subscribers)]
        await pubs[0].channel(channel, "broadcast")
        received = [0] * subscribers
        everything = _Arrivals(subscribers)

        async def consume(i: int, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            async with subs[i].subscribe(channel, kind="broadcast") as sub:
                task_status.started()
                async for msg in sub:
                    await msg.ack()
                    received[i] += 1
                    if received[i] == total:
                        everything.hit()

        published_at: list[float] = []

        async def produce(p: int) -> None:
            for start in range(0, per_publisher, batch):
                await pubs[p].publish_many(channel, [{"p": p, "n": n, "text": TEXT}
                                                     for n in range(start, min(start + batch, per_publisher))])
            published_at.append(time.perf_counter())

        async with anyio.create_task_group() as tg:
            for i in range(subscribers):
                await tg.start(consume, i)
            started = time.perf_counter()
            async with anyio.create_task_group() as producers:
                for p in range(publishers):
                    producers.start_soon(produce, p)
            with anyio.fail_after(300):
                await everything.complete.wait()
            elapsed = time.perf_counter() - started
            tg.cancel_scope.cancel()
    return subscribers * total / elapsed, total / (max(published_at) - started)


async def _raw_throughput(url: str, connections: int, per_connection: int, batch: int) -> float:
    """The floor: batched INSERTs (unnest of a jsonb array) from several connections; rows/s."""
    conns = [await asyncpg.connect(url) for _ in range(connections)]
    try:
        await conns[0].execute("create table if not exists bench_rows (id bigserial primary key,"
                               " payload jsonb not null, created_at timestamptz not null default now())")

        async def produce(p: int) -> None:
            insert = await conns[p].prepare("insert into bench_rows (payload) select unnest($1::jsonb[])")
            for start in range(0, per_connection, batch):
                await insert.fetch([_encode({"p": p, "n": n, "text": TEXT}).decode()
                                    for n in range(start, min(start + batch, per_connection))])

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for p in range(connections):
                tg.start_soon(produce, p)
        elapsed = time.perf_counter() - started
    finally:
        for conn in conns:
            await conn.close()
    return connections * per_connection / elapsed


async def throughput(bench: Bench) -> list[Figure]:
    async with bench.fresh_db() as url:
        return await throughput_on(url, url, bench.settings.throughput_messages, "throughput 4->4")


async def throughput_on(db_url: str, runtime_url: str, n: int, section: str, **options: Any) -> list[Figure]:
    """4 publishers -> 4 subscribers through runtimes on ``runtime_url``; the floor on ``db_url``."""
    raw = await _raw_throughput(db_url, 4, n, 100)
    delivered, published = await _runtime_throughput(runtime_url, 4, 4, n, 100, options)
    return [Figure(section, "delivered msg/s, 4 publishers -> 4 subscribers (batches of 100)",
                   round(delivered), "msg/s", round(raw), "batched INSERT rows/s, 4 connections", "higher",
                   target=0.30, extra={"published_per_s": round(published), "messages": 4 * n,
                                       "deliveries": 16 * n})]


# ---------------------------------------------------------------------------------------------- queue

async def _prefill_queue(url: str, channel: str, total: int) -> None:
    async with runtime(url, "bench-queue-producer") as rt:
        await rt.channel(channel, "queue")
        for start in range(0, total, 1000):
            await rt.publish_many(channel, [{"n": n, "text": TEXT} for n in range(start, min(start + 1000, total))])


async def _runtime_queue(url: str, total: int, runtimes: int, concurrency: int) -> float:
    """Messages claimed, handled and acked per second by ``runtimes`` x ``concurrency`` handlers."""
    channel = f"bench.queue.{runtimes}x{concurrency}"
    await _prefill_queue(url, channel, total)
    handled = 0
    done = anyio.Event()

    async def handler(_msg: Message[Any]) -> None:
        nonlocal handled
        handled += 1
        if handled >= total:
            done.set()

    async with AsyncExitStack() as stack:
        rts = [await stack.enter_async_context(runtime(url, f"bench-worker-{i}")) for i in range(runtimes)]
        started = time.perf_counter()
        for rt in rts:
            rt.handle(channel, handler, kind="queue", concurrency=concurrency)
        with anyio.fail_after(300):
            await done.wait()
        elapsed = time.perf_counter() - started
    return total / elapsed


async def _raw_queue(url: str, total: int, consumers: int, batch: int) -> float:
    """The floor: ``SELECT ... FOR UPDATE SKIP LOCKED`` claim (as an UPDATE) + ack UPDATE, per batch."""
    conns = [await asyncpg.connect(url) for _ in range(consumers)]
    try:
        await conns[0].execute(
            "create table bench_queue (id bigserial primary key, payload jsonb not null,"
            " state text not null default 'ready', attempts integer not null default 0);"
            " create index bench_queue_ready on bench_queue (id) where state = 'ready'")
        await conns[0].execute("insert into bench_queue (payload) select unnest($1::jsonb[])",
                               [_encode({"n": n, "text": TEXT}).decode() for n in range(total)])
        await conns[0].execute("vacuum analyze bench_queue")

        async def consume(conn: asyncpg.Connection) -> None:
            claim = await conn.prepare(
                "update bench_queue q set state = 'inflight', attempts = q.attempts + 1"
                " from (select id from bench_queue where state = 'ready' order by id limit $1 for update skip locked) p"
                " where q.id = p.id returning q.id, q.payload")
            ack = await conn.prepare("update bench_queue set state = 'acked' where id = any($1::bigint[])")
            while True:
                rows = await claim.fetch(batch)
                if not rows:
                    return
                await ack.fetch([r["id"] for r in rows])

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for conn in conns:
                tg.start_soon(consume, conn)
        elapsed = time.perf_counter() - started
    finally:
        for conn in conns:
            await conn.close()
    return total / elapsed


async def queue(bench: Bench) -> list[Figure]:
    total = bench.settings.queue_messages
    async with bench.fresh_db() as url:
        raw = await _raw_queue(url, total, 8, 10)
        eight_runtimes = await _runtime_queue(url, total, 8, 1)
        one_runtime = await _runtime_queue(url, total, 1, 8)
    base = "SKIP LOCKED claim (10) + ack UPDATE, 8 connections"
    return [
        Figure("queue x8", "claim+ack msg/s, 8 runtimes x 1 handler", round(eight_runtimes), "msg/s", round(raw),
               base, "higher", extra={"messages": total}),
        Figure("queue x8", "claim+ack msg/s, 1 runtime, handler concurrency=8", round(one_runtime), "msg/s",
               round(raw), base, "higher", extra={"messages": total}),
    ]
