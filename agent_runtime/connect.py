"""Opening a transport for resolved settings (starting and migrating the embedded database)."""

from __future__ import annotations

import anyio

from . import embedded
from .config import ConnectionSettings
from .errors import ConfigurationError
from .migrations import migrate_url
from .transports.base import Transport
from .transports.postgres import PostgresTransport, translate_errors


async def postgres_url(settings: ConnectionSettings) -> str:
    if settings.kind == "embedded":
        server = await anyio.to_thread.run_sync(embedded.ensure_running)
        return server.url()
    if settings.url is None:
        raise ConfigurationError("no database URL")
    return settings.url


async def open_transport(settings: ConnectionSettings, *, migrate: bool = True, pool_size: int = 10) -> Transport:
    """Connect; for the Postgres kinds, apply missing migrations first (idempotent and cheap)."""
    if settings.kind == "supabase":
        raise ConfigurationError(
            "the Supabase transport is not available in this version",
            hint="use a postgresql:// URL (Supabase's own database URL works) or the embedded default",
        )
    url = await postgres_url(settings)
    if migrate:
        with translate_errors():
            await migrate_url(url)
    transport = PostgresTransport(url, max_size=pool_size)
    await transport.connect()
    return transport
