"""Leases with fencing tokens: acquire_lock, renew_lock, release_lock, check_fencing_token, list_locks."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg

from agent_runtime.testing import AdvanceClock
from tests.sql._helpers import call, connections, count, expect_error, refused_unchanged, register


async def _acquire(conn: asyncpg.Connection, agent: str, key: str = "k", ttl_ms: int = 60000,
                   lease: uuid.UUID | None = None, **kw: Any) -> dict[str, Any]:
    result: dict[str, Any] = await call(conn, "acquire_lock", agent_id=agent, key=key,
                                        lease_id=lease or uuid.uuid4(), ttl_ms=ttl_ms, **kw)
    return result


async def _setup(conn: asyncpg.Connection) -> None:
    await register(conn, "a1")
    await register(conn, "b1")


async def test_acquire_free_lock(conn: asyncpg.Connection) -> None:
    """A free key is acquired: the holder gets its lease, a token and an expiry ttl_ms from now."""
    await _setup(conn)
    lease = uuid.uuid4()
    got = await _acquire(conn, "a1", lease=lease, ttl_ms=5000, metadata={"job": 1})
    assert got["acquired"] is True and got["owner_id"] == "a1" and got["lease_id"] == str(lease)
    assert isinstance(got["token"], int) and 4900 <= got["ttl_ms"] <= 5000
    [held] = await call(conn, "list_locks")
    assert held["key"] == "k" and held["owner_id"] == "a1" and held["token"] == got["token"]
    assert held["metadata"] == {"job": 1}


async def test_held_lock_is_refused_to_others(conn: asyncpg.Connection) -> None:
    """While held, another agent does not get the lock, learns who holds it and for how long, but not its lease."""
    await _setup(conn)
    mine = await _acquire(conn, "a1")
    theirs = await _acquire(conn, "b1")
    assert theirs["acquired"] is False and theirs["owner_id"] == "a1"
    assert theirs["lease_id"] is None and theirs["token"] is None and theirs["ttl_ms"] > 50000
    assert await conn.fetchval("select token from distributed_locks where key = 'k'") == mine["token"]


async def test_reacquire_with_same_lease_extends(conn: asyncpg.Connection) -> None:
    """Acquiring again with the same live lease extends it and keeps the token."""
    await _setup(conn)
    lease = uuid.uuid4()
    first = await _acquire(conn, "a1", lease=lease, ttl_ms=1000)
    again = await _acquire(conn, "a1", lease=lease, ttl_ms=60000)
    assert again["acquired"] is True and again["token"] == first["token"]
    assert again["acquired_at"] == first["acquired_at"] and again["ttl_ms"] > 50000


async def test_other_agent_cannot_use_a_holders_lease(conn: asyncpg.Connection) -> None:
    """Another agent presenting the holder's lease id does not take the lock over."""
    await _setup(conn)
    lease = uuid.uuid4()
    mine = await _acquire(conn, "a1", lease=lease)
    theirs = await _acquire(conn, "b1", lease=lease)
    assert theirs["acquired"] is False and theirs["owner_id"] == "a1"
    row = await conn.fetchrow("select owner_id, token from distributed_locks where key = 'k'")
    assert tuple(row) == ("a1", mine["token"])


async def test_concurrent_acquire_exactly_one_wins(db_url: str, conn: asyncpg.Connection) -> None:
    """Agents racing for one free key on separate connections: exactly one acquires it."""
    agents = [f"r{i}" for i in range(8)]
    for agent in agents:
        await register(conn, agent)
    async with connections(db_url, len(agents)) as conns:
        results = await asyncio.gather(*(_acquire(c, a) for c, a in zip(conns, agents, strict=True)))
    winners = [r for r in results if r["acquired"]]
    assert len(winners) == 1
    assert all(r["owner_id"] == winners[0]["owner_id"] for r in results)
    assert await conn.fetchval("select owner_id from distributed_locks") == winners[0]["owner_id"]


