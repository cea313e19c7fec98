"""Peers measured beside us in the same run, on the same machine: request/reply against a raw
durable ping-pong, queue claim+ack by depth and one at a time, jobs through a queue channel, and
CPU seconds per 10,000 delivered messages (client and server) for each. Peers that install here
are measured too: procrastinate (a Postgres task queue, on the same server) and NATS JetStream
(``nats-server`` from Debian's packages and ``nats-py``; file storage, which acknowledges before
fsync by default — so our figures with ``synchronous_commit=off`` stand beside it as the
like-with-like row). A peer that is not installed is reported as absent, never guessed."""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import msgspec

from agent_runtime import AgentRuntime, Message

from ._common import Bench, Figure, ms, percentile, runtime, server_counts
from ._cpu import CpuMeter, CpuUse, postmaster_pid

TEXT = "a payload of about a hundred bytes, like a small task description or a status line"
_encode = msgspec.json.encode


def _meter(bench: Bench) -> CpuMeter:
    return CpuMeter(postmaster_pid(bench.server.data_dir))


@asynccontextmanager
async def _sync_commit_off(bench: Bench) -> AsyncIterator[str]:
    """A fresh database whose sessions commit without waiting for the WAL flush."""
    async with bench.fresh_db() as url:
        conn = await asyncpg.connect(url)
        try:
            name = await conn.fetchval("select current_database()")
            await conn.execute(f'alter database "{name}" set synchronous_commit = off')
        finally:
            await conn.close()
        yield url


# ---------------------------------------------------------------------------------------------- request/reply

_WARM_UP = 20  # round trips before the measured ones


async def _runtime_request_reply(url: str, samples: int, meter: CpuMeter,
                                 warm_up: int = _WARM_UP) -> tuple[list[float], CpuUse]:
    async with runtime(url, "bench-requester") as requester, runtime(url, "bench-responder") as responder:
        @responder.on_request
        async def answer(msg: Message[Any]) -> Any:
            return {"ok": msg.payload["n"]}

        times: list[float] = []
        cpu = meter.start()
        for n in range(samples + warm_up):
            started = time.perf_counter()
            await requester.request(responder.agent_id, {"n": n, "text": TEXT}, timeout=10)
            if n >= warm_up:
                times.append(time.perf_counter() - started)
        return times, meter.stop(cpu)


async def _raw_request_reply(url: str, samples: int, meter: CpuMeter) -> tuple[list[float], CpuUse]:
    """The floor: each hop one durable commit (INSERT + pg_notify in one statement), the other side
    woken by LISTEN — a request row, then a reply row."""
    a, b = await asyncpg.connect(url), await asyncpg.connect(url)
    try:
        await a.execute("create table if not exists bench_rr (id bigserial primary key, kind text not null,"
                        " payload jsonb not null, created_at timestamptz not null default now())")
        send = ("with i as (insert into bench_rr (kind, payload) values ($1, $2::jsonb) returning id)"
                " select pg_notify($3, id::text) from i")
        a_send, b_send = await a.prepare(send), await b.prepare(send)
        replied = anyio.Event()
        requests: list[str] = []
        request_arrived = anyio.Event()

        def on_request(_c: Any, _p: int, _ch: str, payload: str) -> None:
            requests.append(payload)
            request_arrived.set()

        def on_reply(_c: Any, _p: int, _ch: str, _payload: str) -> None:
            replied.set()

        await b.add_listener("bench_req", on_request)
        await a.add_listener("bench_rep", on_reply)
        times: list[float] = []
        async with anyio.create_task_group() as tg:
            async def responder() -> None:
                nonlocal request_arrived
                while True:
                    await request_arrived.wait()
                    request_arrived = anyio.Event()
                    while requests:
                        requests.pop()
                        await b_send.fetch("rep", '{"ok": true}', "bench_rep")

            tg.start_soon(responder)
            cpu = meter.start()
            for n in range(samples + 20):
                replied = anyio.Event()
                started = time.perf_counter()
                await a_send.fetch("req", _encode({"n": n, "text": TEXT}).decode(), "bench_req")
                with anyio.fail_after(10):
                    await replied.wait()
                if n >= 20:
                    times.append(time.perf_counter() - started)
            use = meter.stop(cpu)
            tg.cancel_scope.cancel()
        return times, use
    finally:
        await a.close()
        await b.close()


async def _transactions(url: str) -> int:
    """Transactions committed in this database so far, by every backend (read once the measured
    connections are closed, and a moment later: a backend's statistics are flushed when it exits)."""
    commits, _ = await server_counts(url, settle=0.3)
    return commits


