"""Registry and presence: register_agent, update_agent_last_seen, set_agent_status,
deregister_agent, list_agents."""

from __future__ import annotations

import uuid
from datetime import timedelta

import asyncpg

from agent_runtime.testing import AdvanceClock
from tests.sql._helpers import call, count, expect_error, refused_unchanged, register


async def test_register_creates_agent_presence_and_inbox(conn: asyncpg.Connection) -> None:
    """Registering stores every registry field, starts presence online and creates the agent's inbox."""
    agent = await register(
        conn, "a1", name="planner", kind="worker", capabilities=["plan", "code"], version="1.2",
        host="box", pid=42, metadata={"zone": "eu"}, heartbeat_ttl_ms=5000,
    )
    assert agent["id"] == "a1"
    assert agent["name"] == "planner"
    assert agent["kind"] == "worker"
    assert agent["capabilities"] == ["plan", "code"]
    assert (agent["version"], agent["host"], agent["pid"]) == ("1.2", "box", 42)
    assert agent["metadata"] == {"zone": "eu"}
    assert agent["status"] == "online" and agent["online"] is True
    assert agent["resumed"] is False and agent["incarnation"] == 1
    ttl = await conn.fetchval(
        "select extract(epoch from expires_at - heartbeat_at) from agent_presence where agent_id = 'a1'"
    )
    assert float(ttl) == 5.0
    inbox = await conn.fetchrow("select kind, owner_id from communication_channels where name = 'agent:a1'")
    assert (inbox["kind"], inbox["owner_id"]) == ("direct", "a1")


async def test_reregister_resumes_same_id(conn: asyncpg.Connection) -> None:
    """Re-registering an id resumes it: one row, incarnation bumped, new fields, inbox kept."""
    await register(conn, "a1", name="old", capabilities=["x"])
    await call(conn, "deregister_agent", agent_id="a1")
    again = await register(conn, "a1", name="new", capabilities=["y"])
    assert again["resumed"] is True
    assert again["incarnation"] == 2
    assert again["name"] == "new" and again["capabilities"] == ["y"]
    assert again["status"] == "online" and again["online"] is True
    assert await count(conn, "distributed_agents") == 1
    assert await count(conn, "communication_channels", "name = 'agent:a1'") == 1


async def test_heartbeat_extends_expiry_by_database_clock(conn: asyncpg.Connection,
                                                          advance_clock: AdvanceClock) -> None:
    """A heartbeat moves expires_at to the database's now() + the agent's TTL and updates status/load/info."""
    await register(conn, "a1", heartbeat_ttl_ms=2000)
    first = await conn.fetchval("select expires_at from agent_presence where agent_id = 'a1'")
    await advance_clock(0.05)
    beat = await call(conn, "update_agent_last_seen", agent_id="a1", status="busy", load=0.5, info={"q": 3})
    assert beat["status"] == "busy" and beat["load"] == 0.5
    row = await conn.fetchrow(
        "select expires_at, heartbeat_at, info, expires_at - now() as left from agent_presence where agent_id = 'a1'"
    )
    assert row["expires_at"] > first
    assert row["expires_at"] - row["heartbeat_at"] == timedelta(seconds=2)
    assert row["info"] == '{"q": 3}'
    assert await conn.fetchval("select last_seen > started_at from distributed_agents where id = 'a1'")


async def test_set_agent_status(conn: asyncpg.Connection) -> None:
    """set_agent_status changes the presence and registry status and keeps the agent online."""
    await register(conn, "a1")
    result = await call(conn, "set_agent_status", agent_id="a1", status="away", load=0.25)
    assert result["status"] == "away" and result["online"] is True and result["load"] == 0.25
    assert await conn.fetchval("select status from agent_presence where agent_id = 'a1'") == "away"
    assert await conn.fetchval("select status from distributed_agents where id = 'a1'") == "away"


async def test_presence_lapses_without_cleanup(conn: asyncpg.Connection, advance_clock: AdvanceClock) -> None:
    """An agent whose heartbeat is older than its TTL is offline by the database clock, cleaned up or not."""
    await register(conn, "a1", heartbeat_ttl_ms=1000)
    await register(conn, "b1", heartbeat_ttl_ms=60000)
    online = await call(conn, "list_agents")
    assert [a["id"] for a in online] == ["a1", "b1"]
    await advance_clock(1.1)
    online = await call(conn, "list_agents")
    assert [a["id"] for a in online] == ["b1"]
    everyone = {a["id"]: a for a in await call(conn, "list_agents", online_only=False)}
    assert everyone["a1"]["status"] == "offline" and everyone["a1"]["online"] is False
    # Nobody ran the janitor: the stored status is still 'online'.
    assert await conn.fetchval("select status from agent_presence where agent_id = 'a1'") == "online"


