"""A protocol-level stand-in for Supabase's REST (PostgREST RPC) and Realtime endpoints, backed
by a real Postgres, for testing code that uses the official ``supabase`` / ``realtime`` clients.

It follows ``realtime-protocol.md`` beside this module (the contract) for what supabase-py and
realtime-py 2.34.1 and supabase-js 2.119.0 send and what the servers answer::

    async with SupabaseStandIn(db_url) as standin:
        client = await acreate_client(standin.url, standin.service_role_key)
        await client.rpc("list_agents", {}).execute()

The database must have the migrations applied (on plain Postgres with the bootstrap, whose
``realtime.send`` emits ``pg_notify('realtime:broadcast', ...)`` after commit). The stand-in's
login (``postgres_url``) must be able to switch to ``anon``, ``authenticated`` and
``service_role`` (a superuser, or a member of those roles like Supabase's ``authenticator``),
to write the owner-only ``agent_runtime_private.wakeup_routes`` (the schema's owner, or a
superuser), and to create a role: at start it creates (or updates) Realtime's own login
``agent_runtime_standin_realtime`` — not a superuser, no BYPASSRLS, a member of those three
roles without inheriting them, the owner of ``realtime.messages`` as ``supabase_realtime_admin``
is on Supabase — and checks channel policies on connections of that login only (its password is
derived from the JWT secret).

Departures from the protocol document (and from the real servers):

* **PostgREST: RPC only.** ``POST /rest/v1/rpc/<fn>`` (and ``GET`` with text arguments) is
  implemented; table and view endpoints answer 501 with code ``STANDIN501``. Query modifiers on
  RPC (``?select=``, filters, ``order``/``limit``) and ``Prefer`` (``count=``,
  ``params=single-object``, ``return=``) are ignored. A JSON array body (bulk call) is refused
  with ``PGRST102``. The exposed schemas are ``("public",)`` unless configured.
* **Schema cache.** Functions are looked up in ``pg_proc`` on first use and again on a miss, so a
  function created after start is found at once (PostgREST needs ``NOTIFY pgrst``).
* **Legacy GUCs.** Like current PostgREST, RPC sets only ``request.jwt.claims`` (with ``role``),
  not the per-claim ``request.jwt.claim.*``; the Realtime policy probes set ``request.jwt.claim.sub``
  and ``.role`` too, as Realtime does.
* **Keys.** HS256/384/512 with the one shared secret (no JWKS, no asymmetric keys, no new-style
  ``sb_publishable_``/``sb_secret_`` keys). The API gateway's key-auth is enforced: the
  ``apikey`` header / query parameter must be the stand-in's anon or service_role key (an agent
  JWT goes in ``Authorization`` for REST and ``realtime.set_auth()`` for Realtime).
* **Realtime vsn 1.0.0 and 2.0.0** (``_phoenix.py``): JSON objects, or JSON arrays plus the
  binary ``user_broadcast`` frames for client and database broadcasts, as the server mounts
  them. Any other ``vsn`` is refused with 403 before the upgrade. A binary push that is not a
  broadcast is ignored.
* **Tenant limits**: the events-per-second limit (``max_events_per_second``, off by default) and
  the per-channel presence limit (5 calls per 30 s, configurable), which shuts the channel down
  with ``system`` "Client presence rate limit exceeded" + ``phx_close`` as the server does. No
  limits on joins, channels, connections or presence events per second. Join refusals are
  replied at once (the server sleeps a small backoff first).
* **postgres_changes is not implemented.** A join with bindings gets the bindings echoed with
  ids (so the client's binding check passes), then a ``system`` error for the
  ``postgres_changes`` extension, as for a table outside the publication: the client reports
  ``CHANNEL_ERROR`` and rejoins. "Subscribed to PostgreSQL" is never sent.
* **Broadcast from the database** arrives by ``LISTEN realtime:broadcast`` (the bootstrap's
  ``realtime.send`` → ``pg_notify``), not WAL: after commit and in commit order as documented, but
  the sender-side RLS insert into ``realtime.messages`` is not performed, so only the
  subscribers' read policies gate delivery. (On plain Postgres the runtime's triggers call
  ``realtime.send`` only when ``agent_runtime_private.wakeup_routes`` says a Realtime hears it,
  as it does on Supabase: the stand-in turns that on at start.) ``meta.id`` is ``payload.id``. Nothing is stored, so
  ``broadcast.replay`` is ignored; binary payloads (``send_binary``) are not supported.
* **Presence** ``presence_state`` is pushed after a join that enabled presence (not on a later
  first ``track``, which newer servers also do).
* **Token expiry** is checked when the channel's token expires (the server checks every
  ``min(5 min, exp - now)``): same ``system`` error + ``phx_close``.
* **Details.** ``phx_error`` is never sent (no channel process crashes here); binding ids are a
  CRC of the binding, not ``:erlang.phash2``; RPC's ``search_path`` is ``"<schema>", public``
  (Supabase adds ``extensions``); the ``request.headers`` GUC of the policy probes is ``{}``.

Matched on purpose (each pinned by a test): policies that cannot be evaluated (a ``role`` claim
naming no role, or one Realtime's login may not switch to; a policy that raises) refuse the join
as a denial does, ``Unauthorized: You do not have permissions to read from this Channel topic:
<topic>`` (``RlsPolicyError`` is logged), and a token refresh that leaves no read shuts the
channel down with that message; the probe rows carry only topic and extension.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
import time
from types import TracebackType
from typing import Any, Self

import asyncpg
from aiohttp import web

from . import _jwt
from ._common import Keys, StandInStats, json_response
from ._postgrest import PostgrestRpc
from ._realtime import RealtimeHub
from ._realtime_auth import Authorizer, prepare_login

__all__ = ["DEFAULT_JWT_SECRET", "StandInStats", "SupabaseStandIn"]

log = logging.getLogger("agent_runtime.testing")

DEFAULT_JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters"
REALTIME_LOGIN = "agent_runtime_standin_realtime"
_BROADCAST_CHANNEL = "realtime:broadcast"


class SupabaseStandIn:
    """Supabase's ``/rest/v1/rpc`` and ``/realtime/v1`` on a loopback port, over ``postgres_url``.

    Use as an async context manager (or :meth:`start` / :meth:`close`). ``url`` is what
    ``acreate_client`` takes; ``anon_key`` and ``service_role_key`` are the project keys;
    :meth:`agent_token` signs an ``authenticated`` JWT for an agent.

    ``max_events_per_second`` sets the tenant's events-per-second limit (off by default; the
    free plan's is 100), averaged over the last 12 ticks of ``rate_tick`` seconds (5 on the
    server): past it broadcasts from the database are dropped and channels that receive a
    message are shut down with ``Too many messages per second``, as the server does.
    """

    def __init__(
        self,
        postgres_url: str,
        *,
        jwt_secret: str = DEFAULT_JWT_SECRET,
        host: str = "127.0.0.1",
        port: int = 0,
        schemas: tuple[str, ...] = ("public",),
        pool_size: int = 10,
        idle_timeout: float = 60.0,
        presence_max_calls: int = 5,
        presence_window: float = 30.0,
        max_events_per_second: float | None = None,
        rate_tick: float = 5.0,
        realtime_login: str = REALTIME_LOGIN,
    ) -> None:
        self._postgres_url = postgres_url
        self._realtime_login = realtime_login
        self._keys = Keys.create(jwt_secret)
        self._host = host
        self._port = port
        self._schemas = schemas
        self._pool_size = pool_size
        self._hub_options: dict[str, Any] = {
            "idle_timeout": idle_timeout, "presence_max_calls": presence_max_calls,
            "presence_window": presence_window, "max_events_per_second": max_events_per_second,
            "rate_tick": rate_tick,
        }
        self.stats = StandInStats()
        self._url: str | None = None
        self._pool: asyncpg.Pool | None = None
        self._auth_pool: asyncpg.Pool | None = None
        self._runner: web.AppRunner | None = None
        self._hub: RealtimeHub | None = None
        self._listener_task: asyncio.Task[None] | None = None

    # -- keys ------------------------------------------------------------------------------

    @property
    def jwt_secret(self) -> str:
        return self._keys.secret

    @property
    def anon_key(self) -> str:
        """The project's anon key (HS256 JWT, role ``anon``)."""
        return self._keys.anon

    @property
    def service_role_key(self) -> str:
        """The project's service key (HS256 JWT, role ``service_role``)."""
        return self._keys.service_role

    def agent_token(self, agent_id: str, *, expires_in: float = 3600, claims: dict[str, Any] | None = None) -> str:
        """An ``authenticated`` JWT acting as ``agent_id`` (claim ``agent_id``; ``sub`` a uuid
        derived from it). A negative ``expires_in`` gives an expired token. ``claims`` adds or
        overrides claims."""
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": "supabase-standin", "aud": "authenticated", "role": "authenticated",
            "sub": _jwt.agent_sub(agent_id), "agent_id": agent_id, "iat": now, "exp": int(now + expires_in),
        }
        body.update(claims or {})
        return _jwt.sign(self._keys.secret, body)

    def sign(self, claims: dict[str, Any]) -> str:
        """Any claims, signed with the project's secret (for tests of odd tokens)."""
        return _jwt.sign(self._keys.secret, claims)

    # -- addresses -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: the Supabase URL for ``acreate_client``."""
        if self._url is None:
            raise RuntimeError("the stand-in is not started")
        return self._url

    @property
    def realtime_url(self) -> str:
        """``ws://127.0.0.1:<port>/realtime/v1`` (what ``AsyncRealtimeClient`` takes)."""
        return self.url.replace("http://", "ws://", 1) + "/realtime/v1"

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect to the database, start listening for broadcasts, serve HTTP."""
        if self._url is not None:
            raise RuntimeError("the stand-in is already started")
        self._pool = await asyncpg.create_pool(self._postgres_url, min_size=1, max_size=self._pool_size)
        try:
            # Realtime checks policies as its own non-superuser login (never as the admin).
            password = hashlib.sha256(f"{self._realtime_login}:{self._keys.secret}".encode()).hexdigest()
            async with self._pool.acquire() as admin:
                await prepare_login(admin, self._realtime_login, password)
                await _route_wakeups_through_realtime(admin)
            self._auth_pool = await asyncpg.create_pool(self._postgres_url, user=self._realtime_login,
                                                        password=password, min_size=1, max_size=4)
            authorizer = Authorizer(self._auth_pool, self.stats)
            hub = RealtimeHub(self._keys, self.stats, authorizer, **self._hub_options)
            self._hub = hub
            rpc = PostgrestRpc(self._pool, self._keys, self.stats, self._schemas)
            listener = await self._connect_listener(hub)
            self._listener_task = asyncio.create_task(self._supervise_listener(hub, listener),
                                                      name="standin-broadcast-listener")
            app = web.Application(client_max_size=64 * 1024 * 1024)
            for method in ("POST", "GET", "HEAD"):  # any name routes to RPC: PGRST202 if there is no such function
                app.router.add_route(method, "/rest/v1/rpc/{function:[^/]+}", rpc.handle)
            app.router.add_route("*", "/rest/v1/{tail:.*}", _not_implemented)
            app.router.add_get("/realtime/v1/websocket", hub.handle_websocket)
            app.router.add_post("/realtime/v1/api/broadcast", hub.handle_rest_broadcast)
            app.router.add_post("/realtime/v1/api/broadcast/{topic}/events/{event}", hub.handle_rest_broadcast_single)
            runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
            await runner.setup()
            self._runner = runner
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._port))
            await web.SockSite(runner, sock).start()
            port = sock.getsockname()[1]
            self._url = f"http://{self._host}:{port}"
        except BaseException:
            await self.close()
            raise
        log.info("Supabase stand-in at %s", self._url)

    async def close(self) -> None:
        """Close every socket, stop serving, disconnect from the database."""
        if self._hub is not None:
            self._hub.stop()
            with contextlib.suppress(Exception):
                await self._hub.drop_all(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._listener_task is not None:
            self._listener_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener_task
            self._listener_task = None
        for pool in (self._auth_pool, self._pool):
            if pool is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pool.close(), timeout=5.0)
        self._pool = self._auth_pool = None
        self._hub = None
        self._url = None

    async def drop_websockets(self, *, code: int = 1001, abrupt: bool = False) -> int:
        """Close every Realtime socket from the server side (``code``, 1001 by default, as a
        server ``disconnect`` does; ``abrupt`` drops the TCP connection with no close frame).
        Returns once the stand-in has cleaned up (presence leaves sent); returns the count."""
        if self._hub is None:
            raise RuntimeError("the stand-in is not started")
        return await self._hub.drop_all(code=code, abrupt=abrupt)

    @property
    def websocket_count(self) -> int:
        """Realtime sockets open now."""
        return len(self._hub.sockets) if self._hub is not None else 0

    def websocket_versions(self) -> list[str]:
        """The protocol version (``vsn``) of each Realtime socket open now."""
        return sorted(s.serializer.vsn for s in self._hub.sockets) if self._hub is not None else []

    def joined_topics(self) -> list[str]:
        """The channel joins open now, as ``private:<sub topic>`` / ``public:<sub topic>``."""
        if self._hub is None:
            return []
        return sorted(
            f"{'private' if private else 'public'}:{topic}"
            for (private, topic), joins in self._hub.topics.items() for _ in joins
        )

    # -- broadcast from the database -------------------------------------------------------

    async def _connect_listener(self, hub: RealtimeHub) -> asyncpg.Connection:
        conn = await asyncpg.connect(self._postgres_url)

        def on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            hub.deliver_db_broadcast(payload)

        await conn.add_listener(_BROADCAST_CHANNEL, on_notify)
        return conn

    async def _supervise_listener(self, hub: RealtimeHub, conn: asyncpg.Connection) -> None:
        """Keep one LISTEN connection; reconnect (with backoff) if it is lost."""
        backoff = 0.1
        try:
            while True:
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, ev=lost: ev.set())
                await lost.wait()
                log.warning("broadcast listener connection lost; reconnecting")
                while True:
                    try:
                        conn = await self._connect_listener(hub)
                        backoff = 0.1
                        break
                    except (OSError, asyncpg.PostgresError) as exc:
                        log.warning("broadcast listener reconnect failed: %s", exc)
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, 2.0)
        finally:
            conn.terminate()


async def _route_wakeups_through_realtime(conn: asyncpg.Connection) -> None:
    """The runtime's triggers call ``realtime.send`` only where a Realtime hears it (Supabase; the
    owner-only ``agent_runtime_private.wakeup_routes`` says so, set by the migrations from the
    platform): on plain Postgres a stand-in for Realtime is what hears it, so it turns that on, as
    Supabase has it (pg_notify stays on for runtimes on the Postgres transport)."""
    if await conn.fetchval("select to_regclass('agent_runtime_private.wakeup_routes')") is None:
        return  # (an older schema, whose triggers always call realtime.send)
    try:
        await conn.execute("update agent_runtime_private.wakeup_routes set realtime = true where not realtime")
    except asyncpg.InsufficientPrivilegeError as exc:
        raise RuntimeError(
            "the stand-in's login must own agent_runtime_private.wakeup_routes (or be a superuser) to route "
            "wake-ups through realtime.send; without it no wake-up would reach Realtime's subscribers") from exc


async def _not_implemented(request: web.Request) -> web.StreamResponse:
    return json_response(
        {"code": "STANDIN501", "details": request.path, "hint": "only /rest/v1/rpc/<function> is implemented",
         "message": "not implemented by the Supabase stand-in"},
        status=501,
    )
