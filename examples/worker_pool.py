"""A worker pool over a queue channel: each job goes to exactly one of three workers; a failing job
is retried with backoff and, after its attempts run out, lands in the dead letters.

    python examples/worker_pool.py [--url postgresql://...]
"""

from __future__ import annotations

from collections import Counter

import anyio
from _common import parse_url

import agent_runtime
from agent_runtime import AgentRuntime, Message

JOBS = 30
QUEUE = "examples.jobs"


async def main(url: str | None) -> None:
    handled: Counter[str] = Counter()
    done = anyio.Event()

    async with AgentRuntime("boss", url=url) as boss:
        await boss.channel(QUEUE, "queue", max_attempts=2)
        async with (
            AgentRuntime("worker-1", url=url, retry_base_delay=0.1) as w1,
            AgentRuntime("worker-2", url=url, retry_base_delay=0.1) as w2,
            AgentRuntime("worker-3", url=url, retry_base_delay=0.1) as w3,
        ):
            for worker in (w1, w2, w3):

                async def work(msg: Message[dict[str, int]], name: str = worker.name) -> None:
                    if msg.payload["job"] == 13:
                        raise ValueError("job 13 always fails")  # nacked, retried, then dead-lettered
                    handled[name] += 1
                    if sum(handled.values()) == JOBS - 1:
                        done.set()

                worker.handle(QUEUE, work, kind="queue")

            await boss.publish_many(QUEUE, [{"job": i} for i in range(JOBS)])
            with anyio.fail_after(30):
                await done.wait()
            print("jobs handled per worker:", dict(handled))
            with anyio.fail_after(10):
                while not (dead := await boss.dead_letters(QUEUE)):  # noqa: ASYNC110 (a database view)
                    await anyio.sleep(0.2)
            print("dead letters:", [(d.payload, d.reason) for d in dead])


if __name__ == "__main__":
    agent_runtime.run(main, parse_url(__doc__ or ""))  # Ctrl-C / SIGTERM: an orderly exit
