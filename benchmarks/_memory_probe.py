"""Run in a fresh interpreter by benchmarks/memory.py: prints one JSON object of resident set
sizes (bytes) at each stage. ``runtime URL N``: import agent_runtime, start an AgentRuntime,
open N idle subscriptions (each with a task waiting in ``async for``). ``asyncpg URL N``: import
asyncpg, open one connection, LISTEN on N channels with a task waiting on each."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
from typing import Any


def rss() -> int:
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _runtime(url: str, n: int, stages: dict[str, int]) -> None:
    import agent_runtime  # the import is what is measured

    stages["imported"] = rss()
    async with agent_runtime.AgentRuntime("memory-probe", url=url, migrate=False) as rt:
        await asyncio.sleep(0.2)
        stages["started"] = rss()
        ready = asyncio.Semaphore(0)

        async def idle(i: int) -> None:
            async with rt.subscribe(f"bench.idle.{i}", kind="broadcast") as sub:
                ready.release()
                async for _msg in sub:
                    pass

        tasks = [asyncio.create_task(idle(i)) for i in range(n)]
        for _ in range(n):
            await ready.acquire()
        await asyncio.sleep(0.2)
        stages["subscribed"] = rss()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _asyncpg(url: str, n: int, stages: dict[str, int]) -> None:
    import asyncpg

    stages["imported"] = rss()
    conn = await asyncpg.connect(url)
    try:
        await asyncio.sleep(0.2)
        stages["started"] = rss()
        events = [asyncio.Event() for _ in range(n)]
        for i, event in enumerate(events):  # one connection: one command at a time
            await conn.add_listener(f"bench_idle_{i}", lambda *_args, event=event: event.set())
        tasks = [asyncio.create_task(event.wait()) for event in events]
        await asyncio.sleep(0.2)
        stages["subscribed"] = rss()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await conn.close()


def main() -> None:
    kind, url, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    stages: dict[str, Any] = {"python": rss()}
    asyncio.run((_runtime if kind == "runtime" else _asyncpg)(url, n, stages))
    print(json.dumps(stages))


if __name__ == "__main__":
    main()
