"""The Supabase transport's own edges: error translation, identity, no Realtime Presence, the
wire edge (malformed broadcasts dropped and counted).
(Behaviour shared with the Postgres transport is in tests/conformance.)"""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import AsyncIterator

import anyio
import asyncpg
import pytest
from postgrest import APIError

from agent_runtime import AgentRuntime
from agent_runtime.errors import ConfigurationError, ConnectionLost, InvalidInput, NotFound, UnknownAgent
from agent_runtime.testing import SupabaseStandIn
from agent_runtime.transports import wire
from agent_runtime.transports.supabase import SupabaseTransport, translate_errors


@pytest.fixture
async def standin(db_url: str) -> AsyncIterator[SupabaseStandIn]:
    async with SupabaseStandIn(db_url) as s:
        yield s


@pytest.fixture
async def transport(standin: SupabaseStandIn) -> AsyncIterator[SupabaseTransport]:
    t = SupabaseTransport(standin.url, standin.service_role_key)
    await t.connect()
    try:
        yield t
    finally:
        await t.aclose()


async def test_calls_map_arguments_and_errors(transport: SupabaseTransport) -> None:
    """uuids and None go over as JSON; SQLSTATEs and PostgREST codes become the runtime's errors."""
    await transport.call("register_agent", {
        "p_agent_id": "t1", "p_name": "t1", "p_kind": "agent", "p_capabilities": ["x"], "p_version": "",
        "p_host": "h", "p_pid": None, "p_metadata": {"a": [1, 2]}, "p_heartbeat_ttl_ms": 5000})
    grant = await transport.call("acquire_lock", {"p_agent_id": "t1", "p_key": "k", "p_lease_id": uuid.uuid4(),
                                                  "p_ttl_ms": 1000, "p_metadata": None})
    assert grant["acquired"] is True
    assert await transport.call("check_fencing_token", {"p_key": "k", "p_token": grant["token"]}) is True
    with pytest.raises(UnknownAgent):
        await transport.call("update_agent_last_seen", {"p_agent_id": "nobody", "p_status": None, "p_load": None,
                                                        "p_info": None})
    with pytest.raises(NotFound):  # PGRST202: no such function (an unmigrated project)
        await transport.call("no_such_function", {"p_x": 1})
    with pytest.raises(InvalidInput):
        await transport.call("list_agents", {"p_capability": None, "p_online_only": object()})


def test_gateway_and_network_failures_are_connection_lost() -> None:
    """A non-PostgREST 503 from a gateway is retryable ConnectionLost, not a domain error."""
    with pytest.raises(ConnectionLost), translate_errors():
        raise APIError({"message": "Service Unavailable", "code": "503", "hint": None, "details": "<html>"})


async def test_unreachable_project_is_connection_lost() -> None:
    """Nothing listening at the URL: ConnectionLost (retryable)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = SupabaseTransport(f"http://127.0.0.1:{port}", "key", timeout=2)
    await t.connect()
    try:
        with pytest.raises(ConnectionLost) as info:
            await t.call("list_agents", {})
        assert info.value.retryable
    finally:
        await t.aclose()


async def test_identity_comes_from_the_token(standin: SupabaseStandIn) -> None:
    """An agent token's agent_id claim is the runtime's id; another id is refused before any call."""
    token = standin.agent_token("claimed-1")
    async with AgentRuntime("x", url=standin.url, key=standin.anon_key, access_token=token, janitor=False,
                            migrate=False) as rt:
        assert rt.agent_id == "claimed-1"
    t = SupabaseTransport(standin.url, standin.anon_key, access_token=token)
    assert t.agent_id == "claimed-1"
    with pytest.raises(ConfigurationError, match="claimed-1"):
        async with AgentRuntime("x", agent_id="someone-else", url=standin.url, key=standin.anon_key,
                                access_token=token, janitor=False, migrate=False):
            pass


async def test_status_changes_use_no_realtime_presence(
        standin: SupabaseStandIn, caplog: pytest.LogCaptureFixture) -> None:
    """Realtime Presence is not tracked (it would not be believed, and it has a quota: 5 calls per
    30 s): many status changes in a row are all in the registry, and others hear them from its
    trigger, with no presence traffic on the socket."""
    caplog.set_level(logging.WARNING)
    async with AgentRuntime("watcher", url=standin.url, key=standin.service_role_key, janitor=False,
                            migrate=False) as watcher, watcher.presence_events() as events, \
            AgentRuntime("busy-bee", url=standin.url, key=standin.service_role_key, janitor=False,
                         migrate=False, heartbeat_interval=0.5) as rt:
        for i in range(10):
            await rt.set_status("busy" if i % 2 else "away")
        with anyio.fail_after(5):
            async for ev in events:
                if ev.agent_id == rt.agent_id and ev.kind == "status" and ev.status == "busy":
                    break
        [info] = [a for a in await rt.agents() if a.id == rt.agent_id]
        assert info.status == "busy"
        assert standin.stats.presence_diffs == 0
        assert "CLOSED" not in caplog.text


async def test_malformed_broadcasts_are_dropped_and_counted(standin: SupabaseStandIn, db_url: str) -> None:
    """What a client puts on a topic it may write to reaches the transport's edge; what does not
    decode as a wake-up never reaches the sink."""
    t = SupabaseTransport(standin.url, standin.service_role_key)
    await t.connect()
    send, receive = anyio.create_memory_object_stream[wire.WakeUp](10)
    try:
        await t.watch(wire.LOCKS)
        async with anyio.create_task_group() as tg:
            await tg.start(t.listen, send.send_nowait)
            conn = await asyncpg.connect(db_url)
            try:
                await conn.execute("""select realtime.send('{"k": 1}'::jsonb, 'released', 'locks', true)""")
                await conn.execute("""select realtime.send('{"k": "a-key"}'::jsonb, 'released', 'locks', true)""")
            finally:
                await conn.close()
            with anyio.fail_after(5):
                first = await receive.receive()
            tg.cancel_scope.cancel()
        assert first == wire.LockReleased("locks", "a-key")
        assert t.malformed_wakeups == 1
    finally:
        send.close()
        receive.close()
        await t.aclose()