async def test_lapsed_agent_comes_back_on_heartbeat(conn: asyncpg.Connection) -> None:
    """An agent marked offline by the janitor comes back online on its next plain heartbeat."""
    await register(conn, "a1")
    await conn.execute("update agent_presence set expires_at = now() - interval '1 second' where agent_id = 'a1'")
    assert await call(conn, "cleanup_stale_presence") == 1
    assert await conn.fetchval("select status from distributed_agents where id = 'a1'") == "offline"
    beat = await call(conn, "update_agent_last_seen", agent_id="a1")
    assert beat["status"] == "online" and beat["online"] is True
    assert [a["id"] for a in await call(conn, "list_agents")] == ["a1"]


async def test_lapsed_busy_agent_keeps_its_status(conn: asyncpg.Connection) -> None:
    """A lapsed (not yet cleaned) agent keeps its last chosen status when its heartbeat returns."""
    await register(conn, "a1")
    await call(conn, "set_agent_status", agent_id="a1", status="busy")
    await conn.execute("update agent_presence set expires_at = now() - interval '1 second' where agent_id = 'a1'")
    beat = await call(conn, "update_agent_last_seen", agent_id="a1")
    assert beat["status"] == "busy" and beat["online"] is True


async def test_deregister_marks_offline_and_releases_locks(conn: asyncpg.Connection) -> None:
    """Deregistering keeps the row, marks the agent offline at once and frees its locks."""
    await register(conn, "a1")
    lock = await call(conn, "acquire_lock", agent_id="a1", key="k", lease_id=uuid.uuid4(), ttl_ms=60000)
    assert lock["acquired"] is True
    gone = await call(conn, "deregister_agent", agent_id="a1")
    assert gone["status"] == "offline" and gone["online"] is False
    assert await count(conn, "distributed_agents", "id = 'a1'") == 1
    assert await count(conn, "distributed_locks") == 0
    assert await call(conn, "list_agents") == []


async def test_list_agents_filters_by_capability(conn: asyncpg.Connection) -> None:
    """list_agents returns only agents that have the capability, ordered by id."""
    await register(conn, "c1", capabilities=["code", "test"])
    await register(conn, "a1", capabilities=["plan"])
    await register(conn, "b1", capabilities=["code"])
    assert [a["id"] for a in await call(conn, "list_agents", capability="code")] == ["b1", "c1"]
    assert [a["id"] for a in await call(conn, "list_agents", capability="nope")] == []
    assert [a["id"] for a in await call(conn, "list_agents")] == ["a1", "b1", "c1"]


async def test_register_bad_input_changes_nothing(conn: asyncpg.Connection) -> None:
    """Invalid ids/names are AR401, bad metadata/TTL/kind are AR400, and nothing is written."""
    await register(conn, "ok")
    await refused_unchanged(conn, "AR401", "register_agent", agent_id="-bad", name="x")
    await refused_unchanged(conn, "AR401", "register_agent", agent_id="a" * 129, name="x")
    await refused_unchanged(conn, "AR401", "register_agent", agent_id="has space", name="x")
    await refused_unchanged(conn, "AR401", "register_agent", agent_id="a2", name="")
    await refused_unchanged(conn, "AR400", "register_agent", agent_id="a2", name="x", metadata=[{"a": 1}])
    await refused_unchanged(conn, "AR400", "register_agent", agent_id="a2", name="x", heartbeat_ttl_ms=10)
    await refused_unchanged(conn, "AR400", "register_agent", agent_id="a2", name="x", heartbeat_ttl_ms=3600001)
    await refused_unchanged(conn, "AR400", "register_agent", agent_id="a2", name="x", kind="Bad Kind")
    await refused_unchanged(conn, "AR400", "register_agent", agent_id="a2", name="x",
                            capabilities=[f"c{i}" for i in range(65)])
    # A failed re-registration of an existing agent leaves it as it was.
    await refused_unchanged(conn, "AR400", "register_agent", agent_id="ok", name="x", kind="BAD")


async def test_heartbeat_bad_input_changes_nothing(conn: asyncpg.Connection) -> None:
    """Heartbeats with a bad status, load or info are AR400; an unknown agent is AR404; nothing changes."""
    await register(conn, "a1")
    await refused_unchanged(conn, "AR400", "update_agent_last_seen", agent_id="a1", status="sleeping")
    await refused_unchanged(conn, "AR400", "update_agent_last_seen", agent_id="a1", load=1.5)
    await refused_unchanged(conn, "AR400", "update_agent_last_seen", agent_id="a1", load=-0.1)
    await refused_unchanged(conn, "AR400", "update_agent_last_seen", agent_id="a1", load=float("nan"))
    await refused_unchanged(conn, "AR400", "update_agent_last_seen", agent_id="a1", info=[{"x": 1}])
    await refused_unchanged(conn, "AR400", "set_agent_status", agent_id="a1", status="gone")
    await refused_unchanged(conn, "AR404", "update_agent_last_seen", agent_id="ghost")
    await refused_unchanged(conn, "AR404", "deregister_agent", agent_id="ghost")
    await expect_error("AR404", call(conn, "set_agent_status", agent_id="ghost", status="busy"))
