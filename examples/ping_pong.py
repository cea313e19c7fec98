"""Request/reply: a 'pong' agent answers; a 'ping' agent asks five times and prints the round trip.

    python examples/ping_pong.py [--url postgresql://...]
"""

from __future__ import annotations

import time

from _common import parse_url

import agent_runtime
from agent_runtime import AgentRuntime, Message


async def main(url: str | None) -> None:
    async with AgentRuntime("pong", capabilities=["pong"], url=url) as pong:

        @pong.on_request
        async def answer(msg: Message[dict[str, int]]) -> dict[str, int]:
            return {"pong": msg.payload["ping"]}  # the return value is the reply

        async with AgentRuntime("ping", url=url) as ping:
            for i in range(5):
                started = time.perf_counter()
                reply = await ping.request(pong.agent_id, {"ping": i}, timeout=5)
                print(f"ping {i} -> {reply} in {(time.perf_counter() - started) * 1000:.1f} ms")


if __name__ == "__main__":
    agent_runtime.run(main, parse_url(__doc__ or ""))  # Ctrl-C / SIGTERM: an orderly exit
