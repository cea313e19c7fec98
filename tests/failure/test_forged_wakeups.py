"""Forged wake-ups (issue 11, case 4): a notification may make an agent look sooner, never deliver a
message that is not in the table, nor move a cursor or ack a message of a channel it was not read
from.

An unprivileged database login (acting as ``anon``, no rights on the runtime's tables or functions)
cannot call pg_notify any more, but plain NOTIFY cannot be revoked: it sends wake-ups that carry
made-up messages, or real message ids of another channel, to an agent that stands exactly where
such a wake-up would be taken. None is delivered, the other channel's cursor does not move, and the
agent then receives all of that channel's messages (ten sent before the forgeries, ten after).
Genuine carried messages still arrive without a fetch; a runtime that cannot get the wake-up key
fetches everything instead."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import asyncpg
import pytest

from agent_runtime import AgentRuntime
from agent_runtime.runtime import _subscription
from agent_runtime.runtime._subscription import Subscription
from agent_runtime.transports import wire

RuntimeFactory = Callable[..., AgentRuntime]

pytestmark = pytest.mark.timeout(120)

INTRUDER = "ar_intruder"
UNTRUSTED_AGENT = "ar_agent_login"  # a login with the agents' rights, not the wake-up key
NO_POLL = 60.0


async def _ensure_login(conn: asyncpg.Connection, role: str, member_of: str) -> None:
    await conn.execute(f"""
        do $$ begin
          if not exists (select 1 from pg_roles where rolname = '{role}') then
            create role {role} login nosuperuser;
          end if;
        end $$""")
    await conn.execute(f"grant {member_of} to {role}")


@pytest.fixture(autouse=True)
def _no_ack_flush_during_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ack-carrying fetch while a test counts what came with wake-ups."""
    monkeypatch.setattr(_subscription, "ACK_FLUSH_DELAY", 10.0)


@pytest.fixture
async def intruder(conn: asyncpg.Connection, db_url: str) -> AsyncIterator[asyncpg.Connection]:
    await _ensure_login(conn, INTRUDER, "anon")
    intruder = await asyncpg.connect(db_url.replace("postgres@", f"{INTRUDER}@", 1))
    try:
        await intruder.execute("set role anon")
        yield intruder
    finally:
        await intruder.close()


async def _notify(intruder: asyncpg.Connection, payload: dict[str, Any]) -> None:
    """NOTIFY on the channel of the wake-up's topic, where its listeners hear it."""
    text = json.dumps(payload).replace("'", "''")
    await intruder.execute(f"""notify "{wire.notification_channel(payload['t'])}", '{text}'""")


def _fake_message(id_: int, seq: int, channel: str, payload: Any) -> dict[str, Any]:
    return {"id": id_, "channel": channel, "seq": seq, "sender_id": "someone-trusted", "payload": payload,
            "headers": {}, "size_bytes": 20, "correlation_id": None, "reply_to": None,
            "idempotency_key": None, "created_at": "2026-12-01T00:00:00+00:00", "expires_at": None,
            "attempts": 1}


async def _next(sub: Subscription[Any], within: float = 5.0) -> Any:
    with anyio.fail_after(within):
        msg = await sub.__anext__()
    await msg.ack()
    return msg


async def test_forged_wakeups_deliver_nothing_and_move_no_cursor(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection, intruder: asyncpg.Connection) -> None:
    await expect_refused(intruder.execute("select pg_notify('agent_runtime', '{}')"))
    async with make_runtime("pub") as pub, make_runtime("target", poll_interval=NO_POLL) as rt:
        await pub.channel("news")
        await pub.channel("other")
        # A durable subscription to "other" that the target has not started consuming yet; ten
        # messages wait there.
        await rt._require_db().subscribe(rt.agent_id, "other", "earliest")
        others = [await pub.publish("other", {"n": n}) for n in range(10)]
        async with rt.subscribe("news") as sub:
            await pub.publish("news", {"n": "warm-up"})
            assert (await _next(sub)).payload == {"n": "warm-up"}
            frontier = sub._frontier
            assert frontier is not None
            # Genuine carried messages are taken without a fetch (the key verifies them).
            taken = sub.taken_from_wakeups
            await pub.publish("news", {"n": "genuine"})
            assert (await _next(sub)).payload == {"n": "genuine"}
            assert sub.taken_from_wakeups == taken + 1
            first = frontier + 2  # where a wake-up is taken now

            made_up = [_fake_message(10**9, first, "news", {"n": "forged"})]
            stolen = [_fake_message(others[-1].id, first, "news", {"n": "forged-with-a-real-id"})]
            base = {"c": "news", "s": first, "f": first, "t": "channel:news", "e": "message"}
            forgeries = [
                {**base, "m": json.dumps(made_up), "h": "00" * 32},  # a MAC it cannot compute
                {**base, "m": json.dumps(stolen), "h": secrets.token_hex(32)},
                {**base, "m": json.dumps(stolen)},  # no MAC
                {**base, "m": stolen},  # the format before MACs
                {**base, "m": "not json", "h": "zz"},
                {**base, "f": "1", "m": json.dumps(made_up)},
            ]
            for forged in forgeries:
                await _notify(intruder, forged)
            await anyio.sleep(0.5)  # (they have arrived, and woken the target for nothing)
            assert rt._transport.malformed_wakeups == 2  # type: ignore[attr-defined]  # (the two that do not decode)
            await pub.publish("news", {"n": "after"})
            msg = await _next(sub)
            assert msg.payload == {"n": "after"} and msg.sender_id == pub.agent_id
            assert msg.raw.seq == first
            with anyio.move_on_after(0.5):
                extra = await sub.__anext__()
                pytest.fail(f"delivered a message that was not sent: {extra!r}")
        cursor = await conn.fetchval(
            "select s.cursor_seq from channel_subscriptions s join communication_channels c on c.id = s.channel_id "
            "where c.name = 'other' and s.agent_id = $1", rt.agent_id)
        assert cursor == 0, "a forged wake-up moved the cursor of another channel"
        for n in range(10, 20):  # and ten more after the forgeries
            await pub.publish("other", {"n": n})
        async with rt.subscribe("other") as sub_other:
            got = [(await _next(sub_other)).payload["n"] for _ in range(20)]
        assert got == list(range(20))


