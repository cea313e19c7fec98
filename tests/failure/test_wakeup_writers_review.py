"""send_messages sends its own wake-up now (notify_sent), not a statement trigger on inserts
(issue 13). The other writers that make a message deliverable again must still wake its
consumers, without the safety poll: a replayed dead letter (of a queue, of an inbox) and a nack.
Consumers here never poll (poll_interval of a minute): a message that comes within seconds came
with a wake-up. And the kept connections of a runtime killed while idle (pg_terminate_backend)
cost no user-visible failure: the next publish, claim, lock and heartbeat work."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
import asyncpg
import pytest

from agent_runtime import AgentRuntime
from agent_runtime.models import ChannelKind
from agent_runtime.transports.postgres import PostgresTransport

RuntimeFactory = Callable[..., AgentRuntime]

pytestmark = pytest.mark.timeout(60)

NO_POLL = 60.0
WITHIN = 5.0  # seconds: far below the poll interval


async def _next(sub: Any) -> Any:
    with anyio.fail_after(WITHIN):
        msg = await sub.__anext__()
    await msg.ack()
    return msg


# (Not broadcast: a broadcast replay is no update of the message row and sends no wake-up; the
# subscription's next fetch picks it up, see the docstring of _subscription.py.)
@pytest.mark.parametrize("kind", ["queue"])
async def test_a_replayed_dead_letter_wakes_its_consumer(make_runtime: RuntimeFactory, conn: asyncpg.Connection,
                                                         kind: ChannelKind) -> None:
    async with make_runtime("pub") as pub, make_runtime("consumer", poll_interval=NO_POLL) as consumer:
        await pub.channel("work", kind)
        async with consumer.subscribe("work", kind=kind) as sub:
            sent = await pub.publish("work", {"n": 1})
            with anyio.fail_after(WITHIN):
                msg = await sub.__anext__()
            assert (await msg.nack(dead=True)).state == "dead"
            await anyio.sleep(1.5)  # (the consumer is idle, waiting for a wake-up)
            replayed = await conn.fetchval("select public.replay_dead_letters($1, array[$2::bigint])",
                                           consumer.agent_id, sent.id)
            assert replayed >= 1
            again = await _next(sub)
            assert again.id == sent.id and again.payload == {"n": 1}


async def test_a_replayed_dead_letter_of_an_inbox_wakes_its_reader(make_runtime: RuntimeFactory,
                                                                   conn: asyncpg.Connection) -> None:
    async with make_runtime("pub") as pub, make_runtime("reader", poll_interval=NO_POLL) as reader:
        inbox = reader.inbox()
        sent = await pub.send(reader.agent_id, {"n": 1})
        with anyio.fail_after(WITHIN):
            msg = await inbox.__anext__()
        assert (await msg.nack(dead=True)).state == "dead"
        await anyio.sleep(0.3)
        await conn.fetchval("select public.replay_dead_letters($1, array[$2::bigint])", reader.agent_id, sent.id)
        assert (await _next(inbox)).id == sent.id


async def test_a_nacked_message_wakes_its_consumer(make_runtime: RuntimeFactory) -> None:
    async with make_runtime("pub") as pub, make_runtime("consumer", poll_interval=NO_POLL) as consumer:
        await pub.channel("work", "queue")
        async with consumer.subscribe("work", kind="queue") as sub:
            sent = await pub.publish("work", {"n": 1})
            with anyio.fail_after(WITHIN):
                msg = await sub.__anext__()
            await msg.nack(delay=0)
            again = await _next(sub)
            assert again.id == sent.id and again.attempts == 2


def _transport(rt: AgentRuntime) -> PostgresTransport:
    transport = rt._transport
    assert isinstance(transport, PostgresTransport)
    return transport


def _noticed(con: asyncpg.Connection) -> anyio.Event:
    lost = anyio.Event()
    con.add_termination_listener(lambda _con: lost.set())
    return lost


async def test_kept_connections_killed_while_idle_cost_no_failure(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture) -> None:
    async with make_runtime("pub") as pub, make_runtime("consumer", poll_interval=NO_POLL) as consumer:
        await pub.channel("work", "queue")
        async with consumer.subscribe("work", kind="queue") as sub:
            await pub.publish("work", {"n": 0})
            assert (await _next(sub)).payload == {"n": 0}
            async with pub.lock("k", ttl=5):
                pass
            await anyio.sleep(0.3)  # (every call answered: their connections wait on the stacks)
            idle = [c for rt in (pub, consumer) for c in _transport(rt)._idle]
            kept = [c.get_server_pid() for c in idle]
            assert kept
            events = [_noticed(con) for con in idle]
            caplog.clear()
            await conn.execute("select pg_terminate_backend(pid) from unnest($1::int[]) pid", kept)
            # Once the runtimes have seen the loss (as a pooled connection's loss had to be seen
            # before the pool replaced it; a call in the instant between the server's goodbye and
            # the socket's end fails with ConnectionLost, through the pool as well).
            with anyio.fail_after(5):
                for event in events:
                    await event.wait()
            killed_at = await conn.fetchval("select agent_runtime_private.clock()")
            await pub.publish("work", {"n": 1})  # publish, claim, ack
            assert (await _next(sub)).payload == {"n": 1}
            async with pub.lock("k", ttl=5) as lease:  # acquire, release
                assert lease.token > 0
            await anyio.sleep(1.2)  # (two heartbeats of each)
            beats = await conn.fetch("select agent_id from public.agent_presence where heartbeat_at > $1", killed_at)
            assert {pub.agent_id, consumer.agent_id} <= {r["agent_id"] for r in beats}
        failures = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("agent_runtime")]
        assert failures == [], [r.getMessage() for r in failures]
