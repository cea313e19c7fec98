"""Locks through the runtime: mutual exclusion, prompt hand-over, loss while held, fencing."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import asyncpg
import pytest

from agent_runtime.errors import LockLost, LockTimeout, StaleFencingToken
from agent_runtime.runtime import AgentRuntime

RuntimeFactory = Callable[..., AgentRuntime]


async def test_lock_mutual_exclusion_between_agents(make_runtime: RuntimeFactory) -> None:
    """Tasks of two agents contending for one key are never inside together, and tokens only grow."""
    inside = 0
    tokens: list[int] = []
    rounds = 0

    async def worker(rt: AgentRuntime) -> None:
        nonlocal inside, rounds
        for _ in range(4):
            async with rt.lock("shared", ttl=5, wait=10) as lease:
                inside += 1
                assert inside == 1, "two holders inside the lock at once"
                tokens.append(lease.token)
                await anyio.sleep(0.03)
                inside -= 1
                rounds += 1

    async with make_runtime("a") as a, make_runtime("b") as b:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for rt in (a, b, a, b):
                    tg.start_soon(worker, rt)
    assert rounds == 16
    assert tokens == sorted(tokens) and len(set(tokens)) == 16


@pytest.mark.slow
async def test_waiter_is_woken_by_release_not_by_ttl(make_runtime: RuntimeFactory) -> None:
    """A waiter gets the lock right after the holder releases it, long before the TTL."""
    async with make_runtime("holder") as holder, make_runtime("waiter") as waiter:
        for _ in range(4):
            acquired_at = 0.0
            holding = anyio.Event()

            async def wait_for_it(holding: anyio.Event) -> None:
                nonlocal acquired_at
                await holding.wait()
                async with waiter.lock("hot", ttl=30, wait=15):
                    acquired_at = anyio.current_time()

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(wait_for_it, holding)
                    async with holder.lock("hot", ttl=30):
                        holding.set()
                        await anyio.sleep(1.0)  # the waiter's backoff grows towards 1s meanwhile
                    released_at = anyio.current_time()
            # Backoff alone would leave it asleep for up to a second; the notification wakes it.
            assert acquired_at - released_at < 0.25, acquired_at - released_at


async def test_lock_timeout_when_held(make_runtime: RuntimeFactory) -> None:
    """lock(wait=...) gives up with LockTimeout while another agent holds the key."""
    async with make_runtime("a") as a, make_runtime("b") as b:
        async with a.lock("busy", ttl=5):
            started = anyio.current_time()
            with pytest.raises(LockTimeout):
                async with b.lock("busy", wait=0.5):
                    pass
            assert 0.4 < anyio.current_time() - started < 2


async def test_lock_lost_cancels_the_block(make_runtime: RuntimeFactory, conn: asyncpg.Connection) -> None:
    """Deleting the lock row under a holder cancels its block and raises LockLost from the async with."""
    async with make_runtime("holder") as rt:
        reached_end = False
        started = anyio.current_time()
        with anyio.fail_after(5), pytest.raises(LockLost):
            async with rt.lock("fragile", ttl=1) as lease:
                assert await conn.execute("delete from distributed_locks where key = 'fragile'") == "DELETE 1"
                await anyio.sleep(3)  # renewal at ttl/3 must notice and cancel this
                reached_end = True
        assert not reached_end
        assert lease.lost
        assert anyio.current_time() - started < 1.5
        # The runtime is still usable and the key can be taken again.
        async with rt.lock("fragile", ttl=1, wait=2) as again:
            assert again.token > lease.token


async def test_lease_check_refuses_a_stale_holder(make_runtime: RuntimeFactory, conn: asyncpg.Connection) -> None:
    """After another holder takes over an expired lease, the old lease's check() raises StaleFencingToken."""
    async with make_runtime("a") as a, make_runtime("b") as b:
        with anyio.fail_after(5), pytest.raises(LockLost):
            async with a.lock("res", ttl=1) as old:
                await old.check()  # live holder: accepted
                # Expire it in the database (as if renewals had stalled), then b takes over.
                await conn.execute("update distributed_locks set expires_at = now() where key = 'res'")
                async with b.lock("res", ttl=5, wait=2) as new:
                    assert new.token > old.token
                    await new.check()
                    with pytest.raises(StaleFencingToken):
                        await old.check()
                    await anyio.sleep(2)  # a's renewal is refused: its block is cancelled here
        assert old.lost
        # b's block was cancelled along with a's (it is nested) and released the key.
        assert await a.locks() == []
