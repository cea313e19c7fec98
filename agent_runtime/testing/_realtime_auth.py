"""Private-channel authorisation as Supabase Realtime does it: RLS on ``realtime.messages``
(realtime-protocol.md §6.3).

Read: in one transaction, insert probe rows for the topic (as the stand-in's own, trusted
login), switch to the JWT's role with ``realtime.topic`` and the claims set, select the probes
back (a visible row grants read for its extension), roll back. Write: the same settings, then
insert a probe as the role under a savepoint (``42501`` denies), roll back.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import asyncpg

from ._common import StandInStats

log = logging.getLogger("agent_runtime.testing.realtime")

_SETTINGS_SQL = """
select set_config('role', $1, true), set_config('realtime.topic', $2, true),
       set_config('request.jwt.claims', $3, true), set_config('request.jwt.claim.sub', $4, true),
       set_config('request.jwt.claim.role', $5, true), set_config('request.headers', '{}', true)
"""

_PROBE_SQL = """
insert into realtime.messages (topic, extension, private, event, payload)
select $1, e, true, 'agent_runtime_standin_probe', '{}'::jsonb from unnest($2::text[]) as e
returning id, extension
"""


class PolicyError(Exception):
    """The policies could not be evaluated (for example: the JWT's role does not exist)."""


@dataclass
class ReadPolicies:
    broadcast: bool
    presence: bool | None  # None: not evaluated (presence was not enabled at join)


class Authorizer:
    """Evaluates ``realtime.messages`` policies for a topic and a set of JWT claims."""

    def __init__(self, pool: asyncpg.Pool, stats: StandInStats) -> None:
        self._pool = pool
        self._stats = stats

    async def _settings(self, conn: asyncpg.Connection, topic: str, claims: dict[str, Any]) -> None:
        role = str(claims.get("role") or "anon")
        await conn.execute(
            _SETTINGS_SQL, role, topic, json.dumps(claims), str(claims.get("sub") or ""), role
        )

    async def read(self, topic: str, claims: dict[str, Any], *, presence: bool) -> ReadPolicies:
        """Which extensions (broadcast, presence) the claims may read on ``topic``."""
        self._stats.auth_checks += 1
        extensions = ["broadcast", "presence"] if presence else ["broadcast"]
        try:
            async with self._pool.acquire() as conn:
                tr = conn.transaction()
                await tr.start()
                try:
                    probes = await conn.fetch(_PROBE_SQL, topic, extensions)
                    await self._settings(conn, topic, claims)
                    visible = await conn.fetch(
                        "select extension from realtime.messages where id = any($1::uuid[])",
                        [p["id"] for p in probes],
                    )
                finally:
                    await tr.rollback()
        except asyncpg.PostgresError as exc:
            log.info("read policies for %s could not be evaluated: %s", topic, exc)
            raise PolicyError(str(exc)) from exc
        seen = {r["extension"] for r in visible}
        return ReadPolicies(broadcast="broadcast" in seen, presence=("presence" in seen) if presence else None)

    async def write(self, topic: str, claims: dict[str, Any], extension: str) -> bool:
        """Whether the claims may write (broadcast or track presence) on ``topic``."""
        self._stats.auth_checks += 1
        try:
            async with self._pool.acquire() as conn:
                tr = conn.transaction()
                await tr.start()
                try:
                    await self._settings(conn, topic, claims)
                    try:
                        async with conn.transaction():
                            await conn.execute(_PROBE_SQL, topic, [extension])
                    except asyncpg.InsufficientPrivilegeError:
                        return False
                    return True
                finally:
                    await tr.rollback()
        except asyncpg.PostgresError as exc:
            log.info("write policy for %s could not be evaluated: %s", topic, exc)
            return False
