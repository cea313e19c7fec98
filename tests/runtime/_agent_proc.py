"""An agent in its own OS process, for tests/runtime/test_processes.py.

    python _agent_proc.py worker DB_URL CHANNEL   consume a queue, recording each message in table
                                                  proc_handled; "ready <agent_id>" once started;
                                                  leaves cleanly on SIGTERM
    python _agent_proc.py hold DB_URL KEY TTL     take the lock and hold it (renewing) until killed;
                                                  prints "token <token> <agent_id>"
"""

from __future__ import annotations

import signal
import sys
from typing import Any

import anyio
import asyncpg

from agent_runtime import AgentRuntime


def _runtime(db_url: str, name: str) -> AgentRuntime:
    return AgentRuntime(name, url=db_url, heartbeat_interval=0.5, janitor=False, metrics_interval=0.5,
                        poll_interval=1.0, shutdown_timeout=3.0, retry_base_delay=0.05, migrate=False,
                        pool_size=3)


async def _until_sigterm() -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return


async def worker(db_url: str, channel: str) -> None:
    record = await asyncpg.connect(db_url)
    try:
        async with _runtime(db_url, "proc-worker") as rt:
            async def handle(msg: Any) -> None:
                await record.execute("insert into proc_handled (message_id, n, agent_id) values ($1, $2, $3)",
                                     msg.id, msg.payload["n"], rt.agent_id)

            rt.handle(channel, handle, kind="queue")
            print("ready", rt.agent_id, flush=True)
            await _until_sigterm()
    finally:
        await record.close()
    print("bye", flush=True)


async def hold(db_url: str, key: str, ttl: float) -> None:
    async with _runtime(db_url, "proc-holder") as rt, rt.lock(key, ttl=ttl) as lease:
        print("token", lease.token, rt.agent_id, flush=True)
        await anyio.sleep_forever()


def main(argv: list[str]) -> None:
    mode, db_url, *rest = argv
    if mode == "worker":
        anyio.run(worker, db_url, rest[0])
    elif mode == "hold":
        anyio.run(hold, db_url, rest[0], float(rest[1]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