async def request_reply(bench: Bench) -> list[Figure]:
    samples = bench.settings.reqreply_samples
    meter = _meter(bench)
    round_trips = samples + _WARM_UP
    async with bench.fresh_db() as url:
        # Transactions per round trip, every backend counted (the listening connections' too: each
        # notifying commit costs one in every backend that LISTENs in the database). Ours: less
        # those of a session with no round trip (start-up and shutdown).
        counts = [await _transactions(url)]
        raw, raw_cpu = await _raw_request_reply(url, samples, meter)
        counts.append(await _transactions(url))
        ours, ours_cpu = await _runtime_request_reply(url, samples, meter)
        counts.append(await _transactions(url))
        await _runtime_request_reply(url, 0, meter, warm_up=0)
        counts.append(await _transactions(url))
        raw_xacts = counts[1] - counts[0] - 1  # (each count's own connection commits once, when it closes)
        ours_xacts = (counts[2] - counts[1] - 1) - (counts[3] - counts[2] - 1)
    async with _sync_commit_off(bench) as url:
        raw_async, _ = await _raw_request_reply(url, samples, meter)
        ours_async, _ = await _runtime_request_reply(url, samples, meter)
    peers: dict[str, float] = {}
    notes = []
    async with NatsServer.started() as nats:
        if nats is None:
            notes.append("NATS: not installed")
        else:
            peers["NATS JetStream (acks before fsync)"] = ms(percentile(await nats.request_reply(samples), 50))
    # Two messages per round trip (request and reply).
    delivered = 2 * (samples + 20)
    base = "durable ping-pong: INSERT+pg_notify each way, raw asyncpg"
    return [
        Figure("request/reply", "round trip p50", ms(percentile(ours, 50)), "ms", ms(percentile(raw, 50)), base,
               "lower", target=1.5, peers=peers, note="; ".join(notes),
               extra={"samples": samples,
                      "transactions_per_round_trip": round(ours_xacts / round_trips, 2),
                      "baseline_transactions_per_round_trip": round(raw_xacts / round_trips, 2)}),
        Figure("request/reply", "round trip p50, synchronous_commit=off", ms(percentile(ours_async, 50)), "ms",
               ms(percentile(raw_async, 50)), base + ", synchronous_commit=off", "lower", peers=peers),
        Figure("request/reply", "CPU s per 10k messages (client+server)",
               ours_cpu.per(delivered).total, "s", raw_cpu.per(delivered).total, base, "lower", target=1.5,
               extra={"client": ours_cpu.per(delivered).client, "server": ours_cpu.per(delivered).server,
                      "baseline_client": raw_cpu.per(delivered).client,
                      "baseline_server": raw_cpu.per(delivered).server}),
    ]


# ---------------------------------------------------------------------------------------------- queue by depth

async def _prefill(url: str, channel: str, depth: int, *, settle: bool = True) -> None:
    """``depth`` messages queued on ``channel``, then (``settle``) settled as the raw floor's table
    is (_raw_drain): vacuumed, analysed and checkpointed, so that neither drain meets an autovacuum
    of its prefill, sets the hint bits of every row it reads first, or runs inside a checkpoint
    that the other's prefill started (every page it touches first would then be logged whole)."""
    async with runtime(url, "bench-queue-producer") as rt:
        await rt.channel(channel, "queue")
        for start in range(0, depth, 1000):
            await rt.publish_many(channel, [{"n": n, "text": TEXT} for n in range(start, min(start + 1000, depth))])
    if not settle:
        return
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("vacuum analyze public.distributed_messages")
        await conn.execute("checkpoint")
    finally:
        await conn.close()


async def _runtime_drain(url: str, channel: str, consumers: int, batch: int, take: int,
                         meter: CpuMeter | None = None) -> tuple[float, CpuUse | None]:
    """(msg/s, CPU) of ``consumers`` runtimes claiming ``batch`` at a time and acking, until ``take``
    are done; measured from the moment every consumer is subscribed and has handled one batch of its
    own (WARMUP: the queue holds ``consumers * batch`` messages more than the depth measured)."""
    done, go = anyio.Event(), anyio.Event()
    handled = 0

    async def consume(rt: AgentRuntime, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
                      ) -> None:
        nonlocal handled
        async with rt.subscribe(channel, kind="queue", batch_size=batch) as sub:
            warming = batch
            async for msg in sub:
                await msg.ack()
                if warming:
                    warming -= 1
                    if not warming:
                        task_status.started()
                        await go.wait()
                    continue
                handled += 1
                if handled >= take:
                    done.set()

    async with AsyncExitStack() as stack:
        rts = [await stack.enter_async_context(runtime(url, f"bench-drain-{i}")) for i in range(consumers)]
        async with anyio.create_task_group() as tg:
            for rt in rts:
                await tg.start(consume, rt)
            cpu = meter.start() if meter else None
            started = time.perf_counter()
            go.set()
            with anyio.fail_after(600):
                await done.wait()
            elapsed = time.perf_counter() - started
            use = meter.stop(cpu) if meter and cpu else None
            tg.cancel_scope.cancel()
    return take / elapsed, use


