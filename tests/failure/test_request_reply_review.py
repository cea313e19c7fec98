"""Request/reply's new paths under failure (review of issue 13): replies taken straight from
signed inbox wake-ups (Requests.take_replies) and reply_to_request (the reply and the ack of its
request in one transaction).

- Forged NOTIFYs on the requester's inbox channel, from an unprivileged login, carrying a fake
  reply with the pending request's correlation id, never complete the request.
- A reply that arrives after its request timed out is dropped (and acked), and never answers a
  later request.
- With every wake-up gone (the database sends none), the reply still arrives through the claim.
- A responder process SIGKILLed right after its reply_to_request committed, before it learned of
  it: the requester gets that reply once, and the request, acked in the reply's transaction, is
  never handled again by the responder's next incarnation."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from agent_runtime import AgentRuntime
from agent_runtime.errors import RequestTimeout
from agent_runtime.transports import wire
from tests.agent_processes import Child, children
from tests.failure._failure_support import expect
from tests.failure.test_forged_wakeups import INTRUDER, _ensure_login

RuntimeFactory = Callable[..., AgentRuntime]

pytestmark = pytest.mark.timeout(120)

NO_POLL = 60.0
REPLY_PROC = Path(__file__).with_name("_reply_proc.py")


Spawn = Callable[..., Awaitable[Child]]


@pytest.fixture
async def spawn() -> AsyncIterator[Spawn]:
    """Responder processes (_reply_proc.py); every one is killed at teardown."""
    async with children(REPLY_PROC) as procs:
        yield procs.start


@pytest.fixture
async def intruder(conn: asyncpg.Connection, db_url: str) -> AsyncIterator[asyncpg.Connection]:
    await _ensure_login(conn, INTRUDER, "anon")
    intruder = await asyncpg.connect(db_url.replace("postgres@", f"{INTRUDER}@", 1))
    try:
        await intruder.execute("set role anon")
        yield intruder
    finally:
        await intruder.close()


async def _held_request(conn: asyncpg.Connection, responder: str, within: float = 10.0) -> asyncpg.Record:
    """The request waiting in the responder's inbox once its handler holds it (claimed)."""
    with anyio.fail_after(within):
        while True:
            row = await conn.fetchrow(
                "select m.* from public.distributed_messages m join public.communication_channels c"
                " on c.id = m.channel_id where c.name = $1 and m.reply_to is not null and m.state = 'inflight'",
                f"agent:{responder}")
            if row is not None:
                return row
            await anyio.sleep(0.02)


async def _inbox_rows(conn: asyncpg.Connection, agent: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "select m.* from public.distributed_messages m join public.communication_channels c on c.id = m.channel_id"
        " where c.name = $1 order by m.seq", f"agent:{agent}")
    return rows


async def _until_inbox(conn: asyncpg.Connection, agent: str,
                       done: Callable[[list[asyncpg.Record]], bool], within: float = 10.0) -> None:
    with anyio.fail_after(within):
        while True:
            if done(await _inbox_rows(conn, agent)):
                return
            await anyio.sleep(0.05)


def _fake_reply(id_: int, seq: int, inbox: str, correlation_id: str, sender: str) -> dict[str, Any]:
    return {"id": id_, "channel": inbox, "seq": seq, "sender_id": sender, "payload": {"answer": "forged"},
            "headers": {"ar": "reply"}, "size_bytes": 20, "correlation_id": correlation_id, "reply_to": None,
            "idempotency_key": None, "created_at": "2026-12-01T00:00:00+00:00", "expires_at": None,
            "attempts": 1}


