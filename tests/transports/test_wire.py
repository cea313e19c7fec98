"""The wire module: the triggers' wake-ups decode into typed events, once, at the transport's edge;
what does not decode is dropped there (and counted), never handed to the runtime."""

from __future__ import annotations

import json

import anyio
import asyncpg
import pytest

from agent_runtime.transports import wire
from agent_runtime.transports.postgres import PostgresTransport


def test_topics() -> None:
    assert wire.inbox_topic("bob") == "agent:bob"
    assert wire.channel_topic("news") == "channel:news"
    assert wire.channel_topic("agent:bob") == "agent:bob"  # an inbox is its own topic
    assert wire.agent_topics("bob") == ("agent:bob", "presence", "locks")


def test_notification_channels_are_short_identifiers_one_per_topic() -> None:
    topics = ["presence", "locks", "agent:bob", "channel:news", "channel:" + "é" * 500]
    channels = [wire.notification_channel(t) for t in topics]
    assert len(set(channels)) == len(topics)
    assert all(len(c.encode()) <= 63 and c.startswith("agent_runtime:") for c in channels)
    assert wire.notification_channel("locks") == wire.notification_channel("locks")


def test_both_edges_decode_the_same_events() -> None:
    carried = '[{"seq": 4}]'  # (carried messages stay one JSON text: the MAC is over that text)
    payload = {"c": "news", "s": 4, "f": 4, "m": carried, "h": "ab"}
    expected = wire.MessageWakeUp("channel:news", "news", 4, 4, carried, "ab")
    assert wire.from_notification(json.dumps({**payload, "t": "channel:news", "e": "message"})) == expected
    assert wire.from_broadcast("channel:news", "message", {**payload, "id": "x"}) == expected
    assert wire.from_broadcast("presence", "presence", {"a": "bob", "k": "leave", "st": "offline"}) \
        == wire.PresenceChange("presence", "bob", "leave", "offline")
    signed = {"a": "bob", "k": "join", "st": "online", "at": 1796000000000000, "h": "cd"}
    assert wire.from_notification(json.dumps({**signed, "t": "presence", "e": "presence"})) \
        == wire.from_broadcast("presence", "presence", signed) \
        == wire.PresenceChange("presence", "bob", "join", "online", 1796000000000000, "cd")
    released = wire.LockReleased("locks", "job:1")
    assert wire.from_notification('{"k": "job:1", "t": "locks", "e": "released"}') == released
    assert wire.from_broadcast("agent:bob", "message", {"c": "agent:bob", "s": 9}) \
        == wire.MessageWakeUp("agent:bob", "agent:bob", 9)


@pytest.mark.parametrize("payload", [
    "not json", "[]", "{}", '{"t": "locks", "e": "released"}', '{"k": 1, "t": "locks", "e": "released"}',
    '{"c": "news", "s": "4", "t": "channel:news", "e": "message"}',
    '{"c": "news", "s": 4, "f": "1", "t": "channel:news", "e": "message"}',
    '{"c": "news", "s": 4, "m": [], "t": "channel:news", "e": "message"}',  # (the format before MACs)
    '{"a": "x", "k": "hello", "st": "online", "t": "presence", "e": "presence"}',
    '{"t": "*", "e": "reconnected"}',  # only a transport says that
    '{"t": "locks", "e": "something-else", "k": "x"}',
])
def test_malformed_notifications_are_dropped(payload: str) -> None:
    assert wire.from_notification(payload) is None


@pytest.mark.parametrize(("event", "payload"), [
    ("released", {"k": 1}), ("released", None), ("released", ["k"]), ("reconnected", {}), (None, {"k": "x"}),
    ("message", {"c": "news"}),
])
def test_malformed_broadcasts_are_dropped(event: object, payload: object) -> None:
    assert wire.from_broadcast("locks", event, payload) is None


async def test_the_postgres_transport_drops_and_counts_what_does_not_decode(db_url: str) -> None:
    transport = PostgresTransport(db_url)
    await transport.connect()
    await transport.watch("locks")
    send, receive = anyio.create_memory_object_stream[wire.WakeUp](10)
    conn = await asyncpg.connect(db_url)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(transport.listen, send.send_nowait)
            for payload in ("garbage", '{"k": 1, "t": "locks", "e": "released"}',
                            '{"k": "job:1", "t": "presence", "e": "released"}',  # another topic's
                            '{"k": "job:1", "t": "locks", "e": "released"}'):
                await conn.execute("select pg_notify($1, $2)", wire.notification_channel("locks"), payload)
            with anyio.fail_after(5):
                first = await receive.receive()
            tg.cancel_scope.cancel()
        assert first == wire.LockReleased("locks", "job:1")
        assert transport.malformed_wakeups == 3
    finally:
        await conn.close()
        send.close()
        receive.close()
        await transport.aclose()
