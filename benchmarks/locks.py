"""Locks: acquire+release per second, alone and 8-way contended on one key, beside
``pg_advisory_xact_lock`` round trips; and what each costs the server in commits and WAL flushes."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack

import anyio
import asyncpg

from ._common import Bench, Figure, ms, runtime, server_counts

_XACT_KEY = 4242

def _per_op(before: tuple[int, int], after: tuple[int, int], ops: int) -> dict[str, float]:
    return {"commits_per_op": round((after[0] - before[0]) / max(ops, 1), 2),
            "wal_flushes_per_op": round((after[1] - before[1]) / max(ops, 1), 2)}


async def _runtime_uncontended(url: str, iterations: int) -> tuple[float, dict[str, float]]:
    """(acquire+release/s, commits and WAL flushes per acquire+release, about: the runtime's start
    and stop count too)."""
    async with runtime(url, "bench-locker") as rt:
        for _ in range(20):
            async with rt.lock("bench:solo"):
                pass
        before = await server_counts(url)
        started = time.perf_counter()
        for _ in range(iterations):
            async with rt.lock("bench:solo"):
                pass
        rate = iterations / (time.perf_counter() - started)
    return rate, _per_op(before, await server_counts(url), iterations)


async def _raw_uncontended(url: str, iterations: int) -> float:
    conn = await asyncpg.connect(url)
    try:
        lock = await conn.prepare("select pg_advisory_xact_lock($1)")
        started = time.perf_counter()
        for _ in range(iterations):
            async with conn.transaction():
                await lock.fetch(_XACT_KEY)
        return iterations / (time.perf_counter() - started)
    finally:
        await conn.close()


async def _raw_lock_row(url: str, iterations: int) -> float:
    """Context, not the floor: a durable lease row taken (upsert) and dropped (delete) with raw
    asyncpg, two commits that each wait for the WAL flush, as the runtime's leases do."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("create table if not exists bench_leases (key text primary key, owner text not null,"
                           " token bigserial, expires_at timestamptz not null)")
        take = await conn.prepare(
            "insert into bench_leases as l (key, owner, expires_at) values ($1, 'me', now() + interval '10 s')"
            " on conflict (key) do update set owner = excluded.owner, expires_at = excluded.expires_at"
            " where l.expires_at <= now() returning token")
        drop = await conn.prepare("delete from bench_leases where key = $1 and owner = 'me'")
        started = time.perf_counter()
        for _ in range(iterations):
            await take.fetch("bench:row")
            await drop.fetch("bench:row")
        return iterations / (time.perf_counter() - started)
    finally:
        await conn.close()


async def _runtime_contended(url: str, contenders: int,
                             seconds: float) -> tuple[float, float, float, dict[str, float]]:
    """(acquisitions/s, longest wait s, median wait s, commits and WAL flushes per hand-over) with
    ``contenders`` runtimes on one key."""
    waits: list[float] = []
    async with AsyncExitStack() as stack:
        rts = [await stack.enter_async_context(runtime(url, f"bench-contender-{i}")) for i in range(contenders)]
        before = await server_counts(url)
        deadline = time.perf_counter() + seconds

        async def contend(i: int) -> None:
            while time.perf_counter() < deadline:
                asked = time.perf_counter()
                async with rts[i].lock("bench:hot", ttl=10):
                    waits.append(time.perf_counter() - asked)

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(contenders):
                tg.start_soon(contend, i)
        elapsed = time.perf_counter() - started
    counts = _per_op(before, await server_counts(url), len(waits))
    waits.sort()
    return len(waits) / elapsed, waits[-1], waits[len(waits) // 2], counts


async def _raw_contended(url: str, contenders: int, seconds: float) -> tuple[float, float, float]:
    waits: list[float] = []
    conns = [await asyncpg.connect(url) for _ in range(contenders)]
    try:
        deadline = time.perf_counter() + seconds

        async def contend(conn: asyncpg.Connection) -> None:
            lock = await conn.prepare("select pg_advisory_xact_lock($1)")
            while time.perf_counter() < deadline:
                asked = time.perf_counter()
                async with conn.transaction():
                    await lock.fetch(_XACT_KEY)
                    waits.append(time.perf_counter() - asked)

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for conn in conns:
                tg.start_soon(contend, conn)
        elapsed = time.perf_counter() - started
    finally:
        for conn in conns:
            await conn.close()
    waits.sort()
    return len(waits) / elapsed, waits[-1], waits[len(waits) // 2]


async def locks(bench: Bench) -> list[Figure]:
    s = bench.settings
    async with bench.fresh_db() as url:
        raw_solo = await _raw_uncontended(url, s.lock_iterations)
        lease_row = await _raw_lock_row(url, s.lock_iterations)
        solo, solo_counts = await _runtime_uncontended(url, s.lock_iterations)
        raw_rate, raw_longest, raw_median = await _raw_contended(url, 8, s.lock_contended_seconds)
        rate, longest, median, counts = await _runtime_contended(url, 8, s.lock_contended_seconds)
    base = "BEGIN; pg_advisory_xact_lock; COMMIT"
    return [
        Figure("locks", "acquire+release/s, uncontended", round(solo), "ops/s", round(raw_solo), base, "higher",
               extra={"raw_lease_row_upsert_delete_per_s": round(lease_row), **solo_counts}),
        Figure("locks", "acquire+release/s, 8-way contended (one key)", round(rate), "ops/s", round(raw_rate),
               base + ", 8 connections", "higher", extra=counts),
        Figure("locks", "longest wait, 8-way contended", ms(longest), "ms", ms(raw_longest),
               base + ", 8 connections", "lower", extra={"median_wait_ms": ms(median),
                                                         "baseline_median_wait_ms": ms(raw_median)}),
    ]