async def test_concurrent_takeover_of_expired_lock_exactly_one_wins(db_url: str, conn: asyncpg.Connection,
                                                                    advance_clock: AdvanceClock) -> None:
    """Agents racing for an expired lease: exactly one takes it over."""
    agents = [f"r{i}" for i in range(6)]
    for agent in [*agents, "dead"]:
        await register(conn, agent)
    await _acquire(conn, "dead", ttl_ms=100)
    await advance_clock(0.15)
    async with connections(db_url, len(agents)) as conns:
        results = await asyncio.gather(*(_acquire(c, a) for c, a in zip(conns, agents, strict=True)))
    assert sum(r["acquired"] for r in results) == 1


async def test_expired_lock_goes_to_next_owner_with_higher_token(conn: asyncpg.Connection,
                                                                 advance_clock: AdvanceClock) -> None:
    """A dead owner's lock is free after its TTL; the next owner's fencing token is strictly higher."""
    await _setup(conn)
    old = await _acquire(conn, "a1", ttl_ms=400)
    assert (await _acquire(conn, "b1"))["acquired"] is False
    await advance_clock(0.5)
    assert await call(conn, "list_locks") == []
    new = await _acquire(conn, "b1")
    assert new["acquired"] is True and new["token"] > old["token"]
    assert await call(conn, "check_fencing_token", key="k", token=new["token"]) is True
    await expect_error("AR422", call(conn, "check_fencing_token", key="k", token=old["token"]))


async def test_tokens_increase_across_release_and_cleanup(conn: asyncpg.Connection,
                                                          advance_clock: AdvanceClock) -> None:
    """Tokens keep increasing for a key even after the lock row was released or cleaned up."""
    await _setup(conn)
    tokens = []
    for agent in ("a1", "b1", "a1"):
        lease = uuid.uuid4()
        got = await _acquire(conn, agent, lease=lease)
        tokens.append(got["token"])
        assert await call(conn, "release_lock", agent_id=agent, key="k", lease_id=lease) is True
    got = await _acquire(conn, "b1", ttl_ms=100)
    tokens.append(got["token"])
    await advance_clock(0.15)
    assert await call(conn, "cleanup_expired_locks") == 1
    tokens.append((await _acquire(conn, "a1"))["token"])
    assert tokens == sorted(set(tokens))


async def test_fencing_token_check(conn: asyncpg.Connection, advance_clock: AdvanceClock) -> None:
    """check_fencing_token passes only for the live holder's token; unknown keys and expired leases fail AR422."""
    await _setup(conn)
    held = await _acquire(conn, "a1", ttl_ms=400)
    assert await call(conn, "check_fencing_token", key="k", token=held["token"]) is True
    await expect_error("AR422", call(conn, "check_fencing_token", key="k", token=held["token"] + 1))
    await expect_error("AR422", call(conn, "check_fencing_token", key="other", token=held["token"]))
    await advance_clock(0.5)
    await expect_error("AR422", call(conn, "check_fencing_token", key="k", token=held["token"]))


async def test_renew_extends_own_lease(conn: asyncpg.Connection, advance_clock: AdvanceClock) -> None:
    """The owner renews its lease past the original TTL and keeps the token."""
    await _setup(conn)
    lease = uuid.uuid4()
    held = await _acquire(conn, "a1", lease=lease, ttl_ms=400)
    renewed = await call(conn, "renew_lock", agent_id="a1", key="k", lease_id=lease, ttl_ms=5000)
    assert renewed["acquired"] is True and renewed["token"] == held["token"] and renewed["ttl_ms"] > 4000
    await advance_clock(0.5)
    assert (await _acquire(conn, "b1"))["acquired"] is False
    assert await call(conn, "check_fencing_token", key="k", token=held["token"]) is True


async def test_renew_by_non_owner_or_after_expiry_is_refused(conn: asyncpg.Connection,
                                                             advance_clock: AdvanceClock) -> None:
    """Renewing with another agent or lease is AR409 and changes nothing; so is renewing an expired lease."""
    await _setup(conn)
    lease = uuid.uuid4()
    await _acquire(conn, "a1", lease=lease, ttl_ms=250)
    await refused_unchanged(conn, "AR409", "renew_lock", agent_id="b1", key="k", lease_id=lease, ttl_ms=5000)
    await refused_unchanged(conn, "AR409", "renew_lock", agent_id="a1", key="k", lease_id=uuid.uuid4(), ttl_ms=5000)
    await refused_unchanged(conn, "AR409", "renew_lock", agent_id="a1", key="nope", lease_id=lease, ttl_ms=5000)
    await advance_clock(0.35)
    await refused_unchanged(conn, "AR409", "renew_lock", agent_id="a1", key="k", lease_id=lease, ttl_ms=5000)


