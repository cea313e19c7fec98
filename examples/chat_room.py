"""A presence-aware chat room: members see who joins and leaves, and every member receives every
line posted to the room (a broadcast channel).

    python examples/chat_room.py [--url postgresql://...]
"""

from __future__ import annotations

import anyio
from _common import parse_url

import agent_runtime
from agent_runtime import AgentRuntime

ROOM = "examples.chat"


async def main(url: str | None) -> None:
    async with AgentRuntime("alice", url=url) as alice, alice.presence_events() as events:
        await alice.channel(ROOM)
        async with alice.subscribe(ROOM) as room:
            async with AgentRuntime("bob", url=url) as bob:
                with anyio.fail_after(10):
                    async for event in events:
                        if event.agent_id == bob.agent_id and event.kind == "join":
                            print(f"alice sees {event.agent_id} join")
                            break
                online = [a.name for a in await alice.agents()]
                print("online now:", sorted(online))
                await bob.publish(ROOM, {"from": "bob", "text": "hi everyone"})
                with anyio.fail_after(10):
                    async for msg in room:
                        print(f"alice reads: {msg.payload['from']}: {msg.payload['text']}")
                        await msg.ack()
                        break
            with anyio.fail_after(10):
                async for event in events:
                    if event.kind == "leave":
                        print(f"alice sees {event.agent_id} leave")
                        break


if __name__ == "__main__":
    agent_runtime.run(main, parse_url(__doc__ or ""))  # Ctrl-C / SIGTERM: an orderly exit
