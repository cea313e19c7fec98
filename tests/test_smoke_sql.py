from __future__ import annotations

import json

import asyncpg


async def test_register_send_fetch(conn: asyncpg.Connection) -> None:
    """A registered agent can send to a broadcast channel and a subscriber fetches it."""
    await conn.fetchval("select register_agent(p_agent_id => 'a1', p_name => 'a')")
    await conn.fetchval("select register_agent(p_agent_id => 'b1', p_name => 'b')")
    await conn.fetchval("select ensure_channel(p_agent_id => 'a1', p_name => 'news')")
    await conn.fetchval("select subscribe_channel(p_agent_id => 'b1', p_channel => 'news')")
    sent = json.loads(await conn.fetchval(
        "select send_message(p_agent_id => 'a1', p_channel => 'news', p_payload => '{\"x\": 1}')"))
    assert sent["seq"] == 1
    got = json.loads(await conn.fetchval("select fetch_messages(p_agent_id => 'b1', p_channel => 'news')"))
    assert [m["payload"] for m in got] == [{"x": 1}]
