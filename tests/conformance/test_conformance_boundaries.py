"""Error boundaries: a bad request or a reply that cannot be sent is the requester's problem
(a typed error), never the responder's end."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import anyio
import asyncpg
import pytest

from agent_runtime import AgentRuntime
from agent_runtime.errors import RemoteError

RuntimeFactory = Callable[..., AgentRuntime]


async def _send_request(conn: asyncpg.Connection, sender: str, to: str, reply_to: str) -> str:
    """A request with a hand-written reply_to, sent through the SQL (as send_messages accepts it)."""
    correlation_id = str(uuid.uuid4())
    await conn.execute("select public.send_messages($1, $2, $3::jsonb)", sender, f"agent:{to}", json.dumps(
        [{"payload": {"x": 1}, "headers": {"ar": "request"}, "correlation_id": correlation_id, "reply_to": reply_to}]))
    return correlation_id


async def _reply_to(conn: asyncpg.Connection, correlation_id: str) -> tuple[str, Any, str]:
    """(channel, payload, kind) of the reply with this correlation id, once it is in the table."""
    with anyio.fail_after(5):
        while True:
            row = await conn.fetchrow(
                "select c.name, m.payload::text as payload, m.headers ->> 'ar' as kind from distributed_messages m "
                "join communication_channels c on c.id = m.channel_id "
                "where m.correlation_id = $1::uuid and m.reply_to is null", correlation_id)
            if row is not None:
                return str(row["name"]), json.loads(row["payload"]), str(row["kind"])
            await anyio.sleep(0.05)


@pytest.mark.parametrize("reply_to", ["agent:nobody-at-all", "channel-that-does-not-exist", "victim", "agent:{other}"])
async def test_request_with_a_foreign_reply_to_gets_an_error_and_the_responder_survives(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection, reply_to: str) -> None:
    """reply_to naming anything but the requester's own inbox: an error reply to the requester; nothing
    is published elsewhere; the responder keeps answering."""
    async with make_runtime("responder") as responder, make_runtime("requester") as requester, \
            make_runtime("other") as other:
        await other.channel("victim")

        @responder.on_request
        async def answer(msg: Any) -> Any:
            return {"ok": True}

        correlation_id = await _send_request(conn, requester.agent_id, responder.agent_id,
                                             reply_to.format(other=other.agent_id))
        channel, payload, kind = await _reply_to(conn, correlation_id)
        assert (channel, kind, payload["type"]) == (f"agent:{requester.agent_id}", "error", "PermissionDenied")
        assert await conn.fetchval("select count(*) from distributed_messages m join communication_channels c "
                                   "on c.id = m.channel_id where c.name in ('victim', $1)",
                                   f"agent:{other.agent_id}") == 0
        with anyio.fail_after(5):
            assert await requester.request(responder.agent_id, {}, timeout=5) == {"ok": True}


@pytest.mark.parametrize("bad", ["nan", "object", "huge"])
async def test_a_reply_that_cannot_be_sent_is_a_remote_error_and_the_responder_survives(
        make_runtime: RuntimeFactory, bad: str) -> None:
    """A handler returning NaN, an object with no JSON form, or more than the inbox takes: RemoteError."""
    values = {"nan": float("nan"), "object": object(), "huge": "x" * 300_000}
    async with make_runtime("responder") as responder, make_runtime("requester") as requester:
        @responder.on_request
        async def answer(msg: Any) -> Any:
            return values[msg.payload["bad"]] if "bad" in msg.payload else {"ok": True}

        with anyio.fail_after(5), pytest.raises(RemoteError) as raised:
            await requester.request(responder.agent_id, {"bad": bad}, timeout=5)
        assert raised.value.remote_type in ("InvalidInput", "UnsupportedPayload", "PayloadTooLarge")
        with anyio.fail_after(5):
            assert await requester.request(responder.agent_id, {}, timeout=5) == {"ok": True}
