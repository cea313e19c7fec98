"""A request handler in its own OS process, for tests/failure/test_request_reply_review.py.

    python _reply_proc.py DB_URL AGENT_ID DIE_AFTER_REPLY
        answer requests with {"answer": q * 2}; each handling is first recorded in table
        review_handled (agent_id, q, attempts). Prints "ready <agent_id>". DIE_AFTER_REPLY "1":
        the process SIGKILLs itself as soon as its first reply_to_request has committed, before
        the runtime learns of it (the call's answer is never looked at). Leaves cleanly on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import anyio
import asyncpg

from agent_runtime import AgentRuntime
from agent_runtime.runtime._db import Database


def _die_after_reply() -> None:
    committed = Database.reply_to_request

    async def reply_then_die(self: Database, *args: Any, **kwargs: Any) -> Any:
        await committed(self, *args, **kwargs)  # (returned: the transaction has committed)
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")

    Database.reply_to_request = reply_then_die  # type: ignore[method-assign]


async def main(db_url: str, agent_id: str, die_after_reply: bool) -> None:
    if die_after_reply:
        _die_after_reply()
    record = await asyncpg.connect(db_url)
    try:
        async with AgentRuntime("review-responder", agent_id=agent_id, url=db_url, heartbeat_interval=0.5,
                                janitor=False, metrics_interval=0.5, poll_interval=1.0, shutdown_timeout=3.0,
                                retry_base_delay=0.05, migrate=False, pool_size=3) as rt:
            @rt.on_request
            async def answer(msg: Any) -> Any:
                await record.execute("insert into review_handled (agent_id, q, attempts) values ($1, $2, $3)",
                                     rt.agent_id, msg.payload["q"], msg.attempts)
                return {"answer": msg.payload["q"] * 2}

            print("ready", rt.agent_id, flush=True)
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    break
    finally:
        await record.close()
    print("bye", flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3] == "1")
