"""The Postgres transport: JSON arguments are encoded by type, not by name, and what cannot be sent
is refused as InvalidInput before anything reaches the database; its listener hears the topics it
watches and no other."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import pytest

from agent_runtime.errors import InvalidInput
from agent_runtime.transports import wire
from agent_runtime.transports.postgres import PostgresTransport


@pytest.fixture
async def transport(db_url: str) -> AsyncIterator[PostgresTransport]:
    transport = PostgresTransport(db_url, max_size=2)
    await transport.connect()
    try:
        yield transport
    finally:
        await transport.aclose()


async def test_json_arguments_are_encoded_from_the_functions_signature(transport: PostgresTransport) -> None:
    """jsonb parameters take any JSON value as is (a string stays a JSON string), text ones text."""
    await transport.call("register_agent", {"p_agent_id": "a1", "p_name": "a1", "p_metadata": {"k": ["v", 1]}})
    await transport.call("ensure_channel", {"p_agent_id": "a1", "p_name": "news"})
    sent = await transport.call("send_messages", {"p_agent_id": "a1", "p_channel": "news",
                                                  "p_messages": [{"payload": "just text"}, {"payload": None}]})
    assert len(sent) == 2
    [agent] = [a for a in await transport.call("list_agents", {}) if a["id"] == "a1"]
    assert agent["metadata"] == {"k": ["v", 1]}


def _cycle() -> list[Any]:
    cycle: list[Any] = []
    cycle.append(cycle)
    return cycle


@pytest.mark.parametrize("args", [
    {"p_metadata": {"k": object()}},  # no JSON form
    {"p_metadata": {"k": "\ud800"}},  # a lone surrogate
    {"p_metadata": {"k": _cycle()}},  # nested without end
    {"p_pid": "not a number"},  # the wrong Python type for an integer parameter
])
async def test_values_that_cannot_be_sent_are_invalid_input(transport: PostgresTransport,
                                                            args: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput, match="invalid argument for register_agent"):
        await transport.call("register_agent", {"p_agent_id": "a1", "p_name": "a1", **args})
    assert await transport.call("list_agents", {}) == []  # nothing changed, and the pool still works


class _Heard:
    """The events a transport delivers, with a way to wait for one."""

    def __init__(self) -> None:
        self.events: list[wire.WakeUp] = []
        self._changed = anyio.Event()

    def __call__(self, event: wire.WakeUp) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, event: wire.WakeUp) -> None:
        with anyio.fail_after(5):
            while event not in self.events:
                await self._changed.wait()


async def _release(transport: PostgresTransport, key: str) -> None:
    """A 'released' wake-up on 'locks', from the trigger (a lease acquired, then released)."""
    lease = uuid.uuid4()
    await transport.call("acquire_lock", {"p_agent_id": "b1", "p_key": key, "p_lease_id": lease, "p_ttl_ms": 60000})
    await transport.call("release_lock", {"p_agent_id": "b1", "p_key": key, "p_lease_id": lease})


async def test_the_listener_hears_only_the_topics_it_watches(transport: PostgresTransport, db_url: str) -> None:
    """LISTEN per watched topic: another topic's wake-ups never reach it (nor are decoded), an
    unwatched topic falls silent at once, and a lost connection LISTENs again to every topic."""
    heard = _Heard()
    conn = await asyncpg.connect(db_url)
    try:
        await transport.watch("presence")
        async with anyio.create_task_group() as tg:
            await tg.start(transport.listen, heard)
            await transport.call("register_agent", {"p_agent_id": "b1", "p_name": "b1"})  # presence: join
            await _release(transport, "k1")  # locks: not watched
            await heard.wait_for(wire.PresenceChange("presence", "b1", "join", "online"))
            await transport.watch("locks")
            await transport.watch("locks")  # (counted)
            await _release(transport, "k2")
            await heard.wait_for(wire.LockReleased("locks", "k2"))
            transport.unwatch("locks")
            await _release(transport, "k3")  # still watched once
            await heard.wait_for(wire.LockReleased("locks", "k3"))
            transport.unwatch("locks")
            transport.unwatch("locks")  # (one too many: changes nothing)
            await _release(transport, "k4")  # not watched any more
            # The LISTEN connection is lost: the transport comes back listening to what it watches.
            assert await conn.fetchval(
                "select count(pg_terminate_backend(pid)) from pg_stat_activity where datname = current_database()"
                " and pid <> pg_backend_pid()"
                " and (query like 'LISTEN%' or query like 'UNLISTEN%' or query = 'select 1')"
            ) == 1
            await heard.wait_for(wire.RECONNECTED)
            await transport.call("set_agent_status", {"p_agent_id": "b1", "p_status": "busy"})
            await heard.wait_for(wire.PresenceChange("presence", "b1", "status", "busy"))
            await transport.watch("locks")
            await _release(transport, "k5")
            await heard.wait_for(wire.LockReleased("locks", "k5"))
            tg.cancel_scope.cancel()
        released = [e.key for e in heard.events if isinstance(e, wire.LockReleased)]
        assert released == ["k2", "k3", "k5"]
        assert transport.malformed_wakeups == 0
    finally:
        await conn.close()
