"""A crash (a backend killed -9: the server restarts and replays its WAL) on a durable server: an
inbox claim that committed without waiting for its WAL flush may be lost, and then leaves the
request exactly as it was before the claim, to be claimed and answered again; a reply, durable,
is never lost, and takes its claim with it (the WAL is flushed in order)."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from tests.failure._crash_support import crash
from tests.sql._helpers import call, register

pytestmark = pytest.mark.slow  # its own server: initdb, and a crash recovery per test


async def _request_row(url: str, message_id: int) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow("select state, attempts, claimed_by from public.distributed_messages where id = $1",
                                  message_id)
        assert row is not None
        return dict(row)
    finally:
        await conn.close()


async def _ask(conn: asyncpg.Connection) -> int:
    """a1 sends b1 a request (durably); its id."""
    sent = await call(conn, "send_messages", agent_id="a1", channel="agent:b1", messages=[
        {"payload": {"q": 1}, "correlation_id": str(uuid.uuid4()), "reply_to": "agent:a1"}])
    return int(sent[0]["id"])


async def test_a_claim_lost_in_a_crash_leaves_the_request_as_it_was_to_be_claimed_again(crash_url: str) -> None:
    conn = await asyncpg.connect(crash_url)
    try:
        await register(conn, "a1")
        await register(conn, "b1")
        request_id = await _ask(conn)
        [claimed] = await call(conn, "claim_inbox", agent_id="b1", classes=["request"], durable=False)
        assert claimed["id"] == request_id
        lost = bool(await conn.fetchval("select pg_current_wal_flush_lsn() < pg_current_wal_insert_lsn()"))
        await conn.close()
        await crash(crash_url)
        row = await _request_row(crash_url, request_id)
        if lost:  # (nearly always: nothing has flushed the claim yet)
            assert row == {"state": "ready", "attempts": 0, "claimed_by": None}
        else:
            assert row == {"state": "inflight", "attempts": 1, "claimed_by": "b1"}
        conn = await asyncpg.connect(crash_url)
        if lost:  # claimed again at once, as the first attempt
            [again] = await call(conn, "claim_inbox", agent_id="b1", classes=["request"])
            assert again["id"] == request_id and again["attempts"] == 1
    finally:
        await conn.close()


async def test_a_reply_survives_a_crash_and_so_does_the_claim_before_it(crash_url: str) -> None:
    """The reply and the ack of its request commit durably: their flush takes the claim with it."""
    conn = await asyncpg.connect(crash_url)
    try:
        await register(conn, "a1")
        await register(conn, "b1")
        request_id = await _ask(conn)
        [claimed] = await call(conn, "claim_inbox", agent_id="b1", classes=["request"], durable=False)
        answered = await call(conn, "reply_to_request", agent_id="b1", request_id=claimed["id"], channel="agent:a1",
                              messages=[{"payload": "yes", "correlation_id": claimed["correlation_id"]}])
        assert answered["acked"] == 1
        await conn.close()
        await crash(crash_url)
        assert await _request_row(crash_url, request_id) == {"state": "acked", "attempts": 1, "claimed_by": "b1"}
        conn = await asyncpg.connect(crash_url)
        reply = await conn.fetchval("select payload from public.distributed_messages where id = $1",
                                    answered["sent"][0]["id"])
        assert reply == '"yes"'
    finally:
        await conn.close()
