"""``/rest/v1/rpc/<function>``: PostgREST's function calls, on the stand-in's asyncpg pool.

Per request, in one transaction (READ ONLY for STABLE/IMMUTABLE functions and for GET): the
request GUCs PostgREST sets (``search_path``, ``role`` from the JWT, ``request.jwt.claims`` with
``role`` in it, ``request.method``/``path``/``headers``/``cookies``), then the call in named
notation with the arguments taken from the body through ``json_to_record`` with the declared
argument types, as PostgREST does it. Results, errors and status codes follow
realtime-protocol.md §7.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp import web

from . import _jwt
from ._common import Keys, StandInStats, dumps, json_response

log = logging.getLogger("agent_runtime.testing.postgrest")

_ANON_ROLE = "anon"
_INPUT_MODES = ("i", "b", "v")

_FUNCTIONS_SQL = """
select p.proname,
       p.pronargdefaults,
       coalesce(p.proargnames, array[]::text[]) as argnames,
       coalesce(p.proargmodes::text[], array[]::text[]) as argmodes,
       array(select format_type(t.oid_, null) from unnest(p.proargtypes::oid[]) with ordinality t(oid_, n)
             order by t.n) as argtypes,
       p.proretset,
       p.provolatile::text as volatility,
       p.prorettype = 'void'::regtype as returns_void,
       (rt.typtype = 'c' or p.prorettype = 'record'::regtype) as returns_composite
from pg_proc p
join pg_namespace n on n.oid = p.pronamespace
join pg_type rt on rt.oid = p.prorettype
where n.nspname = $1::text and p.proname::text = $2::text and p.prokind = 'f'  -- (text: any name, too long ones too)
"""

_REQUEST_GUCS_SQL = """
select set_config('search_path', $1, true), set_config('role', $2, true),
       set_config('request.jwt.claims', $3, true), set_config('request.method', $4, true),
       set_config('request.path', $5, true), set_config('request.headers', $6, true),
       set_config('request.cookies', '{}', true)
"""

# Query parameters that are PostgREST's own on GET /rpc (everything else is a function argument).
_RESERVED_QUERY = {"select", "order", "limit", "offset", "on_conflict", "columns", "apikey"}


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class _Arg:
    name: str
    type: str
    variadic: bool


@dataclass(frozen=True)
class _Function:
    schema: str
    name: str
    args: tuple[_Arg, ...]
    required: frozenset[str]
    retset: bool
    volatility: str
    returns_void: bool
    returns_composite: bool

    @property
    def names(self) -> frozenset[str]:
        return frozenset(a.name for a in self.args)

    @property
    def single_unnamed_json(self) -> bool:
        return len(self.args) == 1 and not self.args[0].name and self.args[0].type in ("json", "jsonb")

    def signature(self) -> str:
        return f"{self.schema}.{self.name}({', '.join(a.name for a in self.args)})"


class RpcError(Exception):
    """An error answered in PostgREST's shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: str | None = None,
        hint: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"code": code, "details": details, "hint": hint, "message": message}
        self.headers = {"Proxy-Status": f"PostgREST; error={code}", **(headers or {})}

    def response(self) -> web.Response:
        return json_response(self.body, status=self.status, headers=self.headers)


def http_status(sqlstate: str, message: str, role: str) -> int:
    """PostgREST's SQLSTATE → HTTP status mapping (``mapSQLtoHTTP``)."""
    code = sqlstate.upper()
    cls = code[:2]
    if code == "P0001":
        return 400
    if cls == "P0":
        return 500
    if cls == "PT" and code[2:].isdigit():
        return int(code[2:])
    if code in ("23505", "23503"):
        return 409
    if code == "25006":
        return 405
    if code in ("42883", "42P01"):
        return 404
    if code == "42501":
        return 401 if role == _ANON_ROLE else 403
    if code == "42P17":
        return 500
    if code == "21000":
        return 400 if "requires a WHERE clause" in message else 500
    if code == "22023":
        return 401 if message.startswith("role") and message.endswith("does not exist") else 400
    if cls == "08" or code == "57P01" or (cls == "53" and code != "53400"):
        return 503
    if code == "53400" or cls in ("09", "25", "2D", "38", "39", "3B", "40", "54", "55", "57", "58", "F0", "HV", "XX"):
        return 500
    if cls in ("0L", "0P", "28"):
        return 403
    return 400


