"""Fixtures of the failure suite: agent processes that are always killed at the end of the test
whatever happened (``make_runtime`` comes from the top-level conftest)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.agent_processes import children
from tests.failure._failure_support import SCRIPT, Spawn


@pytest.fixture
async def spawn() -> AsyncIterator[Spawn]:
    """``await spawn(mode, *args)`` starts an agent process; every one is killed at teardown."""
    async with children(SCRIPT) as procs:
        yield procs.start
