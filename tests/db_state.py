"""What every table of the schema holds, as one comparable value: a refused call must leave it as it was."""

from __future__ import annotations

import asyncpg

TABLES = ("distributed_agents", "agent_presence", "communication_channels", "channel_subscriptions",
          "distributed_messages", "message_dead_letters", "distributed_locks", "communication_metrics")


async def snapshot(conn: asyncpg.Connection) -> dict[str, tuple[int, str | None]]:
    """Per table: its row count and a hash of its rows in a stable order."""
    state = {}
    for table in TABLES:
        row = await conn.fetchrow(f"select count(*) as n, md5(string_agg(t::text, '|' order by t::text)) as h "
                                  f"from public.{table} t")
        state[table] = (row["n"], row["h"])
    return state