def _pg_error(exc: asyncpg.PostgresError, role: str) -> RpcError:
    sqlstate = str(getattr(exc, "sqlstate", None) or "XX000")
    message = str(getattr(exc, "message", None) or exc)
    detail = getattr(exc, "detail", None)
    hint = getattr(exc, "hint", None)
    if sqlstate == "PGRST":
        # RAISE SQLSTATE 'PGRST' USING MESSAGE = '{"code",...}', DETAIL = '{"status",...}'
        try:
            body = json.loads(message)
            extra = json.loads(detail) if detail else {}
            status = int(extra.get("status", 400)) if isinstance(extra, dict) else 400
            headers = extra.get("headers") if isinstance(extra, dict) else None
            if not isinstance(body, dict) or not isinstance(body.get("message", ""), str):
                raise ValueError("bad PGRST message")
            return RpcError(
                status,
                str(body.get("code", "PGRST")),
                str(body.get("message", "")),
                body.get("details"),
                body.get("hint"),
                {str(k): str(v) for k, v in headers.items()} if isinstance(headers, dict) else None,
            )
        except (ValueError, TypeError, AttributeError):
            return RpcError(
                500, "PGRST121", "Could not parse JSON in the RAISE SQLSTATE 'PGRST' error", message, None
            )
    return RpcError(http_status(sqlstate, message, role), sqlstate, message, detail, hint)


