"""Broadcast wake-ups that carry their messages, on every transport: a subscriber that stands
exactly before them delivers them without a fetch; anything else (a lost wake-up, a nack, a
big batch, a restart) falls back to fetching, and nothing is lost, repeated or
reordered.

Whether a message came with its wake-up is observed at the transport: the messages returned by
``fetch_messages`` calls are counted. ``ACK_FLUSH_DELAY`` is raised so that no ack-carrying fetch
happens while a test is looking (the safety poll is off too)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

from agent_runtime import AgentRuntime
from agent_runtime.errors import InvalidInput
from agent_runtime.runtime import _subscription
from agent_runtime.runtime._subscription import Subscription
from agent_runtime.transports import wire

RuntimeFactory = Callable[..., AgentRuntime]

NO_POLL = 60.0


@pytest.fixture(autouse=True)
def _no_ack_flush_during_tests(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(_subscription, "ACK_FLUSH_DELAY", 10.0)
    yield


class Fetched:
    """The seqs that ``fetch_messages`` calls returned to one runtime."""

    def __init__(self, rt: AgentRuntime) -> None:
        self.seqs: list[int] = []
        transport = rt._require_db().transport
        original = transport.call

        async def call(function: str, args: Any) -> Any:
            result = await original(function, args)
            if function == "fetch_messages":
                self.seqs.extend(m["seq"] for m in result)
            return result

        transport.call = call  # type: ignore[method-assign]
        # (A transport that decodes messages straight from the wire returns them through call_as.)
        original_as = getattr(transport, "call_as", None)
        if original_as is not None:
            async def call_as(function: str, args: Any, kind: Any) -> Any:
                result = await original_as(function, args, kind)
                if function == "fetch_messages":
                    self.seqs.extend(m.seq for m in result)
                return result

            transport.call_as = call_as  # type: ignore[attr-defined]


async def _next(sub: Subscription[Any], within: float = 5.0) -> tuple[int, int, int]:
    """(payload n, seq, attempts) of the next message, acked."""
    with anyio.fail_after(within):
        msg = await sub.__anext__()
    await msg.ack()
    return msg.payload["n"], msg.raw.seq, msg.attempts


async def _warm_up(pub: AgentRuntime, sub: Subscription[Any]) -> int:
    """A message through: it comes by the subscription's first (catch-up) fetch, or after it from
    its wake-up (nothing is taken from wake-ups before that fetch). Returns its seq."""
    await pub.publish("news", {"n": -1})
    got, seq, _ = await _next(sub)
    assert got == -1
    return seq


async def test_small_messages_arrive_with_their_wake_ups(make_runtime: RuntimeFactory) -> None:
    """One small message at a time: each is delivered from its wake-up, no fetch returns any."""
    async with make_runtime("pub") as pub, make_runtime("sub", poll_interval=NO_POLL) as rt:
        await pub.channel("news")
        fetched = Fetched(rt)
        async with rt.subscribe("news") as sub:
            await _warm_up(pub, sub)
            fetched.seqs.clear()
            taken = sub.taken_from_wakeups
            got = []
            for n in range(20):
                await pub.publish("news", {"n": n}, headers={"k": n})
                got.append(await _next(sub))
            seqs = [seq for _, seq, _ in got]
            assert [(n, attempts) for n, _, attempts in got] == [(n, 1) for n in range(20)]
            assert seqs == list(range(seqs[0], seqs[0] + 20))
            assert fetched.seqs == []
            assert sub.taken_from_wakeups - taken == 20


async def test_a_lost_wake_up_is_a_gap_and_the_fetch_fills_it(make_runtime: RuntimeFactory) -> None:
    """A wake-up that never arrives: the next one does not continue the subscription, so it fetches
    both, in order; the ones after that come with their wake-ups again."""
    rt = make_runtime("sub", poll_interval=NO_POLL)
    async with make_runtime("pub") as pub:
        dropped: list[wire.WakeUp] = []
        dispatch = rt._dispatch

        def lossy(event: wire.WakeUp) -> None:
            if isinstance(event, wire.MessageWakeUp) and any(m["payload"] == {"n": 3}
                                                             for m in json.loads(event.messages or "[]")):
                dropped.append(event)
                return
            dispatch(event)

        rt._dispatch = lossy  # type: ignore[method-assign]
        async with rt:
            await pub.channel("news")
            fetched = Fetched(rt)
            async with rt.subscribe("news") as sub:
                await _warm_up(pub, sub)
                fetched.seqs.clear()
                got = []
                for n in range(3):
                    await pub.publish("news", {"n": n})
                    got.append(await _next(sub))
                await pub.publish("news", {"n": 3})  # its wake-up is lost
                await pub.publish("news", {"n": 4})
                got += [await _next(sub), await _next(sub)]
                for n in range(5, 8):
                    await pub.publish("news", {"n": n})
                    got.append(await _next(sub))
        assert dropped
        assert [n for n, _, _ in got] == list(range(8))
        seqs = [seq for _, seq, _ in got]
        assert seqs == list(range(seqs[0], seqs[0] + 8))
        assert fetched.seqs == seqs[3:5]  # the gap's two, from one fetch; nothing else


async def test_a_nack_rewinds_and_the_retry_comes_first(make_runtime: RuntimeFactory) -> None:
    """After a nack the subscription no longer knows where it stands: the retried message comes
    by fetch, before everything after it; then wake-ups carry the next ones again."""
    async with make_runtime("pub") as pub, make_runtime("sub", poll_interval=NO_POLL) as rt:
        await pub.channel("news")
        fetched = Fetched(rt)
        async with rt.subscribe("news") as sub:
            await _warm_up(pub, sub)
            fetched.seqs.clear()
            got = []
            for n in range(3):
                await pub.publish("news", {"n": n})
                got.append(await _next(sub))
            await pub.publish("news", {"n": 3})
            with anyio.fail_after(5):
                msg = await sub.__anext__()
            assert msg.payload == {"n": 3} and msg.attempts == 1
            await pub.publish("news", {"n": 4})  # while 3 is not settled
            assert (await msg.nack(delay=0)).state == "retry"
            got += [await _next(sub), await _next(sub)]
            taken = sub.taken_from_wakeups
            for n in range(5, 8):
                await pub.publish("news", {"n": n})
                got.append(await _next(sub))
            assert sub.taken_from_wakeups - taken == 3
        assert [(n, attempts) for n, _, attempts in got] == [
            (0, 1), (1, 1), (2, 1), (3, 2), (4, 1), (5, 1), (6, 1), (7, 1)]
        seq3 = got[3][1]
        assert [seq for _, seq, _ in got[3:]] == list(range(seq3, seq3 + 5))
        assert fetched.seqs == [seq3, seq3 + 1]  # the retry and the one after it


async def test_big_batches_and_payloads_come_by_fetch(make_runtime: RuntimeFactory) -> None:
    """Wake-ups carry only small batches: a batch of more than 16 and a large payload are
    announced bare and fetched, in order, once each (a delay is refused on broadcast)."""
    async with make_runtime("pub") as pub, make_runtime("sub", poll_interval=NO_POLL) as rt:
        await pub.channel("news")
        fetched = Fetched(rt)
        async with rt.subscribe("news") as sub:
            start = await _warm_up(pub, sub)
            fetched.seqs.clear()
            got = []
            with pytest.raises(InvalidInput):  # broadcast delivers in order at once: no delay there
                await pub.publish("news", {"n": -1}, delay=0.01)
            await pub.publish_many("news", [{"n": n} for n in range(21)])
            got += [await _next(sub) for _ in range(21)]
            await pub.publish("news", {"n": 21, "blob": "x" * 7000})
            got.append(await _next(sub))
            await pub.publish("news", {"n": 22})
            got.append(await _next(sub))
        assert [n for n, _, _ in got] == list(range(23))
        assert [seq for _, seq, _ in got] == list(range(start + 1, start + 24))
        assert fetched.seqs == list(range(start + 1, start + 23))  # all but the last (small) one


async def test_a_restarted_subscriber_catches_up_before_taking_wake_ups(make_runtime: RuntimeFactory) -> None:
    """A durable subscriber that comes back after missing messages starts where its cursor is:
    a wake-up for a newer message does not let it skip the missed ones."""
    async with make_runtime("pub") as pub:
        await pub.channel("news")
        async with make_runtime("sub", agent_id="sub-1", poll_interval=NO_POLL) as rt:
            async with rt.subscribe("news") as sub:
                for n in range(3):
                    await pub.publish("news", {"n": n})
                    assert (await _next(sub))[0] == n
        for n in range(3, 6):
            await pub.publish("news", {"n": n})
        async with make_runtime("sub", agent_id="sub-1", poll_interval=NO_POLL) as rt:
            async with rt.subscribe("news") as sub:
                await pub.publish("news", {"n": 6})
                got = [(await _next(sub))[0] for _ in range(4)]
                await pub.publish("news", {"n": 7})
                got.append((await _next(sub))[0])
        assert got == [3, 4, 5, 6, 7]


async def test_concurrent_publishers_every_message_once_in_seq_order(make_runtime: RuntimeFactory) -> None:
    """Several publishers sending small batches at once, two subscribers: each subscriber gets every
    message exactly once, in seq order, whether from wake-ups or fetches."""
    publishers, per_publisher = 3, 30
    total = publishers * per_publisher
    async with make_runtime("pub-0") as p0, make_runtime("pub-1") as p1, make_runtime("pub-2") as p2, \
            make_runtime("sub-a", poll_interval=NO_POLL) as a, make_runtime("sub-b", poll_interval=NO_POLL) as b:
        await p0.channel("news")
        got: dict[str, list[tuple[int, int]]] = {"a": [], "b": []}
        done = anyio.Event()

        async def consume(name: str, rt: AgentRuntime, *, task_status: anyio.abc.TaskStatus[None]) -> None:
            async with rt.subscribe("news") as sub:
                task_status.started()
                async for msg in sub:
                    got[name].append((msg.raw.seq, msg.attempts))
                    await msg.ack()
                    if all(len(v) >= total for v in got.values()):
                        done.set()

        async def produce(p: int, rt: AgentRuntime) -> None:
            for i in range(0, per_publisher, 3):
                await rt.publish_many("news", [{"p": p, "n": i + k} for k in range(3)])

        async with anyio.create_task_group() as tg:
            await tg.start(consume, "a", a)
            await tg.start(consume, "b", b)
            async with anyio.create_task_group() as producers:
                for p, rt in enumerate((p0, p1, p2)):
                    producers.start_soon(produce, p, rt)
            with anyio.fail_after(15):
                await done.wait()
            await anyio.sleep(0.2)  # nothing more arrives
            tg.cancel_scope.cancel()
        for received in got.values():
            seqs = [seq for seq, _ in received]
            assert seqs == list(range(1, total + 1))
            assert all(attempts == 1 for _, attempts in received)