async def test_renew_after_takeover_is_refused(conn: asyncpg.Connection, advance_clock: AdvanceClock) -> None:
    """Once another agent took over an expired lease, the old holder's renew is AR409."""
    await _setup(conn)
    lease = uuid.uuid4()
    await _acquire(conn, "a1", lease=lease, ttl_ms=150)
    await advance_clock(0.2)
    assert (await _acquire(conn, "b1"))["acquired"] is True
    await expect_error("AR409", call(conn, "renew_lock", agent_id="a1", key="k", lease_id=lease, ttl_ms=5000))
    assert await call(conn, "release_lock", agent_id="a1", key="k", lease_id=lease) is False
    assert await conn.fetchval("select owner_id from distributed_locks") == "b1"


async def test_release(conn: asyncpg.Connection) -> None:
    """Only the owner's lease releases the lock (true); others get false and the lock stays."""
    await _setup(conn)
    lease = uuid.uuid4()
    await _acquire(conn, "a1", lease=lease)
    assert await call(conn, "release_lock", agent_id="b1", key="k", lease_id=lease) is False
    assert await call(conn, "release_lock", agent_id="a1", key="k", lease_id=uuid.uuid4()) is False
    assert await count(conn, "distributed_locks") == 1
    assert await call(conn, "release_lock", agent_id="a1", key="k", lease_id=lease) is True
    assert await count(conn, "distributed_locks") == 0
    assert await call(conn, "release_lock", agent_id="a1", key="k", lease_id=lease) is False
    assert (await _acquire(conn, "b1"))["acquired"] is True


async def test_release_after_expiry_is_false(conn: asyncpg.Connection, advance_clock: AdvanceClock) -> None:
    """Releasing a lease that already expired reports false (the holder had lost it)."""
    await _setup(conn)
    lease = uuid.uuid4()
    await _acquire(conn, "a1", lease=lease, ttl_ms=100)
    await advance_clock(0.15)
    assert await call(conn, "release_lock", agent_id="a1", key="k", lease_id=lease) is False


async def test_release_skips_the_flush_wait_only_when_asked_and_alone(db_url: str, conn: asyncpg.Connection) -> None:
    """release_lock(p_durable => false) commits with synchronous_commit off when it is the first
    write of its transaction (as the runtime calls it); by default, or after another write of the
    same transaction, the commit stays durable. Either way the release is seen at once by the next
    acquirer, whose commit (durable) flushes it."""
    await _setup(conn)
    await conn.execute("set synchronous_commit = on")  # (the test server's default is off)

    async def release(durable: bool | None, *, write_first: bool = False) -> str:
        lease = uuid.uuid4()
        await _acquire(conn, "a1", lease=lease)
        args: dict[str, Any] = {} if durable is None else {"durable": durable}
        async with conn.transaction():
            if write_first:
                await call(conn, "update_agent_last_seen", agent_id="a1")
            assert await call(conn, "release_lock", agent_id="a1", key="k", lease_id=lease, **args) is True
            setting: str = await conn.fetchval("select current_setting('synchronous_commit')")
        return setting

    assert await release(False) == "off"
    assert await conn.fetchval("select current_setting('synchronous_commit')") == "on"  # (transaction-local)
    assert await release(None) == "on"
    assert await release(True) == "on"
    assert await release(False, write_first=True) == "on"
    lease = uuid.uuid4()
    first = await _acquire(conn, "a1", lease=lease)
    async with connections(db_url, 1) as (other,):
        assert await call(conn, "release_lock", agent_id="a1", key="k", lease_id=lease, durable=False) is True
        taken = await _acquire(other, "b1")
        assert taken["acquired"] is True and taken["token"] > first["token"]


async def test_lock_keys(conn: asyncpg.Connection) -> None:
    """Keys of 1-256 printable characters (any script, spaces, colons) are accepted."""
    await _setup(conn)
    for key in ("task:42", "x" * 256, "ключ with spaces/and:colons", "a"):
        assert (await _acquire(conn, "a1", key=key))["acquired"] is True
    assert await count(conn, "distributed_locks") == 4


