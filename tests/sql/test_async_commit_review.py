"""Review of the commits that skip their WAL flush (release_lock and claim_inbox with
p_durable => false): only the release or the claim itself may be non-durable. A send or an
acquire (which issues a fencing token) called after one of them in the same transaction (a
caller's own transaction: nothing stops a login or a fenced block from doing so) must turn the
commit durable again; and through a PostgREST request (its claims set first, no write) the
release is still its transaction's first write."""

from __future__ import annotations

import uuid

import asyncpg

from tests.sql._helpers import acting_as, call, register

_SETTING = "select current_setting('synchronous_commit')"


async def _setup(conn: asyncpg.Connection) -> uuid.UUID:
    """a1 and b1 registered; a1 holds lease k (returned); a request from a1 waits in b1's inbox."""
    await register(conn, "a1")
    await register(conn, "b1")
    lease = uuid.uuid4()
    await call(conn, "acquire_lock", agent_id="a1", key="k", lease_id=lease, ttl_ms=60000)
    await call(conn, "send_messages", agent_id="a1", channel="agent:b1", messages=[
        {"payload": {"q": 1}, "correlation_id": str(uuid.uuid4()), "reply_to": "agent:a1"}])
    await conn.execute("set synchronous_commit = on")  # (the test server's default is off)
    return lease


async def test_a_send_after_a_non_durable_release_commits_durably(conn: asyncpg.Connection) -> None:
    lease = await _setup(conn)
    async with conn.transaction():
        assert await call(conn, "release_lock", agent_id="a1", key="k", lease_id=lease, durable=False) is True
        assert await conn.fetchval(_SETTING) == "off"  # (alone so far: the release may skip its flush)
        await call(conn, "send_messages", agent_id="a1", channel="agent:b1", messages=[{"payload": 1}])
        assert await conn.fetchval(_SETTING) == "on"
    assert await conn.fetchval(_SETTING) == "on"


async def test_an_acquire_after_a_non_durable_release_commits_durably(conn: asyncpg.Connection) -> None:
    """The acquire issues a fencing token: a crash losing its commit would hand the same token out
    again."""
    lease = await _setup(conn)
    async with conn.transaction():
        await call(conn, "release_lock", agent_id="a1", key="k", lease_id=lease, durable=False)
        await call(conn, "acquire_lock", agent_id="a1", key="k2", lease_id=uuid.uuid4(), ttl_ms=60000)
        assert await conn.fetchval(_SETTING) == "on"


async def test_a_reply_after_a_non_durable_inbox_claim_commits_durably(conn: asyncpg.Connection) -> None:
    await _setup(conn)
    async with conn.transaction():
        [request] = await call(conn, "claim_inbox", agent_id="b1", durable=False)
        assert await conn.fetchval(_SETTING) == "off"
        await call(conn, "reply_to_request", agent_id="b1", request_id=request["id"], channel="agent:a1",
                   messages=[{"payload": "yes", "correlation_id": request["correlation_id"]}])
        assert await conn.fetchval(_SETTING) == "on"


async def test_the_setting_restored_is_the_one_before_the_release(conn: asyncpg.Connection) -> None:
    """A session that asked for more than 'on' (remote_apply) keeps it for its send."""
    lease = await _setup(conn)
    await conn.execute("set synchronous_commit = remote_apply")
    async with conn.transaction():
        await call(conn, "release_lock", agent_id="a1", key="k", lease_id=lease, durable=False)
        await call(conn, "send_messages", agent_id="a1", channel="agent:b1", messages=[{"payload": 1}])
        assert await conn.fetchval(_SETTING) == "remote_apply"
    async with conn.transaction():  # (and the mark does not outlive its transaction)
        await call(conn, "send_messages", agent_id="a1", channel="agent:b1", messages=[{"payload": 2}])
        assert await conn.fetchval(_SETTING) == "remote_apply"


async def test_through_a_postgrest_request_the_release_is_still_the_first_write(conn: asyncpg.Connection) -> None:
    """The stand-in (as PostgREST) sets the request's claims and role first: set_config writes
    nothing, so the release alone still skips its flush; a send in the same request does not."""
    lease = await _setup(conn)
    async with acting_as(conn, "a1"):
        assert await call(conn, "release_lock", agent_id="a1", key="k", lease_id=lease, durable=False) is True
        assert await conn.fetchval(_SETTING) == "off"
        await call(conn, "send_messages", agent_id="a1", channel="agent:b1", messages=[{"payload": 1}])
        assert await conn.fetchval(_SETTING) == "on"


async def test_a_release_inside_a_fenced_transaction_stays_durable(conn: asyncpg.Connection) -> None:
    """A fenced block begins with check_fencing_token, whose row lock is a write (it takes a
    transaction id): a release after it is not the first write and keeps the commit durable."""
    lease = await _setup(conn)
    token = await conn.fetchval("select token from public.distributed_locks where key = 'k'")
    async with conn.transaction():
        await conn.execute("select public.check_fencing_token('k', $1)", token)
        await call(conn, "release_lock", agent_id="a1", key="k", lease_id=lease, durable=False)
        assert await conn.fetchval(_SETTING) == "on"
