"""Presence through the runtime: status kept across heartbeats, capability filters (join, status and
leave events are in tests/conformance, on both transports)."""

from __future__ import annotations

from collections.abc import Callable

import anyio

from agent_runtime import AgentRuntime

RuntimeFactory = Callable[..., AgentRuntime]


async def test_busy_status_survives_heartbeats(make_runtime: RuntimeFactory) -> None:
    """A status set by the agent is kept by its later heartbeats and seen by others."""
    async with make_runtime("a") as a, make_runtime("b") as b:
        await a.set_status("busy", load=0.5)
        await anyio.sleep(1.2)  # two heartbeats at 0.5s
        [info] = [x for x in await b.agents() if x.id == a.agent_id]
        assert info.status == "busy" and info.online and info.load == 0.5


async def test_agents_filter_by_capability(make_runtime: RuntimeFactory) -> None:
    """agents(capability=...) lists only online agents that have it."""
    async with make_runtime("planner", capabilities=["plan"]) as planner, \
            make_runtime("coder", capabilities=["code", "test"]) as coder, \
            make_runtime("tester", capabilities=["test"]) as tester:
        assert [a.id for a in await planner.agents(capability="plan")] == [planner.agent_id]
        assert {a.id for a in await planner.agents(capability="test")} == {coder.agent_id, tester.agent_id}
        assert await planner.agents(capability="deploy") == []
        async with make_runtime("gone", capabilities=["plan"]) as gone:
            assert {a.id for a in await planner.agents(capability="plan")} == {planner.agent_id, gone.agent_id}
        assert [a.id for a in await planner.agents(capability="plan")] == [planner.agent_id]
        offline = await planner.agents(capability="plan", include_offline=True)
        assert {a.id for a in offline} == {planner.agent_id, gone.agent_id}


async def test_presence_events_as_a_plain_async_for(make_runtime: RuntimeFactory) -> None:
    """`async for ev in rt.presence_events()` works without `async with`, and ends when the runtime stops."""
    seen: list[tuple[str, str]] = []
    async with make_runtime("watcher") as watcher:
        events = watcher.presence_events()
        async with make_runtime("joiner") as joiner:
            with anyio.fail_after(5):
                async for ev in events:
                    seen.append((ev.kind, ev.agent_id))
                    if (ev.kind, ev.agent_id) == ("join", joiner.agent_id):
                        break
        leftover = watcher.presence_events()
    with anyio.fail_after(2):
        rest = [ev async for ev in leftover]  # the runtime stopped: iteration ends
    assert ("join", joiner.agent_id) in seen
    assert all(ev.kind != "join" or ev.agent_id != joiner.agent_id for ev in rest)
