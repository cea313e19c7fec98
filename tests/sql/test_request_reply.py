"""Request/reply in few commits (migration request_reply): reply_to_request sends a reply and acks
the request it answers in one transaction, both or neither, and acks only a claim the caller holds."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from tests.sql._helpers import acting_as, call, expect_error, refused_unchanged, register


async def _request(conn: asyncpg.Connection, *, claim: bool = True) -> dict[str, Any]:
    """a1 asks b1; b1 claims the request (claim: True). Returns the request as claimed or sent."""
    await register(conn, "a1")
    await register(conn, "b1")
    sent = await call(conn, "send_messages", agent_id="a1", channel="agent:b1", messages=[
        {"payload": {"q": 1}, "correlation_id": str(uuid.uuid4()), "reply_to": "agent:a1"}])
    if not claim:
        return dict(sent[0])
    [request] = await call(conn, "claim_messages", agent_id="b1", channel="agent:b1", classes=["request"])
    return dict(request)


async def _state(conn: asyncpg.Connection, message_id: int) -> str:
    state: str = await conn.fetchval("select state from public.distributed_messages where id = $1", message_id)
    return state


async def _replies(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        "select m.* from public.distributed_messages m join public.communication_channels c on c.id = m.channel_id"
        " where c.name = 'agent:a1'")


def _reply(request: dict[str, Any], payload: Any = "yes") -> list[dict[str, Any]]:
    return [{"payload": payload, "headers": {"ar": "reply"}, "correlation_id": request["correlation_id"]}]


async def test_a_reply_and_the_ack_of_its_request_are_one_call(conn: asyncpg.Connection) -> None:
    """The reply is in the requester's inbox and the request is acked, in one statement."""
    request = await _request(conn)
    result = await call(conn, "reply_to_request", agent_id="b1", request_id=request["id"], channel="agent:a1",
                        messages=_reply(request))
    assert result["acked"] == 1 and len(result["sent"]) == 1 and result["sent"][0]["duplicate"] is False
    assert await _state(conn, request["id"]) == "acked"
    [reply] = await _replies(conn)
    assert reply["id"] == result["sent"][0]["id"] and str(reply["correlation_id"]) == request["correlation_id"]


async def test_a_refused_reply_leaves_its_request_unacked(conn: asyncpg.Connection) -> None:
    """Both or neither: a reply the requester's inbox refuses (too large) raises, and the request
    is still held, unacked, with nothing sent."""
    request = await _request(conn)
    await conn.execute("update public.communication_channels set max_payload_bytes = 10 where name = 'agent:a1'")
    await refused_unchanged(conn, "AR413", "reply_to_request", agent_id="b1", request_id=request["id"],
                            channel="agent:a1", messages=_reply(request, "x" * 100))
    assert await _state(conn, request["id"]) == "inflight"


async def test_a_reply_to_a_requester_that_is_gone_acks_nothing(conn: asyncpg.Connection) -> None:
    """A reply to an unknown inbox is refused as send_messages refuses it, and the request stays held."""
    request = await _request(conn)
    await expect_error("AR404", call(conn, "reply_to_request", agent_id="b1", request_id=request["id"],
                                     channel="agent:nobody", messages=_reply(request)))
    assert await _state(conn, request["id"]) == "inflight"


async def test_only_a_claim_the_caller_holds_is_acked(conn: asyncpg.Connection) -> None:
    """A request not claimed by the caller (never claimed, or claimed by someone else's runtime,
    or in another agent's inbox) is not acked; the reply is sent as before this function."""
    unclaimed = await _request(conn, claim=False)
    result = await call(conn, "reply_to_request", agent_id="b1", request_id=unclaimed["id"], channel="agent:a1",
                        messages=[{"payload": 1, "correlation_id": str(uuid.uuid4())}])
    assert result["acked"] == 0 and len(result["sent"]) == 1
    assert await _state(conn, unclaimed["id"]) == "ready"
    # b1 holds the claim; a1 (the requester) cannot ack it through a reply of its own.
    [held] = await call(conn, "claim_messages", agent_id="b1", channel="agent:b1", classes=["request"])
    result = await call(conn, "reply_to_request", agent_id="a1", request_id=held["id"], channel="agent:a1",
                        messages=[{"payload": 1}])
    assert result["acked"] == 0
    assert await _state(conn, held["id"]) == "inflight"


async def test_an_agent_replies_and_acks_only_as_itself(conn: asyncpg.Connection) -> None:
    """With its own JWT, b1 cannot answer (or ack) as another agent: refused, nothing changes."""
    request = await _request(conn)
    async with acting_as(conn, "a1"):
        await expect_error("AR403", call(conn, "reply_to_request", agent_id="b1", request_id=request["id"],
                                         channel="agent:a1", messages=_reply(request)))
    assert await _state(conn, request["id"]) == "inflight"
    await refused_unchanged(conn, "AR400", "reply_to_request", agent_id="b1", request_id=None,
                            channel="agent:a1", messages=_reply(request))


async def test_claim_inbox_claims_the_callers_own_inbox_as_claim_messages_does(conn: asyncpg.Connection) -> None:
    """Same answer as claim_messages (the request, attempt 1, now in flight), acks riding along;
    an agent token claims only its own inbox."""
    request = await _request(conn, claim=False)
    [claimed] = await call(conn, "claim_inbox", agent_id="b1", classes=["request"], durable=False)
    assert claimed["id"] == request["id"] and claimed["attempts"] == 1 and claimed["channel"] == "agent:b1"
    assert await _state(conn, request["id"]) == "inflight"
    assert await call(conn, "claim_inbox", agent_id="b1", ack_ids=[request["id"]], durable=False) == []
    assert await _state(conn, request["id"]) == "acked"
    async with acting_as(conn, "a1"):
        await expect_error("AR403", call(conn, "claim_inbox", agent_id="b1", durable=False))


async def test_claim_inbox_skips_the_wal_flush_only_when_asked_and_first_to_write(conn: asyncpg.Connection) -> None:
    """p_durable => false and the claim is its transaction's first write: that transaction commits
    asynchronously (synchronous_commit off until its end, and only there); a write before it, or
    the default p_durable, keeps the commit durable."""
    await _request(conn, claim=False)
    await conn.execute("set synchronous_commit = on")  # (the test server runs with it off)
    setting = "select current_setting('synchronous_commit')"
    async with conn.transaction():
        await call(conn, "claim_inbox", agent_id="b1", durable=False)
        assert await conn.fetchval(setting) == "off"
    assert await conn.fetchval(setting) == "on"
    async with conn.transaction():
        await call(conn, "send_messages", agent_id="a1", channel="agent:b1", messages=[{"payload": 1}])
        await call(conn, "claim_inbox", agent_id="b1", durable=False)
        assert await conn.fetchval(setting) == "on"
    async with conn.transaction():
        await call(conn, "claim_inbox", agent_id="b1")
        assert await conn.fetchval(setting) == "on"
