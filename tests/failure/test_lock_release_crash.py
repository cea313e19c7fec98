"""A crash (a backend killed -9: the server restarts and replays its WAL) on a durable server: a
release that committed without waiting for its WAL flush may be lost, and then only leaves the
lease to run out at its TTL; an acquire never is, and no fencing token is issued twice."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from tests.failure._crash_support import crash, unflushed
from tests.sql._helpers import call, register

pytestmark = pytest.mark.slow  # its own server: initdb, and a crash recovery per test


async def _lock_row(url: str) -> dict[str, Any] | None:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow("select owner_id, lease_id, token from public.distributed_locks where key = 'k'")
        return None if row is None else dict(row)
    finally:
        await conn.close()


async def _acquire(conn: asyncpg.Connection, agent: str, ttl_ms: int, **kw: Any) -> dict[str, Any]:
    result: dict[str, Any] = await call(conn, "acquire_lock", agent_id=agent, key="k", lease_id=uuid.uuid4(),
                                        ttl_ms=ttl_ms, **kw)
    return result


async def test_an_acquire_survives_a_crash_and_a_lost_release_only_leaves_the_lease_to_its_ttl(crash_url: str) -> None:
    conn = await asyncpg.connect(crash_url)
    try:
        await register(conn, "a1")
        await register(conn, "b1")
        held = await _acquire(conn, "a1", ttl_ms=10000)  # (two crash recoveries take seconds)
        await conn.close()
        await crash(crash_url)
        # The acquire's commit waited for its flush: the lease and its token are still there.
        assert await _lock_row(crash_url) == {"owner_id": "a1", "lease_id": uuid.UUID(held["lease_id"]),
                                        "token": held["token"]}

        conn = await asyncpg.connect(crash_url)
        assert await call(conn, "release_lock", agent_id="a1", key="k", lease_id=held["lease_id"],
                          durable=False) is True
        lost = await unflushed(conn)  # (nearly always: nothing has flushed the release yet)
        await conn.close()
        await crash(crash_url)
        row = await _lock_row(crash_url)
        conn = await asyncpg.connect(crash_url)
        if lost:
            # The release is gone: the lease is back as it was, held until its TTL runs out...
            assert row == {"owner_id": "a1", "lease_id": uuid.UUID(held["lease_id"]), "token": held["token"]}
            if await conn.fetchval("select expires_at > clock_timestamp() + interval '1 s'"
                                   " from public.distributed_locks where key = 'k'"):
                assert (await _acquire(conn, "b1", ttl_ms=3000))["acquired"] is False
        else:
            assert row is None
        # ...and then (or at once) the next holder gets a token no one had.
        taken = await _acquire(conn, "b1", ttl_ms=3000, wait_ms=15000)
        assert taken["acquired"] is True and taken["token"] > held["token"]
    finally:
        await conn.close()


async def test_a_release_seen_by_the_next_acquire_is_not_lost(crash_url: str) -> None:
    """The next acquire's durable commit flushes the WAL up to and past the release: after a crash
    the new holder keeps the lease (the old one never gets it back), and tokens still increase."""
    conn = await asyncpg.connect(crash_url)
    try:
        await register(conn, "a1")
        await register(conn, "b1")
        held = await _acquire(conn, "a1", ttl_ms=60000)
        assert await call(conn, "release_lock", agent_id="a1", key="k", lease_id=held["lease_id"],
                          durable=False) is True
        taken = await _acquire(conn, "b1", ttl_ms=60000)
        assert taken["acquired"] is True
        await conn.close()
        await crash(crash_url)
        assert await _lock_row(crash_url) == {"owner_id": "b1", "lease_id": uuid.UUID(taken["lease_id"]),
                                        "token": taken["token"]}
        conn = await asyncpg.connect(crash_url)
        assert await call(conn, "release_lock", agent_id="b1", key="k", lease_id=taken["lease_id"]) is True
        again = await _acquire(conn, "a1", ttl_ms=60000)
        assert again["token"] > taken["token"] > held["token"]
    finally:
        await conn.close()
