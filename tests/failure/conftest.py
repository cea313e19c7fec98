"""Fixtures of the failure suite: runtimes with fast timers, and agent processes that are always
killed at the end of the test whatever happened."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from _failure_support import SCRIPT, Child, Spawn

from agent_runtime.runtime import AgentRuntime

RuntimeFactory = Callable[..., AgentRuntime]


@pytest.fixture
def make_runtime(db_url: str) -> RuntimeFactory:
    """AgentRuntime on the test's database, with fast timers so tests stay short."""

    def make(name: str, **kwargs: Any) -> AgentRuntime:
        options: dict[str, Any] = {
            "url": db_url, "heartbeat_interval": 0.5, "janitor": False, "metrics_interval": 0.5,
            "poll_interval": 2.0, "shutdown_timeout": 3.0, "retry_base_delay": 0.05, "migrate": False,
            "pool_size": 4,
        }
        options.update(kwargs)
        return AgentRuntime(name, **options)

    return make


@pytest.fixture
async def spawn() -> AsyncIterator[Spawn]:
    """``await spawn(mode, *args)`` starts an agent process; every one is killed at teardown."""
    started: list[Child] = []
    logs = Path(tempfile.mkdtemp(prefix="ar-failure-"))

    async def start(*argv: str) -> Child:
        err = logs / f"{len(started)}.stderr"
        with err.open("wb") as errf:
            proc = await anyio.open_process([sys.executable, str(SCRIPT), *argv], stdout=subprocess.PIPE,
                                            stderr=errf)
        child = Child(proc, err)
        started.append(child)
        return child

    try:
        yield start
    finally:
        with anyio.CancelScope(shield=True):
            for child in started:
                if child.process.returncode is None:
                    child.process.kill()
                await child.process.wait()
                await child.process.aclose()