class PostgrestRpc:
    """The RPC half of PostgREST on one asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool, keys: Keys, stats: StandInStats, schemas: tuple[str, ...]) -> None:
        self._pool = pool
        self._keys = keys
        self._stats = stats
        self._schemas = schemas
        self._cache: dict[tuple[str, str], list[_Function]] = {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self._stats.rpc_calls += 1
        refused = self._keys.gateway_check(request)
        if refused is not None:
            self._stats.rpc_errors += 1
            return refused
        try:
            return await self._handle(request)
        except RpcError as exc:
            self._stats.rpc_errors += 1
            return exc.response()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        claims = self._claims(request)
        role = str(claims.get("role") or _ANON_ROLE)
        claims = {**claims, "role": role}
        fn_name = request.match_info["function"]
        is_get = request.method in ("GET", "HEAD")
        schema = self._schema(request, "Accept-Profile" if is_get else "Content-Profile")
        args = self._query_args(request) if is_get else await self._body_args(request)
        fn, keys = await self._resolve(schema, fn_name, args)
        sql = self._call_sql(fn, keys)
        body_json = dumps(args)
        search_path = f"{quote_ident(schema)}, public"
        headers = dumps({k.lower(): v for k, v in request.headers.items()})
        readonly = is_get or fn.volatility in ("s", "i")
        try:
            async with self._pool.acquire() as conn, conn.transaction(readonly=readonly):
                await conn.execute(
                    _REQUEST_GUCS_SQL, search_path, role, dumps(claims), request.method,
                    f"/rpc/{fn_name}", headers,
                )
                result = await (conn.fetchval(sql, body_json) if keys or fn.single_unnamed_json else conn.fetchval(sql))
        except asyncpg.PostgresError as exc:
            raise _pg_error(exc, role) from exc
        if fn.returns_void and not fn.retset:
            return web.Response(status=204)
        text = "null" if result is None else str(result)
        return web.Response(text=text, status=200, content_type="application/json", charset="utf-8")

    # -- request parsing -------------------------------------------------------------------

    def _claims(self, request: web.Request) -> dict[str, Any]:
        auth = request.headers.get("Authorization", "")
        if not auth:
            return {}
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise RpcError(401, "PGRST301", "Expected 3 parts in JWT; got 1", None, None,
                           {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        try:
            return _jwt.decode(token.strip(), self._keys.secret)
        except _jwt.TokenError as exc:
            code = "PGRST303" if exc.kind == "expired" else "PGRST301"
            raise RpcError(
                401, code, exc.message, None, None,
                {"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{exc.message}"'},
            ) from exc

    def _schema(self, request: web.Request, header: str) -> str:
        schema = request.headers.get(header) or self._schemas[0]
        if schema not in self._schemas:
            raise RpcError(
                406, "PGRST106", "Invalid schema: " + schema, None,
                "Only the following schemas are exposed: " + ", ".join(self._schemas),
            )
        return schema

    @staticmethod
    async def _body_args(request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise RpcError(400, "PGRST102", "Empty or invalid json") from exc
        if not isinstance(body, dict):
            raise RpcError(400, "PGRST102", "Empty or invalid json", "the stand-in accepts a JSON object body only")
        return body

    @staticmethod
    def _query_args(request: web.Request) -> dict[str, Any]:
        return {k: v for k, v in request.query.items() if k not in _RESERVED_QUERY}

    # -- function lookup -------------------------------------------------------------------

    async def _functions(self, schema: str, name: str, *, refresh: bool = False) -> list[_Function]:
        key = (schema, name)
        if refresh or key not in self._cache:
            if "\x00" in schema + name:  # no such name; Postgres text cannot even carry it
                return []
            async with self._pool.acquire() as conn:
                rows = await conn.fetch(_FUNCTIONS_SQL, schema, name)
            found = [self._function(schema, r) for r in rows]
            if not found:
                return found  # misses are not cached: any name a client sends would stay in memory
            self._cache[key] = found
        return self._cache[key]

    @staticmethod
    def _function(schema: str, row: Any) -> _Function:
        names: list[str] = list(row["argnames"])
        modes: list[str] = list(row["argmodes"])
        types: list[str] = list(row["argtypes"])
        if modes:
            in_names = [names[i] if i < len(names) else "" for i, m in enumerate(modes) if m in _INPUT_MODES]
            variadic = [m == "v" for m in modes if m in _INPUT_MODES]
        else:
            in_names = [names[i] if i < len(names) else "" for i in range(len(types))]
            variadic = [False] * len(types)
        args = tuple(_Arg(n, t, v) for n, t, v in zip(in_names, types, variadic, strict=True))
        n_required = len(args) - int(row["pronargdefaults"])
        return _Function(
            schema=schema, name=row["proname"], args=args,
            required=frozenset(a.name for a in args[:n_required]),
            retset=bool(row["proretset"]), volatility=row["volatility"],
            returns_void=bool(row["returns_void"]), returns_composite=bool(row["returns_composite"]),
        )

    async def _resolve(self, schema: str, name: str, args: dict[str, Any]) -> tuple[_Function, list[str]]:
        keys = set(args)
        for refresh in (False, True):
            candidates = await self._functions(schema, name, refresh=refresh)
            matches = [f for f in candidates if f.required <= keys <= f.names]
            if not matches:
                matches = [f for f in candidates if f.single_unnamed_json]
            if len(matches) == 1:
                fn = matches[0]
                return fn, [a.name for a in fn.args if a.name in keys]
            if len(matches) > 1:
                raise RpcError(
                    300, "PGRST203",
                    "Could not choose the best candidate function between: "
                    + ", ".join(f.signature() for f in matches),
                    None, "Try renaming the parameters or the function itself in the database so function "
                    "overloading can be resolved",
                )
        sorted_keys = sorted(keys)
        listed = ", ".join(sorted_keys)
        if not sorted_keys:
            searched = "without parameters"
        elif len(sorted_keys) == 1:
            searched = f"with parameter {listed}"
        else:
            searched = f"with parameters {listed}"
        hint = f"Perhaps you meant to call the function {candidates[0].signature()}" if candidates else None
        raise RpcError(
            404, "PGRST202",
            f"Could not find the function {schema}.{name}({listed}) in the schema cache",
            f"Searched for the function {schema}.{name} {searched} or with a single unnamed json/jsonb "
            "parameter, but no matches were found in the schema cache.",
            hint,
        )

    @staticmethod
    def _call_sql(fn: _Function, keys: list[str]) -> str:
        target = f"{quote_ident(fn.schema)}.{quote_ident(fn.name)}"
        if fn.single_unnamed_json:
            call, source = f"{target}($1::{fn.args[0].type})", ""
        elif keys:
            by_name = {a.name: a for a in fn.args}
            named = ", ".join(
                ("VARIADIC " if by_name[k].variadic else "") + f"{quote_ident(k)} := _b.{quote_ident(k)}" for k in keys
            )
            columns = ", ".join(f"{quote_ident(k)} {by_name[k].type}" for k in keys)
            call = f"{target}({named})"
            source = f"json_to_record($1::json) as _b({columns})"
        else:
            call, source = f"{target}()", ""
        if fn.returns_void and not fn.retset:
            return f"select {call}" + (f" from {source}" if source else "")
        if not fn.retset and not fn.returns_composite:
            return f"select to_json({call})::text" + (f" from {source}" if source else "")
        rows = f"{source} cross join lateral {call} as _r" if source else f"{call} as _r"
        if fn.retset:
            return f"select coalesce(json_agg(_r), '[]')::text from {rows}"
        return f"select row_to_json(_r)::text from {rows}"
