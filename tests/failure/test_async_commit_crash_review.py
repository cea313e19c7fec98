"""A crash (a backend killed -9) right after a transaction that began with a non-durable release
(release_lock(p_durable => false)) and then sent a message and acquired a lock (review of issue
13): the send and the acquire are not lost with the release's asynchronous commit, and no fencing
token is handed out twice. The durable server is the folder's conftest's."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from tests.failure._crash_support import crash, unflushed
from tests.sql._helpers import call, register

pytestmark = pytest.mark.slow  # its own server: initdb, and a crash recovery


async def test_a_send_and_an_acquire_after_a_non_durable_release_survive_a_crash(crash_url: str) -> None:
    conn = await asyncpg.connect(crash_url)
    try:
        await register(conn, "a1")
        await register(conn, "b1")
        held = await call(conn, "acquire_lock", agent_id="a1", key="k", lease_id=uuid.uuid4(), ttl_ms=60000)
        async with conn.transaction():
            assert await call(conn, "release_lock", agent_id="a1", key="k", lease_id=held["lease_id"],
                              durable=False) is True
            [sent] = await call(conn, "send_messages", agent_id="a1", channel="agent:b1",
                                messages=[{"payload": {"n": 1}}])
            taken = await call(conn, "acquire_lock", agent_id="a1", key="k2", lease_id=uuid.uuid4(),
                               ttl_ms=60000)
        assert not await unflushed(conn)  # (the commit waited for its flush)
    finally:
        await conn.close()
    await crash(crash_url)
    conn = await asyncpg.connect(crash_url)
    try:
        assert await conn.fetchval("select payload::text from public.distributed_messages where id = $1",
                                   sent["id"]) == '{"n": 1}'
        assert await conn.fetchval("select token from public.distributed_locks where key = 'k2'") == taken["token"]
        again = await call(conn, "acquire_lock", agent_id="b1", key="k3", lease_id=uuid.uuid4(), ttl_ms=60000)
        assert again["token"] > taken["token"]
    finally:
        await conn.close()
