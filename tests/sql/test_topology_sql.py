"""get_network_topology: agents, channels, subscriptions (edges), flows and locks in one document."""

from __future__ import annotations

import uuid

import asyncpg

from tests.sql._helpers import call, expect_error, register, send


async def _network(conn: asyncpg.Connection) -> None:
    await register(conn, "planner", capabilities=["plan"])
    await register(conn, "coder", capabilities=["code"])
    await register(conn, "gone")
    await call(conn, "ensure_channel", agent_id="planner", name="tasks", kind="queue")
    await call(conn, "ensure_channel", agent_id="planner", name="news")
    await call(conn, "subscribe_channel", agent_id="coder", channel="tasks")
    await call(conn, "subscribe_channel", agent_id="coder", channel="news")
    await call(conn, "subscribe_channel", agent_id="gone", channel="news")
    await call(conn, "subscribe_channel", agent_id="coder", channel="agent:coder")
    for i in range(3):
        await send(conn, "planner", "news", {"n": i})
    await send(conn, "planner", "tasks", {"do": "x"})
    await send(conn, "planner", "agent:coder", {"do": "y"})
    await send(conn, "gone", "agent:coder", {"bye": True})
    await call(conn, "acquire_lock", agent_id="planner", key="task:1", lease_id=uuid.uuid4(), ttl_ms=60000)
    await call(conn, "deregister_agent", agent_id="gone")


async def test_topology_document(conn: asyncpg.Connection) -> None:
    """One call returns online agents, visible channels, subscription edges with lag, flows and held locks."""
    await _network(conn)
    topo = await call(conn, "get_network_topology")
    assert topo["window_ms"] == 300000 and topo["generated_at"]
    assert [a["id"] for a in topo["agents"]] == ["coder", "planner"]
    assert all(a["online"] for a in topo["agents"])
    assert [c["name"] for c in topo["channels"]] == ["agent:coder", "agent:planner", "news", "tasks"]
    news = next(c for c in topo["channels"] if c["name"] == "news")
    assert news["kind"] == "broadcast" and news["last_seq"] == 3 and news["owner_id"] is None
    # Inbox subscriptions are not edges; the offline agent's subscription is left out.
    subs = [(s["agent_id"], s["channel"], s["cursor"], s["lag"]) for s in topo["subscriptions"]]
    assert subs == [("coder", "news", 0, 3), ("coder", "tasks", 0, None)]
    flows = {(f["from"], f["channel"]): f for f in topo["flows"]}
    assert set(flows) == {
        ("planner", "news"), ("planner", "tasks"), ("planner", "agent:coder"), ("gone", "agent:coder"),
    }
    assert flows[("planner", "news")]["messages"] == 3 and flows[("planner", "news")]["to"] is None
    assert flows[("planner", "agent:coder")]["to"] == "coder"
    assert flows[("planner", "news")]["bytes"] == 3 * len('{"n": 0}')
    assert topo["flows"][0]["messages"] == 3  # busiest first
    assert [(lk["key"], lk["owner_id"]) for lk in topo["locks"]] == [("task:1", "planner")]


async def test_topology_include_offline(conn: asyncpg.Connection) -> None:
    """With p_include_offline the document also has agents that left, their inboxes and subscriptions."""
    await _network(conn)
    topo = await call(conn, "get_network_topology", include_offline=True)
    agents = {a["id"]: a for a in topo["agents"]}
    assert set(agents) == {"coder", "gone", "planner"} and agents["gone"]["status"] == "offline"
    assert "agent:gone" in [c["name"] for c in topo["channels"]]
    assert ("gone", "news") in [(s["agent_id"], s["channel"]) for s in topo["subscriptions"]]


async def test_topology_flow_window(conn: asyncpg.Connection) -> None:
    """Flows count only messages inside the window."""
    await _network(conn)
    await conn.execute("update distributed_messages set created_at = now() - interval '1 hour'"
                       " where sender_id = 'gone'")
    topo = await call(conn, "get_network_topology", window_ms=60000)
    assert "gone" not in {f["from"] for f in topo["flows"]}
    assert len(topo["flows"]) == 3


async def test_topology_lapsed_presence_and_expired_locks(conn: asyncpg.Connection) -> None:
    """An agent whose heartbeat lapsed and a lock whose lease expired are not shown as live."""
    await _network(conn)
    await conn.execute("update agent_presence set expires_at = now() - interval '1 second' where agent_id = 'coder'")
    await conn.execute("update distributed_locks set expires_at = now() - interval '1 second'")
    topo = await call(conn, "get_network_topology")
    assert [a["id"] for a in topo["agents"]] == ["planner"]
    assert topo["subscriptions"] == [] and topo["locks"] == []


async def test_empty_topology(conn: asyncpg.Connection) -> None:
    """An empty network is a document of empty lists, not nulls."""
    topo = await call(conn, "get_network_topology")
    for part in ("agents", "channels", "subscriptions", "flows", "locks"):
        assert topo[part] == []


async def test_topology_is_read_only_for_anon(conn: asyncpg.Connection) -> None:
    """Even the topology needs a signed-in role: anon is refused (42501)."""
    async with conn.transaction():
        await conn.execute("set local role anon")
        await expect_error("42501", call(conn, "get_network_topology"))
