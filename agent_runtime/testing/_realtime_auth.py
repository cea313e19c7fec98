"""Private-channel authorisation as Supabase Realtime does it: RLS on ``realtime.messages``
(realtime-protocol.md §6.3; ``RT: lib/realtime/tenants/authorization.ex``).

The checks run on connections of Realtime's own login, a non-superuser that owns
``realtime.messages`` (so it writes the probes past RLS, as ``supabase_realtime_admin`` does) and
is a member of ``anon``, ``authenticated`` and ``service_role`` without inheriting their rights
(so it may switch to them, and to nothing else). Read: in one transaction, insert probe rows for
the topic (only ``topic`` and ``extension``: event and payload stay NULL), switch to the JWT's
role with ``realtime.topic`` and the claims set, select the probes back (a visible row grants
read for its extension), roll back. Write: the same settings, then insert a probe as the role
under a savepoint (``42501`` denies), roll back.
"""

from __future__ import annotations

import json
import logging
import uuid
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

# As Realtime.Api.Message's changeset builds them: topic and extension, nothing else.
_PROBE_SQL = """
insert into realtime.messages (id, topic, extension)
select id, $2, extension from unnest($1::uuid[], $3::text[]) as p(id, extension)
"""

# The login's rights, as Realtime's migrations give supabase_realtime_admin
# (RT: lib/realtime/tenants/repo/migrations/20260707120000_restrict_realtime_schema.ex,
# RT: priv/repo/tenant_db_dump_17.sql).
_ROLE_SQL = """
do $$
begin
  if not exists (select 1 from pg_roles where rolname = {name}) then
    create role {ident} login nosuperuser nobypassrls noinherit nocreatedb nocreaterole noreplication;
  end if;
exception when duplicate_object then null;  -- created meanwhile by another stand-in
end
$$;
alter role {ident} login nosuperuser nobypassrls noinherit password {password};
grant anon, authenticated, service_role to {ident};
grant usage on schema realtime to {ident};
do $$
begin
  if (select relowner::regrole::text from pg_class where oid = 'realtime.messages'::regclass) <> {name} then
    alter table realtime.messages owner to {ident};
  end if;
end
$$;
"""


class PolicyError(Exception):
    """The policies could not be evaluated (a Postgres error: the JWT's role does not exist or
    may not be switched to, a policy fails). The server answers as for a denial."""


class DatabaseUnavailable(Exception):
    """The check could not reach the database."""


@dataclass
class ReadPolicies:
    broadcast: bool
    presence: bool | None  # None: not evaluated (presence was not enabled at join)


async def prepare_login(admin: asyncpg.Connection, role: str, password: str) -> None:
    """Create (or bring up to date) Realtime's own login ``role`` and make it the owner of
    ``realtime.messages``; idempotent."""
    ident = '"' + role.replace('"', '""') + '"'
    name = "'" + role.replace("'", "''") + "'"
    secret = "'" + password.replace("'", "''") + "'"
    await admin.execute(_ROLE_SQL.format(ident=ident, name=name, password=secret))


class Authorizer:
    """Evaluates ``realtime.messages`` policies for a topic and a set of JWT claims, on
    connections of Realtime's own login."""

    def __init__(self, pool: asyncpg.Pool, stats: StandInStats) -> None:
        self._pool = pool
        self._stats = stats

    async def _settings(self, conn: asyncpg.Connection, topic: str, claims: dict[str, Any]) -> None:
        role = str(claims.get("role") or "anon")
        await conn.execute(
            _SETTINGS_SQL, role, topic, json.dumps(claims), str(claims.get("sub") or ""), role
        )

    async def read(self, topic: str, claims: dict[str, Any], *, presence: bool) -> ReadPolicies:
        """Which extensions (broadcast, presence) the claims may read on ``topic``.
        Raises :class:`PolicyError` or :class:`DatabaseUnavailable`."""
        self._stats.auth_checks += 1
        extensions = ["broadcast", "presence"] if presence else ["broadcast"]
        probes = {extension: uuid.uuid4() for extension in extensions}
        try:
            async with self._pool.acquire() as conn:
                tr = conn.transaction()
                await tr.start()
                try:
                    await conn.execute(_PROBE_SQL, list(probes.values()), topic, list(probes))
                    await self._settings(conn, topic, claims)
                    visible = {r["id"] for r in await conn.fetch(
                        "select id from realtime.messages where id = any($1::uuid[])", list(probes.values()))}
                finally:
                    await tr.rollback()
        except asyncpg.PostgresError as exc:
            log.error("RlsPolicyError: read policies for %s: %s", topic, exc)
            raise PolicyError(str(exc)) from exc
        except (OSError, asyncpg.InterfaceError) as exc:
            raise DatabaseUnavailable(str(exc)) from exc
        return ReadPolicies(broadcast=probes["broadcast"] in visible,
                            presence=(probes["presence"] in visible) if presence else None)

    async def write(self, topic: str, claims: dict[str, Any], extension: str) -> bool:
        """Whether the claims may write (broadcast or track presence) on ``topic``.
        Raises :class:`PolicyError` or :class:`DatabaseUnavailable`."""
        self._stats.auth_checks += 1
        try:
            async with self._pool.acquire() as conn:
                tr = conn.transaction()
                await tr.start()
                try:
                    await self._settings(conn, topic, claims)
                    try:
                        async with conn.transaction():
                            await conn.execute(_PROBE_SQL, [uuid.uuid4()], topic, [extension])
                    except asyncpg.InsufficientPrivilegeError:
                        return False
                    return True
                finally:
                    await tr.rollback()
        except asyncpg.PostgresError as exc:
            log.error("RlsPolicyError: write policy for %s: %s", topic, exc)
            raise PolicyError(str(exc)) from exc
        except (OSError, asyncpg.InterfaceError) as exc:
            raise DatabaseUnavailable(str(exc)) from exc
