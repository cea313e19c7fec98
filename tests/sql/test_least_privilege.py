"""Least privilege as an agent's own JWT sees it (role switched with SET ROLE as PostgREST does,
claims set with set_config): the findings of a held-out probe of the schema, each pinned."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from tests.sql._helpers import acting_as, call, expect_error, register, send, session_as, snapshot


async def _world(conn: asyncpg.Connection) -> dict[str, int]:
    """a1 and b1; b1 has a dead message in its inbox, a dead broadcast letter on 'news' and a dead
    message on the queue 'jobs' (which a1 does not subscribe to); a1 and b1 record metrics."""
    for agent in ("a1", "b1", "c1"):
        await register(conn, agent)
    await call(conn, "ensure_channel", agent_id="b1", name="news")
    await call(conn, "ensure_channel", agent_id="b1", name="jobs", kind="queue")
    for agent in ("a1", "b1"):
        await call(conn, "subscribe_channel", agent_id=agent, channel="news")
    await call(conn, "subscribe_channel", agent_id="b1", channel="jobs")
    inbox = await send(conn, "a1", "agent:b1", {"secret": "inbox"})
    await call(conn, "claim_messages", agent_id="b1", channel="agent:b1")
    await call(conn, "nack_message", agent_id="b1", message_id=inbox["id"], dead=True)
    news = await send(conn, "b1", "news", {"secret": "news"})
    await call(conn, "nack_message", agent_id="b1", message_id=news["id"], dead=True)
    job = await send(conn, "b1", "jobs", {"secret": "job"})
    await call(conn, "claim_messages", agent_id="b1", channel="jobs")
    await call(conn, "nack_message", agent_id="b1", message_id=job["id"], dead=True)
    for agent in ("a1", "b1"):
        await call(conn, "record_communication_metrics", agent_id=agent, metrics=[{"metric": "m", "count": 1}])
    return {"inbox": inbox["id"], "news": news["id"], "job": job["id"]}


async def test_claims_saying_service_role_are_not_trusted(conn: asyncpg.Connection) -> None:
    """A session whose real role is authenticated but whose claims say service_role acts only as the
    agent in its claims: not as another agent, not as a trusted caller."""
    await _world(conn)
    before = await snapshot(conn)
    async with session_as(conn, "authenticated", {"role": "service_role", "agent_id": "a1"}):
        await expect_error("AR403", call(conn, "deregister_agent", agent_id="b1"))
    async with session_as(conn, "authenticated", {"role": "service_role"}):
        await expect_error("AR403", call(conn, "update_agent_last_seen", agent_id="b1"))
    async with session_as(conn, "authenticated", {"role": "service_role", "agent_id": "a1"}):
        assert await call(conn, "replay_dead_letters", agent_id="a1", message_ids=[1, 2, 3, 4, 5, 6]) == 0
        assert await call(conn, "list_dead_letters") == []
    assert await snapshot(conn) == before


async def test_the_real_service_role_is_trusted(conn: asyncpg.Connection) -> None:
    """SET ROLE service_role (what PostgREST does for a service key) acts as anyone, claims or not."""
    await _world(conn)
    async with session_as(conn, "service_role", {"role": "authenticated", "agent_id": "a1"}):
        await call(conn, "update_agent_last_seen", agent_id="b1")
        assert len(await call(conn, "list_dead_letters")) == 3


async def test_cleanup_is_refused_to_agent_tokens(conn: asyncpg.Connection) -> None:
    """cleanup_old_metrics and run_cleanup with an agent's JWT delete nothing: not executable (42501),
    and refused inside (AR403) even where someone granted them."""
    await _world(conn)
    await conn.execute("update communication_metrics set bucket = bucket - interval '1 day'")
    before = await snapshot(conn)
    maintenance: list[tuple[str, dict[str, Any]]] = [
        ("cleanup_old_metrics", {"older_than_ms": 60000}), ("run_cleanup", {"metrics_retention_ms": 60000}),
        ("cleanup_expired_messages", {}), ("cleanup_expired_locks", {}), ("cleanup_stale_presence", {})]
    for fn, args in maintenance:
        async with acting_as(conn, "a1"):
            await expect_error("42501", call(conn, fn, **args), fn)
        async with acting_as(conn, "a1"):
            await conn.execute(f"reset role; grant execute on function public.{fn} to authenticated;"
                               " set local role authenticated")
            await expect_error("AR403", call(conn, fn, **args), fn)
    assert await snapshot(conn) == before
    assert (await call(conn, "run_cleanup", metrics_retention_ms=60000))["old_metrics"] == 2  # trusted: done


async def test_agent_token_lists_only_dead_letters_it_may_read(conn: asyncpg.Connection) -> None:
    """list_dead_letters with a1's JWT hides b1's inbox, b1's broadcast dead letter and the queue a1
    is not in; b1 sees all three; payloads never leak."""
    ids = await _world(conn)
    async with acting_as(conn, "a1"):
        assert await call(conn, "list_dead_letters") == []
        assert await call(conn, "list_dead_letters", channel="news") == []
    async with acting_as(conn, "b1"):
        assert {m["id"] for m in await call(conn, "list_dead_letters")} == set(ids.values())
    await call(conn, "subscribe_channel", agent_id="a1", channel="jobs")
    async with acting_as(conn, "a1"):  # a queue's dead messages are readable by its consumers (RLS)
        assert [m["id"] for m in await call(conn, "list_dead_letters")] == [ids["job"]]


async def test_agent_token_lists_only_channels_it_may_read(conn: asyncpg.Connection) -> None:
    """list_channels with a1's JWT shows the shared channels and a1's own inbox only, as RLS does."""
    await _world(conn)
    async with acting_as(conn, "a1"):
        listed = {c["name"] for c in await call(conn, "list_channels")}
        readable = {r["name"] for r in await conn.fetch("select name from public.communication_channels")}
    assert listed == readable == {"news", "jobs", "agent:a1"}
    assert {c["name"] for c in await call(conn, "list_channels")} >= {"agent:b1", "agent:c1"}  # trusted


async def test_list_channels_counts_online_subscribers_only(conn: asyncpg.Connection) -> None:
    """An agent that left still has its durable subscription, but is not counted as a subscriber."""
    await _world(conn)
    counts = {c["name"]: c["subscribers"] for c in await call(conn, "list_channels")}
    assert counts["news"] == 2
    await call(conn, "deregister_agent", agent_id="a1")
    counts = {c["name"]: c["subscribers"] for c in await call(conn, "list_channels")}
    assert counts["news"] == 1
    await conn.execute("update agent_presence set expires_at = now() - interval '1 second' where agent_id = 'b1'")
    counts = {c["name"]: c["subscribers"] for c in await call(conn, "list_channels")}
    assert counts["news"] == 0  # lapsed heartbeat: offline whether or not anyone cleaned up


async def test_agent_token_reads_only_its_own_metrics(conn: asyncpg.Connection) -> None:
    """get_communication_metrics with a1's JWT returns a1's figures only, as RLS does."""
    await _world(conn)
    async with acting_as(conn, "a1"):
        assert {m["agent_id"] for m in await call(conn, "get_communication_metrics")} == {"a1"}
        assert await call(conn, "get_communication_metrics", agent_id="b1") == []
    assert {m["agent_id"] for m in await call(conn, "get_communication_metrics")} == {"a1", "b1"}


@pytest.mark.parametrize("role", ["authenticated", "anon", "service_role"])
async def test_private_helpers_are_not_executable(conn: asyncpg.Connection, role: str) -> None:
    """agent_runtime_private.* (the notify helper included) is its owner's only: 42501 for API roles."""
    await register(conn, "a1")
    for sql in ("select agent_runtime_private.notify('agent:a1', 'message', '{}'::jsonb)",
                "select agent_runtime_private.is_trusted()",
                "select agent_runtime_private.assert_acting_as('a1')"):
        async with acting_as(conn, "a1", role=role):
            await expect_error("42501", conn.execute(sql), f"{role}: {sql}")


@pytest.mark.parametrize("statement", [
    "truncate public.distributed_messages",
    "truncate public.distributed_locks",
    "select setval('public.distributed_locks_token_seq', 1)",
    "select nextval('public.distributed_locks_token_seq')",
    "select nextval('public.distributed_messages_id_seq')",
])
@pytest.mark.parametrize("role", ["authenticated", "anon"])
async def test_api_roles_cannot_truncate_or_touch_sequences(conn: asyncpg.Connection, role: str,
                                                            statement: str) -> None:
    """TRUNCATE (which RLS does not limit) and the fencing-token sequence are out of reach."""
    await _world(conn)
    async with acting_as(conn, "a1", role=role):
        await expect_error("42501", conn.execute(statement), statement)