async def expect_refused(coro: Any) -> None:
    with pytest.raises(asyncpg.PostgresError) as info:
        await coro
    assert info.value.sqlstate == "42501"


async def test_a_runtime_without_the_key_fetches_what_wakeups_carry(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection, db_url: str) -> None:
    """A login with the agents' rights but not the wake-up key: carried messages are not believed
    (it cannot tell them from forged ones), every message comes by fetch, none is lost."""
    await _ensure_login(conn, UNTRUSTED_AGENT, "authenticated")
    url = db_url.replace("postgres@", f"{UNTRUSTED_AGENT}@", 1)
    async with make_runtime("pub") as pub, make_runtime("untrusted", url=url, poll_interval=NO_POLL) as rt:
        await pub.channel("news")
        async with rt.subscribe("news") as sub:
            assert not rt._carried.verifying
            got = []
            for n in range(5):
                await pub.publish("news", {"n": n})
                got.append((await _next(sub)).payload["n"])
            assert got == list(range(5))
            assert sub.taken_from_wakeups == 0


async def test_supabase_agent_tokens_fetch_what_wakeups_carry(db_url: str) -> None:
    """On the Supabase transport the same wake-ups arrive through realtime.send: a runtime on the
    service key verifies them (delivers without a fetch), one on an agent's own JWT cannot get the
    key and fetches every message instead."""
    from agent_runtime.testing import SupabaseStandIn

    options: dict[str, Any] = {"heartbeat_interval": 0.5, "janitor": False, "metrics_interval": 5,
                               "poll_interval": NO_POLL, "shutdown_timeout": 3, "migrate": False}
    async with SupabaseStandIn(db_url) as standin:
        async with AgentRuntime("pub", url=standin.url, key=standin.service_role_key, **options) as pub, \
                AgentRuntime("svc", url=standin.url, key=standin.service_role_key, **options) as svc, \
                AgentRuntime("bob", url=standin.url, key=standin.anon_key,
                             access_token=standin.agent_token("bob"), **options) as bob:
            await pub.channel("room")
            async with svc.subscribe("room") as trusted, bob.subscribe("room") as untrusted:
                assert svc._carried.verifying and not bob._carried.verifying
                await pub.publish("room", {"n": -1})
                assert (await _next(trusted)).payload == {"n": -1}
                assert (await _next(untrusted)).payload == {"n": -1}
                for n in range(5):
                    await pub.publish("room", {"n": n})
                    assert (await _next(trusted)).payload == {"n": n}
                    assert (await _next(untrusted)).payload == {"n": n}
                assert trusted.taken_from_wakeups == 5
                assert untrusted.taken_from_wakeups == 0


async def test_forged_and_replayed_presence_changes_are_not_believed(
        make_runtime: RuntimeFactory, intruder: asyncpg.Connection) -> None:
    """Any login can NOTIFY on the presence channel, and LISTEN to it: an unsigned or wrongly signed
    change is not passed on, nor is a genuine one replayed after a newer change of that agent."""
    captured: list[str] = []
    await intruder.add_listener(wire.notification_channel("presence"),
                                lambda _conn, _pid, _channel, payload: captured.append(payload))
    async with make_runtime("watcher") as rt, rt.presence_events() as events:
        seen: list[tuple[str, str]] = []

        async def until(agent_id: str, kind: str) -> None:
            with anyio.fail_after(10):
                async for event in events:
                    seen.append((event.agent_id, event.kind))
                    if (event.agent_id, event.kind) == (agent_id, kind):
                        return

        async with make_runtime("b") as b:
            await until(b.agent_id, "join")
        await until(b.agent_id, "leave")
        joined = [p for p in captured if json.loads(p).get("a") == b.agent_id and json.loads(p)["k"] == "join"]
        assert joined and "h" in json.loads(joined[0])  # (what the intruder heard was signed)
        ghost = {"a": "ghost", "k": "join", "st": "online", "t": "presence", "e": "presence"}
        forgeries = [ghost, {**ghost, "at": 2**62, "h": "00" * 32}, {**ghost, "at": 2**62, "h": secrets.token_hex(32)},
                     json.loads(joined[0])]  # (the genuine join, replayed after the leave)
        for forged in forgeries:
            await _notify(intruder, forged)
        async with make_runtime("c") as c:  # a genuine change after them (the channel keeps its order)
            await until(c.agent_id, "join")
        assert [(a, k) for a, k in seen if a in (b.agent_id, "ghost", c.agent_id)] == [
            (b.agent_id, "join"), (b.agent_id, "leave"), (c.agent_id, "join")]
