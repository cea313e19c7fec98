"""Channels, delivery, request/reply, locks and metrics: the same behaviour on every transport.

Most tests set ``poll_interval=60`` on the receiving side: with no safety poll to fall back on,
a message that arrives promptly was woken by the transport's wake-ups (LISTEN or Realtime)."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import asyncpg
import pytest

from agent_runtime import AgentRuntime
from agent_runtime.errors import LockTimeout, RemoteError, RequestTimeout
from agent_runtime.testing import AdvanceClock

RuntimeFactory = Callable[..., AgentRuntime]

NO_POLL = 60.0


async def test_broadcast_reaches_every_subscriber_in_order_by_wake_up(make_runtime: RuntimeFactory) -> None:
    """Every subscriber of a broadcast channel gets every message, in order, promptly."""
    async with make_runtime("pub") as pub, make_runtime("a", poll_interval=NO_POLL) as a, \
            make_runtime("b", poll_interval=NO_POLL) as b:
        await pub.channel("news")
        async with a.subscribe("news") as sa, b.subscribe("news") as sb:
            got: dict[str, list[int]] = {"a": [], "b": []}
            for batch in range(3):  # each batch waits for a wake-up
                await pub.publish_many("news", [{"n": batch * 2 + i} for i in range(2)])
                with anyio.fail_after(3):
                    for name, sub in (("a", sa), ("b", sb)):
                        async for msg in sub:
                            got[name].append(msg.payload["n"])
                            await msg.ack()
                            if len(got[name]) == (batch + 1) * 2:
                                break
            assert got == {"a": list(range(6)), "b": list(range(6))}


async def test_direct_message_wakes_the_inbox(make_runtime: RuntimeFactory) -> None:
    """A message sent to an agent's inbox is delivered by its wake-up, not a poll."""
    async with make_runtime("sender") as sender, make_runtime("receiver", poll_interval=NO_POLL) as receiver:
        await anyio.sleep(0.2)
        await sender.send(receiver.agent_id, {"hello": 1})
        with anyio.fail_after(3):
            msg = await receiver.inbox().__anext__()
        assert msg.payload == {"hello": 1} and msg.sender_id == sender.agent_id
        await msg.ack()


async def test_queue_nack_redelivers_then_dead_letters_then_replays(make_runtime: RuntimeFactory) -> None:
    """A raising handler's message is retried with backoff and more attempts, dead after
    max_attempts (and not delivered again by itself), and delivered again on replay."""
    async with make_runtime("worker", retry_base_delay=0.2) as rt:
        await rt.channel("jobs", "queue", max_attempts=3)
        attempts: list[tuple[int, float]] = []
        fail = True
        replayed = anyio.Event()

        @rt.on("jobs", kind="queue")
        async def handle(msg: Any) -> None:
            attempts.append((msg.attempts, anyio.current_time()))
            if fail:
                raise RuntimeError("boom")
            replayed.set()

        sent = await rt.publish("jobs", {"n": 1})
        with anyio.fail_after(10):
            while not await rt.dead_letters("jobs"):  # noqa: ASYNC110 (polling the database)
                await anyio.sleep(0.05)
        assert [a for a, _ in attempts] == [1, 2, 3]
        gaps = [b - a for (_, a), (_, b) in itertools.pairwise(attempts)]
        # retry_delay(1) ~ 0.2s, retry_delay(2) ~ 0.4s (+-20% jitter): redelivery waits its backoff
        assert gaps[0] >= 0.15 and gaps[1] >= 0.3, gaps
        assert gaps[1] > gaps[0]
        [dead] = await rt.dead_letters("jobs")
        assert dead.id == sent.id and dead.attempts == 3
        assert dead.reason is not None and "boom" in dead.reason
        await anyio.sleep(0.3)
        assert len(attempts) == 3  # a dead message is not delivered again by itself
        fail = False
        assert await rt.replay_dead_letters([sent.id]) == 1
        with anyio.fail_after(5):
            await replayed.wait()
        assert attempts[-1][0] == 1  # fresh attempts after a replay
        assert await rt.dead_letters("jobs") == []


@pytest.mark.slow
async def test_queue_visibility_timeout_redelivers_to_another_consumer(
        make_runtime: RuntimeFactory, advance_clock: AdvanceClock) -> None:
    """A claimed message neither acked nor nacked comes back after its visibility timeout (of the
    database clock: a minute's timeout, the clock moved past it)."""
    async with make_runtime("slow") as slow, make_runtime("other") as other:
        await slow.channel("vq", "queue")
        async with slow.subscribe("vq", visibility_timeout=60) as s1:
            await slow.publish("vq", {"n": 1})
            with anyio.fail_after(5):
                first = await s1.__anext__()
            assert first.attempts == 1
            await advance_clock(61)
            async with other.subscribe("vq") as s2:
                with anyio.fail_after(5):
                    again = await s2.__anext__()  # found by other's first claim, the timeout past
                assert again.id == first.id and again.attempts == 2
                await again.ack()