async def _raw_drain(url: str, depth: int, consumers: int, batch: int, take: int,
                     meter: CpuMeter | None = None) -> tuple[float, CpuUse | None]:
    """The floor: ``consumers`` connections claiming ``batch`` with SKIP LOCKED and acking, until
    ``take`` are done, with ``depth`` queued when the timer starts (each connection has claimed and
    acked one batch before, as _runtime_drain's consumers have)."""
    conns = [await asyncpg.connect(url) for _ in range(consumers)]
    try:
        await conns[0].execute(
            "drop table if exists bench_depth; create table bench_depth (id bigserial primary key,"
            " payload jsonb not null, state text not null default 'ready', attempts integer not null default 0);"
            " create index bench_depth_ready on bench_depth (id) where state = 'ready'")
        queued = depth + consumers * batch  # (the warm-up's batches, then the depth measured)
        for start in range(0, queued, 10_000):
            await conns[0].execute("insert into bench_depth (payload) select unnest($1::jsonb[])",
                                   [_encode({"n": n, "text": TEXT}).decode()
                                    for n in range(start, min(start + 10_000, queued))])
        await conns[0].execute("vacuum analyze bench_depth")
        await conns[0].execute("checkpoint")  # (as _prefill)
        handled = 0
        statements = []
        for conn in conns:  # (the warm-up, as _runtime_drain's: one batch claimed and acked on each)
            claim = await conn.prepare(
                "update bench_depth q set state = 'inflight', attempts = q.attempts + 1"
                " from (select id from bench_depth where state = 'ready' order by id limit $1 for update skip locked) p"
                " where q.id = p.id returning q.id, q.payload")
            ack = await conn.prepare("update bench_depth set state = 'acked' where id = any($1::bigint[])")
            await ack.fetch([r["id"] for r in await claim.fetch(batch)])
            statements.append((claim, ack))

        async def consume(claim: asyncpg.prepared_stmt.PreparedStatement,
                          ack: asyncpg.prepared_stmt.PreparedStatement) -> None:
            nonlocal handled
            while handled < take:
                rows = await claim.fetch(batch)
                if not rows:
                    return
                await ack.fetch([r["id"] for r in rows])
                handled += len(rows)

        cpu = meter.start() if meter else None
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for claim, ack in statements:
                tg.start_soon(consume, claim, ack)
        elapsed = time.perf_counter() - started
        return handled / elapsed, meter.stop(cpu) if meter and cpu else None
    finally:
        for conn in conns:
            await conn.close()


# Both sides are measured in steady state: each consumer (runtime or raw connection) has claimed
# and acked one batch before the timer starts, so that neither pays its connection's first use of
# its statements inside the measurement (for the runtime, PL/pgSQL compiling claim_messages and its
# helpers and planning their statements: ~5 ms of server CPU per connection, a sixth of a 10,000
# message drain's). The queue holds those batches on top of the depth measured.
_WARM = "steady state: each consumer has claimed and acked one batch before the timer (both sides)"


async def queue_depth(bench: Bench) -> list[Figure]:
    figures = []
    meter = _meter(bench)
    for depth in bench.settings.queue_depths:
        take = min(depth, bench.settings.queue_take)
        async with bench.fresh_db() as url:
            raw, raw_use = await _raw_drain(url, depth, 8, 100, take, meter)
            channel = f"bench.depth.{depth}"
            await _prefill(url, channel, depth + 8 * 100)  # (and the warm-up's batches)
            ours, ours_use = await _runtime_drain(url, channel, 8, 100, take, meter)
        assert raw_use is not None and ours_use is not None
        # (CPU per 10k: where the time goes, this process's runtimes or the server)
        cpu = {"cpu_s_per_10k_client": ours_use.per(take).client, "cpu_s_per_10k_server": ours_use.per(take).server,
               "baseline_cpu_s_per_10k_client": raw_use.per(take).client,
               "baseline_cpu_s_per_10k_server": raw_use.per(take).server}
        figures.append(Figure(
            "queue by depth", f"claim+ack msg/s, 8 consumers, batches of 100, {depth:,} queued", round(ours),
            "msg/s", round(raw), "SKIP LOCKED claim (100) + ack UPDATE, 8 connections, same depth", "higher",
            target=0.9, note=_WARM, extra={"depth": depth, "taken": take, **cpu}))
    return figures


