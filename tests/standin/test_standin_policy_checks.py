"""How the real server checks private-channel policies, pinned on the stand-in (RT:
lib/realtime/tenants/authorization.ex, lib/realtime_web/channels/realtime_channel.ex): as its own
non-superuser login, with probe rows that carry only topic and extension; policies that cannot be
evaluated refuse as a denial does; a refreshed token that loses read closes the channel."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from realtime import RealtimeSubscribeStates
from supabase import AsyncClient

from agent_runtime.testing import SupabaseStandIn
from agent_runtime.testing.supabase_standin import REALTIME_LOGIN
from tests.standin.standin_support import Events, register

pytestmark = pytest.mark.timeout(20)

SUBSCRIBED = RealtimeSubscribeStates.SUBSCRIBED
CHANNEL_ERROR = RealtimeSubscribeStates.CHANNEL_ERROR
CLOSED = RealtimeSubscribeStates.CLOSED
PRIVATE: Any = {"config": {"private": True}}


async def _join(client: AsyncClient, topic: str, config: Any = PRIVATE) -> tuple[Any, Any, Events]:
    """Subscribe; returns (state, error, the state sink for what follows)."""
    states = Events()
    await client.channel(topic, config).subscribe(states.cb)
    state, error = await states.next()
    return state, error, states


def _refused(topic: str) -> str:
    return f"Unauthorized: You do not have permissions to read from this Channel topic: {topic}"


async def test_probe_rows_carry_only_topic_and_extension(
    service: AsyncClient, make_client: Any, standin: SupabaseStandIn, conn: asyncpg.Connection
) -> None:
    """A policy that admits only rows whose event, payload and binary payload are NULL and whose
    private flag is the column default (false) admits the read probes: they are such rows."""
    await conn.execute("""create policy probe_shape on realtime.messages for select to authenticated using (
        (select realtime.topic()) = 'probe-shape' and event is null and payload is null
        and binary_payload is null and private is false)""")
    await register(service, "a1")
    a1 = await make_client(token=standin.agent_token("a1"))
    state, error, _ = await _join(a1, "probe-shape")
    assert state == SUBSCRIBED, error


async def test_policies_are_checked_as_a_non_superuser_login(
    service: AsyncClient, make_client: Any, standin: SupabaseStandIn, conn: asyncpg.Connection
) -> None:
    """The probes run on Realtime's own login: no superuser, no BYPASSRLS, inheriting nothing,
    owner of realtime.messages; a token whose role is a superuser's is refused (that login may
    not switch to it), where a superuser login would have read past every policy."""
    row = await conn.fetchrow("select rolsuper, rolbypassrls, rolinherit from pg_roles where rolname = $1",
                              REALTIME_LOGIN)
    assert row is not None and tuple(row) == (False, False, False)
    owner = await conn.fetchval("select relowner::regrole::text from pg_class "
                                "where oid = 'realtime.messages'::regclass")
    assert owner == REALTIME_LOGIN
    await conn.execute(f"""create policy login_check on realtime.messages for select to authenticated using (
        (select realtime.topic()) = 'login-check' and session_user = '{REALTIME_LOGIN}'
        and not exists (select 1 from pg_roles where rolname = session_user and (rolsuper or rolbypassrls)))""")
    await register(service, "a1")
    a1 = await make_client(token=standin.agent_token("a1"))
    state, error, _ = await _join(a1, "login-check")
    assert state == SUBSCRIBED, error

    superuser = await conn.fetchval("select rolname from pg_roles where rolsuper limit 1")
    forged = await make_client(token=standin.agent_token("a1", claims={"role": superuser}))
    state, error, _ = await _join(forged, "agent:a1")
    assert state == CHANNEL_ERROR and _refused("agent:a1") in str(error)


async def test_policies_that_cannot_be_evaluated_refuse_the_join(
    service: AsyncClient, make_client: Any, standin: SupabaseStandIn, conn: asyncpg.Connection
) -> None:
    """A policy that raises, or a role claim naming no role: the join is refused with the words
    of a denial (the server logs RlsPolicyError), not an internal error."""
    await conn.execute("""create policy broken on realtime.messages for select to authenticated using (
        (select realtime.topic()) = 'broken' and (select 1 / (count(*) - count(*)) from realtime.messages) = 1)""")
    await register(service, "a1")
    a1 = await make_client(token=standin.agent_token("a1"))
    state, error, _ = await _join(a1, "broken")
    assert state == CHANNEL_ERROR and _refused("broken") in str(error)

    nobody = await make_client(token=standin.agent_token("a1", claims={"role": "no_such_role"}))
    state, error, _ = await _join(nobody, "agent:a1")
    assert state == CHANNEL_ERROR and _refused("agent:a1") in str(error)


async def test_refresh_to_a_token_whose_policies_fail_closes_the_channel(
    service: AsyncClient, make_client: Any, standin: SupabaseStandIn
) -> None:
    """access_token with a role claim naming no role: system error with the server's words, then
    phx_close (the client reports CLOSED and does not rejoin)."""
    await register(service, "a1")
    a1 = await make_client(token=standin.agent_token("a1"))
    state, error, states = await _join(a1, "agent:a1")
    assert state == SUBSCRIBED, error
    await a1.realtime.set_auth(standin.agent_token("a1", claims={"role": "no_such_role"}))
    state, error = await states.next()
    assert state == CHANNEL_ERROR
    assert "You do not have permissions to read from this Channel topic: agent:a1" in str(error)
    assert (await states.next())[0] == CLOSED


async def test_refresh_that_loses_one_of_two_reads_is_a_revocation(
    service: AsyncClient, make_client: Any, standin: SupabaseStandIn, conn: asyncpg.Connection
) -> None:
    """Broadcast and presence read granted at join, only presence read under the new token: the
    server closes the channel with its revocation message."""
    await conn.execute("""create policy split on realtime.messages for select to authenticated using (
        (select realtime.topic()) = 'split'
        and (extension = 'presence' or (select auth.jwt()) ->> 'agent_id' = 'a1'))""")
    await register(service, "a1", "b1")
    a1 = await make_client(token=standin.agent_token("a1"))
    config: Any = {"config": {"private": True, "presence": {"key": "a1", "enabled": True}}}
    state, error, states = await _join(a1, "split", config)
    assert state == SUBSCRIBED, error
    await a1.realtime.set_auth(standin.agent_token("b1"))
    state, error = await states.next()
    assert state == CHANNEL_ERROR
    assert "You no longer have permission to read from this Channel topic: split" in str(error)
    assert (await states.next())[0] == CLOSED