async def test_competing_consumers_share_a_queue_exactly_once(make_runtime: RuntimeFactory,
                                                              conn: asyncpg.Connection) -> None:
    """Three consumers on one queue handle each of 120 messages exactly once, none lost; the work
    is shared and every message ends acked."""
    handled: dict[str, list[int]] = {"c1": [], "c2": [], "c3": []}
    done = anyio.Event()

    def handler(name: str) -> Callable[[Any], Awaitable[None]]:
        async def handle(msg: Any) -> None:
            await anyio.sleep(0.002)
            handled[name].append(msg.payload["n"])
            if sum(map(len, handled.values())) >= 120:
                done.set()
        return handle

    async with make_runtime("producer") as producer, make_runtime("c1") as c1, make_runtime("c2") as c2, \
            make_runtime("c3") as c3:
        await producer.channel("work", "queue")
        for name, rt in (("c1", c1), ("c2", c2), ("c3", c3)):
            rt.handle("work", handler(name), kind="queue")
        await anyio.sleep(0.3)
        for start in range(0, 120, 20):
            await producer.publish_many("work", [{"n": n} for n in range(start, start + 20)])
        with anyio.fail_after(15):
            await done.wait()
        await anyio.sleep(0.2)  # a duplicate would show up here
    assert sorted(n for v in handled.values() for n in v) == list(range(120))  # none lost, none twice
    assert sum(1 for v in handled.values() if v) >= 2, {k: len(v) for k, v in handled.items()}
    states = await conn.fetch("select state, count(*) from distributed_messages m join communication_channels c "
                              "on c.id = m.channel_id where c.name = 'work' group by state")
    assert {r["state"]: r["count"] for r in states} == {"acked": 120}


async def test_request_reply_error_and_timeout(make_runtime: RuntimeFactory) -> None:
    """The responder's return value is the reply; its exception a RemoteError; silence a RequestTimeout."""
    async with make_runtime("server", poll_interval=NO_POLL) as server, \
            make_runtime("client", poll_interval=NO_POLL) as client:
        @server.on_request
        async def answer(msg: Any) -> Any:
            if msg.payload.get("fail"):
                raise ValueError("no way")
            return {"y": msg.payload["x"] * 2}

        with anyio.fail_after(3):
            assert await client.request(server.agent_id, {"x": 21}, timeout=3) == {"y": 42}
        with anyio.fail_after(3), pytest.raises(RemoteError, match="no way"):
            await client.request(server.agent_id, {"fail": True}, timeout=3)
        async with make_runtime("mute") as mute:
            @mute.on_request
            async def too_late(msg: Any) -> Any:
                await anyio.sleep(0.7)  # past the requester's timeout (its reply is then dropped)

            with pytest.raises(RequestTimeout):
                await client.request(mute.agent_id, {"x": 1}, timeout=0.5)


async def test_locks_fencing_timeout_and_prompt_handover(make_runtime: RuntimeFactory) -> None:
    """Tokens increase across holders; a held key times out others; release wakes a waiter at once."""
    async with make_runtime("a") as a, make_runtime("b") as b:
        async with a.lock("k", ttl=5) as first:
            async with b.try_lock("k") as none:
                assert none is None
            started = anyio.current_time()
            with pytest.raises(LockTimeout):
                async with b.lock("k", wait=0.5):
                    pass
            assert 0.4 < anyio.current_time() - started < 2
            assert await first.is_live()
        async with b.lock("k", ttl=5, wait=3) as second:
            assert second.token > first.token

        acquired_at = released_at = 0.0
        holding = anyio.Event()

        async def waiter() -> None:
            nonlocal acquired_at
            await holding.wait()
            async with b.lock("hot", ttl=30, wait=10):
                acquired_at = anyio.current_time()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                async with a.lock("hot", ttl=30):
                    holding.set()
                    await anyio.sleep(1.0)  # the waiter's backoff grows meanwhile
                released_at = anyio.current_time()
        # The release event (LISTEN or the `locks` Realtime topic) wakes the waiter: backoff alone
        # would leave it asleep for up to a second.
        assert acquired_at - released_at < 0.5, acquired_at - released_at


async def test_metrics_flush_and_read_back(make_runtime: RuntimeFactory) -> None:
    """Counters flushed by one agent are read back by another, summed per bucket."""
    async with make_runtime("pub", metrics_interval=60) as pub, make_runtime("sub", metrics_interval=60) as sub:
        await pub.channel("m")
        async with sub.subscribe("m") as s:
            await pub.publish_many("m", [{"n": n} for n in range(3)])
            with anyio.fail_after(5):
                for _ in range(3):
                    await (await s.__anext__()).ack()
        sub.metrics.increment("my.metric", 3)
        await pub.flush_metrics()
        await sub.flush_metrics()
        rows = await pub.read_metrics()
        sent = [r for r in rows if (r.agent_id, r.metric, r.channel) == (pub.agent_id, "messages.sent", "m")]
        assert [(r.count, r.sum) for r in sent] == [(1, 3)]
        mine = await pub.read_metrics(agent_id=sub.agent_id, metric="my.metric")
        assert [(r.metric, r.sum) for r in mine] == [("my.metric", 3)]


async def test_closing_a_subscription_ends_a_loop_waiting_on_it_in_another_task(
        make_runtime: RuntimeFactory) -> None:
    """A consumer waiting for news (no safety poll) stops at once when another task closes its
    subscription, instead of waiting for a message that will never be delivered to it."""
    async with make_runtime("sub", poll_interval=NO_POLL) as rt:
        for kind in ("broadcast", "queue"):
            ended = anyio.Event()
            async with rt.subscribe(f"idle.{kind}", kind=kind) as sub:  # type: ignore[arg-type]
                async def consume(sub: Any = sub, ended: anyio.Event = ended) -> None:
                    async for _ in sub:
                        pass
                    ended.set()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(consume)
                    await anyio.sleep(0.3)  # (waiting for news by now)
                    await sub.close()
                    with anyio.fail_after(2):
                        await ended.wait()
