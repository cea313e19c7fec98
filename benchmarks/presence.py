"""Presence at scale: 1,000 simulated agents heartbeating through ``update_agent_last_seen``, and
the topology query at 10,000 agents and 1,000 channels."""

from __future__ import annotations

import heapq
import random
import statistics
import time
from collections.abc import Sequence
from typing import Any

import anyio
import asyncpg
import msgspec

from agent_runtime import Network

from ._common import Bench, Figure, ms, percentile

_CONNECTIONS = 4
_HEARTBEAT = "select public.update_agent_last_seen(p_agent_id => $1)::text"
_RAW_HEARTBEAT = ("update agent_presence set heartbeat_at = now(), expires_at = now() + interval '15 seconds'"
                  " where agent_id = $1")


async def _register(conns: Sequence[asyncpg.Connection], agents: list[str]) -> float:
    """Registers the agents through register_agent from a few connections; returns calls/s."""
    started = time.perf_counter()

    async def register(conn: asyncpg.Connection, ids: list[str]) -> None:
        for agent_id in ids:
            await conn.fetchval("select public.register_agent(p_agent_id => $1, p_name => $1,"
                                " p_heartbeat_ttl_ms => 3600000)::text", agent_id)

    async with anyio.create_task_group() as tg:
        for i, conn in enumerate(conns):
            tg.start_soon(register, conn, agents[i::len(conns)])
    return len(agents) / (time.perf_counter() - started)


async def _scheduled(conns: Sequence[asyncpg.Connection], sql: str, agents: list[str], interval: float,
                     seconds: float) -> tuple[list[float], float, float]:
    """Each agent beats every ``interval`` x U(0.8, 1.0) seconds (the runtime's jitter), first beat
    spread over one interval; ``len(conns)`` workers take due beats. Returns (round trips,
    calls/s, longest lag behind schedule)."""
    rng = random.Random(7)
    start = time.perf_counter()
    due = [(start + rng.uniform(0, interval), agent) for agent in agents]
    heapq.heapify(due)
    end = start + seconds
    rtts: list[float] = []
    lag = 0.0

    async def worker(conn: asyncpg.Connection) -> None:
        nonlocal lag
        statement = await conn.prepare(sql)
        while due and due[0][0] < end:
            at, agent = heapq.heappop(due)
            now = time.perf_counter()
            if at > now:
                await anyio.sleep(at - now)
            sent = time.perf_counter()
            lag = max(lag, sent - at)
            await statement.fetch(agent)
            rtts.append(time.perf_counter() - sent)
            heapq.heappush(due, (at + interval * rng.uniform(0.8, 1.0), agent))

    async with anyio.create_task_group() as tg:
        for conn in conns:
            tg.start_soon(worker, conn)
    return rtts, len(rtts) / (time.perf_counter() - start), lag


async def _capacity(conns: Sequence[asyncpg.Connection], sql: str, agents: list[str], seconds: float) -> float:
    """Heartbeats per second with every connection calling flat out."""
    calls = 0
    deadline = time.perf_counter() + seconds

    async def worker(conn: asyncpg.Connection, ids: list[str]) -> None:
        nonlocal calls
        statement = await conn.prepare(sql)
        i = 0
        while time.perf_counter() < deadline:
            await statement.fetch(ids[i % len(ids)])
            i += 1
            calls += 1

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i, conn in enumerate(conns):
            tg.start_soon(worker, conn, agents[i::len(conns)])
    return calls / (time.perf_counter() - started)


async def _db_time(conn: asyncpg.Connection, sql: str, agents: list[str]) -> float:
    """Mean server execution time (EXPLAIN ANALYZE, no per-node timing) per call, in seconds."""
    times = []
    for agent in agents:
        plan = await conn.fetchval(f"explain (analyze, timing off, format json) {sql}", agent)
        times.append(msgspec.json.decode(plan)[0]["Execution Time"] / 1000)
    return statistics.fmean(times)


async def heartbeats(bench: Bench) -> list[Figure]:
    s = bench.settings
    agents = [f"sim-{i:05d}" for i in range(s.presence_agents)]
    async with bench.fresh_db() as url:
        conns = [await asyncpg.connect(url) for _ in range(_CONNECTIONS)]
        try:
            registered_per_s = await _register(conns, agents)
            raw_rtts, raw_rate, raw_lag = await _scheduled(conns, _RAW_HEARTBEAT, agents, s.heartbeat_interval,
                                                           s.heartbeat_seconds)
            rtts, rate, lag = await _scheduled(conns, _HEARTBEAT, agents, s.heartbeat_interval, s.heartbeat_seconds)
            sample = agents[:200]
            raw_db = await _db_time(conns[0], _RAW_HEARTBEAT, sample)
            db = await _db_time(conns[0], _HEARTBEAT, sample)
            raw_capacity = await _capacity(conns, _RAW_HEARTBEAT, agents, 3.0)
            capacity = await _capacity(conns, _HEARTBEAT, agents, 3.0)
        finally:
            for conn in conns:
                await conn.close()
    section = "presence"
    load = f"{s.presence_agents} agents every {s.heartbeat_interval:g}s, {_CONNECTIONS} connections"
    base = "raw UPDATE agent_presence (one row)"
    return [
        Figure(section, f"heartbeat round trip p50 ({load})", ms(percentile(rtts, 50)), "ms",
               ms(percentile(raw_rtts, 50)), base, "lower",
               extra={"calls_per_s": round(rate, 1), "baseline_calls_per_s": round(raw_rate, 1),
                      "calls": len(rtts), "max_lag_behind_schedule_ms": ms(lag),
                      "baseline_max_lag_ms": ms(raw_lag), "register_agent_per_s": round(registered_per_s)}),
        Figure(section, "heartbeat round trip p99", ms(percentile(rtts, 99)), "ms", ms(percentile(raw_rtts, 99)),
               base, "lower"),
        Figure(section, "heartbeat DB execution time (mean)", ms(db), "ms", ms(raw_db), base, "lower"),
        Figure(section, f"heartbeat capacity, {_CONNECTIONS} connections flat out", round(capacity), "calls/s",
               round(raw_capacity), base, "higher",
               note=f"scheduled load was {rate:.0f} calls/s"),
    ]


