"""Fixtures for the Supabase stand-in tests: a stand-in over the test's fresh database, and
official supabase-py clients that are closed (realtime first) when the test ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from supabase import AClientOptions, AsyncClient, acreate_client

from agent_runtime.testing import SupabaseStandIn

ClientFactory = Callable[..., Awaitable[AsyncClient]]


@pytest.fixture
async def standin(db_url: str) -> AsyncIterator[SupabaseStandIn]:
    """A stand-in serving the test's database on a free loopback port."""
    async with SupabaseStandIn(db_url) as server:
        yield server


@pytest.fixture
async def make_client(standin: SupabaseStandIn) -> AsyncIterator[ClientFactory]:
    """Official AsyncClients: ``key`` is the project key (anon by default); ``token`` an agent
    JWT used for REST (Authorization) and Realtime (``set_auth``)."""
    made: list[AsyncClient] = []

    async def make(key: str | None = None, *, token: str | None = None, **realtime: Any) -> AsyncClient:
        options = AClientOptions(realtime={"max_retries": 5, "initial_backoff": 0.2, **realtime})
        if token is not None:
            options.headers = {**options.headers, "Authorization": f"Bearer {token}"}
        client = await acreate_client(standin.url, key or standin.anon_key, options)
        if token is not None:
            await client.realtime.set_auth(token)
        made.append(client)
        return client

    yield make
    for client in made:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.realtime.remove_all_channels(), timeout=5)
        with contextlib.suppress(Exception):
            await client.postgrest.aclose()


@pytest.fixture
async def service(make_client: ClientFactory, standin: SupabaseStandIn) -> AsyncClient:
    """A client with the service_role key (trusted: acts as any agent)."""
    return await make_client(standin.service_role_key)
