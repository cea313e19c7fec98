"""Leader election with a lock: three candidates try for one lease; the leader works while it holds
it, then steps down and another takes over with a higher fencing token. Each leader's writes go
through ``lease.fenced(conn)``: the fencing check runs inside the transaction that writes, so a
leader that lost its lease (paused, partitioned) can never commit after its successor.

    python examples/leader_election.py [--url postgresql://...]
"""

from __future__ import annotations

import anyio
import asyncpg
from _common import parse_url

import agent_runtime
from agent_runtime import AgentRuntime
from agent_runtime.local import embedded


async def candidate(rt: AgentRuntime, url: str, terms: list[tuple[str, int]]) -> None:
    conn = await asyncpg.connect(url)
    try:
        # wait=None: queue up until the lease is free; release notifications wake the waiters.
        async with rt.lock("examples.leader", ttl=2, wait=None) as lease:
            terms.append((rt.name, lease.token))
            print(f"{rt.name} leads with fencing token {lease.token}")
            for step in range(3):
                # Committed only while this lease is the live one (StaleFencingToken otherwise).
                async with lease.fenced(conn):
                    await conn.execute("insert into examples_leader_log (leader, token, step) values ($1, $2, $3)",
                                       rt.name, lease.token, step)
                await anyio.sleep(0.1)
        print(f"{rt.name} steps down")
    finally:
        await conn.close()


async def main(url: str | None) -> None:
    url = url or (await anyio.to_thread.run_sync(embedded.ensure_running)).url()
    setup = await asyncpg.connect(url)
    try:
        await setup.execute("create table if not exists examples_leader_log "
                            "(leader text not null, token bigint not null, step int not null)")
        terms: list[tuple[str, int]] = []
        async with (
            AgentRuntime("candidate-a", url=url) as a,
            AgentRuntime("candidate-b", url=url) as b,
            AgentRuntime("candidate-c", url=url) as c,
            anyio.create_task_group() as tg,
        ):
            for rt in (a, b, c):
                tg.start_soon(candidate, rt, url, terms)
        tokens = [token for _, token in terms]
        assert tokens == sorted(tokens), "fencing tokens increase from one leader to the next"
        logged = [r["token"] for r in await setup.fetch("select token from examples_leader_log order by ctid")]
        assert logged == sorted(logged), "the log never goes back to an older leader"
        print("terms:", terms)
    finally:
        await setup.close()


if __name__ == "__main__":
    agent_runtime.run(main, parse_url(__doc__ or ""))  # Ctrl-C / SIGTERM: an orderly exit
