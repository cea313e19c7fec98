"""What a conformance test needs to know about the transport it runs on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest


@dataclass
class Backend:
    """Where runtimes connect for this test, and how to disturb the connection."""

    kind: str
    db_url: str
    standin: Any = None  # agent_runtime.testing.SupabaseStandIn, for kind == "supabase"

    @property
    def url(self) -> str:
        return str(self.standin.url) if self.standin is not None else self.db_url

    @property
    def key(self) -> str | None:
        return str(self.standin.service_role_key) if self.standin is not None else None

    def agent_token(self, agent_id: str, expires_in: int = 3600) -> str:
        if self.standin is None:
            pytest.skip("agent tokens are a Supabase feature")
        return str(self.standin.agent_token(agent_id, expires_in=expires_in))

    async def drop_connections(self, conn: asyncpg.Connection) -> None:
        """Cut every runtime's wake-up connection (they reconnect by themselves)."""
        if self.standin is not None:
            await self.standin.drop_websockets()
            return
        await conn.execute("select pg_terminate_backend(pid) from pg_stat_activity "
                           "where datname = current_database() and pid <> pg_backend_pid()")
