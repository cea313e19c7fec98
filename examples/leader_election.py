"""Leader election with a lock: three candidates try for one lease; the leader works while it holds
it, then steps down and another takes over with a higher fencing token.

    python examples/leader_election.py [--url postgresql://...]
"""

from __future__ import annotations

import anyio
from _common import parse_url

import agent_runtime
from agent_runtime import AgentRuntime


async def candidate(rt: AgentRuntime, terms: list[tuple[str, int]]) -> None:
    # wait=None: queue up until the lease is free; release notifications wake the waiters.
    async with rt.lock("examples.leader", ttl=2, wait=None) as lease:
        terms.append((rt.name, lease.token))
        print(f"{rt.name} leads with fencing token {lease.token}")
        await anyio.sleep(0.5)  # leading: protected writes would carry lease.token
    print(f"{rt.name} steps down")


async def main(url: str | None) -> None:
    terms: list[tuple[str, int]] = []
    async with (
        AgentRuntime("candidate-a", url=url) as a,
        AgentRuntime("candidate-b", url=url) as b,
        AgentRuntime("candidate-c", url=url) as c,
        anyio.create_task_group() as tg,
    ):
        for rt in (a, b, c):
            tg.start_soon(candidate, rt, terms)
    tokens = [token for _, token in terms]
    assert tokens == sorted(tokens), "fencing tokens increase from one leader to the next"
    print("terms:", terms)


if __name__ == "__main__":
    agent_runtime.run(main, parse_url(__doc__ or ""))  # Ctrl-C / SIGTERM: an orderly exit
