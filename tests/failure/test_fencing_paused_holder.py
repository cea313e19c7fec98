"""A holder paused (SIGSTOP) inside its fencing transaction, between the check and its write, while
a successor takes the lock (issue 11, cases 1 and 2).

Six rounds with one real holder process. In each, the holder opens ``lease.fenced(conn)`` and
stops itself right after the check; its lease runs out; a successor (this process) asks for the lock,
which waits for the holder's transaction. The holder is continued either before the server ends its
idle transaction (then its own clock says the lease ran out: the block is cancelled and rolled back)
or after (its connection is gone). Every round: the holder's write is never committed, and the
successor's grant expires in the future (granted by the clock after its wait), so its own fenced
write is accepted."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable
from datetime import datetime

import anyio
import asyncpg
import pytest

from agent_runtime import AgentRuntime
from tests.agent_processes import Child, children
from tests.failure._failure_support import expect
from tests.failure._fencing_support import SCRIPT, wait_until_stopped

RuntimeFactory = Callable[..., AgentRuntime]

# Bounds in wall time (a paused or cancelled holder, the server's idle limit): in one xdist group,
# so these never run beside each other under `-n` (other tests still run beside them).
pytestmark = [pytest.mark.timeout(120), pytest.mark.xdist_group("lock-timing")]

# Each round is set up, not a race sampled: the holder is stopped for a set time and continued
# either before the server's idle limit or after it, alternately; 3 rounds of each case prove what
# 20 did (a grant computed from now(), before a wait of ~0.3 s for the idle limit, expired in
# every round of the second case). A round costs its 1.0/1.6 s pause plus the hand-over.
ROUNDS = 6
# Its lease runs out (on its clock) 0.9 s after it was taken; the server ends its idle fencing
# transaction ~1.2 s after the check (the remaining 0.9 s + TTL/3).
HOLDER_TTL = 0.9
# Shorter than the successor's wait in the database when the server ends the holder's transaction
# (~0.3 s): a grant computed from the start of the call (now()) would have expired already.
SUCCESSOR_TTL_MS = 250


async def _successor_grant(rt: AgentRuntime, key: str, lease_id: uuid.UUID) -> tuple[int, datetime]:
    """Take the lock through the acquire_lock RPC, as the runtime does, waiting for it: refused at
    once while the holder's lease runs, then waiting in the database for its transaction."""
    db = rt._require_db()
    while True:
        grant = await db.acquire_lock(rt.agent_id, key, lease_id, SUCCESSOR_TTL_MS, wait_ms=5000)
        if grant.acquired and grant.token is not None and grant.expires_at is not None:
            return grant.token, grant.expires_at
        await anyio.sleep(grant.ttl_ms / 1000 + 0.01)


async def test_paused_holder_never_writes_and_successor_gets_a_live_lease(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection, db_url: str) -> None:
    await conn.execute("create table fenced_writes (token bigint not null, round int not null)")
    await conn.execute("create table successor_writes (token bigint not null, round int not null)")
    violations: list[str] = []
    async with children(SCRIPT) as procs:
        holder = await procs.start("paused", db_url, "resource", str(HOLDER_TTL), str(ROUNDS))
        await _rounds(holder, make_runtime, conn, violations)
    assert violations == [], violations
    assert await conn.fetchval("select count(*) from successor_writes") == ROUNDS


async def _rounds(holder: Child, make_runtime: RuntimeFactory, conn: asyncpg.Connection,
                  violations: list[str]) -> None:
    with anyio.fail_after(110):
        await expect(holder, "ready")
        async with make_runtime("successor") as successor:
            db = successor._require_db()
            for i in range(ROUNDS):
                _, round_, token = await expect(holder, "checked")
                assert int(round_) == i
                await wait_until_stopped(holder.process.pid)
                # Continued after its lease ran out, before the server's idle limit or after it.
                resume_after = 1.0 if i % 2 == 0 else 1.6

                async def resume(delay: float = resume_after) -> None:
                    await anyio.sleep(delay)
                    os.kill(holder.process.pid, signal.SIGCONT)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(resume)
                    lease_id = uuid.uuid4()
                    new_token, expires_at = await _successor_grant(successor, "resource", lease_id)
                    now = await conn.fetchval("select clock_timestamp()")
                    if expires_at <= now:
                        violations.append(f"round {i}: successor granted a lease that expired "
                                          f"{(now - expires_at).total_seconds():.3f}s ago")
                    # The successor's own fenced write (check and write in one transaction).
                    try:
                        async with conn.transaction():
                            await conn.execute("select check_fencing_token('resource', $1)", new_token)
                            await conn.execute("insert into successor_writes values ($1, $2)", new_token, i)
                    except asyncpg.PostgresError as exc:
                        violations.append(f"round {i}: successor's fenced write refused: {exc}")
                outcome = (await holder.line()).split()
                # The holder's stale write: never committed.
                if outcome[0] != "refused":
                    violations.append(f"round {i}: holder says {' '.join(outcome)}")
                if await conn.fetchval("select count(*) from fenced_writes where round = $1", i):
                    violations.append(f"round {i}: the paused holder's write (token {token}) was committed")
                assert int(new_token) > int(token)
                await db.release_lock(successor.agent_id, "resource", lease_id)  # (or it expires): the holder's turn
        await expect(holder, "done")
