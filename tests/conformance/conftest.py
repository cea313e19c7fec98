"""One conformance suite for every transport: each test here runs once per ``transport_kind``.

- ``postgres``: AgentRuntime on the test's database URL (asyncpg, LISTEN/NOTIFY).
- ``supabase``: AgentRuntime on a protocol-level stand-in for Supabase (PostgREST RPC and the
  Realtime websocket, backed by the same test database), through the official clients.

Tests talk to the runtime's public API; ``conn`` (a trusted direct connection to the same
database) is there to look at or disturb the truth behind both."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from agent_runtime import AgentRuntime
from tests.conformance._backend import Backend

RuntimeFactory = Callable[..., AgentRuntime]


@pytest.fixture(params=["postgres", "supabase"])
def transport_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def backend(transport_kind: str, db_url: str) -> AsyncIterator[Backend]:
    if transport_kind == "postgres":
        yield Backend("postgres", db_url)
        return
    from agent_runtime.testing import SupabaseStandIn

    async with SupabaseStandIn(db_url) as standin:
        yield Backend("supabase", db_url, standin)


@pytest.fixture
def make_runtime(backend: Backend) -> RuntimeFactory:
    """AgentRuntime on this test's backend (service credentials), with fast timers.
    ``key=`` overrides the credentials (an agent's own token, say)."""

    def make(name: str, **kwargs: Any) -> AgentRuntime:
        options: dict[str, Any] = {
            "url": backend.url, "key": backend.key, "heartbeat_interval": 0.5, "janitor": False,
            "metrics_interval": 0.5, "poll_interval": 2.0, "shutdown_timeout": 3.0, "retry_base_delay": 0.05,
            "migrate": False, "pool_size": 4,
        }
        options.update(kwargs)
        return AgentRuntime(name, **options)

    return make