async def queue_one_at_a_time(bench: Bench) -> list[Figure]:
    take = bench.settings.queue_take
    meter = _meter(bench)
    async with bench.fresh_db() as url:
        raw, raw_use = await _raw_drain(url, take, 8, 1, take, meter)
        await _prefill(url, "bench.one", take + 8)  # (and the warm-up's messages)
        ours, ours_use = await _runtime_drain(url, "bench.one", 8, 1, take, meter)
    assert raw_use is not None and ours_use is not None
    raw_cpu, ours_cpu = raw_use, ours_use
    base = "SKIP LOCKED claim (1) + ack UPDATE, 8 connections"
    return [
        Figure("queue one at a time", "claim+ack msg/s, 8 consumers, one at a time", round(ours), "msg/s",
               round(raw), base, "higher", target=0.8, note=_WARM, extra={"messages": take}),
        Figure("queue one at a time", "CPU s per 10k delivered (client+server)", ours_cpu.per(take).total, "s",
               raw_cpu.per(take).total, base, "lower", target=1.5, note=_WARM,
               extra={"client": ours_cpu.per(take).client, "server": ours_cpu.per(take).server,
                      "baseline_client": raw_cpu.per(take).client, "baseline_server": raw_cpu.per(take).server}),
    ]


# ---------------------------------------------------------------------------------------------- jobs

async def _runtime_jobs(url: str, jobs: int, starts: int) -> tuple[float, list[float]]:
    """(jobs/s through a queue channel with handler concurrency 8, start latencies when idle)."""
    channel = "bench.jobs"
    await _prefill(url, channel, jobs, settle=False)  # (as procrastinate's jobs: not vacuumed)
    done = anyio.Event()
    handled = 0
    latencies: list[float] = []
    started_job = anyio.Event()

    async def handler(msg: Message[Any]) -> None:
        nonlocal handled, started_job
        if "t" in msg.payload:
            latencies.append(time.perf_counter() - msg.payload["t"])
            started_job.set()
            return
        handled += 1
        if handled >= jobs:
            done.set()

    async with runtime(url, "bench-job-worker") as rt, runtime(url, "bench-job-submitter") as submitter:
        began = time.perf_counter()
        rt.handle(channel, handler, kind="queue", concurrency=8)
        with anyio.fail_after(600):
            await done.wait()
        rate = jobs / (time.perf_counter() - began)
        for _ in range(starts):
            started_job = anyio.Event()
            await submitter.publish(channel, {"t": time.perf_counter()})
            with anyio.fail_after(10):
                await started_job.wait()
            await anyio.sleep(0.01)
    return rate, latencies


def _procrastinate_available() -> bool:
    return importlib.util.find_spec("procrastinate") is not None


async def _procrastinate_jobs(url: str, jobs: int, starts: int) -> tuple[float, list[float]]:
    import procrastinate  # a peer, installed only for benchmarks

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))
    latencies: list[float] = []
    started_job = anyio.Event()

    @app.task(name="bench_job")
    async def job(n: int = 0, t: float | None = None) -> None:
        if t is not None:
            latencies.append(time.perf_counter() - t)
            started_job.set()

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        for start in range(0, jobs, 1000):
            batch: list[dict[str, Any]] = [{"n": n} for n in range(start, min(start + 1000, jobs))]
            await job.batch_defer_async(*batch)
        began = time.perf_counter()
        await app.run_worker_async(concurrency=8, wait=False, install_signal_handlers=False)
        rate = jobs / (time.perf_counter() - began)
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: app.run_worker_async(concurrency=8, install_signal_handlers=False))
            await anyio.sleep(0.5)  # the worker's LISTEN is up
            for _ in range(starts):
                started_job = anyio.Event()
                await job.defer_async(t=time.perf_counter())
                with anyio.fail_after(10):
                    await started_job.wait()
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    return rate, latencies


async def jobs(bench: Bench) -> list[Figure]:
    count, starts = bench.settings.jobs, bench.settings.job_starts
    async with bench.fresh_db() as url:
        rate, latencies = await _runtime_jobs(url, count, starts)
    peer_rate: dict[str, float] = {}
    peer_start: dict[str, float] = {}
    note = ""
    if _procrastinate_available():
        async with bench.fresh_db() as url:
            p_rate, p_lat = await _procrastinate_jobs(url, count, starts)
        peer_rate["procrastinate"] = round(p_rate)
        peer_start["procrastinate"] = ms(percentile(p_lat, 50))
    else:
        note = "procrastinate not installed (pip install -e '.[bench]')"
    return [
        Figure("jobs", "jobs/s through a queue channel, concurrency 8", round(rate), "jobs/s", None,
               "no floor; see peers", "higher", peers=peer_rate, note=note, extra={"jobs": count}),
        Figure("jobs", "job start latency p50 (idle worker)", ms(percentile(latencies, 50)), "ms", None,
               "no floor; see peers", "lower", peers=peer_start, note=note),
    ]


