"""An agent in its own OS process, for the failure suite (tests/failure).

    python _failure_proc.py consume DB_URL AGENT_ID QUEUE BROADCAST DELAY
        handle a queue and a broadcast channel (from the earliest message); each delivery is first
        recorded in table failure_received, then the handler sleeps DELAY seconds and returns
        (acked). Prints "ready <agent_id>"; leaves cleanly on SIGTERM.
    python _failure_proc.py fenced DB_URL KEY TTL PAUSE
        take the lock and, while holding it, write to table failure_fenced in transactions that
        call check_fencing_token first: "checked <i>" after the check, PAUSE seconds, the insert,
        commit, "wrote <i>". Prints "token <token> <agent_id>" first, "refused" when the check fails
        and "lost" when the lease is lost.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

import anyio
import asyncpg

from agent_runtime import AgentRuntime
from agent_runtime.errors import LockLost


def _runtime(db_url: str, name: str, **kwargs: Any) -> AgentRuntime:
    return AgentRuntime(name, url=db_url, heartbeat_interval=0.5, janitor=False, metrics_interval=0.5,
                        poll_interval=1.0, shutdown_timeout=3.0, retry_base_delay=0.05, migrate=False,
                        pool_size=3, **kwargs)


async def _until_sigterm() -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return


async def consume(db_url: str, agent_id: str, queue: str, broadcast: str, delay: float) -> None:
    record = await asyncpg.create_pool(db_url, min_size=2, max_size=2)
    try:
        async with _runtime(db_url, "failure-consumer", agent_id=agent_id) as rt:
            async def handle(msg: Any) -> None:
                await record.execute("insert into failure_received (agent_id, channel, n, message_id, attempts) "
                                     "values ($1, $2, $3, $4, $5)", rt.agent_id, msg.channel, msg.payload["n"],
                                     msg.id, msg.attempts)
                await anyio.sleep(delay)

            rt.handle(queue, handle, kind="queue")
            rt.handle(broadcast, handle, kind="broadcast", start="earliest")
            print("ready", rt.agent_id, flush=True)
            await _until_sigterm()
    finally:
        await record.close()
    print("bye", flush=True)


async def fenced(db_url: str, key: str, ttl: float, pause: float) -> None:
    writer = await asyncpg.connect(db_url)
    try:
        async with _runtime(db_url, "failure-holder") as rt:
            try:
                async with rt.lock(key, ttl=ttl) as lease:
                    print("token", lease.token, rt.agent_id, flush=True)
                    i = 0
                    while True:
                        i += 1
                        try:
                            # Shielded: a checked write goes through even if the lease is lost meanwhile
                            # (the worst case for the resource, which only the fencing check protects).
                            with anyio.CancelScope(shield=True):
                                async with writer.transaction():
                                    await writer.execute("select check_fencing_token($1, $2)", key, lease.token)
                                    print("checked", i, flush=True)
                                    await anyio.sleep(pause)
                                    await writer.execute("insert into failure_fenced (token, writer) "
                                                         "values ($1, $2)", lease.token, rt.agent_id)
                        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                            # AR422: stale; or the server ended a fencing transaction left idle past
                            # the lease (the connection is gone, its write was not committed).
                            if isinstance(exc, asyncpg.PostgresError) and exc.sqlstate != "AR422":
                                raise
                            print("refused", flush=True)
                            await anyio.sleep_forever()  # the lease is gone: the block is cancelled soon
                        print("wrote", i, flush=True)
                        await anyio.sleep(0.02)
            except LockLost:
                print("lost", flush=True)
    finally:
        writer.terminate()


def main(argv: list[str]) -> None:
    mode, db_url, *rest = argv
    if mode == "consume":
        anyio.run(consume, db_url, rest[0], rest[1], rest[2], float(rest[3]))
    elif mode == "fenced":
        anyio.run(fenced, db_url, rest[0], float(rest[1]), float(rest[2]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
