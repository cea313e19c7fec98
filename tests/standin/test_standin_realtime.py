"""Realtime through the stand-in, with the official clients: private joins authorised by RLS on
realtime.messages, broadcast from the database, client broadcast (self/ack), presence, token
expiry, and reconnect after the server drops the socket."""

from __future__ import annotations

from typing import Any

import pytest
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates
from supabase import AsyncClient

from agent_runtime.testing import SupabaseStandIn
from tests.standin.standin_support import Events, register

pytestmark = pytest.mark.timeout(20)

SUBSCRIBED = RealtimeSubscribeStates.SUBSCRIBED
CHANNEL_ERROR = RealtimeSubscribeStates.CHANNEL_ERROR
CLOSED = RealtimeSubscribeStates.CLOSED
PRIVATE: Any = {"config": {"private": True}}


def _state(event: Any) -> Any:
    return event[0]


async def _subscribed(channel: Any, states: Events | None = None) -> Events:
    states = states or Events()
    await channel.subscribe(states.cb)
    state, error = await states.next()
    assert state == SUBSCRIBED, error
    return states


async def test_private_join_is_authorised_by_rls(
    service: AsyncClient, make_client: Any, standin: SupabaseStandIn
) -> None:
    """With a1's token, private agent:a1 joins and private agent:b1 is refused as Unauthorized."""
    await register(service, "a1", "b1")
    a1 = await make_client(token=standin.agent_token("a1"))
    await _subscribed(a1.channel("agent:a1", PRIVATE))
    refused = Events()
    await a1.channel("agent:b1", PRIVATE).subscribe(refused.cb)
    state, error = await refused.next()
    assert state == CHANNEL_ERROR
    assert "Unauthorized: You do not have permissions to read from this Channel topic: agent:b1" in str(error)
    assert standin.joined_topics() == ["private:agent:a1"]


async def test_anon_key_cannot_join_private_topics(make_client: Any) -> None:
    """The anon role has no read policy on realtime.messages: a private join is refused."""
    anon = await make_client()
    refused = Events()
    await anon.channel("presence", PRIVATE).subscribe(refused.cb)
    state, error = await refused.next()
    assert state == CHANNEL_ERROR and "Unauthorized" in str(error)


async def test_broadcast_from_the_database_reaches_channel_subscribers(
    service: AsyncClient, make_client: Any, standin: SupabaseStandIn
) -> None:
    """send_message's trigger (realtime.send) reaches a subscribed agent's private channel:<name>
    in the server's frame shape; an agent not subscribed to the channel may not join it."""
    await register(service, "p1", "a1", "a2")
    await service.rpc("ensure_channel", {"p_agent_id": "p1", "p_name": "news"}).execute()
    a1 = await make_client(token=standin.agent_token("a1"))
    await a1.rpc("subscribe_channel", {"p_agent_id": "a1", "p_channel": "news"}).execute()
    got = Events()
    await _subscribed(a1.channel("channel:news", PRIVATE).on_broadcast("message", got.cb))

    a2 = await make_client(token=standin.agent_token("a2"))
    refused = Events()
    await a2.channel("channel:news", PRIVATE).subscribe(refused.cb)
    assert _state(await refused.next()) == CHANNEL_ERROR

    await service.rpc("send_message", {"p_agent_id": "p1", "p_channel": "news", "p_payload": {"n": 1}}).execute()
    msg = await got.next()
    assert msg["event"] == "message"
    assert msg["payload"]["c"] == "news" and msg["payload"]["s"] == 1
    assert msg["meta"]["id"] == msg["payload"]["id"]
    await got.nothing(0.3)
    assert standin.stats.broadcasts_delivered == 1


async def test_private_and_public_topics_are_separate(
    service: AsyncClient, make_client: Any, standin: SupabaseStandIn
) -> None:
    """A public join of agent:a1 is allowed without RLS but never sees the private broadcast."""
    await register(service, "a1", "b1")
    public_got, private_got = Events(), Events()
    anon = await make_client()
    await _subscribed(anon.channel("agent:a1").on_broadcast("*", public_got.cb))
    a1 = await make_client(token=standin.agent_token("a1"))
    await _subscribed(a1.channel("agent:a1", PRIVATE).on_broadcast("*", private_got.cb))
    await service.rpc("send_message", {"p_agent_id": "b1", "p_channel": "agent:a1", "p_payload": {}}).execute()
    assert (await private_got.next())["payload"]["c"] == "agent:a1"
    await public_got.nothing(0.3)


