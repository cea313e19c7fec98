"""A second official client in the conformance suite: an agent on supabase-js 2.119.0 (Node, with
``ws`` as its Realtime transport) against the stand-in, on its default protocol (vsn 2.0.0) and
with vsn 1.0.0 forced. It registers by RPC with its own JWT (supabase-js's ``accessToken``
option), joins its private inbox topic, receives the wake-ups of messages an AgentRuntime sends
from Python, is refused another agent's topic, and keeps its channel across a token refresh."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest

from agent_runtime import AgentRuntime
from agent_runtime.testing import SupabaseStandIn
from tests.js.supabase_js import JsAgent, js_agent

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("node") is None,
                       reason="node is not installed: the supabase-js client tests need Node 20+ (CI has it)"),
]

AGENT = "js-agent"
# The channels' first token: room for the joins, a wake-up and a refusal before the refresh on a
# loaded machine (its exp is whole seconds, so it lives SHORT_LIVED - 1 s at least).
SHORT_LIVED = 4.0
INBOX = f"agent:{AGENT}"


@pytest.fixture
async def standin(db_url: str) -> AsyncIterator[SupabaseStandIn]:
    async with SupabaseStandIn(db_url) as server:
        yield server


def _sender(standin: SupabaseStandIn) -> AgentRuntime:
    return AgentRuntime("py-sender", url=standin.url, key=standin.service_role_key, heartbeat_interval=0.5,
                        janitor=False, poll_interval=2.0, shutdown_timeout=3.0, migrate=False, pool_size=2)


async def _wake_up(agent: JsAgent, sender: AgentRuntime, payload: dict[str, Any]) -> dict[str, Any]:
    """Send ``payload`` to the JS agent's inbox from Python; return the wake-up it receives."""
    await sender.send(AGENT, payload)
    event = await agent.until(lambda e: e.get("broadcast") == INBOX, within=10)
    assert event["event"] == "message", event
    assert event["payload"]["c"] == INBOX, event
    return event


@pytest.mark.parametrize("vsn", [None, "1.0.0"], ids=["default-vsn-2.0.0", "vsn-1.0.0"])
async def test_supabase_js_agent_on_its_own_token(standin: SupabaseStandIn, vsn: str | None) -> None:
    """RPC, private inbox join, wake-ups from Python, refusal of another agent's topic and a
    token refresh, all through supabase-js on the given protocol version."""
    # Node starts and registers on a long-lived token; the channels then join on a short-lived one
    # (made current by setAuth() before the first subscribe), so the wait past its expiry is
    # seconds, not node's start-up plus seconds.
    async with js_agent(standin.url, standin.anon_key, standin.agent_token(AGENT), vsn=vsn) as agent, \
            _sender(standin) as sender:
        registered = await agent.command("rpc", fn="register_agent", args={"p_agent_id": AGENT, "p_name": AGENT})
        assert registered["error"] is None, registered
        assert registered["data"]["id"] == AGENT

        short_lived = standin.agent_token(AGENT, expires_in=SHORT_LIVED)
        expires_at = float(jwt.decode(short_lived, options={"verify_signature": False})["exp"])
        await agent.command("token", token=short_lived)
        await agent.command("refresh")
        await agent.command("subscribe", topic=INBOX, private=True)
        joined = await agent.until(lambda e: e.get("topic") == INBOX and "status" in e)
        assert joined["status"] == "SUBSCRIBED", joined
        assert standin.websocket_versions() == sorted(["1.0.0", vsn or "2.0.0"])  # the Python sender: 1.0.0

        first = await _wake_up(agent, sender, {"n": 1})
        # The wake-up is a hint with the inbox's sequence number; the message is in the table.
        assert first["payload"]["s"] >= 1

        other = "agent:py-sender"
        await agent.command("subscribe", topic=other, private=True)
        refused = await agent.until(lambda e: e.get("topic") == other and "status" in e)
        assert refused["status"] == "CHANNEL_ERROR", refused
        assert f"You do not have permissions to read from this Channel topic: {other}" in refused["error"]
        await agent.command("unsubscribe", topic=other)

        assert time.time() < expires_at - 1, "too slow to refresh before the first token expired"
        await agent.command("token", token=standin.agent_token(AGENT, expires_in=3600))
        await agent.command("refresh")
        await asyncio.sleep(max(0.0, expires_at - time.time()) + 1.0)  # past the first token's expiry
        second = await _wake_up(agent, sender, {"n": 2})
        assert second["payload"]["s"] > first["payload"]["s"]
        assert agent.statuses(INBOX) == ["SUBSCRIBED"], agent.seen
        assert standin.joined_topics().count(f"private:{INBOX}") == 1
