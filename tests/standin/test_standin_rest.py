"""PostgREST RPC through the stand-in, with the official supabase-py client: result shapes,
argument types, SQLSTATE → error mapping, role switching from the JWT."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest
from postgrest import APIError
from supabase import AsyncClient

from agent_runtime.testing import SupabaseStandIn
from tests.standin.standin_support import register

pytestmark = pytest.mark.timeout(20)


async def test_rpc_returns_the_functions_json(service: AsyncClient) -> None:
    """A jsonb-returning function's value comes back as resp.data, typed arguments included."""
    resp = await service.rpc("register_agent", {
        "p_agent_id": "a1", "p_name": "planner", "p_capabilities": ["plan", "code"],
        "p_metadata": {"zone": "eu", "n": [1, 2]}, "p_pid": 42,
    }).execute()
    assert resp.data["id"] == "a1"
    assert resp.data["capabilities"] == ["plan", "code"]
    assert resp.data["metadata"] == {"zone": "eu", "n": [1, 2]}
    listed = await service.rpc("list_agents", {"p_capability": "code"}).execute()
    assert [a["id"] for a in listed.data] == ["a1"]


async def test_scalar_void_and_set_results(service: AsyncClient, conn: asyncpg.Connection) -> None:
    """Integer and boolean results are bare JSON, void is 204 (data == []), setof is an array."""
    await conn.execute("""
        create function public.t_void(p_x int) returns void language sql as 'select';
        create function public.t_rows(p_n int) returns table (i int, sq int)
          language sql as 'select g, g * g from generate_series(1, p_n) g';
        create function public.t_ints(p_ids bigint[]) returns setof bigint
          language sql as 'select unnest(p_ids) order by 1';
    """)
    await register(service, "a1")
    ack = await service.rpc("ack_messages", {"p_agent_id": "a1", "p_message_ids": [1, 2]}).execute()
    assert ack.data == 0
    await service.rpc("ensure_channel", {"p_agent_id": "a1", "p_name": "jobs", "p_kind": "queue"}).execute()
    sub = await service.rpc("unsubscribe_channel", {"p_agent_id": "a1", "p_channel": "jobs"}).execute()
    assert sub.data is False
    assert (await service.rpc("t_void", {"p_x": 1}).execute()).data == []
    assert (await service.rpc("t_rows", {"p_n": 2}).execute()).data == [{"i": 1, "sq": 1}, {"i": 2, "sq": 4}]
    assert (await service.rpc("t_ints", {"p_ids": [3, 1, 2]}).execute()).data == [1, 2, 3]


async def test_sql_errors_keep_their_sqlstate(service: AsyncClient) -> None:
    """A domain error (send_message to an unknown channel) raises APIError with code AR405."""
    await register(service, "a1")
    with pytest.raises(APIError) as err:
        await service.rpc("send_message", {"p_agent_id": "a1", "p_channel": "nope", "p_payload": {"x": 1}}).execute()
    assert err.value.code == "AR405"
    assert "unknown channel nope" in (err.value.message or "")
    assert err.value.hint == "create it with ensure_channel"


async def test_agent_token_may_act_only_as_its_agent(
    service: AsyncClient, make_client: Any, standin: SupabaseStandIn
) -> None:
    """An authenticated JWT for a1 is refused (AR403) acting as b1 and accepted acting as a1."""
    await register(service, "a1", "b1")
    a1 = await make_client(token=standin.agent_token("a1"))
    with pytest.raises(APIError) as err:
        await a1.rpc("update_agent_last_seen", {"p_agent_id": "b1"}).execute()
    assert err.value.code == "AR403"
    resp = await a1.rpc("update_agent_last_seen", {"p_agent_id": "a1", "p_status": "busy"}).execute()
    assert resp.data["status"] == "busy"


async def test_anon_key_may_not_execute(make_client: Any) -> None:
    """The anon role has no EXECUTE on the runtime's functions: 42501 permission denied."""
    anon = await make_client()
    with pytest.raises(APIError) as err:
        await anon.rpc("list_agents", {}).execute()
    assert err.value.code == "42501"
    assert "permission denied" in (err.value.message or "")


async def test_unknown_function_or_argument_is_pgrst202(service: AsyncClient) -> None:
    """No function with that name, or with those argument names, gives PostgREST's PGRST202."""
    with pytest.raises(APIError) as err:
        await service.rpc("no_such_function", {"p_x": 1}).execute()
    assert err.value.code == "PGRST202"
    assert err.value.message == "Could not find the function public.no_such_function(p_x) in the schema cache"
    with pytest.raises(APIError) as err:
        await service.rpc("list_agents", {"p_bogus": 1}).execute()
    assert err.value.code == "PGRST202"
    with pytest.raises(APIError) as err:
        await service.rpc("register_agent", {"p_agent_id": "x"}).execute()  # p_name is required
    assert err.value.code == "PGRST202"


async def test_bad_argument_value_is_a_400_sqlstate(service: AsyncClient) -> None:
    """A value that does not fit the argument's type fails in Postgres with its SQLSTATE (22P02)."""
    await register(service, "a1")
    with pytest.raises(APIError) as err:
        await service.rpc("acquire_lock", {
            "p_agent_id": "a1", "p_key": "k", "p_lease_id": "not-a-uuid", "p_ttl_ms": 1000,
        }).execute()
    assert err.value.code == "22P02"
    resp = await service.rpc("acquire_lock", {
        "p_agent_id": "a1", "p_key": "k", "p_lease_id": str(uuid.uuid4()), "p_ttl_ms": 1000,
    }).execute()
    assert resp.data["acquired"] is True


async def test_invalid_or_expired_jwt_is_refused(make_client: Any, standin: SupabaseStandIn) -> None:
    """A token signed with another secret gives PGRST301; an expired one PGRST303."""
    forged = SupabaseStandIn("postgresql://unused", jwt_secret="another-secret-that-is-at-least-32-chars-long")
    bad = await make_client(token=forged.agent_token("a1"))
    with pytest.raises(APIError) as err:
        await bad.rpc("list_agents", {}).execute()
    assert err.value.code == "PGRST301"
    expired = await make_client(token=standin.agent_token("a1", expires_in=-10))
    with pytest.raises(APIError) as err:
        await expired.rpc("list_agents", {}).execute()
    assert err.value.code == "PGRST303"
    assert err.value.message == "JWT expired"


async def test_unknown_api_key_is_refused_by_the_gateway(make_client: Any, standin: SupabaseStandIn) -> None:
    """An agent JWT used as the project key fails the gateway's key check (HTTP 401)."""
    client = await make_client(standin.agent_token("a1"))
    with pytest.raises(APIError) as err:
        await client.rpc("list_agents", {}).execute()
    assert err.value.message == "Invalid API key"
    assert err.value.code is None


async def test_rpc_counts_calls(service: AsyncClient, standin: SupabaseStandIn) -> None:
    """stats counts RPC calls and errors."""
    before = standin.stats.snapshot()
    await service.rpc("list_agents", {}).execute()
    with pytest.raises(APIError):
        await service.rpc("nope", {}).execute()
    after = standin.stats.snapshot()
    assert after["rpc_calls"] - before["rpc_calls"] == 2
    assert after["rpc_errors"] - before["rpc_errors"] == 1
