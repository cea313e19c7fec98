"""Fixtures of the failure suite: agent processes that are always killed at the end of the test
whatever happened (``make_runtime`` comes from the top-level conftest)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from _failure_support import SCRIPT, Spawn
from agent_processes import children


@pytest.fixture
async def spawn() -> AsyncIterator[Spawn]:
    """``await spawn(mode, *args)`` starts an agent process; every one is killed at teardown."""
    async with children(SCRIPT) as procs:
        yield procs.start
