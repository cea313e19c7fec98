"""What the stand-in's HTTP and websocket halves share: the project keys, the API gateway's key
check, and the counters."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import _jwt


@dataclass
class StandInStats:
    """Counters a test or benchmark can read (and :meth:`reset`)."""

    rpc_calls: int = 0
    rpc_errors: int = 0
    ws_connections: int = 0
    ws_refused: int = 0
    ws_open: int = 0
    ws_frames_in: int = 0
    ws_frames_out: int = 0
    joins: int = 0
    joins_refused: int = 0
    db_notifications: int = 0
    broadcasts_delivered: int = 0
    client_broadcasts: int = 0
    presence_diffs: int = 0
    auth_checks: int = 0
    db_broadcasts_dropped: int = 0  # past the events-per-second limit
    rate_limited_channels: int = 0  # shut down with "Too many messages per second"

    def snapshot(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return dataclasses.asdict(self)

    def reset(self) -> None:
        """Set every counter to zero (``ws_open`` is a gauge and is kept)."""
        open_now = self.ws_open
        for field in dataclasses.fields(self):
            setattr(self, field.name, 0)
        self.ws_open = open_now


@dataclass(frozen=True)
class Keys:
    """The JWT secret and the two project API keys signed with it."""

    secret: str
    anon: str
    service_role: str

    @classmethod
    def create(cls, secret: str) -> Keys:
        return cls(secret, _jwt.project_key(secret, "anon"), _jwt.project_key(secret, "service_role"))

    def gateway_check(self, request: web.Request) -> web.Response | None:
        """The API gateway's key-auth (Kong on self-hosted, the platform gateway on hosted
        Supabase): the ``apikey`` header or query parameter must be one of the project keys.
        Returns the refusal, or None when the key is accepted."""
        key = request.headers.get("apikey") or request.query.get("apikey")
        if not key:
            return json_response({"message": "No API key found in request"}, status=401)
        if key not in (self.anon, self.service_role):
            return json_response(
                {"message": "Invalid API key", "hint": "Double check your Supabase `anon` or `service_role` API key."},
                status=401,
            )
        return None


def dumps(value: Any) -> str:
    """Compact JSON, as the servers send it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def json_response(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=dumps(body), status=status, headers=headers, content_type="application/json", charset="utf-8"
    )
