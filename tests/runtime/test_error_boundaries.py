"""Error boundaries on the Postgres transport: a database outage is survived by every part."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import anyio
import asyncpg
import msgspec
import pytest

from agent_runtime import AgentRuntime
from agent_runtime.errors import AgentRuntimeError
from agent_runtime.local import embedded

RuntimeFactory = Callable[..., AgentRuntime]


async def _outage(server: embedded.LocalServer, database: str, on: bool) -> None:
    """Refuse (or allow again) every new connection to the test's database, and cut the current ones."""
    admin = await asyncpg.connect(server.url("postgres"))
    try:
        await admin.execute(f'alter database "{database}" allow_connections {"false" if on else "true"}')
        if on:
            await admin.execute("select pg_terminate_backend(pid) from pg_stat_activity where datname = $1", database)
    finally:
        await admin.close()


@pytest.mark.slow
async def test_database_outage_while_a_handler_fails_is_survived(make_runtime: RuntimeFactory, db_url: str,
                                                                 pg_server: embedded.LocalServer) -> None:
    """The handler fails while the database is away, so its nack fails too: the runtime lives on
    and, once the database is back, the message is handled."""
    async with make_runtime("worker", poll_interval=0.5) as rt:
        await rt.channel("jobs", "queue", visibility_timeout=1)
        started, fail_now = anyio.Event(), anyio.Event()
        handled: list[Any] = []
        progress = anyio.Event()

        async def handler(msg: Any) -> None:
            if not handled and msg.attempts == 1:
                started.set()
                await fail_now.wait()
                raise RuntimeError("failing while the database is away")
            handled.append(msg.payload)
            progress.set()

        rt.handle("jobs", handler)
        await rt.publish("jobs", {"n": 1})
        with anyio.fail_after(5):
            await started.wait()
        database = urlsplit(db_url).path.lstrip("/")
        await _outage(pg_server, database, True)
        try:
            fail_now.set()
            await anyio.sleep(1.5)  # the nack, heartbeats, fetches and metrics all fail meanwhile
        finally:
            await _outage(pg_server, database, False)
        with anyio.fail_after(15):
            await progress.wait()
        assert handled == [{"n": 1}]
        progress = anyio.Event()
        await rt.publish("jobs", {"n": 2})  # and it goes on
        with anyio.fail_after(10):
            await progress.wait()
        assert handled == [{"n": 1}, {"n": 2}]


async def test_a_background_round_that_fails_is_counted_and_the_next_one_runs(
        make_runtime: RuntimeFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A heartbeat that fails (even with a bug, not a database error) does not end the agent: the next beats run."""
    async with make_runtime("beating", heartbeat_interval=0.1) as rt:
        db = rt._require_db()
        real = db.heartbeat
        calls = 0
        beat_again = anyio.Event()

        async def flaky(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls <= 2:
                raise RuntimeError("a bug in one round")
            beat_again.set()
            return await real(*args, **kwargs)

        monkeypatch.setattr(db, "heartbeat", flaky)
        with anyio.fail_after(5):
            await beat_again.wait()
        assert rt.metrics._figures[("errors.heartbeat", "")].count == 2
        assert await rt.agents()  # still working


class _Order(msgspec.Struct):
    n: int

    def __post_init__(self) -> None:
        if self.n < 0:
            raise RuntimeError("an order's own check, not a ValidationError")


async def test_a_payload_type_whose_own_check_raises_dead_letters_that_message_only(
        make_runtime: RuntimeFactory) -> None:
    """Decoding into the handler's type raises something msgspec does not wrap (a __post_init__'s
    RuntimeError): that message goes to the dead letters with the reason; the handler goes on."""
    async with make_runtime("typed") as rt:
        await rt.channel("orders", "queue")
        handled: list[int] = []
        done = anyio.Event()

        async def handler(msg: Any) -> None:
            handled.append(msg.payload.n)
            done.set()

        rt.handle("orders", handler, type=_Order)
        await rt.publish("orders", {"n": -1})
        await rt.publish("orders", {"n": 1})
        with anyio.fail_after(5):
            await done.wait()
        assert handled == [1]
        dead = await rt.dead_letters("orders")
        assert [d.payload for d in dead] == [{"n": -1}] and "own check" in (dead[0].reason or "")


async def test_a_bug_under_one_handler_stops_that_handler_only(make_runtime: RuntimeFactory,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Something unexpected (a bug, not a database error) where a handler claims: that handler
    stops, logged and counted; the runtime and its other handlers go on."""
    async with make_runtime("buggy") as rt:
        await rt.channel("broken", "queue")
        await rt.channel("fine", "queue")
        db = rt._require_db()
        real = db.claim

        async def claim(agent_id: str, channel: str, *args: Any, **kwargs: Any) -> Any:
            if channel == "broken":
                raise RuntimeError("a bug while claiming")
            return await real(agent_id, channel, *args, **kwargs)

        monkeypatch.setattr(db, "claim", claim)
        handled = anyio.Event()

        async def handler(msg: Any) -> None:
            handled.set()

        rt.handle("broken", handler)
        rt.handle("fine", handler)
        await rt.publish("fine", {"n": 1})
        with anyio.fail_after(5):
            await handled.wait()
            while ("errors.handler", "broken") not in rt.metrics._figures:  # noqa: ASYNC110
                await anyio.sleep(0.02)
        assert await rt.agents()  # still running


async def test_a_failing_inbox_claim_is_reopened_and_requests_are_still_answered(
        make_runtime: RuntimeFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The inbox's claim fails with an error its own retries do not cover (not a retryable one:
    those the subscription retries itself, see test_conformance_subscription_faults.py): the
    agent reopens its inbox, counts it, and answers the request, rather than exiting."""
    async with make_runtime("server") as server, make_runtime("client") as client:
        @server.on_request
        async def echo(msg: Any) -> Any:
            return msg.payload

        db = server._require_db()
        real = db.claim
        failures = 0

        async def claim(agent_id: str, channel: str, *args: Any, **kwargs: Any) -> Any:
            nonlocal failures
            if channel == f"agent:{server.agent_id}" and failures < 2:
                failures += 1
                raise AgentRuntimeError("an unexpected refusal (injected)")
            return await real(agent_id, channel, *args, **kwargs)

        real_inbox = db.claim_inbox

        async def claim_inbox(agent_id: str, *args: Any, **kwargs: Any) -> Any:
            # (an agent's own inbox is claimed with claim_inbox: the same injected failures)
            nonlocal failures
            if agent_id == server.agent_id and failures < 2:
                failures += 1
                raise AgentRuntimeError("an unexpected refusal (injected)")
            return await real_inbox(agent_id, *args, **kwargs)

        monkeypatch.setattr(db, "claim", claim)
        monkeypatch.setattr(db, "claim_inbox", claim_inbox)
        with anyio.fail_after(10):
            assert await client.request(server.agent_id, {"n": 1}, timeout=8) == {"n": 1}
        assert failures == 2
        assert server.metrics._figures[("errors.inbox", "")].count == 2