async def test_acquire_bad_input_changes_nothing(conn: asyncpg.Connection) -> None:
    """Bad keys are AR401, bad TTL or missing lease AR400, an unknown agent AR404: no lock row appears."""
    await _setup(conn)
    lease = uuid.uuid4()
    for key in ("", "x" * 257, "tab\there", "nl\n"):
        await refused_unchanged(conn, "AR401", "acquire_lock", agent_id="a1", key=key, lease_id=lease, ttl_ms=1000)
    await refused_unchanged(conn, "AR401", "acquire_lock", agent_id="a1", key=None, lease_id=lease, ttl_ms=1000)
    await refused_unchanged(conn, "AR400", "acquire_lock", agent_id="a1", key="k", lease_id=lease, ttl_ms=99)
    await refused_unchanged(conn, "AR400", "acquire_lock", agent_id="a1", key="k", lease_id=lease, ttl_ms=86400001)
    await refused_unchanged(conn, "AR400", "acquire_lock", agent_id="a1", key="k", lease_id=lease, ttl_ms=None)
    await refused_unchanged(conn, "AR400", "acquire_lock", agent_id="a1", key="k", lease_id=None, ttl_ms=1000)
    await refused_unchanged(conn, "AR404", "acquire_lock", agent_id="ghost", key="k", lease_id=lease, ttl_ms=1000)
    await refused_unchanged(conn, {"AR400", "23514"}, "acquire_lock", agent_id="a1", key="k", lease_id=lease,
                            ttl_ms=1000, metadata=[{"x": 1}])


async def test_renew_bad_ttl_is_refused(conn: asyncpg.Connection) -> None:
    """Renewing with an out-of-range or missing TTL is refused as invalid input and the lease is unchanged."""
    await _setup(conn)
    lease = uuid.uuid4()
    await _acquire(conn, "a1", lease=lease)
    await refused_unchanged(conn, "AR400", "renew_lock", agent_id="a1", key="k", lease_id=lease, ttl_ms=1)
    await refused_unchanged(conn, {"AR400", "23502"}, "renew_lock", agent_id="a1", key="k", lease_id=lease,
                            ttl_ms=None)


async def test_waiters_take_a_released_lease_in_arrival_order_without_polling(
        db_url: str, conn: asyncpg.Connection) -> None:
    """Callers that wait (p_wait_ms) queue in the database: the first to come takes the lease
    within milliseconds of its release, the next one after it, and the holder that released it
    cannot take it again ahead of them; a waiter whose wait runs out gets a plain refusal."""
    await _setup(conn)
    await register(conn, "c1")
    lease = uuid.uuid4()
    await _acquire(conn, "a1", lease=lease)
    async with connections(db_url, 3) as (b, c, a):
        assert (await _acquire(b, "b1", wait_ms=100))["acquired"] is False  # the wait ran out
        first = asyncio.create_task(_acquire(b, "b1", wait_ms=5000))
        await asyncio.sleep(0.2)
        second = asyncio.create_task(_acquire(c, "c1", wait_ms=5000))
        await asyncio.sleep(0.2)
        assert not first.done() and not second.done()
        assert await call(conn, "release_lock", agent_id="a1", key="k", lease_id=lease) is True
        again = asyncio.create_task(_acquire(a, "a1", wait_ms=5000))  # the releaser queues behind them
        released = asyncio.get_running_loop().time()
        got = await asyncio.wait_for(first, 2)
        assert got["acquired"] is True and got["owner_id"] == "b1"
        assert asyncio.get_running_loop().time() - released < 0.5
        await asyncio.sleep(0.1)
        assert not second.done() and not again.done()
        assert await call(b, "release_lock", agent_id="b1", key="k", lease_id=got["lease_id"]) is True
        got = await asyncio.wait_for(second, 2)
        assert got["acquired"] is True and got["owner_id"] == "c1"
        assert await call(c, "release_lock", agent_id="c1", key="k", lease_id=got["lease_id"]) is True
        assert (await asyncio.wait_for(again, 2))["owner_id"] == "a1"