async def test_client_broadcast_self_and_ack(make_client: Any) -> None:
    """broadcast.self echoes to the sender's channel and broadcast.ack replies ok; without them
    the sender gets neither, while the other subscriber always receives."""
    c1, c2 = await make_client(), await make_client()
    got1, got2, acks = Events(), Events(), Events()
    config: Any = {"config": {"broadcast": {"self": True, "ack": True}, "presence": {"key": "", "enabled": False},
                              "private": False}}
    ch1 = c1.channel("room", config).on_broadcast("hi", got1.cb)
    ch2 = c2.channel("room").on_broadcast("*", got2.cb)
    await _subscribed(ch1)
    await _subscribed(ch2)

    push = await ch1.push("broadcast", {"type": "broadcast", "event": "hi", "payload": {"n": 1}})
    push.receive("ok", acks.cb)
    await acks.next()
    assert await got1.next() == {"event": "hi", "payload": {"n": 1}}
    assert await got2.next() == {"event": "hi", "payload": {"n": 1}}

    await ch2.send_broadcast("hi", {"n": 2})
    assert await got1.next() == {"event": "hi", "payload": {"n": 2}}
    await got2.nothing(0.3)


async def test_private_broadcast_needs_the_write_policy(
    service: AsyncClient, make_client: Any, standin: SupabaseStandIn
) -> None:
    """On private topics a client broadcast is delivered only if RLS allows the insert: a1 may
    publish on agent:a1 but not on locks (read-only), where the send is dropped silently."""
    await register(service, "a1")
    sender = await make_client(token=standin.agent_token("a1"))
    listener = await make_client(token=standin.agent_token("a1"))
    got = Events()
    await _subscribed(listener.channel("agent:a1", PRIVATE).on_broadcast("*", got.cb))
    locks_got = Events()
    await _subscribed(listener.channel("locks", PRIVATE).on_broadcast("*", locks_got.cb))
    own = sender.channel("agent:a1", PRIVATE)
    locks = sender.channel("locks", PRIVATE)
    await _subscribed(own)
    await _subscribed(locks)
    await locks.send_broadcast("released", {"k": "x"})
    await own.send_broadcast("note", {"n": 1})
    assert await got.next() == {"event": "note", "payload": {"n": 1}}
    await locks_got.nothing(0.3)


async def test_presence_track_reaches_other_clients(
    service: AsyncClient, make_client: Any, standin: SupabaseStandIn
) -> None:
    """track on private presence gives others a join (and a late joiner the state); closing the
    tracker's socket gives a leave."""
    await register(service, "a1", "b1", "c1")
    events = Events()
    b1 = await make_client(token=standin.agent_token("b1"))
    watcher = b1.channel("presence", {"config": {"private": True, "presence": {"key": "b1", "enabled": True}}})
    watcher.on_presence_join(lambda key, _cur, new: events.cb(("join", key, new)))
    watcher.on_presence_leave(lambda key, _cur, left: events.cb(("leave", key, left)))
    await _subscribed(watcher)

    a1 = await make_client(token=standin.agent_token("a1"))
    tracker = a1.channel("presence", {"config": {"private": True, "presence": {"key": "a1", "enabled": True}}})
    await _subscribed(tracker)
    await tracker.track({"status": "online"})
    _, key, new = await events.until(lambda e: e[0] == "join")
    assert key == "a1" and new[0]["status"] == "online" and new[0]["presence_ref"]

    synced = Events()
    c1 = await make_client(token=standin.agent_token("c1"))
    late = c1.channel("presence", {"config": {"private": True, "presence": {"key": "c1", "enabled": True}}})
    late.on_presence_sync(lambda: synced.cb(dict(late.presence_state())))
    await _subscribed(late)
    state = await synced.next()
    assert [p["status"] for p in state["a1"]] == ["online"]

    await a1.realtime.remove_all_channels()
    _, key, left = await events.until(lambda e: e[0] == "leave")
    assert key == "a1" and left[0]["status"] == "online"
    assert "a1" not in watcher.presence_state()


@pytest.mark.parametrize("abrupt", [False, True], ids=["close-1001", "tcp-drop"])
async def test_client_reconnects_and_rejoins_after_drop(
    service: AsyncClient, make_client: Any, standin: SupabaseStandIn, abrupt: bool
) -> None:
    """After drop_websockets() the official client reconnects, rejoins its private channel with
    its token, and receives broadcasts from the database again."""
    await register(service, "a1", "b1")
    a1 = await make_client(token=standin.agent_token("a1"))
    got = Events()
    states = await _subscribed(a1.channel("agent:a1", PRIVATE).on_broadcast("message", got.cb))
    assert await standin.drop_websockets(abrupt=abrupt) == 1
    assert _state(await states.next()) == CHANNEL_ERROR
    assert _state(await states.next()) == SUBSCRIBED
    await service.rpc("send_message", {"p_agent_id": "b1", "p_channel": "agent:a1", "p_payload": {}}).execute()
    assert (await got.next())["payload"]["c"] == "agent:a1"
    assert standin.stats.ws_connections == 2
    assert standin.joined_topics() == ["private:agent:a1"]


