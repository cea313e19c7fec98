"""Opening a transport for resolved settings (starting and migrating the embedded database)."""

from __future__ import annotations

import anyio

from ..errors import ConfigurationError
from ..local import embedded
from ..local.migrations import migrate_url
from ..transports.base import AccessTokenProvider, Transport
from ..transports.postgres import PostgresTransport
from .config import ConnectionSettings

__all__ = ["open_transport", "postgres_url"]


async def postgres_url(settings: ConnectionSettings) -> str:
    if settings.kind == "embedded":
        server = await anyio.to_thread.run_sync(embedded.ensure_running)
        return server.url()
    if settings.url is None:
        raise ConfigurationError("no database URL")
    return settings.url


async def open_transport(settings: ConnectionSettings, *, migrate: bool = True, pool_size: int = 10,
                         access_token_provider: AccessTokenProvider | None = None) -> Transport:
    """Connect; for the Postgres kinds, apply missing migrations first (idempotent and cheap).
    A Supabase project is migrated with ``supabase db push``, not from here."""
    if settings.kind == "supabase":
        if settings.url is None or settings.key is None:
            raise ConfigurationError("a Supabase URL needs a key",
                                     hint="set SUPABASE_SERVICE_ROLE_KEY, or an agent's JWT in SUPABASE_KEY")
        try:
            from ..transports.supabase import SupabaseTransport  # imported only when used: the clients are heavy
        except ImportError as exc:
            raise ConfigurationError(f"the Supabase transport needs its clients ({exc.name} is missing)",
                                     hint="pip install 'agent_runtime[supabase]'") from exc

        supabase = SupabaseTransport(settings.url, settings.key, access_token=settings.access_token,
                                     access_token_provider=access_token_provider, pool_size=pool_size)
        await supabase.connect()
        return supabase
    url = await postgres_url(settings)
    if migrate:
        await migrate_url(url)
    transport = PostgresTransport(url, max_size=pool_size)
    await transport.connect()
    return transport