# ---------------------------------------------------------------------------------------------- NATS JetStream

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    """A private ``nats-server -js`` on loopback with file storage in a temporary folder."""

    def __init__(self, process: anyio.abc.Process, port: int, store: Path) -> None:
        self.process = process
        self.url = f"nats://127.0.0.1:{port}"
        self.store = store

    @classmethod
    @asynccontextmanager
    async def started(cls) -> AsyncIterator[NatsServer | None]:
        binary = shutil.which("nats-server")
        if binary is None or importlib.util.find_spec("nats") is None:
            yield None
            return
        store = Path(tempfile.mkdtemp(prefix="ar-bench-nats-"))
        port = _free_port()
        process = await anyio.open_process([binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with anyio.fail_after(10):
                while True:
                    try:
                        stream = await anyio.connect_tcp("127.0.0.1", port)
                        await stream.aclose()
                        break
                    except OSError:
                        await anyio.sleep(0.05)
            yield cls(process, port, store)
        finally:
            process.terminate()
            with anyio.move_on_after(10, shield=True):
                await process.wait()
            shutil.rmtree(store, ignore_errors=True)

    @asynccontextmanager
    async def _js(self, stream: str, subjects: list[str]) -> AsyncIterator[tuple[Any, Any]]:
        import nats  # a peer, installed only for benchmarks

        nc = await nats.connect(self.url)
        try:
            js = nc.jetstream()
            await js.add_stream(name=stream, subjects=subjects)
            yield nc, js
        finally:
            await nc.close()

    async def latency(self, subscribers: int, samples: int) -> list[float]:
        """js.publish (acked by the server) -> every ordered push consumer's callback."""
        arrived = 0
        complete = anyio.Event()
        latencies: list[float] = []
        sent_at = 0.0
        record = False

        async def on_msg(_msg: Any) -> None:
            nonlocal arrived
            now = time.perf_counter()
            if record:
                latencies.append(now - sent_at)
            arrived += 1
            if arrived >= subscribers:
                complete.set()

        async with self._js(f"LAT{subscribers}", [f"lat{subscribers}.>"]) as (_nc, js):
            for _ in range(subscribers):
                await js.subscribe(f"lat{subscribers}.x", cb=on_msg, ordered_consumer=True)
            for n in range(samples + 20):
                arrived, complete, record = 0, anyio.Event(), n >= 20
                sent_at = time.perf_counter()
                await js.publish(f"lat{subscribers}.x", _encode({"n": n, "text": TEXT}))
                with anyio.fail_after(10):
                    await complete.wait()
                await anyio.sleep(0.005)
        return latencies

    async def request_reply(self, samples: int) -> list[float]:
        """Durable both ways: the request and the reply are each a JetStream publish."""
        replied = anyio.Event()

        async with self._js("RR", ["rr.>"]) as (_nc, js):
            async def on_request(msg: Any) -> None:
                await js.publish("rr.rep", msg.data)

            async def on_reply(_msg: Any) -> None:
                replied.set()

            await js.subscribe("rr.req", cb=on_request, ordered_consumer=True)
            await js.subscribe("rr.rep", cb=on_reply, ordered_consumer=True)
            times = []
            for n in range(samples + 20):
                replied = anyio.Event()
                started = time.perf_counter()
                await js.publish("rr.req", _encode({"n": n, "text": TEXT}))
                with anyio.fail_after(10):
                    await replied.wait()
                if n >= 20:
                    times.append(time.perf_counter() - started)
        return times


async def nats_latency(subscribers: int, samples: int) -> dict[str, float]:
    """Peer figures for the broadcast latency rows (empty when NATS is not installed)."""
    async with NatsServer.started() as nats:
        if nats is None:
            return {}
        return {"NATS JetStream (acks before fsync)": ms(percentile(await nats.latency(subscribers, samples), 50))}


SECTIONS: dict[str, Callable[[Bench], Awaitable[list[Figure]]]] = {
    "reqreply": request_reply,
    "depth": queue_depth,
    "queue1": queue_one_at_a_time,
    "jobs": jobs,
}
