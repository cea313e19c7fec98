from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

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
