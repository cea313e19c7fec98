"""Registry, presence events, errors and topology: the same behaviour on every transport."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import anyio
import pytest

from agent_runtime import AgentRuntime
from agent_runtime.errors import InvalidName, PayloadTooLarge, UnknownAgent, UnknownChannel
from agent_runtime.runtime._presence import PresenceEvent

RuntimeFactory = Callable[..., AgentRuntime]


async def test_register_list_and_resume(make_runtime: RuntimeFactory) -> None:
    """An agent is listed with its details while online, offline after it leaves, and resumes by id."""
    async with make_runtime("planner", agent_id="planner-1", capabilities=["plan"], version="1.2",
                            metadata={"team": "x"}) as planner, make_runtime("coder", capabilities=["code"]) as coder:
        assert planner.info is not None and not planner.info.resumed
        [info] = [a for a in await coder.agents() if a.id == "planner-1"]
        assert (info.name, info.capabilities, info.version) == ("planner", ["plan"], "1.2")
        assert info.metadata == {"team": "x"}
        assert info.online and info.status == "online"
        assert [a.id for a in await coder.agents(capability="plan")] == ["planner-1"]
        await planner.set_status("busy", load=0.5)
        [info] = [a for a in await coder.agents() if a.id == "planner-1"]
        assert (info.status, info.load) == ("busy", 0.5)
    async with make_runtime("planner", agent_id="planner-1") as again:
        assert again.info is not None and again.info.resumed
        assert "planner-1" in {a.id for a in await again.agents()}
        assert coder.agent_id not in {a.id for a in await again.agents()}
        assert coder.agent_id in {a.id for a in await again.agents(include_offline=True)}


async def _next_about(events: AsyncIterator[PresenceEvent], agent_id: str) -> PresenceEvent:
    async for ev in events:
        if ev.agent_id == agent_id:
            return ev
    raise AssertionError("presence stream ended")


async def test_presence_events_join_status_leave(make_runtime: RuntimeFactory) -> None:
    """A listener sees another agent join, turn busy, and leave, in that order."""
    async with make_runtime("watcher") as watcher, watcher.presence_events() as events:
        with anyio.fail_after(8):
            async with make_runtime("other") as other:
                ev = await _next_about(events, other.agent_id)
                assert (ev.kind, ev.status) == ("join", "online")
                await other.set_status("busy")
                ev = await _next_about(events, other.agent_id)
                assert (ev.kind, ev.status) == ("status", "busy")
            ev = await _next_about(events, other.agent_id)
            assert (ev.kind, ev.status) == ("leave", "offline")
        online = {a.id for a in await watcher.agents()}
        assert other.agent_id not in online and watcher.agent_id in online


async def test_bad_input_gets_typed_errors(make_runtime: RuntimeFactory) -> None:
    """SQLSTATEs come back as the same exception classes whatever the transport."""
    async with make_runtime("a") as a:
        with pytest.raises(InvalidName):
            await a.channel("bad name!")
        with pytest.raises(UnknownChannel):
            await a.publish("no-such-channel", {"x": 1})
        await a.channel("small", max_payload_bytes=100)
        with pytest.raises(PayloadTooLarge):
            await a.publish("small", {"x": "y" * 500})
        with pytest.raises(UnknownAgent):
            await a.send("nobody-here", {"x": 1})


async def test_topology_shows_agents_channels_edges_and_locks(make_runtime: RuntimeFactory) -> None:
    """One call returns agents with presence, channels, subscriptions, flows and held locks."""
    async with make_runtime("pub") as pub, make_runtime("sub") as sub:
        await pub.channel("topo")
        async with sub.subscribe("topo") as s, pub.lock("topo-lock", ttl=5):
            await pub.publish_many("topo", [{"n": 1}, {"n": 2}])
            with anyio.fail_after(5):
                await s.__anext__()
            topo = await pub.topology()
            agents = {a.id for a in topo.agents}
            assert {pub.agent_id, sub.agent_id} <= agents
            assert "topo" in {c.name for c in topo.channels}
            assert any(e.agent_id == sub.agent_id and e.channel == "topo" for e in topo.subscriptions)
            assert any(f.from_agent == pub.agent_id and f.channel == "topo" and f.messages == 2 for f in topo.flows)
            assert [(lk.key, lk.owner_id) for lk in topo.locks] == [("topo-lock", pub.agent_id)]
