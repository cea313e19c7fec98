"""Wake-ups reach only the runtimes they concern, on every transport: a runtime hears the topics
it watches (its inbox, presence, locks, the channels it subscribes to), and no other channel's."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from agent_runtime import AgentRuntime
from agent_runtime.transports import wire

RuntimeFactory = Callable[..., AgentRuntime]


async def test_a_runtime_hears_only_the_channels_it_subscribes_to(
        make_runtime: RuntimeFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    heard: dict[str, list[str]] = {}
    dispatch = AgentRuntime._dispatch

    def recording(self: AgentRuntime, event: wire.WakeUp) -> None:  # what each runtime's transport delivered
        heard.setdefault(self.agent_id, []).append(event.topic)
        dispatch(self, event)

    monkeypatch.setattr(AgentRuntime, "_dispatch", recording)
    async with make_runtime("pub") as pub, make_runtime("reader") as reader:
        await pub.channel("topics-a")
        await pub.channel("topics-b")
        async with reader.subscribe("topics-b") as sub:
            for n in range(5):
                await pub.publish("topics-a", {"n": n})
            await pub.publish("topics-b", {"n": "b"})
            with anyio.fail_after(10):
                msg = await sub.__anext__()
            await msg.ack()
            assert msg.payload == {"n": "b"}
            await anyio.sleep(0.3)  # (anything still on its way for topics-a would be here by now)
    assert "channel:topics-b" in heard[reader.agent_id]
    assert "channel:topics-a" not in heard[reader.agent_id]
    assert not any(t.startswith("channel:") for t in heard.get(pub.agent_id, []))  # it subscribes to none