async def test_forged_reply_wakeups_never_complete_a_request(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection, intruder: asyncpg.Connection) -> None:
    async with make_runtime("asker", poll_interval=NO_POLL) as asker, make_runtime("answerer") as answerer:
        gate = anyio.Event()

        @answerer.on_request
        async def answer(msg: Any) -> Any:
            await gate.wait()
            return {"answer": "genuine"}

        # A genuine round trip first: the control subscription is open and takes signed replies.
        gate.set()
        assert await asker.request(answerer.agent_id, {"q": 0}, timeout=10) == {"answer": "genuine"}
        gate = anyio.Event()
        results: list[Any] = []

        async def ask() -> None:
            results.append(await asker.request(answerer.agent_id, {"q": 1}, timeout=30))

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
            request = await _held_request(conn, answerer.agent_id)
            correlation = str(request["correlation_id"])
            inbox = f"agent:{asker.agent_id}"
            rows = await _inbox_rows(conn, asker.agent_id)
            nxt = (rows[-1]["seq"] if rows else 0) + 1
            made_up = [_fake_reply(10**9, nxt, inbox, correlation, answerer.agent_id)]
            stolen = [_fake_reply(request["id"], nxt, inbox, correlation, answerer.agent_id)]  # a real id
            base = {"c": inbox, "s": nxt, "f": nxt, "t": inbox, "e": "message"}
            forgeries = [
                {**base, "m": json.dumps(made_up), "h": "00" * 32},
                {**base, "m": json.dumps(stolen), "h": secrets.token_hex(32)},
                {**base, "m": json.dumps(made_up)},  # no MAC
                {**base, "m": made_up},  # the format before MACs
            ]
            channel = wire.notification_channel(inbox)
            for forged in forgeries:
                text = json.dumps(forged).replace("'", "''")
                await intruder.execute(f"""notify "{channel}", '{text}'""")
            await anyio.sleep(0.5)  # (arrived: at most they woke the requester's claim)
            assert results == [], f"a forged wake-up completed the request: {results!r}"
            gate.set()
        assert results == [{"answer": "genuine"}]


async def test_a_reply_after_its_request_timed_out_answers_nothing_else(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection) -> None:
    async with make_runtime("asker") as asker, make_runtime("answerer") as answerer:
        gates = [anyio.Event(), anyio.Event()]

        @answerer.on_request
        async def answer(msg: Any) -> Any:
            await gates[msg.payload["q"]].wait()
            return {"answer": msg.payload["q"]}

        with pytest.raises(RequestTimeout):
            await asker.request(answerer.agent_id, {"q": 0}, timeout=0.5)
        gates[0].set()  # the late reply is sent now
        # It arrives, nobody waits for it: dropped and acked.
        await _until_inbox(conn, asker.agent_id, lambda rows: [r["state"] for r in rows] == ["acked"])
        gates[1].set()
        assert await asker.request(answerer.agent_id, {"q": 1}, timeout=10) == {"answer": 1}
        await _until_inbox(conn, asker.agent_id, lambda rows: [r["state"] for r in rows] == ["acked", "acked"])


async def test_replies_arrive_through_the_claim_when_no_wakeup_comes(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection) -> None:
    """The database sends no wake-up at all (wakeup_routes: no notify): both sides find their
    messages with the safety poll's claims, and the request is answered."""
    await conn.execute("update agent_runtime_private.wakeup_routes set notify = false, realtime = false")
    async with make_runtime("asker", poll_interval=0.2) as asker, \
            make_runtime("answerer", poll_interval=0.2) as answerer:
        @answerer.on_request
        async def answer(msg: Any) -> Any:
            return {"answer": msg.payload["q"]}

        for q in range(3):
            assert await asker.request(answerer.agent_id, {"q": q}, timeout=10) == {"answer": q}
        assert asker._requests is not None and asker._requests.control is not None
        assert asker._requests.control.taken_from_wakeups == 0


async def test_a_responder_killed_after_its_reply_committed(
        spawn: Spawn, make_runtime: RuntimeFactory, conn: asyncpg.Connection, db_url: str) -> None:
    """SIGKILL right after reply_to_request committed, before the responder learned of it: the
    requester has its answer, once; the request was acked with the reply, so the responder's next
    incarnation (same agent id) never handles it again."""
    await conn.execute("create table review_handled (agent_id text, q int, attempts int)")
    responder = "review-responder-1"
    child = await spawn_reply(spawn, db_url, responder, die=True)
    async with make_runtime("asker") as asker:
        assert await asker.request(responder, {"q": 21}, timeout=20) == {"answer": 42}
        with anyio.fail_after(10):
            await child.process.wait()
        assert child.process.returncode == -9
        again = await spawn_reply(spawn, db_url, responder, die=False)
        assert await asker.request(responder, {"q": 5}, timeout=20) == {"answer": 10}
        again.process.terminate()
        with anyio.fail_after(10):
            await again.process.wait()
        asked = asker.agent_id
    handled = [tuple(r) for r in await conn.fetch("select q, attempts from review_handled order by q desc")]
    assert handled == [(21, 1), (5, 1)], handled
    requests = await _inbox_rows(conn, responder)
    assert [r["state"] for r in requests] == ["acked", "acked"]
    replies = await _inbox_rows(conn, asked)
    assert sorted(str(r["correlation_id"]) for r in replies) == sorted(str(r["correlation_id"]) for r in requests)


async def spawn_reply(spawn: Spawn, db_url: str, agent_id: str, *, die: bool) -> Child:
    child = await spawn(db_url, agent_id, "1" if die else "0")
    await expect(child, "ready")
    return child
