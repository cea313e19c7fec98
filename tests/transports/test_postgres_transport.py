"""The Postgres transport: JSON arguments are encoded by type, not by name, and what cannot be sent
is refused as InvalidInput before anything reaches the database; its listener hears the topics it
watches and no other."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import msgspec
import pytest

from agent_runtime.errors import InvalidInput
from agent_runtime.models import AgentInfo
from agent_runtime.transports import postgres, wire
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
        """(A presence change is compared without its signature: tests/sql/test_notify.py checks it.)"""
        with anyio.fail_after(5):
            while event not in [msgspec.structs.replace(e, at=None, mac=None) if isinstance(e, wire.PresenceChange)
                                else e for e in self.events]:
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


async def test_more_calls_at_once_than_the_pool_holds_all_complete(transport: PostgresTransport) -> None:
    """The transport keeps connections that answered on its own stack, not in the pool: while a
    call waits for the pool (all max_size=2 connections busy), a finished call hands its connection
    back to the pool, so that waiter is served (kept on the stack, it would wait forever)."""
    await transport.call("register_agent", {"p_agent_id": "a1", "p_name": "a1"})
    answers: list[Any] = []

    async def one() -> None:
        answers.append(await transport.call("list_agents", {"p_online_only": False}))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(12):
                tg.start_soon(one)
    assert len(answers) == 12 and all(a and a[0]["id"] == "a1" for a in answers)
    assert len(transport._idle) <= 2  # (the pool's max_size bounds them all)


async def test_a_kept_connection_lost_while_idle_is_replaced(transport: PostgresTransport, conn: asyncpg.Connection,
                                                             ) -> None:
    """A connection on the transport's stack whose backend is killed between calls is not handed out
    again: the next call gets a fresh one from the pool, as a pooled connection would have."""
    await transport.call("register_agent", {"p_agent_id": "a1", "p_name": "a1"})
    [kept] = transport._idle
    pid = kept.get_server_pid()
    lost = anyio.Event()
    kept.add_termination_listener(lambda _con: lost.set())
    assert await conn.fetchval("select pg_terminate_backend($1)", pid)
    with anyio.fail_after(5):
        await lost.wait()  # (asyncpg has noticed the loss)
    assert not postgres._usable(kept)
    assert [a["id"] for a in await transport.call("list_agents", {"p_online_only": False})] == ["a1"]
    [fresh] = transport._idle
    assert fresh.get_server_pid() != pid


async def test_call_as_decodes_into_the_type_as_convert_would(transport: PostgresTransport) -> None:
    """call_as gives what msgspec.convert(call(...), type, strict=False) gives, decoded from the wire
    text; a result that does not fit the type raises msgspec's ValidationError."""
    await transport.call("register_agent", {"p_agent_id": "a1", "p_name": "a1", "p_metadata": {"k": [1]}})
    args = {"p_online_only": False}
    typed = await transport.call_as("list_agents", args, list[AgentInfo])
    assert typed == msgspec.convert(await transport.call("list_agents", args), list[AgentInfo], strict=False)
    assert typed[0].metadata == {"k": [1]} and typed[0].started_at is not None
    with pytest.raises(msgspec.ValidationError):
        await transport.call_as("list_agents", args, list[int])
