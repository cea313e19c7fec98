"""SLOT: figures through the Supabase transport (``agent_runtime/transports/supabase.py``: PostgREST
RPC + Realtime) against its protocol stand-in (``agent_runtime.testing.SupabaseStandIn``), beside
the same raw-asyncpg floors on the database behind the stand-in.

When either is missing this section reports "not available: Supabase transport not installed".
The stand-in serves HTTP and websockets from this same Python process, so its work shares the
process (and the 2 cores) with the runtimes being measured: these figures are an upper bound on
the transport's own overhead, not what a hosted Supabase project would show."""

from __future__ import annotations

import importlib.util
import time
from contextlib import AsyncExitStack
from typing import Any

import anyio
from anyio.abc import TaskStatus

from agent_runtime import AgentRuntime

from . import messaging
from ._common import Bench, Figure, ms, percentile, runtime

NOT_AVAILABLE = "not available: Supabase transport not installed"


def available() -> bool:
    return all(importlib.util.find_spec(name) is not None
               for name in ("agent_runtime.testing", "agent_runtime.transports.supabase"))


async def supabase(bench: Bench) -> tuple[list[Figure], dict[str, Any]]:
    """Latency 1->1 and throughput 4->4 through AgentRuntime(url=standin.url, key=service role key),
    or no figures and the reason."""
    if not available():
        return [], {"available": False, "reason": NOT_AVAILABLE}
    from agent_runtime.testing import SupabaseStandIn

    s = bench.settings
    async with bench.fresh_db() as db_url, SupabaseStandIn(db_url) as standin:
        via = {"key": standin.service_role_key}
        figures = await messaging.latency_on(db_url, standin.url, s.supabase_latency_samples, s.latency_gap, 1,
                                             "supabase stand-in: latency 1->1", **via)
        figures += await messaging.throughput_on(db_url, standin.url, s.supabase_throughput_messages,
                                                 "supabase stand-in: throughput 4->4", **via)
    return figures, {"available": True, "note": "stand-in in the same process as the runtimes"}


FREE_PLAN_EVENTS_PER_SECOND = 100


async def _publish_under(db_url: str, limit: float | None, publishers: int, per_second: float,
                         seconds: float) -> dict[str, Any]:
    """``publishers`` runtimes each publish ``per_second`` messages a second for ``seconds`` to one
    channel with one subscriber, through a stand-in with the tenant limit ``limit`` (None: none),
    the server's 5 s tick; returns the publish->deliver latencies and what the stand-in dropped."""
    from agent_runtime.testing import SupabaseStandIn

    channel = "bench.limited"
    latencies: list[float] = []
    expected = publishers * max(1, round(per_second * seconds))
    async with SupabaseStandIn(db_url, max_events_per_second=limit) as standin, AsyncExitStack() as stack:
        options = {"key": standin.service_role_key}
        pubs = [await stack.enter_async_context(runtime(standin.url, f"bench-limited-pub-{i}", **options))
                for i in range(publishers)]
        sub = await stack.enter_async_context(runtime(standin.url, "bench-limited-sub", **options))
        await pubs[0].channel(channel, "broadcast")
        done = anyio.Event()

        async def consume(rt: AgentRuntime, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            async with rt.subscribe(channel, kind="broadcast") as subscription:
                task_status.started()
                async for msg in subscription:
                    latencies.append(time.perf_counter() - msg.payload["t"])
                    await msg.ack()
                    if len(latencies) >= expected:
                        done.set()

        async def produce(rt: AgentRuntime, offset: float) -> None:
            await anyio.sleep(offset)
            for _ in range(expected // publishers):
                await rt.publish(channel, {"t": time.perf_counter(), "text": messaging.TEXT})
                await anyio.sleep(1 / per_second)

        async with anyio.create_task_group() as tg:
            await tg.start(consume, sub)
            async with anyio.create_task_group() as producers:
                for i, rt in enumerate(pubs):
                    producers.start_soon(produce, rt, i / (publishers * per_second))
            with anyio.move_on_after(60):  # the safety poll (5 s by default) brings the rest
                await done.wait()
            tg.cancel_scope.cancel()
        return {"latencies": latencies, "expected": expected, "dropped": standin.stats.db_broadcasts_dropped,
                "triggered": standin._hub.events.times_triggered if standin._hub and standin._hub.events else 0}


async def rate_limited(bench: Bench) -> list[Figure]:
    """Delivery latency with 20 agents publishing through a stand-in that keeps the free plan's
    limit (100 events/s), beside the same load with no limit, same run (section
    ``supabase_limit``; nothing when the Supabase transport is not installed)."""
    if not available():
        return []
    s = bench.settings
    section = f"supabase stand-in: {s.supabase_limited_publishers} publishers, " \
              f"limit {FREE_PLAN_EVENTS_PER_SECOND} events/s"
    runs = {}
    for name, limit in (("limited", FREE_PLAN_EVENTS_PER_SECOND), ("unlimited", None)):
        async with bench.fresh_db() as db_url:
            runs[name] = await _publish_under(db_url, limit, s.supabase_limited_publishers,
                                              s.supabase_limited_rate, s.supabase_limited_seconds)
    ours, base = runs["limited"], runs["unlimited"]
    what = "the same load through the stand-in with no limit"
    extra = {"published": ours["expected"], "delivered": len(ours["latencies"]),
             "wakeups_dropped": ours["dropped"], "times_limit_triggered": ours["triggered"],
             "baseline_delivered": len(base["latencies"]),
             "messages_per_second": s.supabase_limited_publishers * s.supabase_limited_rate,
             "poll_interval_s": 5.0}
    figures = []
    for q in (50, 99, 100):
        label = "max" if q == 100 else f"p{q}"
        figures.append(Figure(section, f"publish->deliver {label}", ms(percentile(ours["latencies"], q)), "ms",
                              ms(percentile(base["latencies"], q)), what, "lower", extra=extra if q == 50 else {}))
    return figures
