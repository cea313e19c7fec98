"""Subscription.offer: when a broadcast subscription takes the messages a wake-up carries, and when
it falls back to fetching. Pure bookkeeping (no database): the end-to-end behaviour on both
transports is in tests/conformance/test_conformance_wakeup_messages.py."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from agent_runtime.models import ChannelKind, RawMessage
from agent_runtime.runtime import _subscription
from agent_runtime.runtime._metrics import Metrics
from agent_runtime.runtime._subscription import Subscription


class _Context:
    """The parts of a RuntimeContext these tests reach (no database)."""

    def __init__(self) -> None:
        self.metrics = Metrics()
        self.stopping = anyio.Event()


def _sub(kind: ChannelKind = "broadcast", frontier: int | None = 10, batch_size: int = 100) -> Subscription[Any]:
    sub: Subscription[Any] = Subscription(_Context(), "news", kind, payload_type=None,  # type: ignore[arg-type]
                                          batch_size=batch_size, visibility=None, start="latest")
    sub._frontier = frontier
    sub._news = False  # as after its first fetch
    return sub


def _messages(first: int, n: int) -> list[RawMessage]:
    return [RawMessage(id=1000 + seq, channel="news", seq=seq, sender_id="a", payload={"seq": seq})
            for seq in range(first, first + n)]


def _seqs(sub: Subscription[Any]) -> list[int]:
    return [m.seq for m in sub._buffer]


async def test_contiguous_messages_are_taken_in_order() -> None:
    sub = _sub()
    sub.offer(11, _messages(11, 2))
    sub.offer(13, _messages(13, 1))
    assert _seqs(sub) == [11, 12, 13]
    assert sub._frontier == 13 and not sub._news and sub.taken_from_wakeups == 3


async def test_a_gap_or_an_unknown_frontier_means_fetch() -> None:
    sub = _sub()
    sub.offer(12, _messages(12, 1))  # 11 never came
    assert _seqs(sub) == [] and sub._news and sub._frontier == 10
    unknown = _sub(frontier=None)
    unknown.offer(11, _messages(11, 1))
    assert _seqs(unknown) == [] and unknown._news


async def test_repeated_and_overlapping_wakeups_deliver_each_message_once() -> None:
    sub = _sub()
    sub.offer(11, _messages(11, 3))
    sub.offer(11, _messages(11, 3))  # the same wake-up again
    sub.offer(12, _messages(12, 4))  # overlapping: 12 and 13 are here already
    assert _seqs(sub) == [11, 12, 13, 14, 15]
    assert not sub._news


async def test_only_broadcast_subscriptions_take_messages() -> None:
    for kind in ("queue", "direct"):
        sub = _sub(kind)  # type: ignore[arg-type]
        sub.offer(11, _messages(11, 1))
        assert _seqs(sub) == [] and sub._news


async def test_an_inbox_that_claims_replies_takes_carried_replies_only() -> None:
    replies = [RawMessage(id=1011, channel="agent:me", seq=11, sender_id="a", payload=1, correlation_id="c-1")]
    control = _sub("direct")
    control.classes = ("request", "reply")
    control.offer(11, replies)
    assert _seqs(control) == [11] and not control._news and control.taken_from_wakeups == 1
    plain_reader = _sub("direct")
    plain_reader.classes = ("plain",)
    plain_reader.offer(11, replies)
    assert _seqs(plain_reader) == [] and plain_reader._news
    request = [RawMessage(id=1012, channel="agent:me", seq=12, sender_id="a", payload=1, correlation_id="c-2",
                          reply_to="agent:a")]
    control.offer(12, request)  # a request must be claimed: a plain wake-up
    assert _seqs(control) == [11] and control._news


async def test_nothing_is_taken_while_a_fetch_is_owed() -> None:
    sub = _sub()
    sub.wake()  # a bare hint: the database has news
    sub.offer(11, _messages(11, 1))
    assert _seqs(sub) == []


async def test_wakeups_during_a_fetch_are_decided_by_its_answer() -> None:
    sub = _sub()
    sub._in_fetch = True
    sub.offer(11, _messages(11, 2))  # committed before the fetch's snapshot: the fetch has them too
    sub.offer(13, _messages(13, 1))  # committed after it
    assert _seqs(sub) == []
    sub._after_fetch(_messages(11, 2))
    assert _seqs(sub) == [11, 12, 13] and sub._frontier == 13 and not sub._news


async def test_an_unsettled_message_holds_back_wakeups_until_acked() -> None:
    sub = _sub()
    sub.offer(11, _messages(11, 1))
    msg = await sub.__anext__()
    sub.offer(12, _messages(12, 1))  # 11 is being handled
    assert _seqs(sub) == []
    await msg.ack()
    assert _seqs(sub) == [12] and not sub._news


async def test_an_unsettled_message_that_is_never_settled_is_fetched_again() -> None:
    """Handed out, neither acked nor nacked, and the buffer is empty: the next refill fetches (the
    cursor has not moved, so that fetch delivers it again), and wake-ups wait for its answer."""
    sub = _sub()
    sub.offer(11, _messages(11, 1))
    await sub.__anext__()
    assert sub._fetch_needed()
    sub.offer(12, _messages(12, 1))
    assert _seqs(sub) == []
    sub._after_fetch(_messages(11, 2))  # the fetch: 11 again, and 12
    assert _seqs(sub) == [11, 12] and sub._unsettled == 0 and not sub._news


async def test_a_full_buffer_leaves_wakeups_to_the_next_fetch() -> None:
    sub = _sub(batch_size=20)
    sub.offer(11, _messages(11, 16))
    sub.offer(27, _messages(27, 5))  # 21 buffered would be more than max(batch, 16)
    assert len(sub._buffer) == 16 and sub._news


async def test_pending_acks_are_written_within_the_flush_delay_or_a_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """A subscriber fed by wake-ups does not fetch, but its acks must reach the database: after a
    batch of them, or after ACK_FLUSH_DELAY, the next wake-up is left to a fetch that carries them."""
    sub = _sub(batch_size=3)
    for seq in range(11, 14):
        sub.offer(seq, _messages(seq, 1))
        await (await sub.__anext__()).ack()
    assert len(sub._pending_acks) == 3 and sub._fetch_needed()
    sub.offer(14, _messages(14, 1))
    assert _seqs(sub) == [] and sub._news

    sub = _sub()
    monkeypatch.setattr(_subscription, "ACK_FLUSH_DELAY", 0.05)
    sub.offer(11, _messages(11, 1))
    await (await sub.__anext__()).ack()
    assert not sub._fetch_needed()
    await anyio.sleep(0.06)
    assert sub._fetch_needed()
    sub.offer(12, _messages(12, 1))
    assert _seqs(sub) == []
