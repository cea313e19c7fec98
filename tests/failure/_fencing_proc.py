"""A lock holder in its own OS process, paused by SIGSTOP inside its fencing transaction.

    python _fencing_proc.py paused DB_URL KEY TTL ROUNDS
        ROUNDS times: take the lock (waiting as long as it takes), open ``lease.fenced(conn)`` on a
        fresh connection, print "checked <round> <token>", stop itself (SIGSTOP) right there, and
        once continued insert (token, round) into table fenced_writes and leave the block. Then
        print "wrote <round>" if the block committed, or "refused <round> <error class>".
        Prints "ready <agent_id>" first and "done" at the end.
"""

from __future__ import annotations

import os
import signal
import sys

import anyio
import asyncpg

from agent_runtime import AgentRuntime
from agent_runtime.errors import AgentRuntimeError


async def paused(db_url: str, key: str, ttl: float, rounds: int) -> None:
    async with AgentRuntime("paused-holder", url=db_url, heartbeat_interval=0.5, janitor=False,
                            metrics_interval=5, poll_interval=5, shutdown_timeout=3, migrate=False,
                            pool_size=2) as rt:
        print("ready", rt.agent_id, flush=True)
        for i in range(rounds):
            writer = await asyncpg.connect(db_url)
            try:
                async with rt.lock(key, ttl=ttl) as lease:
                    async with lease.fenced(writer):
                        print("checked", i, lease.token, flush=True)
                        os.kill(os.getpid(), signal.SIGSTOP)  # paused between the check and the write
                        await writer.execute("insert into fenced_writes (token, round) values ($1, $2)",
                                             lease.token, i)
                print("wrote", i, flush=True)
            except (AgentRuntimeError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                print("refused", i, type(exc).__name__, flush=True)
            finally:
                writer.terminate()
    print("done", flush=True)


def main(argv: list[str]) -> None:
    mode, db_url, *rest = argv
    if mode == "paused":
        anyio.run(paused, db_url, rest[0], float(rest[1]), int(rest[2]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
