"""Wake-ups that cannot lie, at the SQL layer (issue 11, case 4): the HMAC of carried messages, who
may get its key, acks restricted to the channel they are for, and who may emit notifications."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.sql._helpers import acting_as, call, expect_error, listening, register, send

INTRUDER = "ar_intruder"  # a database login with no rights on the runtime's schema


@pytest.fixture
async def intruder(conn: asyncpg.Connection, db_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection as an unprivileged login (roles are per server: created once, reused)."""
    await conn.execute(f"""
        do $$ begin
          if not exists (select 1 from pg_roles where rolname = '{INTRUDER}') then
            create role {INTRUDER} login nosuperuser;
          end if;
        end $$""")
    await conn.execute(f"grant anon to {INTRUDER}")
    intruder = await asyncpg.connect(db_url.replace("postgres@", f"{INTRUDER}@", 1))
    try:
        yield intruder
    finally:
        await intruder.close()


async def _setup(conn: asyncpg.Connection) -> None:
    for agent in ("a1", "b1"):
        await register(conn, agent)
    for name in ("news", "other"):
        await call(conn, "ensure_channel", agent_id="a1", name=name)
        await call(conn, "subscribe_channel", agent_id="b1", channel=name)
    await call(conn, "ensure_channel", agent_id="a1", name="jobs", kind="queue")


async def _cursor(conn: asyncpg.Connection, channel: str) -> int:
    return int(await conn.fetchval(
        "select s.cursor_seq from channel_subscriptions s join communication_channels c on c.id = s.channel_id "
        "where c.name = $1 and s.agent_id = 'b1'", channel))


async def test_carried_messages_are_signed_with_a_key_only_trusted_roles_get(conn: asyncpg.Connection,
                                                                             db_url: str) -> None:
    await _setup(conn)
    async with listening(db_url, "channel:news") as listener:
        await call(conn, "send_messages", agent_id="a1", channel="news", messages=[{"payload": "héllo"}])
        [event] = await listener.settle(conn)
    key = bytes.fromhex(await call(conn, "wakeup_key"))
    assert len(key) == 32
    signed = f"{event['t']}\nnews\n{event['f']}\n{event['m']}".encode()
    assert event["h"] == hmac.new(key, signed, hashlib.sha256).hexdigest()
    assert json.loads(event["m"])[0]["payload"] == "héllo"
    # Not to an agent's own JWT, nor anonymously; the secret's table is the owner's alone.
    for role, agent in (("authenticated", "b1"), ("anon", None), ("service_role", None)):
        async with acting_as(conn, agent, role=role):
            if role == "service_role":
                assert await call(conn, "wakeup_key") == key.hex()
            else:
                await expect_error({"42501", "AR403"}, call(conn, "wakeup_key"), role)
        async with acting_as(conn, agent, role=role):
            await expect_error("42501", conn.fetch("select * from agent_runtime_private.wakeup_secret"), role)


async def test_acks_move_only_the_cursor_of_the_channel_they_are_for(conn: asyncpg.Connection) -> None:
    """An id of another channel, given with p_channel (directly or riding on a fetch), acks nothing."""
    await _setup(conn)
    others = [await send(conn, "a1", "other", {"n": n}) for n in range(3)]
    news = await send(conn, "a1", "news", {"n": 0})
    assert await call(conn, "ack_messages", agent_id="b1", message_ids=[others[2]["id"]], channel="news") == 0
    await call(conn, "fetch_messages", agent_id="b1", channel="news", ack_ids=[others[2]["id"]])
    assert await _cursor(conn, "other") == 0
    assert await call(conn, "ack_messages", agent_id="b1", message_ids=[news["id"], others[1]["id"]],
                      channel="news") == 1
    assert (await _cursor(conn, "news"), await _cursor(conn, "other")) == (1, 0)
    fetched = await call(conn, "fetch_messages", agent_id="b1", channel="other")
    assert [m["payload"]["n"] for m in fetched] == [0, 1, 2]
    # Queues: a claim's acks are of its own channel only.
    job = await send(conn, "a1", "jobs", {"n": 1})
    [claimed] = await call(conn, "claim_messages", agent_id="b1", channel="jobs")
    assert claimed["id"] == job["id"]
    await call(conn, "fetch_messages", agent_id="b1", channel="news", ack_ids=[job["id"]])
    assert await conn.fetchval("select state from distributed_messages where id = $1", job["id"]) == "inflight"
    assert await call(conn, "ack_messages", agent_id="b1", message_ids=[job["id"]], channel="jobs") == 1
    await expect_error("AR405", call(conn, "ack_messages", agent_id="b1", message_ids=[1], channel="nope"))


async def test_an_unprivileged_login_cannot_emit_the_runtimes_notifications(conn: asyncpg.Connection,
                                                                            intruder: asyncpg.Connection) -> None:
    """pg_notify and realtime.send are revoked from PUBLIC (this database's owner may: superuser);
    plain NOTIFY cannot be revoked, which is why carried messages are signed."""
    await expect_error("42501", intruder.execute("select pg_notify('agent_runtime', '{}')"))
    await expect_error("42501", intruder.execute(
        "select realtime.send('{}'::jsonb, 'message', 'channel:news', true)"))
    await intruder.execute("set role anon")
    await expect_error("42501", intruder.execute("select pg_notify('agent_runtime', '{}')"))
    await expect_error("42501", intruder.execute("select public.wakeup_key()"))
    await intruder.execute("notify agent_runtime, '{}'")  # still possible: a spurious wake-up at worst
    # The runtime's own wake-ups still go out (the triggers run as the owner).
    await _setup(conn)
    async with acting_as(conn, "a1"):
        assert (await send(conn, "a1", "news", {"n": 1}))["seq"] == 1