async def test_expired_token_closes_the_channel_unless_refreshed(
    service: AsyncClient, make_client: Any, standin: SupabaseStandIn
) -> None:
    """A channel whose token expires gets a system error and phx_close (CLOSED); one whose
    client called set_auth with a fresh token first stays joined."""
    await register(service, "a1")
    stale = await make_client(token=standin.agent_token("a1", expires_in=3))
    fresh = await make_client(token=standin.agent_token("a1", expires_in=3))
    stale_states = await _subscribed(stale.channel("agent:a1", PRIVATE))
    fresh_states = await _subscribed(fresh.channel("agent:a1", PRIVATE))
    await fresh.realtime.set_auth(standin.agent_token("a1"))
    state, error = await stale_states.next(within=6)
    assert state == CHANNEL_ERROR and "Token has expired" in str(error)
    assert _state(await stale_states.next()) == CLOSED
    await fresh_states.nothing(0.5)
    assert standin.joined_topics() == ["private:agent:a1"]


async def test_expired_token_join_is_refused(make_client: Any, standin: SupabaseStandIn) -> None:
    """A join carrying an expired access_token is refused with InvalidJWTToken."""
    client = await make_client(token=standin.agent_token("a1", expires_in=-5))
    refused = Events()
    await client.channel("agent:a1", PRIVATE).subscribe(refused.cb)
    state, error = await refused.next()
    assert state == CHANNEL_ERROR and "InvalidJWTToken: Token has expired" in str(error)


async def test_postgres_changes_is_reported_unsupported(make_client: Any) -> None:
    """A postgres_changes binding joins (ids echoed), then a system error says it is not implemented."""
    client = await make_client()
    states = Events()
    channel = client.channel("db").on_postgres_changes("INSERT", lambda _p: None, table="distributed_agents")
    await channel.subscribe(states.cb)
    assert _state(await states.next()) == SUBSCRIBED
    assert channel.postgres_changes_callbacks[0].id
    state, error = await states.next()
    assert state == CHANNEL_ERROR and "not implemented" in str(error)


async def test_bare_realtime_client_joins_and_leaves(standin: SupabaseStandIn) -> None:
    """AsyncRealtimeClient alone: heartbeat and join are answered; leaving gives CLOSED and frees the join."""
    client = AsyncRealtimeClient(standin.realtime_url, token=standin.anon_key)
    try:
        channel = client.channel("room")
        states = await _subscribed(channel)
        assert standin.joined_topics() == ["public:room"]
        await channel.unsubscribe()
        assert _state(await states.next()) == CLOSED
        assert standin.joined_topics() == []
        assert standin.stats.ws_frames_in >= 3  # heartbeat, phx_join, phx_leave
    finally:
        await client.close()


async def test_http_send_broadcasts_through_rest(
    service: AsyncClient, make_client: Any, standin: SupabaseStandIn
) -> None:
    """channel.http_send (REST broadcast, 202) reaches subscribers; on a private topic only if
    the caller's token may write there."""
    await register(service, "a1", "b1")
    a1 = await make_client(token=standin.agent_token("a1"))
    got = Events()
    await _subscribed(a1.channel("agent:a1", PRIVATE).on_broadcast("*", got.cb))
    await a1.channel("agent:a1", PRIVATE).http_send("ping", {"n": 1})
    assert await got.next() == {"event": "ping", "payload": {"n": 1}}
    b1 = await make_client(token=standin.agent_token("b1"))
    await b1.channel("agent:a1", PRIVATE).http_send("ping", {"n": 2})  # b1 may not write on agent:a1
    await got.nothing(0.3)


async def test_presence_rate_limit_closes_the_channel(make_client: Any) -> None:
    """A sixth presence call within 30 s shuts the channel down (system error, then phx_close)."""
    client = await make_client()
    channel = client.channel("lobby", {"config": {"presence": {"key": "me", "enabled": True}}})
    states = await _subscribed(channel)
    for n in range(5):
        await channel.track({"n": n})
    await states.nothing(0.3)
    await channel.track({"n": 5})
    state, error = await states.next()
    assert state == CHANNEL_ERROR and "Client presence rate limit exceeded" in str(error)
    assert _state(await states.next()) == CLOSED


async def test_access_token_without_permission_closes_the_channel(
    service: AsyncClient, make_client: Any, standin: SupabaseStandIn
) -> None:
    """set_auth with a token that may not read the topic: the server re-checks RLS and closes the
    channel with the words of a refused join (RT: realtime_channel.ex handle_in("access_token"))."""
    await register(service, "a1", "b1")
    a1 = await make_client(token=standin.agent_token("a1"))
    states = await _subscribed(a1.channel("agent:a1", PRIVATE))
    await a1.realtime.set_auth(standin.agent_token("b1"))
    state, error = await states.next()
    assert state == CHANNEL_ERROR
    assert "You do not have permissions to read from this Channel topic: agent:a1" in str(error)
    assert _state(await states.next()) == CLOSED
