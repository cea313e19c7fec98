"""Lifecycle: leaving passes the block's own exception on, and still leaves in order."""

from __future__ import annotations

import secrets
from collections.abc import Callable

import asyncpg
import pytest

from agent_runtime import AgentRuntime
from agent_runtime.errors import InvalidInput

RuntimeFactory = Callable[..., AgentRuntime]


async def test_an_exception_in_the_block_comes_out_as_itself_and_the_agent_leaves(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection) -> None:
    """A ValueError raised in the block is what the caller gets (not a group); the agent is offline after."""
    rt = make_runtime("raiser")
    with pytest.raises(ValueError, match="the block's own"):
        async with rt:
            raise ValueError("the block's own")
    assert await conn.fetchval("select status from agent_presence where agent_id = $1", rt.agent_id) == "offline"


async def test_a_failed_start_raises_its_typed_error_and_leaves_nothing_open(
        make_runtime: RuntimeFactory, conn: asyncpg.Connection) -> None:
    """Registration refused by the database (metadata too large to store): a typed error, and no
    connection is left behind."""
    before = await conn.fetchval("select count(*) from pg_stat_activity where datname = current_database()")
    rt = make_runtime("bad", metadata={"blob": secrets.token_hex(100_000)})  # (the constructor cannot tell)
    with pytest.raises(InvalidInput):
        async with rt:
            pass
    after = await conn.fetchval("select count(*) from pg_stat_activity where datname = current_database()")
    assert after <= before