async def _populate(conn: asyncpg.Connection, agents: int, channels: int) -> None:
    """A network of ``agents`` online agents (each with its inbox), ``channels`` shared channels,
    two subscriptions per agent, 20,000 recent messages from 2,000 senders, 100 held locks."""
    await conn.execute("""
        insert into distributed_agents (id, name, capabilities, host, pid, heartbeat_ttl)
        select 'sim-' || g, 'sim agent ' || g, array['cap' || (g % 10)], 'host-' || (g % 50), g, interval '1 hour'
        from generate_series(1, $1::int) g
    """, agents)
    await conn.execute("""
        insert into agent_presence (agent_id, status, heartbeat_at, expires_at)
        select id, 'online', now(), now() + interval '1 hour' from distributed_agents
    """)
    await conn.execute("""
        insert into communication_channels (name, kind, owner_id, created_by)
        select 'agent:' || id, 'direct', id, id from distributed_agents
    """)
    await conn.execute("""
        insert into communication_channels (name, kind, created_by)
        select 'topic-' || g, case when g % 4 = 0 then 'queue' else 'broadcast' end, 'sim-1'
        from generate_series(1, $1::int) g
    """, channels)
    await conn.execute("""
        with ch as (select id, row_number() over (order by id) - 1 as k from communication_channels
                    where kind <> 'direct'),
             ag as (select id, row_number() over (order by id) - 1 as k from distributed_agents)
        insert into channel_subscriptions (channel_id, agent_id)
        select ch.id, ag.id from ag cross join lateral (values (ag.k % $1), ((ag.k * 7 + 3) % $1)) v(k)
        join ch on ch.k = v.k
        on conflict do nothing
    """, channels)
    await conn.execute("""
        with ch as (select id, row_number() over (order by id) - 1 as k from communication_channels
                    where kind <> 'direct'),
             src as (select g, g % 2000 + 1 as a, g % $1 as c from generate_series(0, 19999) g)
        insert into distributed_messages (channel_id, seq, sender_id, payload, size_bytes)
        select ch.id, row_number() over (partition by ch.id order by g), 'sim-' || a, '{"n": 1}', 8
        from src join ch on ch.k = src.c
    """, channels)
    await conn.execute("""
        update communication_channels c set last_seq = m.s
        from (select channel_id, max(seq) as s from distributed_messages group by 1) m where m.channel_id = c.id
    """)
    await conn.execute("""
        insert into distributed_locks (key, owner_id, lease_id, token, expires_at)
        select 'lock-' || g, 'sim-' || g, gen_random_uuid(), nextval('distributed_locks_token_seq'),
               now() + interval '1 hour'
        from generate_series(1, 100) g
    """)
    await conn.execute("analyze")


_COUNTS = """
    select (select count(*) from distributed_agents a join agent_presence p on p.agent_id = a.id
            where p.status <> 'offline' and p.expires_at > now()),
           (select count(*) from communication_channels),
           (select count(*) from channel_subscriptions),
           (select count(*) from distributed_messages where created_at > now() - interval '5 minutes'),
           (select count(*) from distributed_locks)
"""


async def _timed(runs: int, fn: Any) -> list[float]:
    times = []
    for _ in range(runs + 1):
        started = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - started)
    return times[1:]  # the first run warms the caches


async def _topology_at(bench: Bench, agents: int, channels: int, limit: float | None) -> list[Figure]:
    runs = bench.settings.topology_runs
    async with bench.fresh_db() as url:
        conn = await asyncpg.connect(url)
        try:
            started = time.perf_counter()
            await _populate(conn, agents, channels)
            populate_s = time.perf_counter() - started
            count = await _timed(runs, lambda: conn.fetch(_COUNTS))
            in_db = await _timed(runs, lambda: conn.fetchval("select length(public.get_network_topology()::text)"))
            size = await conn.fetchval("select length(public.get_network_topology()::text)")
        finally:
            await conn.close()
        async with Network(url=url, migrate=False) as network:
            end_to_end = await _timed(runs, network.topology)
    scale = f"{agents:,} agents, {channels:,} channels"
    base = "select count(*) over the same tables"
    return [
        Figure("topology", f"get_network_topology in the database, median ({scale})", ms(statistics.median(in_db)),
               "ms", ms(statistics.median(count)), base, "lower", limit=limit,
               extra={"document_bytes": size, "populate_s": round(populate_s, 2), "runs": runs,
                      "max_ms": ms(max(in_db))}),
        Figure("topology", f"topology() end to end: transfer + decode, median ({scale})",
               ms(statistics.median(end_to_end)), "ms", ms(statistics.median(count)), base, "lower",
               extra={"max_ms": ms(max(end_to_end))}),
    ]


async def topology(bench: Bench) -> list[Figure]:
    s = bench.settings
    small = await _topology_at(bench, s.topology_agents // 10, s.topology_channels // 10, None)
    return small + await _topology_at(bench, s.topology_agents, s.topology_channels, 100.0)
