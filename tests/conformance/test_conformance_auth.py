"""An agent acting with its own JWT (Supabase): it works as itself over REST and Realtime, and can
act as no other agent. (On Postgres the same rules are pinned at the SQL level, tests/sql/test_auth.py.)"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates

from agent_runtime import AgentRuntime
from agent_runtime.errors import ConfigurationError, PermissionDenied
from agent_runtime.transports.supabase import SupabaseTransport
from tests.conformance._backend import Backend

RuntimeFactory = Callable[..., AgentRuntime]


@pytest.fixture(params=["supabase"])
def transport_kind(request: pytest.FixtureRequest) -> str:
    """Agent tokens and Realtime authorisation exist on Supabase only: these run there alone."""
    return str(request.param)


def _as_agent(backend: Backend, agent_id: str, **kwargs: Any) -> dict[str, Any]:
    """Options for a runtime acting with its own token: anon key as apikey, the JWT as bearer."""
    assert backend.standin is not None
    token = backend.agent_token(agent_id, **kwargs)
    return {"key": backend.standin.anon_key, "access_token": token}


async def test_agents_with_their_own_tokens_talk_over_rest_and_realtime(
        make_runtime: RuntimeFactory, backend: Backend) -> None:
    """Runtimes on agent tokens (id taken from the claim) publish, subscribe, request and lock;
    wake-ups reach them on their private topics (inbox, subscribed channel, locks)."""
    alice_opts, bob_opts = _as_agent(backend, "alice"), _as_agent(backend, "bob")
    async with make_runtime("alice", poll_interval=60, **alice_opts) as alice, \
            make_runtime("bob", poll_interval=60, **bob_opts) as bob:
        assert (alice.agent_id, bob.agent_id) == ("alice", "bob")

        @bob.on_request
        async def answer(msg: Any) -> Any:
            return {"to": msg.sender_id}

        with anyio.fail_after(3):
            assert await alice.request("bob", {"q": 1}, timeout=3) == {"to": "alice"}

        await alice.channel("room")
        async with bob.subscribe("room") as sub:
            await alice.publish("room", {"n": 1})
            with anyio.fail_after(3):
                msg = await sub.__anext__()  # woken through the private topic channel:room
            assert msg.payload == {"n": 1}
            await msg.ack()

        async with alice.lock("shared", ttl=10) as lease:
            assert lease.token > 0
            async with bob.try_lock("shared") as none:
                assert none is None


async def test_an_agent_token_cannot_act_as_another_agent(make_runtime: RuntimeFactory, backend: Backend) -> None:
    """With alice's token: bob's inbox cannot be read, his lock not released, his presence not rewritten."""
    alice_opts, bob_opts = _as_agent(backend, "alice"), _as_agent(backend, "bob")
    async with make_runtime("bob", **bob_opts) as bob, make_runtime("alice", **alice_opts) as alice:
        sent = await alice.send("bob", {"secret": 1})  # sending to an inbox is allowed; reading it is not
        rest = SupabaseTransport(backend.url, alice_opts["key"], access_token=alice_opts["access_token"])
        await rest.connect()
        try:
            for agent in ("alice", "bob"):
                with pytest.raises(PermissionDenied):
                    await rest.call("claim_messages", {"p_agent_id": agent, "p_channel": "agent:bob",
                                                       "p_limit": 10, "p_visibility_ms": None})
            with pytest.raises(PermissionDenied):
                await rest.call("ack_messages", {"p_agent_id": "bob", "p_message_ids": [sent.id]})
            with pytest.raises(PermissionDenied):
                await rest.call("update_agent_last_seen", {"p_agent_id": "bob", "p_status": "away", "p_load": None,
                                                           "p_info": None})
            with pytest.raises(PermissionDenied):
                await rest.call("set_agent_status", {"p_agent_id": "bob", "p_status": "away"})
            with pytest.raises(PermissionDenied):
                await rest.call("deregister_agent", {"p_agent_id": "bob"})

            async with bob.lock("bobs-lock", ttl=30) as lease:
                lease_id = str(lease.lease_id)
                with pytest.raises(PermissionDenied):
                    await rest.call("release_lock", {"p_agent_id": "bob", "p_key": "bobs-lock", "p_lease_id": lease_id})
                # As herself, even with bob's lease id, alice releases nothing.
                assert await rest.call("release_lock", {"p_agent_id": "alice", "p_key": "bobs-lock",
                                                        "p_lease_id": lease_id}) is False
                assert [(lk.key, lk.owner_id) for lk in await alice.locks()] == [("bobs-lock", "bob")]
        finally:
            await rest.aclose()
        [info] = [a for a in await alice.agents() if a.id == "bob"]
        assert info.status == "online"
        # bob's message is still there for bob
        with anyio.fail_after(3):
            msg = await bob.inbox().__anext__()
        assert msg.payload == {"secret": 1}


async def test_an_agent_token_cannot_join_another_agents_realtime_channel(
        make_runtime: RuntimeFactory, backend: Backend) -> None:
    """Private Realtime topics: alice may join agent:alice, never agent:bob nor a channel she is not subscribed to."""
    alice_opts, bob_opts = _as_agent(backend, "alice"), _as_agent(backend, "bob")
    async with make_runtime("bob", **bob_opts) as bob:
        await bob.channel("bobs-room")
        async with bob.subscribe("bobs-room"):
            client = AsyncRealtimeClient(backend.standin.realtime_url, token=alice_opts["key"], auto_reconnect=False)
            await client.set_auth(alice_opts["access_token"])
            try:
                outcomes: dict[str, tuple[RealtimeSubscribeStates, str]] = {}
                for topic in ("agent:alice", "agent:bob", "channel:bobs-room"):
                    def record(state: RealtimeSubscribeStates, error: Exception | None, topic: str = topic) -> None:
                        outcomes.setdefault(topic, (state, str(error)))
                    channel = client.channel(topic, {"config": {"broadcast": {"ack": False, "self": False},
                                                                "presence": {"key": "", "enabled": False},
                                                                "private": True}})
                    with anyio.fail_after(5):
                        await channel.subscribe(record)
                assert outcomes["agent:alice"][0] == RealtimeSubscribeStates.SUBSCRIBED
                for topic in ("agent:bob", "channel:bobs-room"):
                    state, error = outcomes[topic]
                    assert state == RealtimeSubscribeStates.CHANNEL_ERROR and "Unauthorized" in error, (topic, error)
            finally:
                await client.remove_all_channels()

    # Through the runtime: a token for alice refuses to act as bob.
    with pytest.raises(ConfigurationError, match="alice"):
        async with make_runtime("bob", agent_id="bob", **alice_opts):
            pass


async def test_an_expired_token_is_refused(make_runtime: RuntimeFactory, backend: Backend) -> None:
    """An expired agent token cannot start a runtime: PostgREST refuses it (PermissionDenied)."""
    opts = _as_agent(backend, "late", expires_in=-10)
    with pytest.raises(PermissionDenied):
        async with make_runtime("late", **opts):
            pass


@pytest.mark.slow
async def test_token_is_refreshed_before_it_expires(make_runtime: RuntimeFactory, backend: Backend) -> None:
    """With a short-lived token and a provider, REST calls and Realtime wake-ups go on past its expiry."""
    opts = _as_agent(backend, "shorty", expires_in=3)
    fresh: list[str] = []

    async def provider() -> str:
        token = backend.agent_token("shorty", expires_in=3600)
        fresh.append(token)
        return token

    async with make_runtime("sender") as sender, \
            make_runtime("shorty", poll_interval=60, access_token_provider=provider, **opts) as shorty:
        await anyio.sleep(3.5)  # past the first token's expiry
        assert fresh, "the provider was not asked for a new token"
        await sender.send("shorty", {"after": "expiry"})
        with anyio.fail_after(3):
            msg = await shorty.inbox().__anext__()  # the socket kept its authorisation
        assert msg.payload == {"after": "expiry"}
        await msg.ack()
        await shorty.set_status("busy")  # and REST too


async def test_realtime_presence_cannot_be_spoofed(make_runtime: RuntimeFactory, backend: Backend) -> None:
    """Realtime Presence keys and metadata are chosen by clients: an agent tracking itself as
    someone else on the presence topic is not reported. The registry's events still are."""
    alice_opts = _as_agent(backend, "alice")
    async with make_runtime("watcher") as watcher, watcher.presence_events() as events:
        client = AsyncRealtimeClient(backend.standin.realtime_url, token=alice_opts["key"], auto_reconnect=False)
        await client.set_auth(alice_opts["access_token"])
        channel = client.channel("presence", {"config": {"broadcast": {"ack": False, "self": False},
                                                         "presence": {"key": "bob", "enabled": True},
                                                         "private": True}})
        try:
            with anyio.fail_after(5):
                await channel.subscribe()
                await channel.track({"agent_id": "bob", "status": "online"})
            async with make_runtime("carol") as carol:
                with anyio.fail_after(5):
                    async for ev in events:
                        assert ev.agent_id != "bob", ev  # the spoofed join never shows
                        if ev.agent_id == carol.agent_id:
                            assert (ev.kind, ev.status) == ("join", "online")
                            break
        finally:
            await client.remove_all_channels()


async def test_an_agent_token_janitor_steps_aside_for_a_trusted_one(
        make_runtime: RuntimeFactory, backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    """Cleanup is for trusted roles: an agent on its own token that wins the janitor lock is refused
    once, frees the lock at once and stops trying, so a trusted agent's janitor becomes the leader."""
    caplog.set_level(logging.INFO, logger="agent_runtime")
    async with make_runtime("carol", janitor=True, janitor_interval=0.5, **_as_agent(backend, "carol")) as carol:
        with anyio.fail_after(5):
            while "leaves cleanup to others" not in caplog.text:  # noqa: ASYNC110 (a log line is what there is)
                await anyio.sleep(0.05)
        async with make_runtime("trusted", janitor=True, janitor_interval=0.5) as trusted:
            with anyio.fail_after(5):
                while not any(lock.key == "agent_runtime:janitor" and lock.owner_id == trusted.agent_id  # noqa: ASYNC110
                              for lock in await trusted.locks()):
                    await anyio.sleep(0.05)
        assert caplog.text.count("leaves cleanup to others") == 1
        assert carol.agent_id == "carol"
